//! Which OS user runs the PostgreSQL programs.
//!
//! PostgreSQL refuses to run as root, so when this process is root the
//! programs run as the `postgres` user and the directories they use are handed
//! to it; otherwise they run as the current user.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::SandboxError;

/// The OS user the servers run as when this process is root.
const SERVER_USER: &str = "postgres";

/// The OS user that runs the PostgreSQL programs.
#[derive(Debug, Clone)]
pub(crate) enum RunAs {
    /// Not root: run them as ourselves.
    Current,
    /// Root: run them as this (non-root) user.
    User { uid: u32, gid: u32, home: PathBuf },
}

impl RunAs {
    /// [`RunAs::Current`] unless the effective user is root (read from the
    /// owner of `/proc/self`, so Linux only).
    pub(crate) fn detect() -> Result<RunAs, SandboxError> {
        let euid = fs::metadata("/proc/self")
            .map_err(SandboxError::io("inspect", "/proc/self"))?
            .uid();
        if euid == 0 {
            lookup(SERVER_USER)
        } else {
            Ok(RunAs::Current)
        }
    }

    /// The uid the programs run as, when it is not this process's own.
    pub(crate) fn uid(&self) -> Option<u32> {
        match self {
            RunAs::Current => None,
            RunAs::User { uid, .. } => Some(*uid),
        }
    }

    /// Makes `cmd` run as this user, with its home directory as `HOME`.
    pub(crate) fn apply(&self, cmd: &mut Command) {
        if let RunAs::User { uid, gid, home } = self {
            cmd.uid(*uid).gid(*gid).env("HOME", home);
        }
    }

    /// Makes this user the owner of `path` (not recursive).
    pub(crate) fn own(&self, path: &Path) -> Result<(), SandboxError> {
        match self {
            RunAs::Current => Ok(()),
            RunAs::User { uid, gid, .. } => std::os::unix::fs::chown(path, Some(*uid), Some(*gid))
                .map_err(SandboxError::io("change the owner of", path)),
        }
    }
}

/// Looks `name` up in `/etc/passwd`; it must exist and not be root.
fn lookup(name: &str) -> Result<RunAs, SandboxError> {
    let passwd =
        fs::read_to_string("/etc/passwd").map_err(SandboxError::io("read", "/etc/passwd"))?;
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            match fields[..] {
                [user, _, uid, gid, _, home, ..] if user == name => Some(RunAs::User {
                    uid: uid.parse().ok().filter(|&uid| uid != 0)?,
                    gid: gid.parse().ok()?,
                    home: home.into(),
                }),
                _ => None,
            }
        })
        .ok_or_else(|| SandboxError::NoServerUser {
            user: name.to_owned(),
        })
}
