//! The one error type of this crate.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::persistent::STATE_FILE;

/// Why a sandbox server could not be set up, started, stopped or queried.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// No directory holds all of `initdb`, `postgres`, `pg_ctl` and `psql`.
    #[error(
        "PostgreSQL server binaries (initdb, postgres, pg_ctl, psql) not found in {tried}. \
         Install them: `sudo apt-get install postgresql` (Debian, Ubuntu), \
         `sudo dnf install postgresql-server` (Fedora), `brew install postgresql@15` (macOS); \
         or set POSTSHARD_PG_BINDIR to the directory that holds them"
    )]
    BinariesNotFound {
        /// The directories that were looked at, comma-separated.
        tried: String,
    },
    /// Running as root, but there is no `postgres` OS user to run the servers as.
    #[error("running as root and no usable `{user}` user in /etc/passwd; PostgreSQL refuses to run as root")]
    NoServerUser {
        /// The user name looked up.
        user: String,
    },
    /// `down`/`status` on a directory without a sandbox in it.
    #[error("no sandbox in {} (it has no {STATE_FILE}); nothing to do", dir.display())]
    NotASandbox {
        /// The directory given.
        dir: PathBuf,
    },
    /// `up` on a directory that holds other files.
    #[error("{} exists, is not empty and holds no sandbox; choose another --dir", dir.display())]
    NotEmpty {
        /// The directory given.
        dir: PathBuf,
    },
    /// Running as root, the server user cannot reach the directory.
    #[error(
        "the `postgres` user cannot reach {}: {} is not searchable by others; \
         choose a --dir it can reach (e.g. under /tmp)", dir.display(), blocked.display()
    )]
    Unreachable {
        /// The directory given.
        dir: PathBuf,
        /// The ancestor that blocks it.
        blocked: PathBuf,
    },
    /// The state file of a sandbox is damaged.
    #[error("{}: line {line}: expected `NAME PORT`", path.display())]
    BadState {
        /// The state file.
        path: PathBuf,
        /// Its 1-based line number.
        line: usize,
    },
    /// A filesystem operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. `copy`.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A program could not be started at all.
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A program ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// How it exited.
        status: std::process::ExitStatus,
        /// What it wrote to stderr, trimmed.
        stderr: String,
    },
    /// The server exited while starting.
    #[error("PostgreSQL on port {port} in {} exited while starting ({status}); log tail:\n{log_tail}", dir.display())]
    ServerExited {
        /// The port it was told to listen on.
        port: u16,
        /// The server's directory (data directory, log, socket).
        dir: PathBuf,
        /// How it exited.
        status: std::process::ExitStatus,
        /// The last lines it logged during this start.
        log_tail: String,
    },
    /// The server did not become ready in time.
    #[error("PostgreSQL on port {port} in {} not ready after {timeout:?}; log tail:\n{log_tail}", dir.display())]
    ServerTimeout {
        /// The port it was told to listen on.
        port: u16,
        /// The server's directory (data directory, log, socket).
        dir: PathBuf,
        /// How long was waited.
        timeout: Duration,
        /// The last lines it logged during this start.
        log_tail: String,
    },
}

impl SandboxError {
    /// Builds a [`SandboxError::Io`] for `action` on `path`; for `map_err`.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| SandboxError::Io {
            action,
            path,
            source,
        }
    }

    /// Whether the server exited because another process holds its port.
    /// (Server messages are in English: `initdb --locale=C` sets `lc_messages`.)
    pub(crate) fn is_port_in_use(&self) -> bool {
        matches!(self, SandboxError::ServerExited { log_tail, .. } if log_tail.contains("Address already in use"))
    }
}
