//! Why a simulation cannot run.

use postshard_router::map::MAX_SHARDS;
use postshard_router::MapError;

use super::dist::{MAX_KEYS, MAX_POSTS};

/// An invalid simulation request, or a layout the router rejected.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    /// The distribution name is not one of the known forms.
    #[error(
        "unknown distribution `{0}` (expected sequential, uniform, snowflake, zipf:S or recent:H)"
    )]
    UnknownDistribution(String),
    /// The strategy name is not one of the known forms.
    #[error("unknown strategy `{0}` (expected ring, hashring:V, jump, modulo or range)")]
    UnknownStrategy(String),
    /// A `name:PARAM` form whose parameter is out of range or not a number.
    #[error("`{spec}`: {reason}")]
    Parameter {
        /// The whole form as given, e.g. `zipf:x`.
        spec: String,
        /// What is wrong with the parameter.
        reason: String,
    },
    /// The key count is out of range.
    #[error("{0} keys: simulate from 1 to {MAX_KEYS} keys")]
    Keys(u64),
    /// The post population is out of range.
    #[error("{0} posts: the post population must be from 1 to {MAX_POSTS}")]
    Posts(u64),
    /// The shard count, before or after a change, is out of range.
    #[error("{0} shards: from 1 to {MAX_SHARDS} shards are supported")]
    Shards(usize),
    /// `Change::Add(0)`.
    #[error("adding 0 shards changes nothing: add at least 1")]
    NothingAdded,
    /// A removed shard index that is not among the shards.
    #[error("no shard s{index}: the shards are s0 to s{}", .shards.saturating_sub(1))]
    UnknownShard {
        /// The index asked for.
        index: usize,
        /// How many shards there are.
        shards: usize,
    },
    /// Removing the only shard would leave nowhere for the keys.
    #[error("cannot remove the only shard")]
    LastShard,
    /// The router rejected a ring layout (a planner or layout bug).
    #[error("the ring layout is not a valid shard map")]
    Layout(#[source] MapError),
}
