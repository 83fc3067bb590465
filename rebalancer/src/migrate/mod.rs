//! Applying a plan to a live cluster: `postshard apply`, `resume`, `abort`
//! and `status`.
//!
//! A migration is a fixed sequence of steps ([`steps`]), each journaled in
//! the control store *before* it is done and each idempotent, so that
//! `resume` after a crash redoes the last journaled step and continues:
//!
//! 1. `prepared`: the shards of the resulting map get the fence schema,
//!    triggers and any sharded table they lack (as `init` does); a shard the
//!    plan adds is seeded owning nothing at the live epoch.
//! 2. per move: `fenced` (the range is fenced on the source, older writers
//!    waited for), `copied` (binary COPY source → target), `verified` (row
//!    count and checksum per table, both sides).
//! 3. `flipped`: every target also owns its ranges; the control store flips
//!    to the plan's map (epoch + 1, NOTIFY); every shard owns exactly its
//!    ranges of the new map. One flip per plan.
//! 4. `routers_acked`: every live router routes by the new epoch or its
//!    lease lapsed.
//! 5. per move: `cleaned`: the range's rows are deleted from the source in
//!    batches, then its fence is lowered (the source no longer owns it, so
//!    writes there are still refused).
//!
//! `abort` undoes a migration whose flip has not committed; see
//! [`blocking::abort`]. ARCHITECTURE.md ("Moves") argues why every step,
//! and a crash at any of them, keeps each acknowledged write on exactly one
//! owner.

pub mod blocking;
pub mod failpoint;
pub mod status;

use std::time::Duration;

use postshard_router::{ConnUrl, ConnectError, ShardMap};

use crate::control::{ControlError, Phase};
use crate::fence::{self, FenceError};
use crate::init::{InitError, InitOptions};
use crate::plan::{ApplyError, Plan, PlanFileError};
use crate::range::{BadRange, ChecksumError, CopyError, DeleteError};

pub use blocking::{abort, apply, resume, Event};
pub use status::{status, Status};

/// The only mode this module runs.
pub const BLOCKING: &str = "blocking";

/// A failure of apply, resume or abort. Variants before
/// [`MigrateError::Connect`] are refusals of bad input, made before
/// anything changed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The map names no control store.
    #[error("the map has no `control:` URL; moves need a control store (see `postshard init`)")]
    NoControl,
    /// The plan was made for another epoch.
    #[error(
        "the plan was made for epoch {plan}, but the live epoch is {live}; \
         make a new plan from the live map"
    )]
    StaleEpoch {
        /// The plan's `base_version`.
        plan: u64,
        /// The live epoch.
        live: u64,
    },
    /// The plan does not apply to the live map (unknown shard, bad ranges…).
    #[error("the plan does not apply to the live map: {0}")]
    Plan(#[from] ApplyError),
    /// The shards' schemas do not allow the move (from init's inspection).
    #[error(transparent)]
    Refused(InitError),
    /// A shard of the live map has no fence state.
    #[error("shard {shard}: {source}")]
    NotInstalled {
        /// The shard.
        shard: String,
        /// Why.
        source: FenceError,
    },
    /// Only blocking moves are implemented.
    #[error("mode `{mode}` is not supported; use --mode blocking")]
    Mode {
        /// The mode asked for.
        mode: String,
    },
    /// Abort was asked after the flip committed.
    #[error(
        "migration {id} already flipped ownership (live epoch {live}); it cannot be \
         aborted: run `postshard resume` to finish it (a plan's reverse moves the ranges back)"
    )]
    AlreadyFlipped {
        /// The migration.
        id: i64,
        /// The live epoch.
        live: u64,
    },
    /// The migration is not active.
    #[error("migration {id} is {state}, not active; nothing to {what}")]
    NotActive {
        /// The migration.
        id: i64,
        /// Its state.
        state: &'static str,
        /// `resume` or `abort`.
        what: &'static str,
    },
    /// No migration is active.
    #[error("no migration is active; nothing to resume")]
    NothingActive,
    /// Another migration is active.
    #[error("migration {id} is active; resume or abort it first (`postshard status`)")]
    Active {
        /// The active migration.
        id: i64,
    },
    /// Another process is running this migration now.
    #[error(
        "migration {id} is being run by another postshard process; wait for it or stop it first"
    )]
    Busy {
        /// The migration.
        id: i64,
    },
    /// Abort found rows written to a target after it was given ownership
    /// (the flip step began, then stopped): deleting them would lose them.
    #[error(
        "move {index}: table {table}: target {target} holds rows that differ from the source \
         after ownership was granted; refusing to abort (run `postshard resume`)"
    )]
    TargetWritten {
        /// The move.
        index: u32,
        /// The table.
        table: String,
        /// The target shard.
        target: String,
    },
    /// A connection failed.
    #[error("{what}: {source}")]
    Connect {
        /// `control store` or `shard NAME`.
        what: String,
        /// Why.
        source: ConnectError,
    },
    /// The control store failed.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// Preparing a shard failed.
    #[error(transparent)]
    Init(InitError),
    /// A fence could not be raised, lowered or set.
    #[error("shard {shard}: {source}")]
    Fence {
        /// The shard.
        shard: String,
        /// Why.
        source: FenceError,
    },
    /// Copying a range failed (the target rolled back).
    #[error("move {index}: {source}")]
    Copy {
        /// The move.
        index: u32,
        /// Why.
        source: CopyError,
    },
    /// Checksumming a range failed.
    #[error("move {index}: {source}")]
    Checksum {
        /// The move.
        index: u32,
        /// Why.
        source: ChecksumError,
    },
    /// Source and target disagree after the copy; nothing was flipped.
    #[error(
        "move {index}: table {table}: source {source_shard} has {source_rows} row(s) \
         (checksum {source_sum}), target {target_shard} has {target_rows} (checksum {target_sum}); \
         the move stays fenced: `postshard abort` or `postshard resume` (which copies again)"
    )]
    Mismatch {
        /// The move.
        index: u32,
        /// The table.
        table: String,
        /// Source shard.
        source_shard: String,
        /// Target shard.
        target_shard: String,
        /// Rows on the source.
        source_rows: u64,
        /// Rows on the target.
        target_rows: u64,
        /// Source checksum.
        source_sum: i128,
        /// Target checksum.
        target_sum: i128,
    },
    /// Deleting a range failed.
    #[error("move {index}: {source}")]
    Delete {
        /// The move.
        index: u32,
        /// Why.
        source: DeleteError,
    },
    /// A move's range is not a part of the ring.
    #[error("move {index}: {source}")]
    Range {
        /// The move.
        index: u32,
        /// Why.
        source: BadRange,
    },
    /// The journal holds something this version cannot continue.
    #[error("migration {id}: {what}")]
    Journal {
        /// The migration.
        id: i64,
        /// What is wrong.
        what: String,
    },
    /// The stored plan could not be read back.
    #[error("migration {id}: stored plan: {source}")]
    StoredPlan {
        /// The migration.
        id: i64,
        /// Why.
        source: PlanFileError,
    },
}

impl MigrateError {
    /// Whether the error is a refusal of bad input (exit 2), made before
    /// anything changed.
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            MigrateError::NoControl
                | MigrateError::StaleEpoch { .. }
                | MigrateError::Plan(_)
                | MigrateError::Refused(_)
                | MigrateError::NotInstalled { .. }
                | MigrateError::Mode { .. }
                | MigrateError::AlreadyFlipped { .. }
                | MigrateError::NotActive { .. }
        )
    }
}

/// Timeouts and sizes of a migration.
#[derive(Debug, Clone)]
pub struct MoveOptions {
    /// How long raising a fence waits for older write transactions.
    pub fence_wait: Duration,
    /// How long to wait for routers to acknowledge the new epoch.
    pub ack_timeout: Duration,
    /// Extra time after a router's lease lapsed before it no longer counts
    /// (covers statements it started just before).
    pub ack_margin: Duration,
    /// How often acknowledgements are polled.
    pub ack_poll: Duration,
    /// Rows per delete transaction on the source.
    pub delete_batch: u32,
    /// Connection timeout, and how `pg_dump` is found.
    pub init: InitOptions,
}

impl Default for MoveOptions {
    fn default() -> MoveOptions {
        MoveOptions {
            fence_wait: Duration::from_secs(60),
            ack_timeout: Duration::from_secs(120),
            ack_margin: Duration::from_secs(2),
            ack_poll: Duration::from_millis(50),
            delete_batch: crate::range::delete::DEFAULT_BATCH_ROWS,
            init: InitOptions::default(),
        }
    }
}

/// One step of a migration: a phase, of one move or migration-wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepId {
    /// The plan's move; `None` for migration-wide steps.
    pub move_index: Option<u32>,
    /// The phase.
    pub phase: Phase,
}

/// Every step of a blocking migration of `moves` moves, in order (the
/// `planned` step that opens the journal excluded).
pub fn steps(moves: u32) -> Vec<StepId> {
    let one = |move_index, phase| StepId { move_index, phase };
    let mut out = vec![one(None, Phase::Prepared)];
    for i in 0..moves {
        for phase in [Phase::Fenced, Phase::Copied, Phase::Verified] {
            out.push(one(Some(i), phase));
        }
    }
    out.push(one(None, Phase::Flipped));
    out.push(one(None, Phase::RoutersAcked));
    out.extend((0..moves).map(|i| one(Some(i), Phase::Cleaned)));
    out
}

/// The ranges shard `name` owns in `map` (none when it is not in `map`).
pub(crate) fn owned_by(map: &ShardMap, name: &str) -> Vec<fence::TokenRange> {
    map.shard_index(name)
        .map(|i| fence::owned_ranges(map, i))
        .unwrap_or_default()
}

/// `a ∪ b`, sorted, overlapping and adjacent ranges merged.
pub(crate) fn union(a: &[fence::TokenRange], b: &[fence::TokenRange]) -> Vec<fence::TokenRange> {
    let mut all: Vec<fence::TokenRange> = a.iter().chain(b).copied().collect();
    all.sort();
    let mut out: Vec<fence::TokenRange> = Vec::with_capacity(all.len());
    for r in all {
        match out.last_mut() {
            Some(prev) if i128::from(r.from) <= i128::from(prev.last) + 1 => {
                prev.last = prev.last.max(r.last);
            }
            _ => out.push(r),
        }
    }
    out
}

/// The shard names of `old` then those `new` adds, each once.
pub(crate) fn all_shards(old: &ShardMap, new: &ShardMap) -> Vec<(String, ConnUrl)> {
    let mut out: Vec<(String, ConnUrl)> = old
        .shards()
        .iter()
        .map(|s| (s.name.clone(), s.url.clone()))
        .collect();
    for s in new.shards() {
        if !out.iter().any(|(n, _)| *n == s.name) {
            out.push((s.name.clone(), s.url.clone()));
        }
    }
    out
}

/// Parses a stored plan.
pub(crate) fn stored_plan(id: i64, text: &str) -> Result<Plan, MigrateError> {
    Plan::from_yaml_str(text).map_err(|source| MigrateError::StoredPlan { id, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_fence_copy_verify_each_move_then_flip_once_then_clean() {
        let names: Vec<String> = steps(2)
            .iter()
            .map(|s| match s.move_index {
                Some(i) => format!("{}@{i}", s.phase),
                None => s.phase.to_string(),
            })
            .collect();
        assert_eq!(
            names,
            [
                "prepared",
                "fenced@0",
                "copied@0",
                "verified@0",
                "fenced@1",
                "copied@1",
                "verified@1",
                "flipped",
                "routers_acked",
                "cleaned@0",
                "cleaned@1"
            ]
        );
    }

    #[test]
    fn union_merges_overlapping_and_adjacent_ranges() {
        let r = |from, last| fence::TokenRange { from, last };
        assert_eq!(
            union(
                &[r(10, 19), r(40, 49)],
                &[r(20, 29), r(45, 60), r(100, 100)]
            ),
            vec![r(10, 29), r(40, 60), r(100, 100)]
        );
        assert_eq!(
            union(&[r(i64::MIN, -1)], &[r(0, i64::MAX)]),
            vec![r(i64::MIN, i64::MAX)]
        );
        assert_eq!(union(&[], &[]), vec![]);
    }
}
