//! One sandbox server: its directory, port and `postgres` process.

use std::fs;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tempfile::TempDir;

use crate::bin::{Bin, SUPERUSER};
use crate::cluster::DataFile;
use crate::postmaster::{Postmaster, StopMode};
use crate::template::Template;
use crate::SandboxError;

/// The address servers listen on.
const LOOPBACK: &str = "127.0.0.1";

/// How many ports a new server tries before giving up, when another process
/// takes the free port it found before it can listen on it.
const PORT_ATTEMPTS: usize = 20;

/// A throwaway PostgreSQL server on a loopback port, with trust
/// authentication for the superuser `postgres`.
///
/// Dropping it stops the server (immediate mode) and deletes its directory.
#[derive(Debug)]
pub struct Server {
    postmaster: Mutex<Option<Postmaster>>,
    port: u16,
    database: String,
    settings: Vec<(String, String)>,
    bin: Bin,
    dir: TempDir,
}

impl Server {
    /// Copies `template` into a new directory, writes `files` into its data
    /// directory and starts a server on it on a free port, with `settings`
    /// added.
    pub(crate) fn create(
        template: &Template,
        database: &str,
        settings: &[(String, String)],
        files: &[DataFile],
    ) -> Result<Server, SandboxError> {
        let bin = template.bin().clone();
        let dir = crate::scratch::create(&bin)?;
        template.copy_to(dir.path())?;
        for file in files {
            let path = dir.path().join("data").join(&file.name);
            fs::write(&path, &file.contents).map_err(SandboxError::io("write", &path))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(file.mode))
                .map_err(SandboxError::io("set permissions of", &path))?;
            bin.user().own(&path)?;
        }
        let mut attempt = 1;
        let (postmaster, port) = loop {
            let port = free_port()?;
            match Postmaster::start(&bin, dir.path(), LOOPBACK, port, settings) {
                Ok(postmaster) => break (postmaster, port),
                Err(err) if err.is_port_in_use() && attempt < PORT_ATTEMPTS => attempt += 1,
                Err(err) => return Err(err),
            }
        };
        Ok(Server {
            postmaster: Mutex::new(Some(postmaster)),
            port,
            database: database.to_owned(),
            settings: settings.to_vec(),
            bin,
            dir,
        })
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's directory: the data directory `data`, the log file
    /// `postgres.log` and the Unix socket.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A connection URL for the sandbox database, e.g.
    /// `postgres://postgres@127.0.0.1:54321/forum`; no password needed.
    pub fn url(&self) -> String {
        self.url_for(&self.database)
    }

    /// A connection URL for database `database` on this server.
    pub fn url_for(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}@{LOOPBACK}:{}/{}",
            self.port,
            percent_encode(database)
        )
    }

    /// Stops the server (fast shutdown), keeping its data; does nothing if it
    /// is not running.
    pub fn stop(&self) -> Result<(), SandboxError> {
        let mut postmaster = self.postmaster();
        match postmaster.take() {
            Some(mut running) => running.stop(StopMode::Fast),
            None => Ok(()),
        }
    }

    /// Starts the server again on the same port after [`Server::stop`] (or a
    /// crash); does nothing if it is running.
    pub fn start(&self) -> Result<(), SandboxError> {
        let mut postmaster = self.postmaster();
        if postmaster.as_mut().is_some_and(Postmaster::is_running) {
            return Ok(());
        }
        // Reap a crashed process before starting its successor.
        *postmaster = None;
        *postmaster = Some(Postmaster::start(
            &self.bin,
            self.dir.path(),
            LOOPBACK,
            self.port,
            &self.settings,
        )?);
        Ok(())
    }

    /// Whether the server process is running.
    pub fn is_running(&self) -> bool {
        self.postmaster()
            .as_mut()
            .is_some_and(Postmaster::is_running)
    }

    /// Runs `sql` with `psql` over TCP in the sandbox database, stopping at
    /// the first error; returns the rows unaligned (`|` between columns, one
    /// row a line) without the final newline.
    pub fn psql(&self, sql: &str) -> Result<String, SandboxError> {
        self.bin
            .psql(self.dir.path(), LOOPBACK, self.port, &self.database, sql)
    }

    /// The process slot; usable even if a thread panicked holding it.
    fn postmaster(&self) -> MutexGuard<'_, Option<Postmaster>> {
        self.postmaster
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Stop the server (dropping a Postmaster does) before `dir` is removed.
        self.postmaster
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
fn free_port() -> Result<u16, SandboxError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(SandboxError::io("find a free port on", LOOPBACK))
}

/// `text` with every byte but ASCII letters, digits and `-._~` as `%XX`,
/// for a URL path.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::percent_encode;

    #[test]
    fn percent_encode_keeps_unreserved_and_escapes_the_rest() {
        assert_eq!(percent_encode("forum_2-a.b~"), "forum_2-a.b~");
        assert_eq!(percent_encode("my db/é"), "my%20db%2F%C3%A9");
    }
}
