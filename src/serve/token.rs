//! The service's bearer token when none is given in SPARQ_TOKEN: a random one in a file only its
//! owner can read (0600), made by `sparq serve` and read by the commands that talk to it, so
//! that a service on a shared machine is never open to every local user.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Environment variable naming the token file (`--token-file`).
pub const TOKEN_FILE_VAR: &str = "SPARQ_TOKEN_FILE";

/// The token file a client on loopback reads when none is named: the one `sparq serve` writes
/// next to its default `--state` (`sparq.db`), in the working directory.
pub const DEFAULT_TOKEN_FILE: &str = "sparq.db.token";

/// Where `sparq serve` keeps its token when none is named: next to the state database.
pub fn beside_state(state: &Path) -> PathBuf {
    let mut name = state.as_os_str().to_owned();
    name.push(".token");
    PathBuf::from(name)
}

/// Reads a token file: refused when group or others may read it, or when it is empty.
/// `Ok(None)` when it does not exist.
pub fn read(path: &Path) -> Result<Option<String>, String> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("token file {}: {e}", path.display())),
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "token file {} can be read by other users (mode {mode:04o}): run `chmod 600 {}`, \
             and give it a new token if others may have read it",
            path.display(),
            path.display()
        ));
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("token file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!(
            "token file {} is empty: write a token in it, or delete it and `sparq serve` makes one",
            path.display()
        ));
    }
    Ok(Some(token.to_string()))
}

/// The token in `path`, made (random, mode 0600) when the file does not exist yet.
pub fn read_or_create(path: &Path) -> Result<String, String> {
    if let Some(token) = read(path)? {
        return Ok(token);
    }
    // 244 random bits, as hex.
    let token = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| {
            f.write_all(format!("{token}\n").as_bytes())?;
            f.sync_all()
        });
    match written {
        Ok(()) => Ok(token),
        // Another service made it first: use that one.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read(path)?
            .ok_or_else(|| format!("token file {} vanished while being read", path.display())),
        Err(e) => Err(format!(
            "writing the token file {}: {e} (name another with --token-file, or set SPARQ_TOKEN)",
            path.display()
        )),
    }
}
