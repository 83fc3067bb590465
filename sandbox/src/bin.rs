//! Locating the PostgreSQL programs and running them as the right user.

use std::env;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::user::RunAs;
use crate::SandboxError;

/// Environment variables naming the directory of the PostgreSQL programs,
/// in order of precedence (`POSTSHARD_PG_BIN` is also what `init` reads for
/// `pg_dump`).
const BINDIR_VARS: [&str; 2] = ["POSTSHARD_PG_BINDIR", "POSTSHARD_PG_BIN"];

/// The programs the sandbox runs; a directory must hold all of them.
const PROGRAMS: [&str; 4] = ["initdb", "postgres", "pg_ctl", "psql"];

/// The PostgreSQL superuser every server gets (`initdb -U`).
pub(crate) const SUPERUSER: &str = "postgres";

/// The PostgreSQL programs and the OS user that runs them.
#[derive(Debug, Clone)]
pub(crate) struct Bin {
    dir: PathBuf,
    user: RunAs,
}

impl Bin {
    /// Finds the programs: in `$POSTSHARD_PG_BINDIR` (or `$POSTSHARD_PG_BIN`)
    /// if set, else in `pg_config --bindir`, else in the newest
    /// `/usr/lib/postgresql/*/bin`.
    pub(crate) fn locate() -> Result<Bin, SandboxError> {
        let candidates = match BINDIR_VARS.iter().find_map(env::var_os) {
            Some(dir) => vec![PathBuf::from(dir)],
            None => [pg_config_bindir(), newest_debian_bindir()]
                .into_iter()
                .flatten()
                .collect(),
        };
        let dir = candidates
            .iter()
            .find(|dir| PROGRAMS.iter().all(|program| dir.join(program).is_file()))
            .ok_or_else(|| SandboxError::BinariesNotFound {
                tried: if candidates.is_empty() {
                    "pg_config --bindir (no pg_config on PATH) or /usr/lib/postgresql/*/bin".into()
                } else {
                    candidates
                        .iter()
                        .map(|dir| dir.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            })?;
        Ok(Bin {
            dir: dir.clone(),
            user: RunAs::detect()?,
        })
    }

    /// The OS user that runs the programs.
    pub(crate) fn user(&self) -> &RunAs {
        &self.user
    }

    /// A command running `program` in `cwd` as the server user, without the
    /// caller's `PG*` environment variables (such as `PGPORT` or `PGOPTIONS`).
    pub(crate) fn command(&self, program: &str, cwd: &Path) -> Command {
        let mut cmd = Command::new(self.dir.join(program));
        cmd.current_dir(cwd).stdin(Stdio::null());
        for (name, _) in env::vars_os() {
            if name.to_string_lossy().starts_with("PG") {
                cmd.env_remove(name);
            }
        }
        self.user.apply(&mut cmd);
        cmd
    }

    /// Runs `psql` on one command string against `database` at `host` (an
    /// address or a socket directory) and `port`; returns its unaligned,
    /// tuples-only output without the final newline.
    pub(crate) fn psql(
        &self,
        cwd: &Path,
        host: impl AsRef<OsStr>,
        port: u16,
        database: &str,
        sql: &str,
    ) -> Result<String, SandboxError> {
        let mut cmd = self.command("psql", cwd);
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(host)
            .args([
                "-p",
                &port.to_string(),
                "-U",
                SUPERUSER,
                "-d",
                database,
                "-c",
                sql,
            ]);
        let mut out = run(cmd)?;
        if out.ends_with('\n') {
            out.pop();
        }
        Ok(out)
    }
}

/// Runs `cmd` to completion and returns its stdout; an error unless it
/// exits successfully.
pub(crate) fn run(mut cmd: Command) -> Result<String, SandboxError> {
    let command = describe(&cmd);
    let out = cmd.output().map_err(|source| SandboxError::Spawn {
        command: command.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(SandboxError::Command {
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The program and arguments of `cmd`, space-separated, for error messages.
pub(crate) fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|part| part.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `pg_config --bindir`, if `pg_config` is on the `PATH` and works.
fn pg_config_bindir() -> Option<PathBuf> {
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    out.status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// `/usr/lib/postgresql/<major>/bin` for the highest major version (Debian).
fn newest_debian_bindir() -> Option<PathBuf> {
    fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let major: u32 = entry.file_name().to_str()?.parse().ok()?;
            Some((major, entry.path().join("bin")))
        })
        .max_by_key(|(major, _)| *major)
        .map(|(_, dir)| dir)
}
