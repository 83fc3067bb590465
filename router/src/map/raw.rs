//! The shard map exactly as written in YAML, parsed with unknown fields denied.
//!
//! Numbers are kept as YAML values so that validation, not the parser, judges
//! them; that way one pass reports every bad number with its location.

use serde::Deserialize;
use serde_yaml::Value;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMap {
    /// Map epoch, bumped by every applied plan.
    pub version: Value,
    /// How keys become tokens.
    pub hash: RawHash,
    /// Sharded tables and their key columns.
    pub tables: Vec<RawTable>,
    /// The shards, in the order their indexes follow.
    pub shards: Vec<RawShard>,
    /// Arcs of the ring, in token order.
    pub ring: Vec<RawArc>,
}

/// `hash:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHash {
    /// Must be `pg_hashint8extended`.
    pub function: String,
    /// Seed passed to `hashint8extended`.
    pub seed: Value,
}

/// One sharded table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTable {
    /// Table name, optionally schema-qualified.
    pub name: String,
    /// The bigint column whose value is the sharding key.
    pub key: String,
}

/// One shard.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShard {
    /// Unique shard name.
    pub name: String,
    /// Connection URL; `${VAR}` expands from the environment.
    pub url: String,
    /// Relative capacity; defaults to 1.
    #[serde(default)]
    pub weight: Option<Value>,
    /// Connection pool settings.
    #[serde(default)]
    pub pool: Option<RawPool>,
}

/// `pool:` settings of a shard.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    /// Most connections the router opens to this shard.
    #[serde(default)]
    pub max_size: Option<Value>,
    /// How long to wait for a connection, in milliseconds.
    #[serde(default)]
    pub connect_timeout_ms: Option<Value>,
}

/// One arc: the shard owns tokens from `from` up to the next arc's `from`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawArc {
    /// First token of the arc.
    pub from: Value,
    /// Owner shard name.
    pub shard: String,
}
