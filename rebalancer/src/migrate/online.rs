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
use crate::range::{copy_range, CopyProgress, CopySpec, Endpoint, TokenRange};

/// How long a catch-up may run without its backlog shrinking before it
/// reports a `stall` (it keeps going).
const STALL_AFTER: Duration = Duration::from_secs(10);
/// Most chunks a throttled backfill is cut into.
const MAX_CHUNKS: u64 = 256;

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
    /// the source exports a snapshot (taken now, after capture is on);
    /// the range is copied from it with `copy_range`, in token chunks when
    /// throttled (each chunk replaces its part of the target, so a resumed
    /// backfill starts over harmlessly), pausing between chunks to stay under
    /// `max_rows_per_sec`. Reports `progress` events, then `copied_rows`.
    pub(super) async fn backfill(&mut self, m: &MoveRange) -> Result<(), MigrateError> {
        let mut holder = self.shard(&m.source).await?;
        let mut source = self.shard(&m.source).await?;
        let mut target = self.shard(&m.target).await?;
        let copy_error = |source| MigrateError::Copy {
            index: m.index,
            source,
        };
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
        let chunks = chunk_ranges(m.range, m.estimate, self.options.max_rows_per_sec);
        let (tables, seed) = (self.new.tables(), self.new.seed());
        let (max_rate, cancel) = (self.options.max_rows_per_sec, self.options.cancel.clone());
        // (chunk, table, its rows in the chunk, bytes, rows of earlier
        // chunks, the table's rows in earlier chunks)
        let (sender, mut receiver) =
            tokio::sync::mpsc::unbounded_channel::<(usize, String, u64, u64, u64, u64)>();
        let id = self.migration.id;
        let on_event = &mut *self.on_event;
        let estimate = m.estimate;
        let copy = async move {
            let started = Instant::now();
            let mut done = 0u64;
            let mut per_table: Vec<(String, u64)> =
                tables.iter().map(|t| (t.name.clone(), 0)).collect();
            // The snapshot is taken: say so before the first rows arrive.
            let first = tables.first().map(|t| t.name.clone()).unwrap_or_default();
            let _ = sender.send((0, first, 0, 0, 0, 0));
            for (n, chunk) in chunks.into_iter().enumerate() {
                if *cancel.borrow() {
                    return Err(MigrateError::Cancelled { id });
                }
                let before = per_table.clone();
                let report = |p: CopyProgress<'_>| {
                    let table_before = before
                        .iter()
                        .find(|(t, _)| t == p.table)
                        .map_or(0, |(_, r)| *r);
                    let _ =
                        sender.send((n, p.table.to_string(), p.rows, p.bytes, done, table_before));
                };
                let spec = CopySpec {
                    tables,
                    seed,
                    range: chunk,
                    snapshot: Some(&snapshot),
                    progress: Some(&report),
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
                .map_err(copy_error)?;
                for t in &copied {
                    done += t.rows;
                    if let Some(entry) = per_table.iter_mut().find(|(n, _)| *n == t.table) {
                        entry.1 += t.rows;
                    }
                }
                if let Some(rate) = max_rate.filter(|r| *r > 0) {
                    let due = Duration::from_secs_f64(done as f64 / rate as f64);
                    if let Some(ahead) = due.checked_sub(started.elapsed()) {
                        tokio::time::sleep(ahead).await;
                    }
                }
            }
            drop(sender);
            Ok(per_table)
        };
        let report = async {
            let mut chunk = usize::MAX;
            let mut in_chunk: Vec<(String, u64)> = Vec::new();
            while let Some((n, table, rows, bytes, done, table_before)) = receiver.recv().await {
                if n != chunk {
                    chunk = n;
                    in_chunk.clear();
                }
                match in_chunk.iter_mut().find(|(t, _)| *t == table) {
                    Some(entry) => entry.1 = rows,
                    None => in_chunk.push((table.clone(), rows)),
                }
                let detail = json!({
                    "table": table,
                    "table_rows": table_before + rows,
                    "rows": done + in_chunk.iter().map(|(_, r)| r).sum::<u64>(),
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
        let (copied, ()) = tokio::join!(copy, report);
        let copied = copied?;
        // The exporting transaction only held the snapshot.
        exporting
            .commit()
            .await
            .map_err(|e| backfill_query(m, &e))?;
        let rows: serde_json::Map<String, serde_json::Value> =
            copied.into_iter().map(|(t, n)| (t, json!(n))).collect();
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

/// The parts a backfill of `range` is copied in: one, unless throttled;
/// then about one second of rows each (by the estimate; 64 parts without
/// one), at most [`MAX_CHUNKS`], split evenly by token (tokens are hashes,
/// so rows spread evenly).
fn chunk_ranges(
    range: TokenRange,
    estimate: Option<u64>,
    max_rate: Option<u64>,
) -> Vec<TokenRange> {
    let parts = match max_rate.filter(|r| *r > 0) {
        None => 1,
        Some(rate) => estimate
            .map_or(64, |rows| rows.div_ceil(rate))
            .clamp(1, MAX_CHUNKS),
    };
    let (from, to) = (i128::from(range.from()), range.to());
    let step = ((to - from) / i128::from(parts)).max(1);
    let mut out = Vec::new();
    let mut start = from;
    while start < to {
        let end = if out.len() as u64 + 1 >= parts {
            to
        } else {
            (start + step).min(to)
        };
        if let Ok(r) = TokenRange::new(start, end) {
            out.push(r);
        }
        start = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_range_exactly_in_order() {
        let ring = TokenRange::ring();
        for (estimate, rate, parts) in [
            (None, None, 1),
            (Some(10_000), Some(1_000), 10),
            (None, Some(5), 64),
            (Some(u64::MAX), Some(1), MAX_CHUNKS as usize),
            (Some(1), Some(1_000), 1),
        ] {
            let chunks = chunk_ranges(ring, estimate, rate);
            assert_eq!(chunks.len(), parts, "{estimate:?} {rate:?}");
            assert_eq!(chunks.first().map(|c| c.from()), Some(ring.from()));
            assert_eq!(chunks.last().map(|c| c.to()), Some(ring.to()));
            for pair in chunks.windows(2) {
                assert_eq!(i128::from(pair[1].from()), pair[0].to());
            }
        }
        let tiny = TokenRange::new(0, 3).unwrap();
        let chunks = chunk_ranges(tiny, Some(100), Some(1));
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks.last().map(|c| c.to()), Some(3));
    }
}
