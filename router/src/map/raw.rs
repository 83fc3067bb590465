//! The shard map exactly as written in YAML, parsed with unknown fields denied.
//!
//! Numbers are kept as YAML values so that validation, not the parser, judges
//! them; that way one pass reports every bad number with its location.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::HASH_FUNCTION;
use crate::hash::Token;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMap {
    /// Map epoch, bumped by every applied plan.
    pub version: RawValue,
    /// How keys become tokens.
    pub hash: RawHash,
    /// Sharded tables and their key columns.
    pub tables: Vec<RawTable>,
    /// The shards, in the order their indexes follow.
    pub shards: Vec<RawShard>,
    /// Arcs of the ring, in token order.
    pub ring: Vec<RawArc>,
    /// Connection URL of the control store; `${VAR}` expands from the environment.
    #[serde(default)]
    pub control: Option<String>,
}

/// `hash:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHash {
    /// Must be `pg_hashint8extended`.
    pub function: String,
    /// Seed passed to `hashint8extended`.
    pub seed: RawValue,
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
    pub weight: Option<RawValue>,
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
    pub max_size: Option<RawValue>,
    /// How long to wait for a connection, in milliseconds.
    #[serde(default)]
    pub connect_timeout_ms: Option<RawValue>,
}

/// One arc: the shard owns tokens from `from` up to the next arc's `from`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawArc {
    /// First token of the arc.
    pub from: RawValue,
    /// Owner shard name.
    pub shard: String,
}

impl RawMap {
    /// A map at `version` whose ring gives arc `(start, i)` to `shards[i]`;
    /// for maps built in memory (`map init`, the planner, tests), which
    /// [`crate::ShardMap::from_raw`] then validates like a file.
    pub fn new(
        version: u64,
        seed: i64,
        tables: Vec<RawTable>,
        shards: Vec<RawShard>,
        arcs: &[(Token, usize)],
    ) -> RawMap {
        let ring = arcs
            .iter()
            .map(|(from, shard)| RawArc {
                from: RawValue::from(*from),
                shard: shards
                    .get(*shard)
                    .map_or_else(|| format!("#{shard}"), |s| s.name.clone()),
            })
            .collect();
        RawMap {
            version: RawValue::Int(i128::from(version)),
            hash: RawHash {
                function: HASH_FUNCTION.to_string(),
                seed: RawValue::from(seed),
            },
            tables,
            shards,
            ring,
            control: None,
        }
    }
}

impl RawTable {
    /// Table `name` keyed by column `key`.
    pub fn new(name: &str, key: &str) -> RawTable {
        RawTable {
            name: name.to_string(),
            key: key.to_string(),
        }
    }
}

impl RawShard {
    /// Shard `name` at `url`, default weight and pool.
    pub fn new(name: &str, url: &str) -> RawShard {
        RawShard {
            name: name.to_string(),
            url: url.to_string(),
            weight: None,
            pool: None,
        }
    }

    /// The same shard with `weight`.
    pub fn with_weight(mut self, weight: u32) -> RawShard {
        self.weight = Some(RawValue::from(weight));
        self
    }
}

/// A scalar kept as written, so validation can judge it and name it: any
/// integer (even one beyond 64 bits), a float, a string, or another kind.
#[derive(Debug, Clone, PartialEq)]
pub enum RawValue {
    /// An integer, whatever its size (up to 128 bits).
    Int(i128),
    /// A floating-point number.
    Float(f64),
    /// A string or boolean, as text.
    Text(String),
    /// Something else, described: `an empty value`, `a list`, `a mapping`.
    Other(&'static str),
}

impl From<i64> for RawValue {
    fn from(n: i64) -> RawValue {
        RawValue::Int(i128::from(n))
    }
}

impl From<u32> for RawValue {
    fn from(n: u32) -> RawValue {
        RawValue::Int(i128::from(n))
    }
}

impl fmt::Display for RawValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RawValue::Int(n) => write!(f, "`{n}`"),
            RawValue::Float(x) => write!(f, "`{x}`"),
            RawValue::Text(s) => write!(f, "`{s}`"),
            RawValue::Other(what) => f.write_str(what),
        }
    }
}

impl<'de> Deserialize<'de> for RawValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<RawValue, D::Error> {
        deserializer.deserialize_any(RawValueVisitor)
    }
}

struct RawValueVisitor;

impl<'de> Visitor<'de> for RawValueVisitor {
    type Value = RawValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a scalar")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawValue, E> {
        Ok(RawValue::Text(v.to_string()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawValue, E> {
        Ok(RawValue::Int(i128::from(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawValue, E> {
        Ok(RawValue::Int(i128::from(v)))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<RawValue, E> {
        Ok(RawValue::Int(v))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<RawValue, E> {
        Ok(i128::try_from(v).map_or(RawValue::Float(v as f64), RawValue::Int))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawValue, E> {
        Ok(RawValue::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<RawValue, E> {
        Ok(RawValue::Text(v.to_string()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<RawValue, E> {
        Ok(RawValue::Other("an empty value"))
    }
    fn visit_none<E: de::Error>(self) -> Result<RawValue, E> {
        Ok(RawValue::Other("an empty value"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawValue, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(RawValue::Other("a list"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawValue, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(RawValue::Other("a mapping"))
    }
}
