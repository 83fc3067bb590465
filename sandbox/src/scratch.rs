//! The temporary directories of servers and templates.
//!
//! Each is named `postshard-sandbox-<pid>-<random>` under the system temp
//! directory. A process that is killed leaves its directories (and maybe
//! running servers) behind; [`sweep`] cleans up after such processes.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::{env, fs, process};

use tempfile::TempDir;

use crate::bin::{self, Bin};
use crate::SandboxError;

/// The start of every directory name.
const PREFIX: &str = "postshard-sandbox-";

/// Creates an empty directory, owned by the server user, that is removed on
/// drop.
pub(crate) fn create(bin: &Bin) -> Result<TempDir, SandboxError> {
    let base = env::temp_dir();
    let dir = tempfile::Builder::new()
        .prefix(&format!("{PREFIX}{}-", process::id()))
        .permissions(fs::Permissions::from_mode(0o700))
        .tempdir_in(&base)
        .map_err(SandboxError::io("create a directory in", &base))?;
    bin.user().own(dir.path())?;
    Ok(dir)
}

/// Stops any server in, and removes, the directories of processes that no
/// longer exist (checked in `/proc`). Best effort: failures are ignored.
///
/// A process in another PID namespace sharing the temp directory would look
/// dead; such setups should point `TMPDIR` elsewhere.
pub(crate) fn sweep(bin: &Bin) {
    let Ok(entries) = fs::read_dir(env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.strip_prefix(PREFIX))
            .and_then(|rest| rest.split('-').next())
            .filter(|pid| pid.parse::<u32>().is_ok())
        else {
            continue;
        };
        if Path::new("/proc").join(pid).exists() {
            continue;
        }
        let dir = entry.path();
        let data = dir.join("data");
        if data.join("postmaster.pid").exists() {
            let mut pg_ctl = bin.command("pg_ctl", &dir);
            pg_ctl
                .args(["stop", "--silent", "-m", "immediate", "-D"])
                .arg(&data);
            let _ = bin::run(pg_ctl);
        }
        let _ = fs::remove_dir_all(&dir);
    }
}
