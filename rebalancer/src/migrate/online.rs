//! The online mode's own steps: change capture on the source, the backfill
//! from one snapshot taken after capture is on, and the catch-up that
//! replays captured changes (before the fence until the backlog is small,
//! under the fence until it is empty), and the comparison at the cut
//! ([`Run::verify_at_cut`]) that leaves only the keys changed since for the
//! fenced verification. The flip, acknowledgements and
//! clean-up are shared with the blocking mode ([`super::run`]).
//!
//! Why no write is lost between capture and snapshot: [`crate::capture::on`]
//! returns only after every transaction that was running when the capture
//! triggers committed has ended, so a write to a moving range either
//! committed before the backfill's snapshot (the snapshot sees it) or
//! fired the capture trigger (the changelog holds its key, committed with
//! it, and the catch-up copies the key's rows again).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::mpsc;

use super::failpoint::{self, When};
use super::progress_log::ProgressLog;
use super::run::{backoff, fence_error, first_difference, mismatch, MoveRange, Run};
use super::{Event, MigrateError, StepId};
use crate::capture::{self, CaptureError};
use crate::control::Phase;
use crate::fence;
use crate::range::{checksum_range_keys, copy_range_paced, CopyProgress, CopySpec, Endpoint, Keys};
use crate::token_range::{union, TokenRange};

/// How long a catch-up may run without its backlog shrinking before it
/// reports a `stall` (it keeps going).
const STALL_AFTER: Duration = Duration::from_secs(10);

/// How far the replay right before the fence takes a move's backlog
/// (changes): the replay under the fence then copies about this many keys,
/// plus those written while the fence went up.
const FENCE_BACKLOG: u64 = 8;

/// Moves whose approach, or fenced replay and comparison, run at once
/// (each holds about three connections to its source and target).
const AT_ONCE: usize = 8;

/// Batches that replay may take before the fence goes up anyway (a write
/// load the replay cannot get ahead of: the fenced replay takes the rest).
const APPROACH_ROUNDS: u32 = 20;

impl<'a> Run<'a> {
    /// The caller's event callback, for a stage whose concurrent work sends
    /// events through a channel while `&self` is shared; a no-op stands in
    /// until it is put back (a zero-sized closure: leaking its box
    /// allocates nothing).
    fn take_on_event(&mut self) -> &'a mut dyn FnMut(&Event) {
        std::mem::replace(&mut self.on_event, Box::leak(Box::new(|_: &Event| {})))
    }

    fn capture_error(m: &MoveRange) -> impl Fn(CaptureError) -> MigrateError + '_ {
        move |source| MigrateError::Capture {
            index: m.index,
            source,
        }
    }

    /// Every range of this plan leaving `source`: what its capture covers.
    fn leaving(&self, source: &str) -> Vec<TokenRange> {
        union(
            self.moves
                .iter()
                .filter(|m| m.source == source)
                .map(|m| m.range),
        )
    }

    /// `capturing`: capture on for every range leaving the source (the same
    /// for each of its moves, so redoing it is harmless), older writers
    /// waited for.
    pub(super) async fn capture_on(&self, m: &MoveRange) -> Result<(), MigrateError> {
        let client = self.shard(&m.source).await?;
        capture::on(
            &client,
            &m.source,
            self.new.tables(),
            self.new.seed(),
            &self.leaving(&m.source),
            self.options.fence_wait,
        )
        .await
        .map_err(Self::capture_error(m))
    }

    /// Capture off on the move's source (triggers, functions, changelog).
    pub(super) async fn capture_off(&mut self, m: &MoveRange) -> Result<(), MigrateError> {
        let client = self.shard(&m.source).await?;
        capture::off(
            &client,
            &m.source,
            self.new.tables(),
            self.options.fence_wait,
        )
        .await
        .map_err(Self::capture_error(m))
    }

    /// `copied` (online): the backfill of one move, its events passed to
    /// the caller's `on_event` as they come; records the rows copied.
    pub(super) async fn backfill(&mut self, m: &MoveRange) -> Result<(), MigrateError> {
        let on_event = self.take_on_event();
        let this = &*self;
        let rows = drain_while(on_event, &this.progress_log, |events| async move {
            this.backfill_rows(m, &events).await
        })
        .await;
        self.on_event = on_event;
        let rows = rows?;
        self.record_copied(m.index, rows).await;
        Ok(())
    }

    /// The backfill: one repeatable-read transaction on the source exports
    /// a snapshot (taken now, after capture is on) and holds it while
    /// `copy_range_paced` copies the range from it (paced to
    /// `max_rows_per_sec`; it replaces the range on the target, so a resumed
    /// backfill starts over harmlessly). Sends `progress` events (the
    /// first, rows 0, once the snapshot is taken) to `events`; returns rows
    /// copied per table. The cancel signal stops it mid-copy (the target
    /// rolls back).
    async fn backfill_rows(
        &self,
        m: &MoveRange,
        events: &mpsc::UnboundedSender<Event>,
    ) -> Result<serde_json::Value, MigrateError> {
        let mut holder = self.shard(&m.source).await?;
        let mut source = self.shard(&m.source).await?;
        let mut target = self.shard(&m.target).await?;
        let (exporting, snapshot) = export_snapshot(&mut holder)
            .await
            .map_err(|e| snapshot_error(m, "exporting the backfill snapshot", &e))?;
        let (tables, seed) = (self.new.tables(), self.new.seed());
        let id = self.migration.id;
        // Rows so far per table (the hook is called from the copy, `Sync`).
        let totals: Mutex<Vec<(String, u64)>> = Mutex::new(Vec::new());
        let send = |table: &str, rows: u64, bytes: u64| {
            let mut totals = totals.lock().unwrap_or_else(PoisonError::into_inner);
            match totals.iter_mut().find(|(t, _)| t == table) {
                Some(entry) => entry.1 = rows,
                None => totals.push((table.to_string(), rows)),
            }
            let detail = json!({
                "table": table,
                "table_rows": rows,
                "rows": totals.iter().map(|(_, r)| r).sum::<u64>(),
                "estimate": m.estimate,
                "bytes": bytes,
            });
            let _ = events.send(Event {
                migration: id,
                move_index: Some(m.index),
                event: "progress".into(),
                detail,
            });
        };
        send(tables.first().map_or("", |t| t.name.as_str()), 0, 0);
        let report = |p: CopyProgress<'_>| send(p.table, p.rows, p.bytes);
        let spec = CopySpec {
            tables,
            seed,
            range: m.range,
            snapshot: Some(&snapshot),
            progress: Some(&report),
        };
        let copy = copy_range_paced(
            Endpoint {
                shard: &m.source,
                client: &mut source,
            },
            Endpoint {
                shard: &m.target,
                client: &mut target,
            },
            &spec,
            self.options.max_rows_per_sec,
        );
        // Ctrl-C mid-backfill: dropping the copy rolls the target back
        // (the copy is one transaction), which resume redoes.
        let mut cancel = self.options.cancel.clone();
        let cancelled = async move {
            while !*cancel.borrow_and_update() {
                if cancel.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        let copied = tokio::select! {
            copied = copy => copied.map_err(|source| MigrateError::Copy {
                index: m.index,
                source,
            })?,
            () = cancelled => return Err(MigrateError::Cancelled { id }),
        };
        // The exporting transaction only held the snapshot.
        exporting
            .commit()
            .await
            .map_err(|e| snapshot_error(m, "exporting the backfill snapshot", &e))?;
        let rows: serde_json::Map<String, serde_json::Value> = copied
            .iter()
            .map(|t| (t.table.clone(), json!(t.rows)))
            .collect();
        Ok(serde_json::Value::Object(rows))
    }

    /// The `capturing` and `copied` steps in `group` (in step order), up to
    /// `parallel` moves at once; each move's steps in order, each journaled
    /// before it is done, failpoints and retries as for any step. Events
    /// reach `on_event` as they come. Stops at the first error once the
    /// running moves have ended.
    pub(super) async fn backfill_in_parallel(
        &mut self,
        group: &[StepId],
    ) -> Result<(), MigrateError> {
        let mut units: Vec<(u32, Vec<StepId>)> = Vec::new();
        for step in group {
            let index = self.move_at(step.move_index)?.index;
            match units.last_mut() {
                Some((i, steps)) if *i == index => steps.push(*step),
                _ => units.push((index, vec![*step])),
            }
        }
        let parallel = self.options.parallel.max(1);
        let on_event = self.take_on_event();
        let this = &*self;
        let work = |events: mpsc::UnboundedSender<Event>| async move {
            let results: Vec<Result<(u32, Option<serde_json::Value>), MigrateError>> =
                futures_util::stream::iter(units)
                    .map(|(index, steps)| {
                        let events = events.clone();
                        async move {
                            let rows = this.backfill_unit(index, &steps, &events).await?;
                            Ok((index, rows))
                        }
                    })
                    .buffer_unordered(parallel)
                    .collect()
                    .await;
            results
        };
        let results = drain_while(on_event, &this.progress_log, work).await;
        self.on_event = on_event;
        let mut first_error = None;
        for result in results {
            match result {
                Ok((index, Some(rows))) => self.record_copied(index, rows).await,
                Ok((_, None)) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// One move's backfill steps (see [`Run::backfill_in_parallel`]);
    /// returns the rows copied when it copied.
    async fn backfill_unit(
        &self,
        index: u32,
        steps: &[StepId],
        events: &mpsc::UnboundedSender<Event>,
    ) -> Result<Option<serde_json::Value>, MigrateError> {
        let m = &self.move_at(Some(index))?;
        let mut rows = None;
        for step in steps {
            self.check_cancel()?;
            let detail = self.journal_detail(*step);
            let text = detail.to_string();
            let text = &text;
            self.retrying(*step, events, move || async move {
                self.migration
                    .append(&self.control, step.move_index, step.phase, text)
                    .await
                    .map(|_| ())
                    .map_err(MigrateError::from)
            })
            .await?;
            let _ = events.send(Event {
                migration: self.migration.id,
                move_index: step.move_index,
                event: step.phase.as_str().into(),
                detail,
            });
            failpoint::hit(step.phase, step.move_index, When::Before);
            match step.phase {
                Phase::Capturing => {
                    self.retrying(*step, events, move || self.capture_on(m))
                        .await?;
                }
                Phase::Copied => {
                    rows = Some(
                        self.retrying(*step, events, move || self.backfill_rows(m, events))
                            .await?,
                    );
                }
                other => {
                    return Err(MigrateError::Journal {
                        id: self.migration.id,
                        what: format!("`{other}` is not a backfill step"),
                    })
                }
            }
            failpoint::hit(step.phase, step.move_index, When::After);
        }
        Ok(rows)
    }

    /// Runs `op` until it succeeds, retrying (with `stall` events) while it
    /// fails on a lost connection, for up to `retry_for`.
    async fn retrying<T, F, Fut>(
        &self,
        step: StepId,
        events: &mpsc::UnboundedSender<Event>,
        mut op: F,
    ) -> Result<T, MigrateError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, MigrateError>>,
    {
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            match op().await {
                Ok(value) => return Ok(value),
                Err(e) if self.retryable(&e) && started.elapsed() < self.options.retry_for => {
                    self.sessions.forget_idle();
                    attempt += 1;
                    let pause = backoff(attempt);
                    let _ = events.send(Event {
                        migration: self.migration.id,
                        move_index: step.move_index,
                        event: "stall".into(),
                        detail: json!({
                            "step": step.phase.as_str(),
                            "error": e.to_string(),
                            "attempt": attempt,
                            "retry_in_ms": pause.as_millis() as u64,
                        }),
                    });
                    tokio::time::sleep(pause).await;
                    self.check_cancel()?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The replay of `m`'s captured changes in batches until `until`,
    /// sending `lag` after each batch and `stall` when the backlog stops
    /// shrinking. `cut` is the move's cut (see [`Run::verify_at_cut`]):
    /// every key replayed joins it, and the extended cut is returned; a
    /// replay that fails drops it (the target may have committed keys the
    /// cut would miss), so that move is then compared whole.
    async fn replay(
        &self,
        m: &MoveRange,
        until: Until,
        mut cut: Option<BTreeSet<i64>>,
        events: &mpsc::UnboundedSender<Event>,
    ) -> Result<Option<BTreeSet<i64>>, MigrateError> {
        let mut source = self.shard(&m.source).await?;
        let mut target = self.shard(&m.target).await?;
        let (tables, seed) = (self.new.tables(), self.new.seed());
        let limit = self.options.replay_batch.max(1);
        let mut best = u64::MAX;
        let mut since = Instant::now();
        let mut rounds = 0u32;
        loop {
            // Under the fence the step finishes: stopping there would keep
            // writes to the range refused until someone resumes.
            if until != Until::Empty {
                self.check_cancel()?;
            }
            let replayed = capture::replay_batch(
                Endpoint {
                    shard: &m.source,
                    client: &mut source,
                },
                Endpoint {
                    shard: &m.target,
                    client: &mut target,
                },
                tables,
                seed,
                m.range,
                limit,
            )
            .await
            .map_err(Self::capture_error(m))?;
            if let Some(keys) = &mut cut {
                keys.extend(replayed.copied.iter().copied());
            }
            rounds += 1;
            let backlog = match until {
                // A batch short of the limit read every change left, and
                // under the fence none can be added.
                Until::Empty if replayed.changes < u64::from(limit) => 0,
                _ => capture::backlog(&source, &m.source, seed, m.range)
                    .await
                    .map_err(Self::capture_error(m))?,
            };
            let fenced = until == Until::Empty;
            let detail =
                json!({ "backlog": backlog, "replayed": replayed.changes, "fenced": fenced });
            self.send(events, Some(m.index), "lag", detail);
            let done = match until {
                Until::Empty => backlog == 0,
                Until::Backlog(most) => backlog <= most,
                Until::Fence => backlog <= FENCE_BACKLOG || rounds >= APPROACH_ROUNDS,
            };
            if done {
                return Ok(cut);
            }
            if backlog < best {
                best = backlog;
                since = Instant::now();
            } else if since.elapsed() >= STALL_AFTER {
                let detail = json!({
                    "step": "caught_up",
                    "error": format!("the backlog ({backlog} changes) has not shrunk for {:?}", STALL_AFTER),
                    "attempt": 0,
                    "retry_in_ms": 0,
                });
                self.send(events, Some(m.index), "stall", detail);
                since = Instant::now();
            }
        }
    }

    /// `caught_up` (before the fence, writes continuing): replays `m`'s
    /// captured changes until at most `catch_up_rows` wait.
    pub(super) async fn catch_up(&mut self, m: &MoveRange) -> Result<(), MigrateError> {
        let cut = self.memory.cuts.remove(&m.index);
        let until = Until::Backlog(self.options.catch_up_rows);
        let on_event = self.take_on_event();
        let this = &*self;
        let cut = drain_while(on_event, &this.progress_log, |events| async move {
            this.replay(m, until, cut, &events).await
        })
        .await;
        self.on_event = on_event;
        if let Some(cut) = cut? {
            self.memory.cuts.insert(m.index, cut);
        }
        Ok(())
    }

    /// `fenced` (online) for `group` at once: every move's backlog brought
    /// down to [`FENCE_BACKLOG`] and its cut made again ([`Run::cut`]: a
    /// move without one, after a restart, is compared whole here, unfenced),
    /// so that the fenced comparison covers only the keys changed after it
    /// (up to [`AT_ONCE`] moves at a time); then each source's ranges
    /// of the group fenced in one update, sources concurrently, older
    /// writers waited for. Raising is idempotent, so a resumed run raises
    /// whatever part of the group an earlier process had raised again.
    pub(super) async fn fence_moves(&mut self, group: &[MoveRange]) -> Result<(), MigrateError> {
        self.each_move(group, Stage::Approach).await?;
        let mut by_source: BTreeMap<&str, Vec<TokenRange>> = BTreeMap::new();
        for m in group {
            by_source.entry(&m.source).or_default().push(m.range);
        }
        let raised = Instant::now();
        let this = &*self;
        try_join_all(by_source.into_iter().map(|(source, ranges)| async move {
            let client = this.shard(source).await?;
            fence::raise(&client, &union(ranges), this.options.fence_wait)
                .await
                .map_err(fence_error(source))
        }))
        .await?;
        for m in group {
            self.memory.fenced_at.insert(m.index, raised);
        }
        Ok(())
    }

    /// `verified` (online) for `group` at once, up to [`AT_ONCE`] moves at a
    /// time: the last replay under the fence (until the range's changelog
    /// is empty), then the comparison of the keys its cut holds, or of the
    /// whole range when this process made no cut for it.
    pub(super) async fn verify_moves(&mut self, group: &[MoveRange]) -> Result<(), MigrateError> {
        self.each_move(group, Stage::Fenced).await?;
        self.memory.verified.extend(group.iter().map(|m| m.index));
        Ok(())
    }

    /// Does `stage` for every move of `group`, up to [`AT_ONCE`] at a time,
    /// each with its cut (taken out of `cuts`, put back for the moves whose
    /// stage succeeded), passing their events on as they come. Returns the
    /// first error once every move's stage has ended.
    async fn each_move(&mut self, group: &[MoveRange], stage: Stage) -> Result<(), MigrateError> {
        let cuts: Vec<Option<BTreeSet<i64>>> = group
            .iter()
            .map(|m| self.memory.cuts.remove(&m.index))
            .collect();
        let on_event = self.take_on_event();
        let this = &*self;
        let work = |events: mpsc::UnboundedSender<Event>| async move {
            let each = group.iter().zip(cuts).map(|(m, cut)| {
                let events = &events;
                async move { this.stage(stage, m, cut, events).await }
            });
            futures_util::stream::iter(each)
                .buffered(AT_ONCE)
                .collect::<Vec<_>>()
                .await
        };
        let results = drain_while(on_event, &this.progress_log, work).await;
        self.on_event = on_event;
        let mut first_error = None;
        for (m, result) in group.iter().zip(results) {
            match result {
                Ok(Some(cut)) => {
                    self.memory.cuts.insert(m.index, cut);
                }
                Ok(None) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// One move's part of [`Run::fence_moves`] or [`Run::verify_moves`];
    /// returns its cut.
    async fn stage(
        &self,
        stage: Stage,
        m: &MoveRange,
        cut: Option<BTreeSet<i64>>,
        events: &mpsc::UnboundedSender<Event>,
    ) -> Result<Option<BTreeSet<i64>>, MigrateError> {
        match stage {
            Stage::Approach => {
                let cut = self.replay(m, Until::Fence, cut, events).await?;
                self.cut(m, cut).await.map(Some)
            }
            Stage::Fenced => {
                let cut = self.replay(m, Until::Empty, cut, events).await?;
                match &cut {
                    Some(keys) => {
                        let keys: Vec<i64> = keys.iter().copied().collect();
                        self.verify(m, Keys::Only(&keys)).await?;
                    }
                    None => self.verify(m, Keys::All).await?,
                }
                Ok(cut)
            }
        }
    }

    /// Sends one event of this migration to `events`.
    fn send(
        &self,
        events: &mpsc::UnboundedSender<Event>,
        move_index: Option<u32>,
        event: &str,
        detail: serde_json::Value,
    ) {
        let _ = events.send(Event {
            migration: self.migration.id,
            move_index,
            event: event.into(),
            detail,
        });
    }
}

/// A move's part of the fenced window ([`Run::each_move`]).
#[derive(Debug, Clone, Copy)]
enum Stage {
    /// Before the fence: replay down to [`FENCE_BACKLOG`], then the cut again.
    Approach,
    /// Under the fence: the last replay, then the comparison.
    Fenced,
}

/// Until when [`Run::replay`] replays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Until {
    /// At most this many changes wait (`caught_up`: writes continue).
    Backlog(u64),
    /// At most [`FENCE_BACKLOG`] changes wait, or [`APPROACH_ROUNDS`]
    /// batches were replayed (right before the fence).
    Fence,
    /// None waits (under the fence, where none can be added).
    Empty,
}

/// Runs the work `start` returns when given the sending end of an event
/// channel (the work owns it, so the channel closes when the work ends)
/// while passing the events it sends to `log` and `on_event` as they come; the
/// work's output.
async fn drain_while<T, F, Fut>(on_event: &mut dyn FnMut(&Event), log: &ProgressLog, start: F) -> T
where
    F: FnOnce(mpsc::UnboundedSender<Event>) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let (events, mut received) = mpsc::unbounded_channel();
    let work = start(events);
    let drain = async {
        while let Some(e) = received.recv().await {
            log.note(&e);
            on_event(&e);
        }
    };
    let (out, ()) = tokio::join!(work, drain);
    out
}

impl Run<'_> {
    /// `caught_up`'s comparison at the cut (see [`Run::cut`]), the move's
    /// cut replaced by the new one.
    pub(super) async fn verify_at_cut(&mut self, m: &MoveRange) -> Result<(), MigrateError> {
        let previous = self.memory.cuts.remove(&m.index);
        let cut = self.cut(m, previous).await?;
        self.memory.cuts.insert(m.index, cut);
        Ok(())
    }

    /// A comparison at a cut, before the fence, with replay of `m` paused
    /// (this process is its only replayer): in one repeatable-read
    /// snapshot S of the source, K = the range's keys with captured changes
    /// not yet replayed. Without a `previous` cut the range less K must
    /// checksum the same on the source at S and on the target (which
    /// nobody else writes: it refuses app writes to a range it does not
    /// own); with one (P: an earlier cut's K and every key replayed since)
    /// only the keys of P less K are compared, the rest being equal since
    /// that cut. Returns K, to which the replays that follow add every key
    /// they replay; the fenced verification then compares only those keys
    /// (ARCHITECTURE.md, "Online mode", argues why that suffices).
    ///
    /// Errors: [`MigrateError::Mismatch`] (`fenced` false) when the sides
    /// differ; [`MigrateError::Capture`], [`MigrateError::Checksum`].
    async fn cut(
        &self,
        m: &MoveRange,
        previous: Option<BTreeSet<i64>>,
    ) -> Result<BTreeSet<i64>, MigrateError> {
        let mut holder = self.shard(&m.source).await?;
        let mut source = self.shard(&m.source).await?;
        let mut target = self.shard(&m.target).await?;
        let (cut, snapshot) = export_snapshot(&mut holder)
            .await
            .map_err(|e| snapshot_error(m, "taking the cut's snapshot", &e))?;
        let (tables, seed) = (self.new.tables(), self.new.seed());
        let pending = capture::pending_keys(&cut, &m.source, seed, m.range)
            .await
            .map_err(Self::capture_error(m))?;
        let changed: Vec<i64>;
        let keys = match &previous {
            None => Keys::Except(&pending),
            Some(previous) => {
                let pending: BTreeSet<i64> = pending.iter().copied().collect();
                changed = previous.difference(&pending).copied().collect();
                Keys::Only(&changed)
            }
        };
        let (at_cut, on_target) = tokio::join!(
            checksum_range_keys(
                Endpoint {
                    shard: &m.source,
                    client: &mut source,
                },
                tables,
                seed,
                m.range,
                Some(&snapshot),
                keys,
            ),
            checksum_range_keys(
                Endpoint {
                    shard: &m.target,
                    client: &mut target,
                },
                tables,
                seed,
                m.range,
                None,
                keys,
            ),
        );
        let checksum = |source| MigrateError::Checksum {
            index: m.index,
            source,
        };
        let (at_cut, on_target) = (at_cut.map_err(checksum)?, on_target.map_err(checksum)?);
        // The snapshot holder only held S.
        cut.commit()
            .await
            .map_err(|e| snapshot_error(m, "taking the cut's snapshot", &e))?;
        if let Some(difference) = first_difference(&at_cut, &on_target) {
            return Err(mismatch(m, false, difference));
        }
        Ok(pending.into_iter().collect())
    }
}

/// A failure of `what` on move `m`'s source snapshot (the cut's or the
/// backfill's), retryable when the connection was lost.
fn snapshot_error(m: &MoveRange, what: &'static str, e: &tokio_postgres::Error) -> MigrateError {
    MigrateError::Capture {
        index: m.index,
        source: CaptureError::Query {
            shard: m.source.clone(),
            what,
            detail: postshard_router::describe_db_error(e),
            lost: e.is_closed() || e.as_db_error().is_none(),
        },
    }
}

/// Opens a read-only REPEATABLE READ transaction on `holder` and exports its
/// snapshot, so other sessions can read exactly what it sees; the snapshot
/// stays importable while the returned transaction is open.
async fn export_snapshot(
    holder: &mut tokio_postgres::Client,
) -> Result<(tokio_postgres::Transaction<'_>, String), tokio_postgres::Error> {
    let tx = holder
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let snapshot: String = tx
        .query_one("SELECT pg_export_snapshot()", &[])
        .await?
        .try_get(0)?;
    Ok((tx, snapshot))
}
