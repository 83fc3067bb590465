//! The shard map: which tables are sharded, which shards exist, and which
//! shard owns each arc of the token ring.
//!
//! A map is loaded in two steps: the YAML is parsed ([`yaml`]) into
//! [`raw::RawMap`] with unknown fields denied, then validated into a
//! [`ShardMap`] in one pass that reports every problem with its line and
//! column. A validated map cannot fail to route.

mod emit;
mod error;
mod locate;
pub mod raw;
#[cfg(test)]
mod style_tests;
mod validate;
pub mod yaml;

use std::path::Path;
use std::time::Duration;

pub use error::{MapError, Problem};
pub use validate::{MAX_SHARDS, MAX_WEIGHT};
pub use yaml::Location;

use crate::hash::{hashint8extended, Token};
use crate::ring::{Ring, TOKEN_SPACE};
use crate::url::ConnUrl;
use raw::RawMap;

/// The one supported hash function, as named in the map.
pub const HASH_FUNCTION: &str = "pg_hashint8extended";

/// A validated shard map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMap {
    version: u64,
    seed: i64,
    tables: Vec<Table>,
    shards: Vec<Shard>,
    ring: Ring,
    control: Option<ConnUrl>,
}

/// A sharded table: rows with the same key value live on the same shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Table name, optionally schema-qualified; a safe SQL identifier.
    pub name: String,
    /// The bigint column holding the sharding key; a safe SQL identifier.
    pub key: String,
}

impl Table {
    /// The table name quoted for SQL (`"schema"."table"`), safe to splice
    /// into a statement even when it is a reserved word such as `order`.
    pub fn sql_name(&self) -> String {
        self.name
            .split('.')
            .map(|part| format!("\"{part}\""))
            .collect::<Vec<_>>()
            .join(".")
    }

    /// The key column quoted for SQL.
    pub fn sql_key(&self) -> String {
        format!("\"{}\"", self.key)
    }
}

/// One shard: a PostgreSQL database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    /// Unique name.
    pub name: String,
    /// Connection URL (redacted when shown).
    pub url: ConnUrl,
    /// Relative capacity.
    pub weight: u32,
    /// Connection pool settings.
    pub pool: PoolSettings,
}

/// How the router pools connections to one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// Most open connections.
    pub max_size: u32,
    /// How long to wait for a connection before failing.
    pub connect_timeout: Duration,
}

impl ShardMap {
    /// Reads and validates the map file at `path` (UTF-8, or UTF-16 with a
    /// byte-order mark: see [`yaml::decode`]).
    pub fn from_path(path: impl AsRef<Path>) -> Result<ShardMap, MapError> {
        Self::from_path_with_env(path, &env_var)
    }

    /// [`ShardMap::from_path`], resolving `${VAR}` with `env` instead of the
    /// process environment.
    pub fn from_path_with_env(
        path: impl AsRef<Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ShardMap, MapError> {
        let (origin, text) = Self::read_text(path.as_ref())?;
        Self::parse(&text, &origin, env)
    }

    /// The text of the map file at `path` and its origin for messages: a
    /// UTF-8 or UTF-16 byte-order mark is dropped, UTF-16 decoded.
    ///
    /// Errors: [`MapError::Read`] when the file cannot be read,
    /// [`MapError::Invalid`] naming the first byte that is not text.
    pub fn read_text(path: &Path) -> Result<(String, String), MapError> {
        let origin = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| MapError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let text = yaml::decode(&bytes).map_err(|e| MapError::Invalid {
            origin: origin.clone(),
            problems: vec![Problem {
                path: e.path,
                location: e.location,
                message: e.message,
            }],
        })?;
        Ok((origin, text))
    }

    /// Validates a map held in memory; problems are reported against `<string>`.
    pub fn from_yaml_str(text: &str) -> Result<ShardMap, MapError> {
        Self::parse(text, "<string>", &env_var)
    }

    /// Validates `text`, naming `origin` in problems and resolving `${VAR}`
    /// with `env` instead of the process environment.
    pub fn parse(
        text: &str,
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ShardMap, MapError> {
        let invalid = |problems| MapError::Invalid {
            origin: origin.to_string(),
            problems,
        };
        let raw: RawMap = yaml::from_str(text).map_err(|e| {
            invalid(vec![Problem {
                path: e.path,
                location: e.location,
                message: e.message,
            }])
        })?;
        validate::validate(raw, &locate::Locator::new(text), env).map_err(invalid)
    }

    /// Validates a map built in memory (by `map init` or the planner),
    /// resolving `${VAR}` with `env`.
    pub fn from_raw(
        raw: RawMap,
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ShardMap, MapError> {
        validate::validate(raw, &locate::Locator::default(), env).map_err(|problems| {
            MapError::Invalid {
                origin: origin.to_string(),
                problems,
            }
        })
    }

    /// The map in the documented YAML format, `${VAR}` references intact.
    pub fn to_yaml(&self) -> String {
        emit::to_yaml(self)
    }

    /// The map epoch.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The `hashint8extended` seed.
    pub fn seed(&self) -> i64 {
        self.seed
    }

    /// The sharded tables.
    pub fn tables(&self) -> &[Table] {
        &self.tables
    }

    /// The shards; a shard's index in this slice is its id in the ring.
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// The ring.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// The control store's URL (`control:`), when the map names one: the
    /// live map, migration journal and router registrations live there.
    pub fn control(&self) -> Option<&ConnUrl> {
        self.control.as_ref()
    }

    /// Index of the shard called `name`.
    pub fn shard_index(&self, name: &str) -> Option<usize> {
        self.shards.iter().position(|s| s.name == name)
    }

    /// The token of `key`: PostgreSQL's `hashint8extended(key, seed)`.
    #[inline]
    pub fn token(&self, key: i64) -> Token {
        hashint8extended(key, self.seed)
    }

    /// Index of the shard owning `key`.
    #[inline]
    pub fn shard_index_for(&self, key: i64) -> usize {
        self.ring.owner(self.token(key))
    }

    /// The shard owning `key`.
    #[inline]
    // In bounds by construction: validation builds the ring only from arcs
    // whose owner indexes `shards`, and a map exists only after validation.
    #[allow(clippy::indexing_slicing)]
    pub fn shard_for(&self, key: i64) -> &Shard {
        &self.shards[self.shard_index_for(key)]
    }

    /// Each shard's share of the token space, from 0 to 1.
    pub fn shares(&self) -> Vec<f64> {
        self.ring
            .owned_tokens(self.shards.len())
            .into_iter()
            .map(|t| t as f64 / TOKEN_SPACE as f64)
            .collect()
    }
}

/// Resolves `${VAR}` from the process environment.
pub fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}
