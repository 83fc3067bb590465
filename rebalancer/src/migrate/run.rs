//! Running a migration in either mode: the checks before anything is
//! recorded, the journaled step loop (retries on lost connections, the
//! cancel signal, failpoints) and the steps both modes share (prepare,
//! fence, copy, verify, flip, acknowledgements, clean-up, abort). The online
//! mode's own steps (capture, backfill, catch-up, final replay) are in
//! [`super::online`].
//!
//! [`apply`] checks everything it can before it records the migration
//! (live epoch, plan against the live map, every shard reachable and fenced,
//! the schemas as `init` judges them), then runs [`super::steps`]; [`resume`]
//! continues the active migration from its last journaled step; [`abort`]
//! undoes one whose flip has not committed. Whoever runs a migration holds a
//! session advisory lock on its id in the control store, so two processes
//! never run the same migration; a killed process's lock goes with its
//! connection.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;

use postshard_router::live_map::live_epoch;
use postshard_router::{connect, ConnUrl, ShardMap};
use serde_json::{json, Value};
use tokio_postgres::Client;

use super::failpoint::{self, When};
use super::progress_log::ProgressLog;
use super::sessions::{Session, Sessions};
use super::{
    all_shards, owned_by, steps, stored_plan, Event, MigrateError, Mode, MoveOptions, StepId,
};
use crate::control::{self, ControlError, Migration, MigrationState, Phase};
use crate::fence::{self, FenceError};
use crate::init::{prepare_shards_where, InitError};
use crate::plan::Plan;
use crate::range::{
    checksum_range_keys, copy_range, delete_range, CopySpec, Endpoint, Keys, TableChecksum,
};
use crate::token_range::{union, TokenRange};

/// Advisory lock class of a running migration (`pg_try_advisory_lock(class, id)`).
const RUN_LOCK_CLASS: i32 = 0x7073_6d67; // "psmg"

/// One move of the plan: its shards and its token range.
#[derive(Debug, Clone)]
pub(super) struct MoveRange {
    pub(super) index: u32,
    pub(super) source: String,
    pub(super) target: String,
    pub(super) range: TokenRange,
    /// The plan's estimate of the rows moved.
    pub(super) estimate: Option<u64>,
}

fn move_ranges(plan: &Plan) -> Result<Vec<MoveRange>, MigrateError> {
    plan.moves
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            let range = TokenRange::new(i128::from(m.from), m.to)
                .map_err(|source| MigrateError::Range { index, source })?;
            Ok(MoveRange {
                index,
                source: m.source.clone(),
                target: m.target.clone(),
                range,
                estimate: m.rows,
            })
        })
        .collect()
}

/// A migration being run by this process.
pub(super) struct Run<'a> {
    pub(super) control: Client,
    control_url: ConnUrl,
    pub(super) migration: Migration,
    pub(super) mode: Mode,
    pub(super) old: ShardMap,
    pub(super) new: ShardMap,
    pub(super) moves: Vec<MoveRange>,
    shards: Vec<(String, ConnUrl)>,
    pub(super) options: &'a MoveOptions,
    pub(super) on_event: &'a mut dyn FnMut(&Event),
    /// What this process knows beyond the journal.
    pub(super) memory: Memory,
    /// The shard connections this run opened, reused between steps.
    pub(super) sessions: Sessions,
    /// Each move's latest progress, recorded for `status`.
    pub(super) progress_log: ProgressLog,
}

/// What this process knows of a run beyond the journal, lost with the
/// process: a resumed run starts from an empty one, so every use must be
/// correct without it (ARCHITECTURE.md, "Moves", argues each).
#[derive(Default)]
pub(super) struct Memory {
    /// Rows copied per move (reported in the `verified` step's detail;
    /// seeded from the journal on resume).
    pub(super) copied: BTreeMap<u32, Value>,
    /// When this process raised each move's fence (to report how long
    /// writes to it were refused).
    pub(super) fenced_at: BTreeMap<u32, Instant>,
    /// Milliseconds from each move's fence to the flip.
    blocked_ms: BTreeMap<u32, u64>,
    /// Online: per move whose comparison at the cut passed in this
    /// process, the keys its verification under the fence compares (the
    /// cut's pending keys and every key replayed since). A move without an
    /// entry is compared whole (see [`super::online`]).
    pub(super) cuts: BTreeMap<u32, BTreeSet<i64>>,
    /// Online: moves this process verified under the fence.
    pub(super) verified: BTreeSet<u32>,
}

async fn connect_control(map: &ShardMap, options: &MoveOptions) -> Result<Client, MigrateError> {
    let url = map.control().ok_or(MigrateError::NoControl)?;
    control_client(url, options).await
}

async fn control_client(url: &ConnUrl, options: &MoveOptions) -> Result<Client, MigrateError> {
    connect(url, options.init.connect_timeout)
        .await
        .map_err(|source| MigrateError::Connect {
            what: "control store".into(),
            source,
        })
}

fn refused(e: InitError) -> MigrateError {
    match e {
        InitError::Refused { .. } => MigrateError::Refused(e),
        InitError::Connect { what, source } => MigrateError::Connect { what, source },
        other => MigrateError::Init(other),
    }
}

/// The pause before retry `attempt` (from 1): 200 ms doubling to 5 s.
pub(super) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100 * 2u64.pow(attempt.min(6))).min(Duration::from_secs(5))
}

/// Whether `phase` is part of an online backfill (what may run in parallel).
fn is_backfill(phase: Phase) -> bool {
    matches!(phase, Phase::Capturing | Phase::Copied)
}

/// How long taking the run lock waits for its holder to go: a process
/// killed a moment ago still holds it until its server backend notices the
/// closed connection.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Takes the run lock of migration `id` for this session, waiting up to
/// [`LOCK_WAIT`] for a holder that is going away.
async fn lock(control: &Client, id: i64) -> Result<(), MigrateError> {
    let key = i32::try_from(id).unwrap_or(i32::MAX);
    let start = Instant::now();
    loop {
        let got: bool = control
            .query_one(
                "SELECT pg_try_advisory_lock($1, $2)",
                &[&RUN_LOCK_CLASS, &key],
            )
            .await
            .map_err(control::query_error("locking the migration"))?
            .get(0);
        if got {
            return Ok(());
        }
        if start.elapsed() >= LOCK_WAIT {
            return Err(MigrateError::Busy { id });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Applies `plan` to the live map of `map`'s control store in `mode`
/// (`online` or `blocking`; see the module docs of [`super`]); returns the
/// migration's id.
///
/// Refuses, having changed nothing: no `control:` ([`MigrateError::NoControl`]),
/// an unknown mode ([`MigrateError::Mode`]), another active migration
/// ([`MigrateError::Active`]), a plan for another epoch
/// ([`MigrateError::StaleEpoch`]) or that does not apply to the live map
/// ([`MigrateError::Plan`]), an unreachable shard ([`MigrateError::Connect`]),
/// a shard without fence ([`MigrateError::NotInstalled`]), schemas init would
/// refuse ([`MigrateError::Refused`]). Later failures leave the migration
/// active, to be resumed or aborted.
pub async fn apply(
    map: &ShardMap,
    plan: &Plan,
    mode: &str,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
    options: &MoveOptions,
    on_event: &mut dyn FnMut(&Event),
) -> Result<i64, MigrateError> {
    let mode = Mode::parse(mode)?;
    let control = connect_control(map, options).await?;
    if let Some(active) = Migration::active(&control).await? {
        return Err(MigrateError::Active { id: active.id });
    }
    let old = control::live_map(&control, env).await?;
    if plan.base_version != old.version() {
        return Err(MigrateError::StaleEpoch {
            plan: plan.base_version,
            live: old.version(),
        });
    }
    let new = plan.apply_with_env(&old, env)?;
    let moves = move_ranges(plan)?;
    let shards = all_shards(&old, &new);
    for (name, url) in &shards {
        let client = connect(url, options.init.connect_timeout)
            .await
            .map_err(|source| MigrateError::Connect {
                what: format!("shard {name}"),
                source,
            })?;
        if old.shard_index(name).is_some() {
            fence::read(&client)
                .await
                .map_err(|source| MigrateError::NotInstalled {
                    shard: name.clone(),
                    source,
                })?;
        }
    }
    // Init's checks on every shard of the new map, changing nothing.
    prepare_shards_where(
        &new,
        old.version(),
        &|_| Vec::new(),
        &|_| false,
        &options.init,
    )
    .await
    .map_err(refused)?;
    let migration = Migration::begin(&control, old.version(), mode.as_str(), &plan.to_yaml())
        .await
        .map_err(|e| match e {
            ControlError::MigrationActive { id } => MigrateError::Active { id },
            other => other.into(),
        })?;
    lock(&control, migration.id).await?;
    let control_url = map.control().cloned().ok_or(MigrateError::NoControl)?;
    let progress_log =
        ProgressLog::start(&control_url, options.init.connect_timeout, &migration).await;
    let mut run = Run {
        control,
        control_url,
        migration,
        mode,
        old,
        new,
        moves,
        shards,
        options,
        on_event,
        memory: Memory::default(),
        sessions: Sessions::default(),
        progress_log,
    };
    let planned = json!({ "base_epoch": run.old.version(), "new_epoch": run.new.version() });
    run.journal(None, Phase::Planned, planned).await?;
    run.run_from(0).await?;
    Ok(run.migration.id)
}

/// Loads migration `migration`'s maps and plan for this process to run.
async fn load_run<'a>(
    control: Client,
    control_url: &ConnUrl,
    migration: Migration,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
    options: &'a MoveOptions,
    on_event: &'a mut dyn FnMut(&Event),
) -> Result<Run<'a>, MigrateError> {
    let id = migration.id;
    let mode = Mode::parse(&migration.mode)?;
    let plan = stored_plan(id, &migration.plan)?;
    let text = control::map_at(&control, migration.base_epoch)
        .await?
        .ok_or_else(|| MigrateError::Journal {
            id,
            what: format!("no stored map for base epoch {}", migration.base_epoch),
        })?;
    let old = ShardMap::parse(
        &text,
        &format!("control store epoch {}", migration.base_epoch),
        env,
    )
    .map_err(|e| MigrateError::Journal {
        id,
        what: format!("stored map of epoch {}: {e}", migration.base_epoch),
    })?;
    let new = plan.apply_with_env(&old, env)?;
    let moves = move_ranges(&plan)?;
    let shards = all_shards(&old, &new);
    lock(&control, id).await?;
    let progress_log =
        ProgressLog::start(control_url, options.init.connect_timeout, &migration).await;
    Ok(Run {
        control,
        control_url: control_url.clone(),
        migration,
        mode,
        old,
        new,
        moves,
        shards,
        options,
        on_event,
        memory: Memory::default(),
        sessions: Sessions::default(),
        progress_log,
    })
}

/// Continues the active migration (migration `id` when given) from its
/// last journaled step, redoing that step (every step is idempotent; in
/// blocking mode, after `verified`, from the copy before it); an
/// interrupted abort is finished.
/// Returns the migration's id.
///
/// Errors: [`MigrateError::NothingActive`]; [`MigrateError::NotActive`] for
/// an `id` that is done or aborted; [`MigrateError::Busy`] while another
/// process runs it; any step's failure (the migration stays active).
pub async fn resume(
    map: &ShardMap,
    id: Option<i64>,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
    options: &MoveOptions,
    on_event: &mut dyn FnMut(&Event),
) -> Result<i64, MigrateError> {
    let control = connect_control(map, options).await?;
    let migration = match id {
        Some(id) => Migration::get(&control, id).await?,
        None => Migration::active(&control)
            .await?
            .ok_or(MigrateError::NothingActive)?,
    };
    if migration.state != MigrationState::Active {
        return Err(MigrateError::NotActive {
            id: migration.id,
            state: state_name(migration.state),
            what: "resume",
        });
    }
    let url = map.control().ok_or(MigrateError::NoControl)?;
    let mut run = load_run(control, url, migration, env, options, on_event).await?;
    let id = run.migration.id;
    let journal = run.migration.steps(&run.control).await?;
    // Rows an earlier process copied, for the `verified` steps' detail.
    for step in journal.iter().filter(|s| s.phase == Phase::Copied) {
        let rows = serde_json::from_str::<Value>(&step.detail)
            .ok()
            .and_then(|d| d.get("rows").cloned());
        if let (Some(index), Some(rows)) = (step.move_index, rows) {
            run.memory.copied.insert(index, rows);
        }
    }
    let Some(last) = journal.last() else {
        run.journal(None, Phase::Planned, json!({})).await?;
        run.run_from(0).await?;
        return Ok(id);
    };
    match last.phase {
        Phase::Planned => run.run_from(0).await?,
        Phase::Aborted => run.finish_abort().await?,
        phase => {
            // A blocking verification that failed (or was cut short) is
            // redone after copying again: the copy replaces the target's
            // range whole. An online one replays and compares again.
            let phase = match (run.mode, phase) {
                (Mode::Blocking, Phase::Verified) => Phase::Copied,
                (_, other) => other,
            };
            let all = steps(run.mode, run.moves_len());
            let position = |phase: Phase, move_index: Option<u32>| {
                all.iter()
                    .position(|s| s.phase == phase && s.move_index == move_index)
                    .ok_or_else(|| MigrateError::Journal {
                        id,
                        what: format!(
                            "step `{phase}` is not a step of a {} move",
                            run.mode.as_str()
                        ),
                    })
            };
            let mut at = position(phase, last.move_index)?;
            // Backfills that ran in parallel may each have stopped midway:
            // continue from the earliest move's last step.
            let parallel = journal.iter().any(|s| {
                s.phase == Phase::Capturing
                    && serde_json::from_str::<Value>(&s.detail)
                        .ok()
                        .and_then(|d| d.get("parallel").and_then(Value::as_u64))
                        .is_some_and(|k| k > 1)
            });
            if parallel && is_backfill(phase) {
                let mut last_of_move = BTreeMap::new();
                for s in &journal {
                    last_of_move.insert(s.move_index, s.phase);
                }
                for (move_index, phase) in last_of_move {
                    if is_backfill(phase) {
                        at = at.min(position(phase, move_index)?);
                    }
                }
            }
            run.run_from(at).await?;
        }
    }
    Ok(id)
}

/// Undoes active migration `id`, whose flip has not committed: targets lose
/// any ownership granted, the copied rows are deleted from the targets, the
/// sources' fences are lowered and a shard the plan added loses its
/// `postshard` schema (fence row, fence functions and triggers; its tables
/// stay). Safe to rerun after a crash.
///
/// Errors: [`MigrateError::AlreadyFlipped`] (nothing changed) once the
/// live epoch moved past the migration's base; [`MigrateError::NotActive`];
/// [`MigrateError::Busy`]; [`MigrateError::TargetWritten`] when a target
/// that had been given ownership holds rows the source does not (ownership
/// is given back and nothing is deleted).
pub async fn abort(
    map: &ShardMap,
    id: i64,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
    options: &MoveOptions,
    on_event: &mut dyn FnMut(&Event),
) -> Result<(), MigrateError> {
    let control = connect_control(map, options).await?;
    let migration = Migration::get(&control, id).await?;
    if migration.state != MigrationState::Active {
        return Err(MigrateError::NotActive {
            id,
            state: state_name(migration.state),
            what: "abort",
        });
    }
    let live = live_epoch(&control).await.map_err(ControlError::from)?;
    if live != Some(migration.base_epoch) {
        return Err(MigrateError::AlreadyFlipped {
            id,
            live: live.unwrap_or(0),
        });
    }
    let url = map.control().ok_or(MigrateError::NoControl)?;
    let mut run = load_run(control, url, migration, env, options, on_event).await?;
    let journal = run.migration.steps(&run.control).await?;
    if !journal.iter().any(|s| s.phase == Phase::Aborted) {
        let granted = journal.iter().any(|s| s.phase == Phase::Flipped);
        run.revoke_targets().await?;
        if granted {
            run.check_targets_untouched().await?;
        }
        run.journal(None, Phase::Aborted, json!({})).await?;
    }
    run.finish_abort().await
}

fn state_name(state: MigrationState) -> &'static str {
    match state {
        MigrationState::Active => "active",
        MigrationState::Done => "done",
        MigrationState::Aborted => "aborted",
    }
}

impl Run<'_> {
    fn moves_len(&self) -> u32 {
        u32::try_from(self.moves.len()).unwrap_or(u32::MAX)
    }

    pub(super) fn event(&mut self, move_index: Option<u32>, event: &str, detail: Value) {
        let e = Event {
            migration: self.migration.id,
            move_index,
            event: event.to_string(),
            detail,
        };
        self.progress_log.note(&e);
        (self.on_event)(&e);
    }

    /// Journals a step before it is done, reports it, and fires its failpoint.
    async fn journal(
        &mut self,
        move_index: Option<u32>,
        phase: Phase,
        detail: Value,
    ) -> Result<(), MigrateError> {
        self.migration
            .append(&self.control, move_index, phase, &detail.to_string())
            .await?;
        self.event(move_index, phase.as_str(), detail);
        failpoint::hit(phase, move_index, When::Before);
        Ok(())
    }

    /// Runs the steps from `start` (0: the first) to the end, then marks
    /// the migration done. Between steps it obeys the cancel signal; a step
    /// (or its journal entry) that fails on a lost connection is retried
    /// with backoff for up to `retry_for` (every step is idempotent).
    async fn run_from(&mut self, start: usize) -> Result<(), MigrateError> {
        let result = self.run_steps(start).await;
        if let Err(MigrateError::Cancelled { .. }) = result {
            self.event(None, "cancelled", json!({}));
        }
        result
    }

    async fn run_steps(&mut self, start: usize) -> Result<(), MigrateError> {
        let all = steps(self.mode, self.moves_len());
        let mut at = start;
        while let Some(step) = all.get(at).copied() {
            self.check_cancel()?;
            if self.mode == Mode::Online && self.options.parallel > 1 && is_backfill(step.phase) {
                let end = all
                    .iter()
                    .skip(at)
                    .position(|s| !is_backfill(s.phase))
                    .map_or(all.len(), |p| at + p);
                let group = all.get(at..end).unwrap_or_default().to_vec();
                self.backfill_in_parallel(&group).await?;
                at = end;
                continue;
            }
            self.run_step(step).await?;
            at += 1;
        }
        self.migration
            .finish(&self.control, MigrationState::Done)
            .await?;
        let blocked: serde_json::Map<String, Value> = self
            .memory
            .blocked_ms
            .iter()
            .map(|(i, ms)| (i.to_string(), json!(ms)))
            .collect();
        let detail = json!({ "epoch": self.new.version(), "writes_blocked_ms": blocked });
        self.event(None, "done", detail);
        Ok(())
    }

    /// Journals and does one step, retrying it while it fails on a lost
    /// connection (for up to `retry_for`).
    async fn run_step(&mut self, step: StepId) -> Result<(), MigrateError> {
        let detail = self.journal_detail(step);
        let started = Instant::now();
        let mut attempt = 0u32;
        let mut journaled = false;
        loop {
            let stepping = journaled;
            let result = if stepping {
                self.step(step).await
            } else {
                self.journal(step.move_index, step.phase, detail.clone())
                    .await
            };
            match result {
                Ok(()) if stepping => break,
                Ok(()) => journaled = true,
                Err(e) if self.retryable(&e) && started.elapsed() < self.options.retry_for => {
                    self.sessions.forget_idle();
                    attempt += 1;
                    let pause = backoff(attempt);
                    let detail = json!({
                        "step": step.phase.as_str(),
                        "error": e.to_string(),
                        "attempt": attempt,
                        "retry_in_ms": pause.as_millis() as u64,
                    });
                    self.event(step.move_index, "stall", detail);
                    tokio::time::sleep(pause).await;
                    self.check_cancel()?;
                    self.reconnect_control().await;
                }
                Err(e) => return Err(e),
            }
        }
        failpoint::hit(step.phase, step.move_index, When::After);
        Ok(())
    }

    /// What the journal records with `step`: rows copied (`verified`), the
    /// new epoch (`flipped`), the parallelism of a backfill (`capturing`,
    /// which resume needs to know where to continue).
    pub(super) fn journal_detail(&self, step: StepId) -> Value {
        match (step.phase, step.move_index) {
            (Phase::Verified, Some(i)) => {
                json!({ "copied": self.memory.copied.get(&i).cloned().unwrap_or(Value::Null) })
            }
            (Phase::Flipped, _) => json!({ "epoch": self.new.version() }),
            (Phase::Capturing, _) => json!({ "parallel": self.options.parallel.max(1) }),
            _ => json!({}),
        }
    }

    /// Stops with [`MigrateError::Cancelled`] once the cancel signal is set.
    pub(super) fn check_cancel(&self) -> Result<(), MigrateError> {
        if *self.options.cancel.borrow() {
            return Err(MigrateError::Cancelled {
                id: self.migration.id,
            });
        }
        Ok(())
    }

    /// Whether `e` came from a lost or refused connection (a server
    /// restarting), so that redoing the step may succeed.
    pub(super) fn retryable(&self, e: &MigrateError) -> bool {
        use crate::range::ChecksumError;
        match e {
            MigrateError::Connect { .. } => true,
            MigrateError::Control(_) => self.control.is_closed(),
            MigrateError::Capture { source, .. } => source.is_connection(),
            // Their errors keep only the message: a query that failed
            // against a healthy server fails again, bounded by `retry_for`.
            MigrateError::Checksum {
                source: ChecksumError::Query { .. },
                ..
            }
            | MigrateError::Fence {
                source: FenceError::Query { .. },
                ..
            } => true,
            other => driver_lost(other),
        }
    }

    /// A new control-store session (and run lock) after the old one broke.
    async fn reconnect_control(&mut self) {
        if !self.control.is_closed() {
            return;
        }
        if let Ok(client) = control_client(&self.control_url, self.options).await {
            if lock(&client, self.migration.id).await.is_ok() {
                self.control = client;
            }
        }
    }

    pub(super) fn move_at(&self, index: Option<u32>) -> Result<MoveRange, MigrateError> {
        index
            .and_then(|i| self.moves.get(usize::try_from(i).ok()?))
            .cloned()
            .ok_or_else(|| MigrateError::Journal {
                id: self.migration.id,
                what: format!("no move {index:?} in the plan"),
            })
    }

    /// The moves from `index` on (all when `None`) that `pending` keeps.
    fn moves_from(
        &self,
        index: Option<u32>,
        pending: impl Fn(u32) -> bool,
    ) -> Result<Vec<MoveRange>, MigrateError> {
        let first = self.move_at(index)?.index;
        Ok(self
            .moves
            .iter()
            .filter(|m| m.index >= first && pending(m.index))
            .cloned()
            .collect())
    }

    /// A connection to shard `name` (one this run opened and is not using,
    /// or a new one).
    pub(super) async fn shard(&self, name: &str) -> Result<Session, MigrateError> {
        let url = self
            .shards
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, u)| u)
            .ok_or_else(|| MigrateError::Journal {
                id: self.migration.id,
                what: format!("shard {name} is in neither map"),
            })?;
        self.sessions
            .get(name, url, self.options.init.connect_timeout)
            .await
            .map_err(|source| MigrateError::Connect {
                what: format!("shard {name}"),
                source,
            })
    }

    async fn step(&mut self, step: StepId) -> Result<(), MigrateError> {
        match (self.mode, step.phase) {
            (_, Phase::Prepared) => self.prepare().await,
            (Mode::Blocking, Phase::Fenced) => {
                let m = self.move_at(step.move_index)?;
                let client = self.shard(&m.source).await?;
                fence::raise(&client, &[m.range], self.options.fence_wait)
                    .await
                    .map_err(fence_error(&m.source))?;
                self.memory.fenced_at.insert(m.index, Instant::now());
                Ok(())
            }
            // The first `fenced` (`verified`) step does the work of every
            // move from its own on (see [`super::online`]); the later ones
            // find theirs done, unless this process started after it.
            (Mode::Online, Phase::Fenced) => {
                let group =
                    self.moves_from(step.move_index, |i| !self.memory.fenced_at.contains_key(&i))?;
                self.fence_moves(&group).await
            }
            (Mode::Online, Phase::Verified) => {
                let group =
                    self.moves_from(step.move_index, |i| !self.memory.verified.contains(&i))?;
                self.verify_moves(&group).await
            }
            (Mode::Online, Phase::Capturing) => {
                let m = self.move_at(step.move_index)?;
                self.capture_on(&m).await
            }
            (Mode::Online, Phase::Copied) => {
                let m = self.move_at(step.move_index)?;
                self.backfill(&m).await
            }
            (Mode::Online, Phase::CaughtUp) => {
                let m = self.move_at(step.move_index)?;
                self.catch_up(&m).await?;
                self.verify_at_cut(&m).await?;
                self.catch_up(&m).await
            }
            (Mode::Blocking, Phase::Copied) => {
                let m = self.move_at(step.move_index)?;
                self.copy(&m).await
            }
            (Mode::Blocking, Phase::Verified) => {
                let m = self.move_at(step.move_index)?;
                self.verify(&m, Keys::All).await
            }
            (_, Phase::Flipped) => {
                let flipped = self.flip().await?;
                for (i, at) in &self.memory.fenced_at {
                    let ms =
                        u64::try_from(flipped.duration_since(*at).as_millis()).unwrap_or(u64::MAX);
                    self.memory.blocked_ms.insert(*i, ms);
                }
                Ok(())
            }
            (_, Phase::RoutersAcked) => control::wait_for_acks(
                &self.control,
                self.new.version(),
                self.options.ack_margin,
                self.options.ack_poll,
                self.options.ack_timeout,
            )
            .await
            .map_err(MigrateError::from),
            (mode, Phase::Cleaned) => {
                let m = self.move_at(step.move_index)?;
                if mode == Mode::Online {
                    self.capture_off(&m).await?;
                }
                self.clean(&m).await
            }
            (mode, other) => Err(MigrateError::Journal {
                id: self.migration.id,
                what: format!("`{other}` is not a step of a {} move", mode.as_str()),
            }),
        }
    }

    /// The shards of the new map get fence, triggers and missing tables; a
    /// shard the plan adds owns nothing until the flip.
    async fn prepare(&mut self) -> Result<(), MigrateError> {
        // Only shards without a fence (those the plan adds): the DDL would
        // lock a live shard's tables behind its running writers.
        let mut unprepared = Vec::with_capacity(self.new.shards().len());
        for shard in self.new.shards() {
            let client = self.shard(&shard.name).await?;
            unprepared.push(fence::read(&client).await.is_err());
        }
        let (old, new) = (&self.old, &self.new);
        let owned = |i: usize| {
            new.shards()
                .get(i)
                .map(|s| owned_by(old, &s.name))
                .unwrap_or_default()
        };
        let install = |i: usize| unprepared.get(i).copied().unwrap_or(false);
        prepare_shards_where(new, old.version(), &owned, &install, &self.options.init)
            .await
            .map_err(refused)?;
        Ok(())
    }

    async fn copy(&mut self, m: &MoveRange) -> Result<(), MigrateError> {
        let mut source = self.shard(&m.source).await?;
        let mut target = self.shard(&m.target).await?;
        let spec = CopySpec {
            tables: self.new.tables(),
            seed: self.new.seed(),
            range: m.range,
            snapshot: None,
            progress: None,
        };
        let copied = copy_range(
            Endpoint {
                shard: &m.source,
                client: &mut source,
            },
            Endpoint {
                shard: &m.target,
                client: &mut target,
            },
            &spec,
        )
        .await
        .map_err(|source| MigrateError::Copy {
            index: m.index,
            source,
        })?;
        let rows: serde_json::Map<String, Value> = copied
            .iter()
            .map(|t| (t.table.clone(), json!(t.rows)))
            .collect();
        self.record_copied(m.index, Value::Object(rows)).await;
        Ok(())
    }

    /// A move's copy is done: its rows per table kept for the `verified`
    /// step's detail, reported (`copied_rows`) and added to its `copied`
    /// journal step, so that `status` and a resumed run know them. That
    /// write is best effort: resume never reads it, and a failure (the
    /// control store restarting) must not make the copy run again.
    pub(super) async fn record_copied(&mut self, index: u32, rows: Value) {
        let _ = self
            .migration
            .record_copied(&self.control, index, &rows.to_string())
            .await;
        self.memory.copied.insert(index, rows.clone());
        self.event(Some(index), "copied_rows", rows);
    }

    /// Compares row counts and checksums of the rows of the range that
    /// `keys` selects, both sides, with writes to it refused.
    pub(super) async fn verify(&self, m: &MoveRange, keys: Keys<'_>) -> Result<(), MigrateError> {
        match self.differing_table(m, keys).await? {
            Some(difference) => Err(mismatch(m, true, difference)),
            None => Ok(()),
        }
    }

    /// The first table whose range (the rows `keys` selects) differs
    /// between source and target (both sides summed at once).
    async fn differing_table(
        &self,
        m: &MoveRange,
        keys: Keys<'_>,
    ) -> Result<Option<Difference>, MigrateError> {
        let side = |name: &str| {
            let name = name.to_string();
            async move {
                let mut client = self.shard(&name).await?;
                let side = Endpoint {
                    shard: &name,
                    client: &mut client,
                };
                let (tables, seed) = (self.new.tables(), self.new.seed());
                checksum_range_keys(side, tables, seed, m.range, None, keys)
                    .await
                    .map_err(|source| MigrateError::Checksum {
                        index: m.index,
                        source,
                    })
            }
        };
        let (source, target) = tokio::try_join!(side(&m.source), side(&m.target))?;
        Ok(first_difference(&source, &target))
    }

    /// Targets own their new ranges, the control store flips (unless this
    /// flip already committed), then every shard involved owns exactly its
    /// ranges of the new map. Shards are updated concurrently; the grants
    /// to the targets (old ∪ new, containing whatever a target owns at any
    /// point of a migration, so only ever growing) return at once, the
    /// settling after the flip waits for older writers
    /// ([`fence::set_owned`]). Returns when the control store's flip
    /// committed (or was found committed): from then on routers send
    /// writes to the targets.
    async fn flip(&mut self) -> Result<Instant, MigrateError> {
        let base = self.old.version();
        let new_epoch = self.new.version();
        let this = &*self;
        let grants = this.targets().into_iter().map(|target| async move {
            let client = this.shard(&target).await?;
            fence::grant(&client, base, &this.granted(&target))
                .await
                .map_err(fence_error(&target))
        });
        try_join_all(grants).await?;
        match live_epoch(&self.control)
            .await
            .map_err(ControlError::from)?
        {
            Some(live) if live == base => {
                control::flip(&mut self.control, base, &self.new).await?;
            }
            Some(live) if live == new_epoch => {}
            live => {
                return Err(MigrateError::Journal {
                    id: self.migration.id,
                    what: format!(
                    "the live epoch is {live:?}, neither the base {base} nor the new {new_epoch}"
                ),
                })
            }
        }
        let flipped = Instant::now();
        let this = &*self;
        let settled = this.involved().into_iter().map(|name| async move {
            let client = this.shard(&name).await?;
            let owned = owned_by(&this.new, &name);
            fence::set_owned(&client, new_epoch, &owned, this.options.fence_wait)
                .await
                .map_err(fence_error(&name))
        });
        try_join_all(settled).await?;
        Ok(flipped)
    }

    /// What `target` owns from the grant to the settling after the flip:
    /// its ranges at the base epoch and at the new one.
    fn granted(&self, target: &str) -> Vec<TokenRange> {
        union(
            owned_by(&self.old, target)
                .into_iter()
                .chain(owned_by(&self.new, target)),
        )
    }

    /// Deletes move `m`'s range from `shard` in batches (replica role: the
    /// app's triggers do not fire).
    async fn delete_moved(
        &self,
        shard: &str,
        client: &mut Client,
        m: &MoveRange,
    ) -> Result<(), MigrateError> {
        delete_range(
            Endpoint { shard, client },
            self.new.tables(),
            self.new.seed(),
            m.range,
            self.options.delete_batch,
        )
        .await
        .map(drop)
        .map_err(|source| MigrateError::Delete {
            index: m.index,
            source,
        })
    }

    /// Deletes the moved rows from the source, then lowers its fence.
    async fn clean(&self, m: &MoveRange) -> Result<(), MigrateError> {
        let mut client = self.shard(&m.source).await?;
        self.delete_moved(&m.source, &mut client, m).await?;
        fence::lower(&client, &[m.range])
            .await
            .map_err(fence_error(&m.source))
    }

    fn targets(&self) -> BTreeSet<String> {
        self.moves.iter().map(|m| m.target.clone()).collect()
    }

    /// Sources, targets and removed shards.
    fn involved(&self) -> BTreeSet<String> {
        let mut out = self.targets();
        out.extend(self.moves.iter().map(|m| m.source.clone()));
        out.extend(
            self.old
                .shards()
                .iter()
                .filter(|s| self.new.shard_index(&s.name).is_none())
                .map(|s| s.name.clone()),
        );
        out
    }

    /// Targets own again exactly what they owned at the base epoch.
    async fn revoke_targets(&self) -> Result<(), MigrateError> {
        for target in self.targets() {
            let client = self.shard(&target).await?;
            // A target not prepared yet has no fence: it owns nothing.
            if fence::read(&client).await.is_err() {
                continue;
            }
            fence::set_owned(
                &client,
                self.old.version(),
                &owned_by(&self.old, &target),
                self.options.fence_wait,
            )
            .await
            .map_err(fence_error(&target))?;
        }
        Ok(())
    }

    /// After ownership was revoked, every target's range must still equal
    /// the (fenced, hence unchanged) source's; otherwise the grant is
    /// restored and the abort refused.
    async fn check_targets_untouched(&self) -> Result<(), MigrateError> {
        for m in &self.moves {
            if let Some((table, _, _)) = self.differing_table(m, Keys::All).await? {
                for target in self.targets() {
                    let client = self.shard(&target).await?;
                    fence::grant(&client, self.old.version(), &self.granted(&target))
                        .await
                        .map_err(fence_error(&target))?;
                }
                return Err(MigrateError::TargetWritten {
                    index: m.index,
                    table,
                    target: m.target.clone(),
                });
            }
        }
        Ok(())
    }

    /// The abort's idempotent body: ownership revoked, copied rows deleted
    /// from the targets, fences lowered on the sources, migration aborted.
    async fn finish_abort(&mut self) -> Result<(), MigrateError> {
        self.revoke_targets().await?;
        let moves = self.moves.clone();
        for m in &moves {
            let mut target = self.shard(&m.target).await?;
            let prepared = fence::read(&target).await.is_ok();
            if prepared {
                self.delete_moved(&m.target, &mut target, m).await?;
            }
            if self.mode == Mode::Online {
                self.capture_off(m).await?;
            }
            let source = self.shard(&m.source).await?;
            fence::lower(&source, &[m.range])
                .await
                .map_err(fence_error(&m.source))?;
            self.event(Some(m.index), "undone", json!({}));
        }
        // A shard the plan added leaves the way it came: no fence state or
        // fence triggers (its tables, now empty of moved rows, stay).
        let added: Vec<String> = self
            .new
            .shards()
            .iter()
            .filter(|s| self.old.shard_index(&s.name).is_none())
            .map(|s| s.name.clone())
            .collect();
        for name in added {
            let client = self.shard(&name).await?;
            client
                .batch_execute(&format!(
                    "DROP SCHEMA IF EXISTS {} CASCADE",
                    fence::SHARD_SCHEMA
                ))
                .await
                .map_err(|e| MigrateError::Fence {
                    shard: name.clone(),
                    source: FenceError::Query {
                        what: "removing the fence of a shard the plan added",
                        detail: postshard_router::describe_db_error(&e),
                    },
                })?;
        }
        self.migration
            .finish(&self.control, MigrationState::Aborted)
            .await?;
        self.event(None, "aborted", json!({ "epoch": self.old.version() }));
        Ok(())
    }
}

/// Whether a driver error in `e`'s source chain says the connection was
/// lost: closed, an I/O failure, or a server going away (admin shutdown,
/// crash, cannot connect now).
fn driver_lost(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(pg) = err.downcast_ref::<tokio_postgres::Error>() {
            return pg.is_closed()
                || pg.as_db_error().is_none_or(|db| {
                    let code = db.code().code();
                    code.starts_with("57P") || code.starts_with("08")
                });
        }
        next = err.source();
    }
    false
}

/// A table whose checksums differ: its name, the source's, the target's.
pub(super) type Difference = (String, TableChecksum, TableChecksum);

/// The first table (in map order) whose count or checksum differs.
pub(super) fn first_difference(
    source: &[TableChecksum],
    target: &[TableChecksum],
) -> Option<Difference> {
    source
        .iter()
        .zip(target)
        .find(|(s, t)| s != t)
        .map(|(s, t)| (s.table.clone(), s.clone(), t.clone()))
}

/// The verification failure of move `m` for `difference`.
pub(super) fn mismatch(m: &MoveRange, fenced: bool, difference: Difference) -> MigrateError {
    let (table, s, t) = difference;
    MigrateError::Mismatch {
        fenced,
        index: m.index,
        table,
        source_shard: m.source.clone(),
        target_shard: m.target.clone(),
        source_rows: s.rows,
        target_rows: t.rows,
        source_sum: s.sum,
        target_sum: t.sum,
    }
}

pub(super) fn fence_error(shard: &str) -> impl Fn(FenceError) -> MigrateError + '_ {
    move |source| MigrateError::Fence {
        shard: shard.to_string(),
        source,
    }
}
