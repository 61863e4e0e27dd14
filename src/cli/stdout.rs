//! Results on stdout, Unix style. `println!` panics when the reader has gone away
//! (`sparq decode … | head -1`: EPIPE, exit 101 with a backtrace hint); these return the
//! failure as a [`CliError`] instead, and main.rs ends a command whose reader left quietly,
//! with exit code 0, as `cat` or `grep` do.

use std::fmt::Display;
use std::io::{self, Write};

use super::CliError;

/// Writes one line of results on stdout (line-buffered: the line is out when this returns).
pub(crate) fn print_line(line: impl Display) -> Result<(), CliError> {
    writeln!(io::stdout().lock(), "{line}").map_err(stdout_error)
}

/// Writes one message line on stderr. A closed stderr has nobody left to tell: ignored.
pub(crate) fn eprint_line(line: impl Display) {
    let _ = writeln!(io::stderr().lock(), "{line}");
}

/// A failed write to stdout as a command error: [`CliError::StdoutClosed`] when the reader
/// went away (EPIPE), which ends the command quietly with exit code 0.
pub(crate) fn stdout_error(e: io::Error) -> CliError {
    if is_closed_pipe(&e) {
        CliError::StdoutClosed
    } else {
        CliError::Stdout(e)
    }
}

/// Whether a write failed because the reading end of the pipe was closed.
pub(crate) fn is_closed_pipe(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::BrokenPipe
}
