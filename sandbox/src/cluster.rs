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
}

impl Options {
    /// `servers` servers, each with an empty database `forum`.
    pub fn new(servers: usize) -> Options {
        Options {
            servers,
            database: DEFAULT_DATABASE.to_owned(),
            settings: Vec::new(),
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
                    scope.spawn(|| Server::create(&template, &options.database, &options.settings))
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
