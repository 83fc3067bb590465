//! Throwaway local PostgreSQL servers for tests and the local sandbox.
//!
//! [`Cluster::start`] starts independent servers on free loopback ports, each
//! in its own temporary directory with an empty database (`forum` unless
//! [`Options::database`] names another), and stops and deletes them on drop.
//! Servers trade durability for speed (`fsync=off` and friends).
//!
//! The PostgreSQL programs come from `$POSTSHARD_PG_BINDIR`, `pg_config
//! --bindir` or the newest `/usr/lib/postgresql/*/bin`. PostgreSQL refuses to
//! run as root, so as root they run as the OS user `postgres`. Linux only.
//!
//! [`Sandbox`] keeps servers running after the process exits, under one
//! directory, until [`Sandbox::down`] (`postshard sandbox up/status/down`).
//!
//! ```no_run
//! let cluster = postshard_sandbox::Cluster::start(3)?;
//! for server in cluster.servers() {
//!     assert_eq!(server.psql("SELECT 1")?, "1");
//!     println!("{}", server.url());
//! }
//! # Ok::<(), postshard_sandbox::SandboxError>(())
//! ```

mod bin;
mod cluster;
mod error;
mod persistent;
mod postmaster;
mod scratch;
mod server;
mod template;
mod user;

pub use cluster::{Cluster, Options};
pub use error::SandboxError;
pub use persistent::{Member, MemberStatus, Sandbox, UpOutcome, STATE_FILE};
pub use server::Server;
