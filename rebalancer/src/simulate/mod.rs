//! The skew simulator: streams keys through a placement strategy and reports
//! how evenly they spread over shards, and how many change shard when shards
//! are added or removed, compared with the least any strategy must move.
//!
//! ```
//! use postshard_rebalancer::simulate::{simulate, Change, Distribution, Strategy, Workload};
//!
//! let workload = Workload::new(Distribution::Sequential, 100_000, 1, 0)?;
//! let outcome = simulate(&workload, Strategy::Ring, 16, Some(Change::Add(1)))?;
//! assert!(outcome.before.skew.peak_to_mean < 1.1);
//! # Ok::<(), postshard_rebalancer::simulate::SimulateError>(())
//! ```

mod alias;
mod dist;
mod error;
mod jump;
mod placement;
pub mod plot;
mod rng;
mod strategy;

pub use dist::{Distribution, Keys, Workload, MAX_KEYS, MAX_POSTS};
pub use error::SimulateError;
pub use jump::jump_consistent_hash;
pub use strategy::{Strategy, MAX_VNODES};

use postshard_router::map::MAX_SHARDS;

use crate::skew::Skew;
use placement::Placement;

/// A change of the shard set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Add this many shards, numbered after the existing ones.
    Add(usize),
    /// Remove the shard with this index.
    Remove(usize),
}

/// Keys one shard received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardLoad {
    /// Shard index (shard `s{index}`).
    pub shard: usize,
    /// Keys placed on it.
    pub keys: u64,
}

/// Keys per shard and their skew.
#[derive(Debug, Clone, PartialEq)]
pub struct Loads {
    /// One entry per shard in index order (a removed shard is left out).
    pub shards: Vec<ShardLoad>,
    /// Skew of the loads; its `hottest` is a position in `shards`.
    pub skew: Skew,
}

impl Loads {
    fn new(shards: Vec<ShardLoad>) -> Result<Loads, SimulateError> {
        let keys: Vec<f64> = shards.iter().map(|s| s.keys as f64).collect();
        let skew = Skew::of(&keys, None).ok_or(SimulateError::Keys(0))?;
        Ok(Loads { shards, skew })
    }

    /// Index of the most loaded shard.
    pub fn hottest(&self) -> usize {
        self.shards.get(self.skew.hottest).map_or(0, |s| s.shard)
    }
}

/// What a change of shards did.
#[derive(Debug, Clone, PartialEq)]
pub struct Rebalance {
    /// The change.
    pub change: Change,
    /// Keys per shard afterwards.
    pub after: Loads,
    /// Keys whose shard changed.
    pub moved: u64,
    /// `moved` over all keys.
    pub moved_fraction: f64,
    /// The least fraction any strategy must move: M/(N+M) when adding M
    /// shards to N, the removed shard's share when removing one.
    pub optimal_moved_fraction: f64,
}

/// Result of one simulation.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The strategy simulated.
    pub strategy: Strategy,
    /// Keys per shard before any change.
    pub before: Loads,
    /// The change of shards, when one was simulated.
    pub rebalance: Option<Rebalance>,
}

/// The name of shard `index`: `s0`, `s1`, ….
pub fn shard_name(index: usize) -> String {
    format!("s{index}")
}

/// The index of the shard called `name` among `shards` shards.
pub fn shard_index(name: &str, shards: usize) -> Option<usize> {
    let index: usize = name.strip_prefix('s')?.parse().ok()?;
    (index < shards && shard_name(index) == name).then_some(index)
}

/// Places every key of `workload` on `shards` shards with `strategy` and,
/// with a `change`, places each key again after it and counts those that
/// moved.
pub fn simulate(
    workload: &Workload,
    strategy: Strategy,
    shards: usize,
    change: Option<Change>,
) -> Result<Outcome, SimulateError> {
    if !(1..=MAX_SHARDS).contains(&shards) {
        return Err(SimulateError::Shards(shards));
    }
    let total = match change {
        None => shards,
        Some(Change::Add(0)) => return Err(SimulateError::NothingAdded),
        Some(Change::Add(m)) if shards.saturating_add(m) > MAX_SHARDS => {
            return Err(SimulateError::Shards(shards.saturating_add(m)))
        }
        Some(Change::Add(m)) => shards + m,
        Some(Change::Remove(index)) if index >= shards => {
            return Err(SimulateError::UnknownShard { index, shards })
        }
        Some(Change::Remove(_)) if shards == 1 => return Err(SimulateError::LastShard),
        Some(Change::Remove(_)) => shards,
    };
    let before = Placement::new(strategy, shards, workload)?;
    let mut before_keys = vec![0u64; shards];
    let Some(change) = change else {
        for key in workload.keys() {
            count(&mut before_keys, before.shard_of(key));
        }
        return Ok(Outcome {
            strategy,
            before: Loads::new(loads(before_keys, None))?,
            rebalance: None,
        });
    };
    let after = Placement::changed(strategy, shards, change, workload)?;
    let mut after_keys = vec![0u64; total];
    let mut moved = 0u64;
    for key in workload.keys() {
        let (from, to) = (before.shard_of(key), after.shard_of(key));
        count(&mut before_keys, from);
        count(&mut after_keys, to);
        moved += u64::from(from != to);
    }
    let keys = workload.key_count() as f64;
    let (removed, optimal) = match change {
        Change::Add(m) => (None, m as f64 / total as f64),
        Change::Remove(gone) => (
            Some(gone),
            before_keys.get(gone).copied().unwrap_or(0) as f64 / keys,
        ),
    };
    Ok(Outcome {
        strategy,
        before: Loads::new(loads(before_keys, None))?,
        rebalance: Some(Rebalance {
            change,
            after: Loads::new(loads(after_keys, removed))?,
            moved,
            moved_fraction: moved as f64 / keys,
            optimal_moved_fraction: optimal,
        }),
    })
}

/// One more key on `shard`.
#[inline]
fn count(keys: &mut [u64], shard: usize) {
    if let Some(slot) = keys.get_mut(shard) {
        *slot += 1;
    }
}

/// Per-shard loads, leaving out the `removed` shard.
fn loads(keys: Vec<u64>, removed: Option<usize>) -> Vec<ShardLoad> {
    keys.into_iter()
        .enumerate()
        .filter(|(shard, _)| Some(*shard) != removed)
        .map(|(shard, keys)| ShardLoad { shard, keys })
        .collect()
}

#[cfg(test)]
mod tests;
