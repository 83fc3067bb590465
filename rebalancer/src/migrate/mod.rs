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
//! In [`Mode::Online`] (the default) writes continue while the range is
//! copied: per move `capturing` (change capture on the source, see
//! [`crate::capture`]) and `copied` (backfill from one snapshot taken after
//! capture is on), then per move `caught_up` (captured changes replayed
//! until the backlog is small; the range less the keys still changing
//! compared at one source snapshot, the cut; replayed again), then `fenced`
//! (the first such step, for every move at once: the backlog replayed down
//! to a handful, the cut made again, the fences raised), then `verified`
//! (the first, for every move at once: the last backlog replayed under the
//! fence, then only the keys changed since the cut compared, or the whole
//! range when the cut was made by another process);
//! the flip, acknowledgements and clean-up (which also drops capture) are
//! the blocking mode's. See [`steps`] and [`online`].
//!
//! `abort` undoes a migration whose flip has not committed; see
//! [`run::abort`]. ARCHITECTURE.md ("Moves") argues why every step,
//! and a crash at any of them, keeps each acknowledged write on exactly one
//! owner.

pub mod failpoint;
pub mod online;
mod progress_log;
pub mod run;
mod sessions;
pub mod status;

use std::time::Duration;

use postshard_router::{ConnUrl, ConnectError, ShardMap};

use serde_json::Value;
use tokio::sync::watch;

use crate::capture::CaptureError;
use crate::control::{ControlError, Phase};
use crate::fence::{self, FenceError};
use crate::init::{InitError, InitOptions};
use crate::plan::{ApplyError, Plan, PlanFileError};
use crate::range::{BadRange, ChecksumError, CopyError, DeleteError};
use crate::token_range::TokenRange;

pub use run::{abort, apply, resume};
pub use status::{status, Status};

/// How a migration moves its ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Writes to a moving range are refused (and retried by routers) while
    /// it is copied, verified and flipped.
    Blocking,
    /// Writes continue during the copy; they are refused only from the
    /// final fence to the flip.
    Online,
}

impl Mode {
    /// The name stored in the journal and taken by `--mode`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Blocking => "blocking",
            Mode::Online => "online",
        }
    }

    /// The mode named `name`.
    ///
    /// Errors: [`MigrateError::Mode`] for any other name.
    pub fn parse(name: &str) -> Result<Mode, MigrateError> {
        match name {
            "blocking" => Ok(Mode::Blocking),
            "online" => Ok(Mode::Online),
            other => Err(MigrateError::Mode {
                mode: other.to_string(),
            }),
        }
    }
}

/// What a migration reports as it goes, one flat record per event so that
/// renderers (text, progress bars, `--json` lines) stay generic: `event`
/// names it, `detail` is a JSON object whose fields depend on the name.
///
/// | `event` | when | `detail` |
/// | --- | --- | --- |
/// | `planned` | the migration was recorded | `base_epoch`, `new_epoch` |
/// | a phase name: `prepared`, `capturing`, `copied`, `caught_up`, `fenced`, `verified`, `flipped`, `routers_acked`, `cleaned`, `aborted` | a step was journaled, about to run (phase change) | the journal detail: `{}`, or `epoch` for `flipped`, `copied` (rows per table, null if the copy ran in another process) for `verified` |
/// | `progress` | during an online backfill, every [`crate::range::copy::PROGRESS_EVERY`] rows of a table and at its end; the first one (rows 0) once the snapshot is taken | `table`, `table_rows` (of that table so far), `rows` (of the move so far, all tables), `estimate` (the plan's row estimate of the move, or null), `bytes` (of that table so far) |
/// | `copied_rows` | a backfill (or blocking copy) committed | rows per table name |
/// | `lag` | after each catch-up round (online) | `backlog` (captured changes not replayed), `replayed` (changes replayed in the round), `fenced` (whether writes to the range are refused now) |
/// | `stall` | a step failed on a lost connection and will be retried | `step` (phase), `error`, `attempt`, `retry_in_ms` |
/// | `cancelled` | the cancel signal stopped the run between steps or batches; `postshard resume` continues it | `{}` |
/// | `undone` | abort deleted a move's copied rows | `{}` |
/// | `done` | the migration finished | `epoch`, `writes_blocked_ms` (per move index: fence raised → flip committed, when both happened in this process) |
/// | `aborted` | the migration was undone (event after the `aborted` phase) | `epoch` |
///
/// `move_index` is set for per-move events.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Event {
    /// The migration.
    pub migration: i64,
    /// The plan's move, if the event is about one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub move_index: Option<u32>,
    /// The event's name (see the table above).
    pub event: String,
    /// Its fields.
    pub detail: Value,
}

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
    /// An unknown mode.
    #[error("mode `{mode}` is not supported; use --mode online or --mode blocking")]
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
    /// Online, the comparison before the fence (`fenced` false) covers the
    /// range less the keys still changing; under the fence, only those.
    #[error(
        "move {index}: table {table}: source {source_shard} has {source_rows} row(s) \
         (checksum {source_sum}), target {target_shard} has {target_rows} (checksum {target_sum}){}",
        if *.fenced {
            "; the move stays fenced: `postshard abort` or `postshard resume` (which copies again)"
        } else {
            " outside the keys changed since the backfill, before the fence; \
             `postshard abort` (or `postshard resume`, which compares again)"
        }
    )]
    Mismatch {
        /// Whether the range was fenced (writes to it refused) when compared.
        fenced: bool,
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
    /// Change capture failed on a source.
    #[error("move {index}: {source}")]
    Capture {
        /// The move.
        index: u32,
        /// Why.
        source: CaptureError,
    },
    /// The cancel signal stopped the run at a resumable point.
    #[error("migration {id} stopped at a resumable point; run `postshard resume` to continue")]
    Cancelled {
        /// The migration.
        id: i64,
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
    /// Online mode: the backfill streams at most this many rows per second
    /// per table (the COPY stream pauses when ahead; the source is still
    /// read once, from one exported snapshot); `None`: as fast as it goes.
    pub max_rows_per_sec: Option<u64>,
    /// Online mode: how many moves are backfilled at once (their
    /// `capturing` and `copied` steps run concurrently, each journaled);
    /// catch-up, fences and verification stay one move at a time. At
    /// least 1.
    pub parallel: usize,
    /// Online mode: catch-up stops and the fence goes up once at most this
    /// many captured changes of a move wait to be replayed.
    pub catch_up_rows: u64,
    /// Online mode: captured changes replayed per transaction.
    pub replay_batch: u32,
    /// How long a step that failed on a lost connection (a shard or the
    /// control store restarting) is retried, with backoff, before the run
    /// stops with the error (the migration stays active).
    pub retry_for: Duration,
    /// Stops the run at the next resumable point (between steps, chunks or
    /// replay batches) once it holds `true`; the migration stays active for
    /// `postshard resume`. The default never fires.
    pub cancel: watch::Receiver<bool>,
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
            max_rows_per_sec: None,
            parallel: 1,
            catch_up_rows: 500,
            replay_batch: 1_000,
            retry_for: Duration::from_secs(60),
            cancel: watch::channel(false).1,
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

/// Every step of a migration of `moves` moves in `mode`, in order (the
/// `planned` step that opens the journal excluded).
///
/// Blocking: per move `fenced`, `copied`, `verified`. Online: per move
/// `capturing`, `copied` (the backfill); then per move `caught_up`; then
/// every move `fenced`; then per move `verified` (last replay under the
/// fence, then the comparison). Both then `flipped`, `routers_acked` and
/// per move `cleaned`.
pub fn steps(mode: Mode, moves: u32) -> Vec<StepId> {
    let one = |move_index, phase| StepId { move_index, phase };
    let mut out = vec![one(None, Phase::Prepared)];
    let per_move = |out: &mut Vec<StepId>, phases: &[Phase]| {
        for i in 0..moves {
            for phase in phases {
                out.push(one(Some(i), *phase));
            }
        }
    };
    match mode {
        Mode::Blocking => per_move(&mut out, &[Phase::Fenced, Phase::Copied, Phase::Verified]),
        Mode::Online => {
            per_move(&mut out, &[Phase::Capturing, Phase::Copied]);
            per_move(&mut out, &[Phase::CaughtUp]);
            per_move(&mut out, &[Phase::Fenced]);
            per_move(&mut out, &[Phase::Verified]);
        }
    }
    out.push(one(None, Phase::Flipped));
    out.push(one(None, Phase::RoutersAcked));
    out.extend((0..moves).map(|i| one(Some(i), Phase::Cleaned)));
    out
}

/// The ranges shard `name` owns in `map` (none when it is not in `map`).
pub(crate) fn owned_by(map: &ShardMap, name: &str) -> Vec<TokenRange> {
    map.shard_index(name)
        .map(|i| fence::owned_ranges(map, i))
        .unwrap_or_default()
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

    fn names(mode: Mode) -> Vec<String> {
        steps(mode, 2)
            .iter()
            .map(|s| match s.move_index {
                Some(i) => format!("{}@{i}", s.phase),
                None => s.phase.to_string(),
            })
            .collect()
    }

    #[test]
    fn online_steps_backfill_each_move_catch_up_then_fence_all_then_verify() {
        assert_eq!(
            names(Mode::Online),
            [
                "prepared",
                "capturing@0",
                "copied@0",
                "capturing@1",
                "copied@1",
                "caught_up@0",
                "caught_up@1",
                "fenced@0",
                "fenced@1",
                "verified@0",
                "verified@1",
                "flipped",
                "routers_acked",
                "cleaned@0",
                "cleaned@1"
            ]
        );
    }

    #[test]
    fn steps_fence_copy_verify_each_move_then_flip_once_then_clean() {
        let names = names(Mode::Blocking);
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
}
