//! A strategy laid out over concrete shards: the function from key to shard
//! index, before and after a change of shards.

use hashring::HashRing;
use postshard_router::map::raw::{RawMap, RawShard, RawTable};
use postshard_router::{hashint8extended, ShardMap, Token};

use super::jump::jump_consistent_hash;
use super::{shard_name, Change, SimulateError, Strategy, Workload};
use crate::layout::{balanced_arcs, target_tokens};
use crate::plan::{apply_moves, moves_to_targets};

/// A virtual node of the hash ring: replica `replica` of shard `shard`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct VNode {
    shard: u32,
    replica: u32,
}

/// Where each key goes. Shard indexes are global: added shards follow the
/// original ones, and a removed shard keeps its index but gets no keys.
#[derive(Debug)]
pub(crate) enum Placement {
    /// The router's own lookup on a validated map.
    Ring(ShardMap),
    /// The `hashring` crate's ring of virtual nodes.
    HashRing(HashRing<VNode>),
    /// Jump bucket `b` is shard `slots[b]`.
    Jump(Vec<usize>),
    /// Residue `r` is shard `slots[r]`.
    Modulo(Vec<usize>),
    /// IDs `[i·width, (i+1)·width)` are shard `slots[i]`; the last range is
    /// open-ended and IDs below 0 go to the first.
    Range { width: u64, slots: Vec<usize> },
}

impl Placement {
    /// `strategy` over shards `0..shards`.
    pub(crate) fn new(
        strategy: Strategy,
        shards: usize,
        workload: &Workload,
    ) -> Result<Placement, SimulateError> {
        let all: Vec<usize> = (0..shards).collect();
        Ok(match strategy {
            Strategy::Ring => Placement::Ring(ring_map(&balanced_arcs(&vec![1; shards]), shards)?),
            Strategy::HashRing { vnodes } => Placement::HashRing(hash_ring(&all, vnodes)),
            Strategy::Jump => Placement::Jump(all),
            Strategy::Modulo => Placement::Modulo(all),
            Strategy::Range => range(all, workload),
        })
    }

    /// `strategy` over `shards` shards after `change`, rebalanced the way
    /// that strategy rebalances (see each arm).
    pub(crate) fn changed(
        strategy: Strategy,
        shards: usize,
        change: Change,
        workload: &Workload,
    ) -> Result<Placement, SimulateError> {
        let total = match change {
            Change::Add(m) => shards + m,
            Change::Remove(_) => shards,
        };
        let live: Vec<usize> = match change {
            Change::Add(m) => (0..shards + m).collect(),
            Change::Remove(gone) => (0..shards).filter(|s| *s != gone).collect(),
        };
        Ok(match (strategy, change) {
            // The planner's minimal moves to the balanced targets: new shards
            // appended with an equal share, or the removed shard's target 0.
            (Strategy::Ring, _) => {
                let before = balanced_arcs(&vec![1; shards]);
                let targets = match change {
                    Change::Add(m) => target_tokens(&vec![1; shards + m]),
                    Change::Remove(gone) => {
                        let weights: Vec<u32> = (0..shards).map(|s| u32::from(s != gone)).collect();
                        target_tokens(&weights)
                    }
                };
                let after = apply_moves(&before, &moves_to_targets(&before, &targets));
                Placement::Ring(ring_map(&after, total)?)
            }
            // Consistent hashing: add or drop that shard's virtual nodes.
            (Strategy::HashRing { vnodes }, _) => Placement::HashRing(hash_ring(&live, vnodes)),
            // Jump can only drop its last bucket: the last shard takes over
            // the removed shard's bucket and hands its own keys out.
            (Strategy::Jump, Change::Remove(gone)) => {
                let last = shards - 1;
                Placement::Jump(
                    (0..last)
                        .map(|b| if b == gone { last } else { b })
                        .collect(),
                )
            }
            (Strategy::Jump, Change::Add(_)) => Placement::Jump(live),
            (Strategy::Modulo, _) => Placement::Modulo(live),
            (Strategy::Range, _) => range(live, workload),
        })
    }

    /// The shard index of `key`.
    #[inline]
    pub(crate) fn shard_of(&self, key: i64) -> usize {
        let token = || hashint8extended(key, 0) as u64;
        let slot = |slots: &[usize], i: u64| slots.get(i as usize).copied().unwrap_or(0);
        match self {
            Placement::Ring(map) => map.shard_index_for(key),
            // The ring is never empty: every placement has a shard and every
            // shard at least one virtual node.
            Placement::HashRing(ring) => ring.get(&key).map_or(0, |v| v.shard as usize),
            Placement::Jump(slots) => slot(
                slots,
                u64::from(jump_consistent_hash(token(), slots.len() as u32)),
            ),
            Placement::Modulo(slots) => slot(slots, token() % slots.len().max(1) as u64),
            Placement::Range { width, slots } => {
                let range = key.max(0) as u64 / width;
                slot(slots, range.min(slots.len().saturating_sub(1) as u64))
            }
        }
    }
}

/// Naive ID ranges over `slots`: width ⌈max_id / n⌉.
fn range(slots: Vec<usize>, workload: &Workload) -> Placement {
    let max_id = workload.max_id().max(1) as u64;
    Placement::Range {
        width: max_id.div_ceil(slots.len().max(1) as u64).max(1),
        slots,
    }
}

/// A hash ring with `vnodes` virtual nodes for each of `shards`.
fn hash_ring(shards: &[usize], vnodes: u32) -> HashRing<VNode> {
    let mut ring = HashRing::new();
    ring.batch_add(
        shards
            .iter()
            .flat_map(|s| {
                (0..vnodes).map(move |replica| VNode {
                    shard: *s as u32,
                    replica,
                })
            })
            .collect(),
    );
    ring
}

/// A validated shard map of `shards` shards (`s0`, `s1`, …) over `arcs`, so
/// that the simulation routes with the router's own code.
fn ring_map(arcs: &[(Token, usize)], shards: usize) -> Result<ShardMap, SimulateError> {
    let shards = (0..shards)
        .map(|s| {
            RawShard::new(
                &shard_name(s),
                &format!("postgres://simulated/{}", shard_name(s)),
            )
        })
        .collect();
    let raw = RawMap::new(1, 0, vec![RawTable::new("posts", "id")], shards, arcs);
    ShardMap::from_raw(raw, "simulated ring", &|_| None).map_err(SimulateError::Layout)
}
