//! One running `postgres` process: start it, wait until it is ready, stop it.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::thread;
use std::time::{Duration, Instant};

use crate::bin::{self, Bin};
use crate::SandboxError;

/// The server's log file, in its directory.
const LOG_FILE: &str = "postgres.log";

/// How long a server may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How often readiness is checked.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// How many log lines an error shows.
const LOG_TAIL_LINES: usize = 20;

/// Settings for a fast, small, throwaway server; callers' settings follow
/// and so win.
const SETTINGS: [(&str, &str); 6] = [
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
    ("shared_buffers", "32MB"),
    ("max_connections", "100"),
    ("logging_collector", "off"),
];

/// How to shut a server down (`pg_ctl stop -m`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum StopMode {
    /// Disconnect clients, checkpoint, exit.
    Fast,
    /// Exit at once; the next start runs crash recovery.
    Immediate,
}

/// A `postgres` child process serving `dir/data`; stopped (immediate mode)
/// on drop.
#[derive(Debug)]
pub(crate) struct Postmaster {
    child: Child,
    bin: Bin,
    dir: PathBuf,
}

impl Postmaster {
    /// Starts `postgres` on `dir/data` with its socket in `dir`, logging to
    /// `dir/postgres.log`, listening on `listen_addresses` (none if empty) at
    /// `port`, with `settings` added; returns once it accepts connections.
    pub(crate) fn start(
        bin: &Bin,
        dir: &Path,
        listen_addresses: &str,
        port: u16,
        settings: &[(String, String)],
    ) -> Result<Postmaster, SandboxError> {
        let log_path = dir.join(LOG_FILE);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(SandboxError::io("open", &log_path))?;
        let log_start = log
            .metadata()
            .map_err(SandboxError::io("inspect", &log_path))?
            .len();
        let mut socket_dir = OsString::from("unix_socket_directories=");
        socket_dir.push(dir);

        let mut cmd = bin.command("postgres", dir);
        cmd.arg("-D").arg(dir.join("data"));
        cmd.args(["-c", &format!("listen_addresses={listen_addresses}")]);
        cmd.args(["-c", &format!("port={port}")]);
        cmd.arg("-c").arg(socket_dir);
        let settings = SETTINGS
            .iter()
            .map(|&(name, value)| (name, value))
            .chain(settings.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        for (name, value) in settings {
            cmd.args(["-c", &format!("{name}={value}")]);
        }
        let stdout = log
            .try_clone()
            .map_err(SandboxError::io("open", &log_path))?;
        cmd.stdout(stdout).stderr(log);
        let child = cmd.spawn().map_err(|source| SandboxError::Spawn {
            command: bin::describe(&cmd),
            source,
        })?;

        let mut postmaster = Postmaster {
            child,
            bin: bin.clone(),
            dir: dir.to_owned(),
        };
        postmaster.wait_ready(port, log_start)?;
        Ok(postmaster)
    }

    /// Whether the process is still alive.
    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Shuts the server down and waits for the process to exit; does nothing
    /// if it already has. Kills it if `pg_ctl stop` fails.
    pub(crate) fn stop(&mut self, mode: StopMode) -> Result<(), SandboxError> {
        if !self.is_running() {
            return Ok(());
        }
        let mode = match mode {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        };
        let mut pg_ctl = self.bin.command("pg_ctl", &self.dir);
        pg_ctl
            .args(["stop", "--silent", "--no-wait", "-m", mode, "-D"])
            .arg(self.dir.join("data"));
        let stopped = bin::run(pg_ctl).map(drop);
        if stopped.is_err() {
            // Best effort: `wait` below must not hang.
            let _ = self.child.kill();
        }
        self.child
            .wait()
            .map_err(SandboxError::io("wait for postgres in", &self.dir))?;
        stopped
    }

    /// Polls until `postmaster.pid` names this process and says `ready`
    /// (PostgreSQL 10+), the process exits, or the timeout passes.
    fn wait_ready(&mut self, port: u16, log_start: u64) -> Result<(), SandboxError> {
        let pid_file = self.dir.join("data").join("postmaster.pid");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let exited = self
                .child
                .try_wait()
                .map_err(SandboxError::io("wait for postgres in", &self.dir))?;
            if let Some(status) = exited {
                return Err(SandboxError::ServerExited {
                    port,
                    dir: self.dir.clone(),
                    status,
                    log_tail: self.log_tail(log_start),
                });
            }
            if is_ready(&pid_file, self.child.id()) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(SandboxError::ServerTimeout {
                    port,
                    dir: self.dir.clone(),
                    timeout: READY_TIMEOUT,
                    log_tail: self.log_tail(log_start),
                });
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// The last lines of the log written from byte `start` on.
    fn log_tail(&self, start: u64) -> String {
        let path = self.dir.join(LOG_FILE);
        let text = match fs::read(&path) {
            Ok(bytes) => {
                let start = usize::try_from(start).unwrap_or(usize::MAX);
                String::from_utf8_lossy(bytes.get(start..).unwrap_or_default()).into_owned()
            }
            Err(err) => return format!("(cannot read {}: {err})", path.display()),
        };
        let lines: Vec<&str> = text.lines().collect();
        lines
            .get(lines.len().saturating_sub(LOG_TAIL_LINES)..)
            .unwrap_or_default()
            .join("\n")
    }
}

impl Drop for Postmaster {
    fn drop(&mut self) {
        // Nothing to report to; `stop` kills the process if it must.
        let _ = self.stop(StopMode::Immediate);
    }
}

/// Whether the lock file `pid_file` is that of process `pid` and says the
/// server accepts connections.
fn is_ready(pid_file: &Path, pid: u32) -> bool {
    let Ok(text) = fs::read_to_string(pid_file) else {
        return false;
    };
    let lines: Vec<&str> = text.lines().collect();
    // Line 1 is the PID; line 8 the status (see PostgreSQL's pidfile.h).
    lines.first() == Some(&pid.to_string().as_str())
        && lines.get(7).map(|status| status.trim()) == Some("ready")
}
