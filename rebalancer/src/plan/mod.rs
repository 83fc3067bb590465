//! Rebalance plans: which token ranges change owner to add, remove or
//! reweight a shard, or to even out load.
//!
//! [`moves`] holds the core (fewest moves to reach per-shard token targets,
//! applying moves); [`intent`] and [`balance`](mod@balance) turn a request
//! into a [`Plan`]; [`file`](mod@file) reads and writes plan files;
//! [`apply`] applies and reverses plans. [`histogram`] and [`load_file`]
//! describe load over the ring for balancing.
//!
//! Shard indexes in [`Move`]s are positions in the *union* shard list: the
//! map's shards in map order, a shard being removed keeping its place until
//! its tokens have moved away, followed by the shards the plan adds. Plan
//! files name shards instead.

pub mod apply;
pub mod balance;
pub mod file;
pub mod histogram;
pub mod intent;
pub mod load_file;
pub mod moves;

pub use apply::{offline_env, ApplyError};
pub use balance::{balance, BalanceError, DEFAULT_TARGET};
pub use file::{Plan, PlanFileError, PlanShard, PlannedMove};
pub use histogram::{HistogramError, HotToken, TokenHistogram};
pub use intent::{add_shard, remove_shard, reweight, IntentError};
pub use load_file::{LoadFile, LoadFileError};
pub use moves::{
    apply_moves, arcs_of, moved_tokens, moves_between, moves_to_targets, tokens_between, Move,
};

/// A parser's message without the " at line L column C" that serde_json
/// appends; callers report the location apart.
pub(crate) fn without_location(message: &str) -> &str {
    let Some(cut) = message.rfind(" at line ") else {
        return message;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match message[cut + " at line ".len()..].split_once(" column ") {
        Some((line, column)) if digits(line) && digits(column) => &message[..cut],
        _ => message,
    }
}

#[cfg(test)]
mod tests;
