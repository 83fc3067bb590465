//! Several sandbox servers started together.

use std::panic;
use std::thread;

use crate::server::Server;
use crate::template::Template;
use crate::SandboxError;

/// The database each server gets unless [`Options::database`] says otherwise.
const DEFAULT_DATABASE: &str = "forum";

/// What [`Cluster::start_with`] starts.
#[derive(Debug, Clone)]
pub struct Options {
    servers: usize,
    database: String,
    settings: Vec<(String, String)>,
    files: Vec<DataFile>,
}

/// A file written into each server's data directory before it starts.
#[derive(Debug, Clone)]
pub(crate) struct DataFile {
    /// Name inside the data directory.
    pub(crate) name: String,
    pub(crate) contents: Vec<u8>,
    /// Permission bits, e.g. `0o600` (PostgreSQL insists on it for keys).
    pub(crate) mode: u32,
}

impl Options {
    /// `servers` servers, each with an empty database `forum`.
    pub fn new(servers: usize) -> Options {
        Options {
            servers,
            database: DEFAULT_DATABASE.to_owned(),
            settings: Vec::new(),
            files: Vec::new(),
        }
    }

    /// Names the empty database created on each server.
    pub fn database(mut self, name: impl Into<String>) -> Options {
        self.database = name.into();
        self
    }

    /// Adds a server setting (`postgres -c name=value`), overriding the
    /// sandbox's defaults.
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Options {
        self.settings.push((name.into(), value.into()));
        self
    }

    /// Writes `contents` to `name` in each server's data directory before it
    /// starts, with permission bits `mode`, owned by the server's OS user.
    pub fn data_file(
        mut self,
        name: impl Into<String>,
        contents: impl Into<Vec<u8>>,
        mode: u32,
    ) -> Options {
        self.files.push(DataFile {
            name: name.into(),
            contents: contents.into(),
            mode,
        });
        self
    }

    /// Replaces `pg_hba.conf` with `lines` (e.g. `hostssl all all
    /// 127.0.0.1/32 scram-sha-256`). Keep a `trust` line for the superuser
    /// `postgres` over TCP from 127.0.0.1: [`crate::Server::psql`] uses it.
    pub fn hba(self, lines: &str) -> Options {
        self.data_file("pg_hba.conf", lines, 0o600)
    }

    /// Turns TLS on (`ssl=on`) with a PEM certificate (chain) and private
    /// key, written as `server.crt` and `server.key` (mode 0600).
    pub fn tls(self, cert_pem: &str, key_pem: &str) -> Options {
        self.data_file("server.crt", cert_pem, 0o600)
            .data_file("server.key", key_pem, 0o600)
            .setting("ssl", "on")
            .setting("ssl_cert_file", "server.crt")
            .setting("ssl_key_file", "server.key")
    }
}

/// Independent throwaway PostgreSQL servers; dropping the cluster stops them
/// and deletes their directories.
#[derive(Debug)]
pub struct Cluster {
    servers: Vec<Server>,
}

impl Cluster {
    /// Starts `servers` servers, each with an empty database `forum`.
    pub fn start(servers: usize) -> Result<Cluster, SandboxError> {
        Cluster::start_with(&Options::new(servers))
    }

    /// Starts the servers `options` describes, in parallel.
    pub fn start_with(options: &Options) -> Result<Cluster, SandboxError> {
        let template = Template::get(&options.database)?;
        let started: Vec<Result<Server, SandboxError>> = thread::scope(|scope| {
            let starting: Vec<_> = (0..options.servers)
                .map(|_| {
                    scope.spawn(|| {
                        Server::create(
                            &template,
                            &options.database,
                            &options.settings,
                            &options.files,
                        )
                    })
                })
                .collect();
            starting
                .into_iter()
                .map(|thread| {
                    thread
                        .join()
                        .unwrap_or_else(|panic| panic::resume_unwind(panic))
                })
                .collect()
        });
        // On error, the servers that did start are dropped, so stopped.
        let servers = started.into_iter().collect::<Result<_, _>>()?;
        Ok(Cluster { servers })
    }

    /// All servers, in a fixed order.
    pub fn servers(&self) -> &[Server] {
        &self.servers
    }

    /// Server `index`, if there is one.
    pub fn server(&self, index: usize) -> Option<&Server> {
        self.servers.get(index)
    }
}
