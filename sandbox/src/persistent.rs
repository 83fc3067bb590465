//! Sandboxes that outlive the process: servers under one directory, started
//! daemonized by `pg_ctl`, found again through a state file, stopped and
//! removed by [`Sandbox::down`].
//!
//! Layout of a sandbox directory `DIR`: `DIR/sandbox.state` (one `NAME PORT`
//! line per server), and per server `DIR/NAME/data` (its data directory,
//! with `postmaster.pid` while it runs) and `DIR/NAME/postgres.log`. Servers
//! listen on 127.0.0.1 only, with trust authentication for the superuser
//! `postgres`, and trade durability for speed (`fsync=off`): a sandbox is
//! for trying things, not for keeping data.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::thread;

use crate::bin::{self, Bin, SUPERUSER};
use crate::template::Template;
use crate::user::RunAs;
use crate::SandboxError;

/// The file that marks a directory as a sandbox and lists its servers.
pub const STATE_FILE: &str = "sandbox.state";

/// The address servers listen on.
const LOOPBACK: &str = "127.0.0.1";

/// The settings file each server includes (rewritten on every start).
const SETTINGS_FILE: &str = "postshard.conf";

/// How many ports a server tries before giving up.
const PORT_ATTEMPTS: usize = 20;

/// One server of a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its name (the shard name, e.g. `s0`), also its subdirectory.
    pub name: String,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
}

/// A server as [`Sandbox::status`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    /// Name and port.
    pub member: Member,
    /// Whether its postmaster runs (`pg_ctl status`).
    pub running: bool,
    /// Bytes under its directory (data directory and log).
    pub bytes: u64,
}

/// What [`Sandbox::up`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpOutcome {
    /// A new sandbox was created and its servers started.
    Started,
    /// The directory already held a sandbox whose servers all run.
    AlreadyUp,
    /// The directory held a sandbox; these stopped servers were started again.
    Restarted(Vec<String>),
}

/// A sandbox directory and the servers recorded in it.
#[derive(Debug)]
pub struct Sandbox {
    dir: PathBuf,
    bin: Bin,
    members: Vec<Member>,
}

impl Sandbox {
    /// Starts one server per name in `dir` (created if missing; it must be
    /// empty or a sandbox already), each with an empty database `database`.
    /// On a directory that already holds a sandbox, starts whichever of its
    /// servers are stopped and changes nothing else.
    ///
    /// Errors: [`SandboxError::BinariesNotFound`] (checked before anything
    /// is created), [`SandboxError::NotEmpty`], [`SandboxError::Unreachable`]
    /// (root only: the `postgres` user cannot reach `dir`), start failures.
    /// When a new sandbox fails to start, what was started is stopped and
    /// the directory removed.
    pub fn up(
        dir: &Path,
        names: &[String],
        database: &str,
    ) -> Result<(Sandbox, UpOutcome), SandboxError> {
        let bin = Bin::locate()?;
        if dir.join(STATE_FILE).exists() {
            let sandbox = Sandbox::open_with(dir, bin)?;
            let mut restarted = Vec::new();
            for member in &sandbox.members {
                if !sandbox.is_running(member) {
                    sandbox.start(member)?;
                    restarted.push(member.name.clone());
                }
            }
            let outcome = if restarted.is_empty() {
                UpOutcome::AlreadyUp
            } else {
                UpOutcome::Restarted(restarted)
            };
            return Ok((sandbox, outcome));
        }
        let existed = dir.exists();
        if existed {
            let mut entries = fs::read_dir(dir).map_err(SandboxError::io("read", dir))?;
            if entries.next().is_some() {
                return Err(SandboxError::NotEmpty { dir: dir.into() });
            }
        }
        fs::create_dir_all(dir).map_err(SandboxError::io("create", dir))?;
        let dir = fs::canonicalize(dir).map_err(SandboxError::io("resolve", dir))?;
        if let Err(e) = reachable(&dir, bin.user()) {
            if !existed {
                let _ = fs::remove_dir(&dir);
            }
            return Err(e);
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .map_err(SandboxError::io("set permissions of", &dir))?;
        bin.user().own(&dir)?;
        let mut sandbox = Sandbox {
            dir,
            bin,
            members: Vec::new(),
        };
        match sandbox.add_all(names, database) {
            Ok(()) => Ok((sandbox, UpOutcome::Started)),
            Err(e) => {
                let _ = sandbox.down();
                Err(e)
            }
        }
    }

    /// The sandbox in `dir`, as its state file records it.
    ///
    /// Errors: [`SandboxError::NotASandbox`] when `dir` has no state file
    /// (or does not exist); [`SandboxError::BadState`];
    /// [`SandboxError::BinariesNotFound`].
    pub fn open(dir: &Path) -> Result<Sandbox, SandboxError> {
        if !dir.join(STATE_FILE).is_file() {
            return Err(SandboxError::NotASandbox { dir: dir.into() });
        }
        Sandbox::open_with(dir, Bin::locate()?)
    }

    fn open_with(dir: &Path, bin: Bin) -> Result<Sandbox, SandboxError> {
        let path = dir.join(STATE_FILE);
        let text = fs::read_to_string(&path).map_err(|source| match source.kind() {
            ErrorKind::NotFound => SandboxError::NotASandbox { dir: dir.into() },
            _ => SandboxError::Io {
                action: "read",
                path: path.clone(),
                source,
            },
        })?;
        let members = text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(i, line)| {
                let mut fields = line.split_whitespace();
                match (fields.next(), fields.next().map(str::parse), fields.next()) {
                    (Some(name), Some(Ok(port)), None) if valid_name(name) => Ok(Member {
                        name: name.to_owned(),
                        port,
                    }),
                    _ => Err(SandboxError::BadState {
                        path: path.clone(),
                        line: i + 1,
                    }),
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Sandbox {
            dir: dir.to_owned(),
            bin,
            members,
        })
    }

    /// Starts one more server `name` with an empty database `database` and
    /// records it. Errors as [`Sandbox::up`].
    pub fn add(&mut self, name: &str, database: &str) -> Result<Member, SandboxError> {
        self.add_all(&[name.to_owned()], database)?;
        self.members
            .iter()
            .find(|m| m.name == name)
            .cloned()
            .ok_or_else(|| SandboxError::NotASandbox {
                dir: self.dir.clone(),
            })
    }

    /// Creates and starts servers `names` in parallel, then records them.
    fn add_all(&mut self, names: &[String], database: &str) -> Result<(), SandboxError> {
        let template = Template::get(database)?;
        let this = &*self;
        let started: Vec<Result<Member, SandboxError>> = thread::scope(|scope| {
            let running: Vec<_> = names
                .iter()
                .map(|name| scope.spawn(|| this.create(&template, name)))
                .collect();
            running
                .into_iter()
                .map(|t| {
                    t.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        });
        let mut first_error = None;
        for result in started {
            match result {
                Ok(member) => self.members.push(member),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        self.save()?;
        first_error.map_or(Ok(()), Err)
    }

    /// Copies the template into `DIR/name` and starts a server there.
    fn create(&self, template: &Template, name: &str) -> Result<Member, SandboxError> {
        let home = self.dir.join(name);
        fs::create_dir(&home).map_err(SandboxError::io("create", &home))?;
        fs::set_permissions(&home, fs::Permissions::from_mode(0o700))
            .map_err(SandboxError::io("set permissions of", &home))?;
        self.bin.user().own(&home)?;
        template.copy_to(&home)?;
        let conf = home.join("data").join("postgresql.conf");
        let mut text = fs::read_to_string(&conf).map_err(SandboxError::io("read", &conf))?;
        text.push_str(&format!("\ninclude_if_exists = '{SETTINGS_FILE}'\n"));
        fs::write(&conf, text).map_err(SandboxError::io("write", &conf))?;
        let mut attempt = 1;
        loop {
            let member = Member {
                name: name.to_owned(),
                port: free_port()?,
            };
            match self.start(&member) {
                Ok(()) => return Ok(member),
                Err(e) if attempt < PORT_ATTEMPTS && self.port_was_taken(&member) => {
                    attempt += 1;
                    drop(e);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes the settings and starts `member` with `pg_ctl start`, in its
    /// own process group (a Ctrl-C in the terminal does not reach it).
    fn start(&self, member: &Member) -> Result<(), SandboxError> {
        let home = self.dir.join(&member.name);
        let settings = home.join("data").join(SETTINGS_FILE);
        fs::write(&settings, settings_text(member.port))
            .map_err(SandboxError::io("write", &settings))?;
        self.bin.user().own(&settings)?;
        let mut pg_ctl = self.bin.command("pg_ctl", &home);
        pg_ctl
            .args(["start", "--wait", "--timeout=60", "--silent", "-D"])
            .arg(home.join("data"))
            .arg("-l")
            .arg(home.join("postgres.log"))
            .process_group(0);
        bin::run(pg_ctl).map(drop)
    }

    /// Whether the last start of `member` failed on a port in use.
    fn port_was_taken(&self, member: &Member) -> bool {
        let log = self.dir.join(&member.name).join("postgres.log");
        fs::read_to_string(log).is_ok_and(|text| {
            text.lines()
                .rev()
                .take(20)
                .any(|l| l.contains("Address already in use"))
        })
    }

    /// Whether `member`'s postmaster runs (`pg_ctl status` exits 0).
    fn is_running(&self, member: &Member) -> bool {
        let home = self.dir.join(&member.name);
        let mut pg_ctl = self.bin.command("pg_ctl", &home);
        pg_ctl
            .args(["status", "-D"])
            .arg(home.join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        pg_ctl.status().is_ok_and(|s| s.success())
    }

    /// Each server: running or not, and its size on disk.
    pub fn status(&self) -> Vec<MemberStatus> {
        self.members
            .iter()
            .map(|member| MemberStatus {
                member: member.clone(),
                running: self.is_running(member),
                bytes: dir_size(&self.dir.join(&member.name)),
            })
            .collect()
    }

    /// Stops every server (fast shutdown, immediate if that fails) and
    /// removes the directory. Errors: the first stop or removal failure
    /// (every server is still tried).
    pub fn down(self) -> Result<(), SandboxError> {
        let mut first_error = None;
        for member in &self.members {
            if !self.is_running(member) {
                continue;
            }
            if let Err(e) = self
                .stop(member, "fast")
                .or_else(|_| self.stop(member, "immediate"))
            {
                first_error.get_or_insert(e);
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        fs::remove_dir_all(&self.dir).map_err(SandboxError::io("remove", &self.dir))
    }

    fn stop(&self, member: &Member, mode: &str) -> Result<(), SandboxError> {
        let home = self.dir.join(&member.name);
        let mut pg_ctl = self.bin.command("pg_ctl", &home);
        pg_ctl
            .args(["stop", "--wait", "--silent", "-m", mode, "-D"])
            .arg(home.join("data"));
        bin::run(pg_ctl).map(drop)
    }

    /// The sandbox directory (absolute).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The servers, in the order they were added.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// A URL for `database` on `member`, e.g.
    /// `postgres://postgres@127.0.0.1:54321/forum` (no password needed).
    pub fn url(member: &Member, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}@{LOOPBACK}:{}/{database}",
            member.port
        )
    }

    /// Runs `sql` with `psql` in `database` on `member`, stopping at the
    /// first error; returns the rows unaligned, without the final newline.
    pub fn psql(&self, member: &Member, database: &str, sql: &str) -> Result<String, SandboxError> {
        self.bin.psql(
            &self.dir.join(&member.name),
            LOOPBACK,
            member.port,
            database,
            sql,
        )
    }

    /// Writes the state file (all or nothing, through a temporary file).
    fn save(&self) -> Result<(), SandboxError> {
        let text: String = self
            .members
            .iter()
            .map(|m| format!("{} {}\n", m.name, m.port))
            .collect();
        let path = self.dir.join(STATE_FILE);
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        fs::write(&tmp, text).map_err(SandboxError::io("write", &tmp))?;
        fs::rename(&tmp, &path).map_err(SandboxError::io("write", &path))
    }
}

/// Server names become directory names: plain letters, digits, `_`, `-`.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The settings every sandbox server runs with.
fn settings_text(port: u16) -> String {
    format!(
        "# written by postshard sandbox on every start\n\
         listen_addresses = '{LOOPBACK}'\n\
         port = {port}\n\
         unix_socket_directories = ''\n\
         fsync = off\n\
         synchronous_commit = off\n\
         full_page_writes = off\n\
         shared_buffers = '128MB'\n\
         max_connections = 200\n\
         max_wal_size = '4GB'\n\
         wal_level = logical\n\
         max_replication_slots = 16\n\
         max_wal_senders = 16\n"
    )
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
fn free_port() -> Result<u16, SandboxError> {
    std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(SandboxError::io("find a free port on", LOOPBACK))
}

/// As root, the `postgres` user must be able to search every ancestor of
/// `dir` (others' `x` bit, or owning it).
fn reachable(dir: &Path, user: &RunAs) -> Result<(), SandboxError> {
    let Some(uid) = user.uid() else {
        return Ok(());
    };
    for ancestor in dir.ancestors().skip(1) {
        let meta = fs::metadata(ancestor).map_err(SandboxError::io("inspect", ancestor))?;
        let searchable = meta.mode() & 0o001 != 0 || meta.uid() == uid;
        if !searchable {
            return Err(SandboxError::Unreachable {
                dir: dir.into(),
                blocked: ancestor.into(),
            });
        }
    }
    Ok(())
}

/// Total size of the files under `path` (0 for what cannot be read).
fn dir_size(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    fs::read_dir(path).map_or(0, |entries| {
        entries.flatten().map(|entry| dir_size(&entry.path())).sum()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain() {
        for good in ["s0", "shard_1", "a-b"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "../x", "a b", "s/0"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn settings_name_the_port() {
        assert!(settings_text(5999).contains("port = 5999\n"));
    }
}
