//! The fence on a checkpoint output (see [`super::fence`]): a run claims the output for its
//! lease's attempt and checks, before each publish or delete, that no newer attempt has claimed
//! it since. Apart from `fence`, so that the fence's rules import nothing of the checkpoints.

use super::checkpoint::Output;
use super::fence::{check, claim_local, claim_name, newest_claim, FENCE_DIR};
use super::files::io_error;
use super::TrainError;

impl Output {
    /// Claims the output for this run's attempt, refusing when a newer attempt has claimed it.
    pub fn claim(&self, rt: &tokio::runtime::Runtime) -> Result<(), TrainError> {
        let Some(attempt) = self.attempt else {
            return Ok(());
        };
        self.check_fence(rt)?;
        match self.local()? {
            Some(dir) => claim_local(&dir, attempt)?,
            None => {
                let name = claim_name(attempt);
                let (target, file) = self.at(&name)?;
                // Created now or there already (the same attempt restarted): either way claimed.
                rt.block_on(target.commit(file, Vec::new()))?;
            }
        }
        // A newer attempt may have claimed it meanwhile: it wins.
        self.check_fence(rt)
    }

    /// Fails when a newer attempt than this run's has claimed the output.
    pub fn check_fence(&self, rt: &tokio::runtime::Runtime) -> Result<(), TrainError> {
        let Some(attempt) = self.attempt else {
            return Ok(());
        };
        let newest = match self.local()? {
            Some(dir) => {
                let claims = dir.join(FENCE_DIR);
                let names: Vec<String> = match std::fs::read_dir(&claims) {
                    Ok(entries) => entries
                        .flatten()
                        .map(|e| format!("{}/{}", FENCE_DIR, e.file_name().to_string_lossy()))
                        .collect(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                    Err(e) => return Err(io_error(&claims, e)),
                };
                newest_claim(names.iter().map(String::as_str))
            }
            None => {
                let names = rt.block_on(self.root.list())?;
                newest_claim(names.iter().map(|(n, _)| n.as_str()))
            }
        };
        check(self.url(), attempt, newest)
    }

    /// The error of a checkpoint that another writer published first.
    pub(super) fn taken(&self, name: &str) -> TrainError {
        TrainError::Superseded(format!(
            "{} already holds {name}, written by another run on this output; checkpoints are \
             never replaced, so this run stops: give each run its own --output (or --resume \
             one run at a time)",
            self.url()
        ))
    }
}
