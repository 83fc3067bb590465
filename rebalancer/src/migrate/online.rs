//! The online mode's own steps: change capture on the source, the backfill
//! from one snapshot taken after capture is on, and the catch-up that
//! replays captured changes (before the fence until the backlog is small,
//! under the fence until it is empty). The flip, acknowledgements and
//! clean-up are shared with the blocking mode ([`super::run`]).
//!
//! Why no write is lost between capture and snapshot: [`crate::capture::on`]
//! returns only after every transaction that was running when the capture
//! triggers committed has ended, so a write to a moving range either
//! committed before the backfill's snapshot (the snapshot sees it) or
//! fired the capture trigger (the changelog holds its key, committed with
//! it, and the catch-up copies the key's rows again).

use std::time::{Duration, Instant};

use serde_json::json;

use super::run::{MoveRange, Run};
use super::{union, MigrateError};
use crate::capture::{self, CaptureError};
use crate::fence;
use crate::range::{copy_range_paced, CopyProgress, CopySpec, Endpoint};

/// How long a catch-up may run without its backlog shrinking before it
/// reports a `stall` (it keeps going).
const STALL_AFTER: Duration = Duration::from_secs(10);

impl Run<'_> {
    fn capture_error(m: &MoveRange) -> impl Fn(CaptureError) -> MigrateError + '_ {
        move |source| MigrateError::Capture {
            index: m.index,
            source,
        }
    }

    /// Every range of this plan leaving `source`: what its capture covers.
    fn leaving(&self, source: &str) -> Vec<fence::TokenRange> {
        let ranges: Vec<fence::TokenRange> = self
            .moves
            .iter()
            .filter(|m| m.source == source)
            .map(|m| m.fence)
            .collect();
        union(&ranges, &[])
    }

    /// `capturing`: capture on for every range leaving the source (the same
    /// for each of its moves, so redoing it is harmless), older writers
    /// waited for.
    pub(super) async fn capture_on(&mut self, m: &MoveRange) -> Result<(), MigrateError> {
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

    /// `copied` (online): the backfill. One repeatable-read transaction on
    /// the source exports a snapshot (taken now, after capture is on) and
    /// holds it while `copy_range_paced` copies the range from it (paced to
    /// `max_rows_per_sec`; it replaces the range on the target, so a resumed
    /// backfill starts over harmlessly). Reports `progress` events (the
    /// first, rows 0, once the snapshot is taken), then `copied_rows`.
    pub(super) async fn backfill(&mut self, m: &MoveRange) -> Result<(), MigrateError> {
        let mut holder = self.shard(&m.source).await?;
        let mut source = self.shard(&m.source).await?;
        let mut target = self.shard(&m.target).await?;
        let exporting = holder
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(|e| backfill_query(m, &e))?;
        let snapshot: String = exporting
            .query_one("SELECT pg_export_snapshot()", &[])
            .await
            .map_err(|e| backfill_query(m, &e))?
            .get(0);
        let (tables, seed) = (self.new.tables(), self.new.seed());
        let max_rate = self.options.max_rows_per_sec;
        // (table, its rows so far, bytes)
        let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<(String, u64, u64)>();
        let id = self.migration.id;
        let on_event = &mut *self.on_event;
        let estimate = m.estimate;
        let copy = async move {
            let first = tables.first().map(|t| t.name.clone()).unwrap_or_default();
            let _ = sender.send((first, 0, 0));
            let report = |p: CopyProgress<'_>| {
                let _ = sender.send((p.table.to_string(), p.rows, p.bytes));
            };
            let spec = CopySpec {
                tables,
                seed,
                range: m.range,
                snapshot: Some(&snapshot),
                progress: Some(&report),
            };
            copy_range_paced(
                Endpoint {
                    shard: &m.source,
                    client: &mut source,
                },
                Endpoint {
                    shard: &m.target,
                    client: &mut target,
                },
                &spec,
                max_rate,
            )
            .await
            .map_err(|source| MigrateError::Copy {
                index: m.index,
                source,
            })
        };
        let report = async {
            let mut per_table: Vec<(String, u64)> = Vec::new();
            while let Some((table, rows, bytes)) = receiver.recv().await {
                match per_table.iter_mut().find(|(t, _)| *t == table) {
                    Some(entry) => entry.1 = rows,
                    None => per_table.push((table.clone(), rows)),
                }
                let detail = json!({
                    "table": table,
                    "table_rows": rows,
                    "rows": per_table.iter().map(|(_, r)| r).sum::<u64>(),
                    "estimate": estimate,
                    "bytes": bytes,
                });
                on_event(&super::Event {
                    migration: id,
                    move_index: Some(m.index),
                    event: "progress".into(),
                    detail,
                });
            }
        };
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
            (copied, ()) = async { tokio::join!(copy, report) } => copied?,
            () = cancelled => return Err(MigrateError::Cancelled { id }),
        };
        // The exporting transaction only held the snapshot.
        exporting
            .commit()
            .await
            .map_err(|e| backfill_query(m, &e))?;
        let rows: serde_json::Map<String, serde_json::Value> = copied
            .iter()
            .map(|t| (t.table.clone(), json!(t.rows)))
            .collect();
        let rows = serde_json::Value::Object(rows);
        self.copied.insert(m.index, rows.clone());
        self.event(Some(m.index), "copied_rows", rows);
        Ok(())
    }

    /// `caught_up` (and, with `fenced`, the last replay of `verified`):
    /// replays captured changes of the move in batches; before the fence
    /// until at most `catch_up_rows` wait, under it until none does (the
    /// fence's wait for older writers means none can be added). Reports
    /// `lag` after each batch and `stall` when the backlog stops shrinking.
    pub(super) async fn catch_up(
        &mut self,
        m: &MoveRange,
        fenced: bool,
    ) -> Result<(), MigrateError> {
        let mut source = self.shard(&m.source).await?;
        let mut target = self.shard(&m.target).await?;
        let (tables, seed) = (self.new.tables().to_vec(), self.new.seed());
        let mut best = u64::MAX;
        let mut since = Instant::now();
        loop {
            // Under the fence the step finishes: stopping there would keep
            // writes to the range refused until someone resumes.
            if !fenced {
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
                &tables,
                seed,
                m.range,
                self.options.replay_batch,
            )
            .await
            .map_err(Self::capture_error(m))?;
            let backlog = capture::backlog(&source, &m.source, seed, m.range)
                .await
                .map_err(Self::capture_error(m))?;
            let detail =
                json!({ "backlog": backlog, "replayed": replayed.changes, "fenced": fenced });
            self.event(Some(m.index), "lag", detail);
            if (fenced && backlog == 0 && replayed.changes == 0)
                || (!fenced && backlog <= self.options.catch_up_rows)
            {
                return Ok(());
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
                self.event(Some(m.index), "stall", detail);
                since = Instant::now();
            }
        }
    }
}

fn backfill_query(m: &MoveRange, e: &tokio_postgres::Error) -> MigrateError {
    MigrateError::Capture {
        index: m.index,
        source: CaptureError::Query {
            shard: m.source.clone(),
            what: "exporting the backfill snapshot",
            detail: postshard_router::describe_db_error(e),
            lost: e.is_closed() || e.as_db_error().is_none(),
        },
    }
}
