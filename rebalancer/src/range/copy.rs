//! Copying a token range of every sharded table from a source shard to a
//! target shard with binary COPY, streamed chunk by chunk: the range is
//! never held in memory.
//!
//! The copy is idempotent, so `resume` can simply rerun it: in one target
//! transaction (replica role, so the app's triggers and foreign-key checks do
//! not fire) it deletes the range's rows already on the target, then copies
//! each table. Either every table's range lands or none does.

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use postshard_router::map::Table;
use tokio_postgres::Client;

use super::schema::{read_schema, SchemaError, TableSchema};
use super::tuples::TupleCounter;
use super::{begin_snapshot, describe, Endpoint, TokenRange, REPLICA_ROLE};

/// Rows between two progress reports (at most; see [`PROGRESS_AFTER`]).
pub const PROGRESS_EVERY: u64 = 10_000;

/// Time after which a progress report is due even with fewer rows (a
/// throttled or slow copy still shows it moves).
const PROGRESS_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Bytes of rows sent to the target as one COPY message.
const SEND_AT: usize = 64 * 1024;

/// Rows taken from the source's stream at most per wake-up (those already
/// received).
const READY_ROWS: usize = 1024;

/// How far the copy of one table has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyProgress<'a> {
    /// Table as the map names it.
    pub table: &'a str,
    /// Rows streamed so far for this table.
    pub rows: u64,
    /// Bytes of COPY data streamed so far for this table.
    pub bytes: u64,
}

/// Called every [`PROGRESS_EVERY`] rows or [`PROGRESS_AFTER`], whichever
/// comes first, and at the end of each table.
pub type OnProgress<'a> = &'a (dyn Fn(CopyProgress<'_>) + Sync);

/// What to copy.
#[derive(Clone, Copy)]
pub struct CopySpec<'a> {
    /// The sharded tables (from the map), copied in this order.
    pub tables: &'a [Table],
    /// The map's `hashint8extended` seed.
    pub seed: i64,
    /// The tokens whose rows move.
    pub range: TokenRange,
    /// Read the source as of this exported snapshot (`pg_export_snapshot()`
    /// or a replication slot's); `None` takes a fresh snapshot, one for all
    /// tables.
    pub snapshot: Option<&'a str>,
    /// Progress reports, if wanted (rows, as they pass, not yet committed).
    pub progress: Option<OnProgress<'a>>,
}

/// One table's share of a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCopied {
    /// Table as the map names it.
    pub table: String,
    /// Rows written to the target.
    pub rows: u64,
    /// Rows of the range that were already on the target and were replaced.
    pub replaced: u64,
    /// Bytes of COPY data streamed (binary format).
    pub bytes: u64,
}

/// Why a copy failed; the target is left as it was.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// A table could not be read from a catalog, or cannot be sharded.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// Source and target disagree on a table's columns.
    #[error(
        "table {table}: columns differ between source shard {source_shard} and target shard {target_shard}: {}",
        differences.join("; ")
    )]
    ColumnsDiffer {
        /// Table as the map names it.
        table: String,
        /// Source shard.
        source_shard: String,
        /// Target shard.
        target_shard: String,
        /// One line per column (as seen from the source).
        differences: Vec<String>,
    },
    /// The target wrote another number of rows than the source sent, or the
    /// stream ended early; nothing was committed.
    #[error(
        "table {table}: source shard {source_shard} sent {sent} row(s){} but target shard {target_shard} wrote {written}",
        if *complete { "" } else { " in an unfinished stream" }
    )]
    RowCount {
        /// Table as the map names it.
        table: String,
        /// Source shard.
        source_shard: String,
        /// Target shard.
        target_shard: String,
        /// Rows counted in the stream.
        sent: u64,
        /// Whether the stream's end marker was seen.
        complete: bool,
        /// Rows the target's COPY reported.
        written: u64,
    },
    /// A statement on one side failed.
    #[error("{side} shard {shard}: table {table}: {detail}")]
    Query {
        /// `source` or `target`.
        side: &'static str,
        /// Shard name.
        shard: String,
        /// Table as the map names it (empty for the transaction itself).
        table: String,
        /// The server's or driver's message.
        detail: String,
        /// Driver error.
        source: tokio_postgres::Error,
    },
}

/// Copies the rows of `spec.range` of every table from `source` to `target`.
///
/// The source is read in one repeatable-read snapshot (or `spec.snapshot`);
/// the target is written in one transaction in replica role that first
/// deletes the range's rows it already has (so rerunning is harmless), then
/// COPYs each table with its non-generated columns matched by name. Identity
/// and serial values are kept (sequences are not advanced).
///
/// Errors: [`CopyError::Schema`] when a table is missing or has a bad key on
/// either side; [`CopyError::ColumnsDiffer`] when the sides' columns differ
/// by name, type or generation; [`CopyError::RowCount`] when the target did
/// not write every row the source sent; [`CopyError::Query`] when a
/// statement fails.
/// On any error the target transaction rolls back.
pub async fn copy_range(
    source: Endpoint<'_>,
    target: Endpoint<'_>,
    spec: &CopySpec<'_>,
) -> Result<Vec<TableCopied>, CopyError> {
    copy_range_paced(source, target, spec, None).await
}

/// [`copy_range`] streaming at most `max_rows_per_sec` rows per second per
/// table (`None` or 0: as fast as it goes): the stream pauses between COPY
/// chunks when it is ahead, so the source is still read once, in one
/// snapshot.
///
/// Errors: as [`copy_range`].
pub async fn copy_range_paced(
    source: Endpoint<'_>,
    target: Endpoint<'_>,
    spec: &CopySpec<'_>,
    max_rows_per_sec: Option<u64>,
) -> Result<Vec<TableCopied>, CopyError> {
    let (source_shard, target_shard) = (source.shard, target.shard);
    let read = begin_snapshot(source.client, spec.snapshot)
        .await
        .map_err(|e| query_error("source", source_shard, "", e))?;
    let write = target
        .client
        .transaction()
        .await
        .map_err(|e| query_error("target", target_shard, "", e))?;
    write
        .batch_execute(REPLICA_ROLE)
        .await
        .map_err(|e| query_error("target", target_shard, "", e))?;
    let mut copied = Vec::with_capacity(spec.tables.len());
    for table in spec.tables {
        let from = read_schema(&read, source_shard, table).await?;
        let to = read_schema(&write, target_shard, table).await?;
        let differences = from.differences(&to);
        if !differences.is_empty() {
            return Err(CopyError::ColumnsDiffer {
                table: table.name.clone(),
                source_shard: source_shard.to_string(),
                target_shard: target_shard.to_string(),
                differences,
            });
        }
        let on_target = |e| query_error("target", target_shard, &table.name, e);
        let replaced = write
            .execute(
                &format!(
                    "DELETE FROM {} WHERE {}",
                    table.sql_name(),
                    spec.range.predicate(table, spec.seed)
                ),
                &[],
            )
            .await
            .map_err(on_target)?;
        let (rows, bytes) = stream_table(
            read.client(),
            write.client(),
            &from,
            &spec.range.predicate(table, spec.seed),
            (spec.progress, max_rows_per_sec.filter(|r| *r > 0)),
            (source_shard, target_shard),
        )
        .await?;
        copied.push(TableCopied {
            table: table.name.clone(),
            rows,
            replaced,
            bytes,
        });
    }
    write
        .commit()
        .await
        .map_err(|e| query_error("target", target_shard, "", e))?;
    // The read-only snapshot ends either way; a failed COMMIT of a read-only
    // transaction changes nothing.
    read.commit()
        .await
        .map_err(|e| query_error("source", source_shard, "", e))?;
    Ok(copied)
}

/// Replaces the rows of `keys` of every table on `target` by the source's
/// (`keys` as the rows of their key columns): in the target's transaction
/// `write` (already in replica role) it deletes them, then streams the
/// source's rows of those keys as read by `read` (a transaction whose
/// snapshot the caller chose). Returns rows written. Used to replay
/// captured changes; as idempotent as [`copy_range`].
///
/// Errors: [`CopyError::Schema`], [`CopyError::RowCount`],
/// [`CopyError::Query`]; the caller rolls back.
pub(crate) async fn copy_keys(
    read: &tokio_postgres::Transaction<'_>,
    write: &tokio_postgres::Transaction<'_>,
    (source_shard, target_shard): (&str, &str),
    tables: &[Table],
    keys: &[i64],
) -> Result<u64, CopyError> {
    // Integers only: safe to splice (COPY takes no parameters).
    let list: Vec<String> = keys.iter().map(i64::to_string).collect();
    let mut written = 0;
    for table in tables {
        let schema = read_schema(read, source_shard, table).await?;
        let filter = format!(
            "{}::int8 = ANY ('{{{}}}'::int8[])",
            table.sql_key(),
            list.join(",")
        );
        write
            .execute(
                &format!("DELETE FROM {} WHERE {filter}", table.sql_name()),
                &[],
            )
            .await
            .map_err(|e| query_error("target", target_shard, &table.name, e))?;
        let (rows, _) = stream_table(
            read.client(),
            write.client(),
            &schema,
            &filter,
            (None, None),
            (source_shard, target_shard),
        )
        .await?;
        written += rows;
    }
    Ok(written)
}

/// Streams one table's rows matching `filter` (SQL over the table):
/// `COPY (SELECT …) TO STDOUT` on the source piped into `COPY … FROM STDIN`
/// on the target, both binary, paced to at most `pace` rows per second.
/// Returns rows written and bytes streamed.
async fn stream_table(
    source: &Client,
    target: &Client,
    schema: &TableSchema,
    filter: &str,
    (progress, pace): (Option<OnProgress<'_>>, Option<u64>),
    (source_shard, target_shard): (&str, &str),
) -> Result<(u64, u64), CopyError> {
    let table = &schema.table;
    let columns = TableSchema::column_list(&schema.copied_columns());
    let out_sql = format!(
        "COPY (SELECT {columns} FROM {} WHERE {filter}) TO STDOUT (FORMAT binary)",
        table.sql_name(),
    );
    let in_sql = format!(
        "COPY {} ({columns}) FROM STDIN (FORMAT binary)",
        table.sql_name()
    );
    let on_source = |e| query_error("source", source_shard, &table.name, e);
    let on_target = |e| query_error("target", target_shard, &table.name, e);
    let rows_out = source.copy_out(&out_sql).await.map_err(on_source)?;
    let sink = target.copy_in(&in_sql).await.map_err(on_target)?;
    futures_util::pin_mut!(sink);
    let mut bytes = 0u64;
    let started = tokio::time::Instant::now();
    let mut tuples = TupleCounter::new();
    let mut next_report = PROGRESS_EVERY;
    let mut reported_at = started;
    let report = |rows, bytes| {
        if let Some(progress) = progress {
            progress(CopyProgress {
                table: &table.name,
                rows,
                bytes,
            });
        }
    };
    // The source sends one message per row. Rows already received are
    // gathered into `batch` and sent on as one message of about SEND_AT
    // bytes, so the target's connection is woken per batch, not per 4 KiB
    // (the sink's own buffer). Dropping the sink on an error aborts the
    // target's COPY.
    let mut batch = BytesMut::with_capacity(2 * SEND_AT);
    // Paced, rows are taken a few at a time so the pace holds per row, not
    // in bursts of a whole group.
    let rows_out = rows_out.ready_chunks(if pace.is_some() { 16 } else { READY_ROWS });
    futures_util::pin_mut!(rows_out);
    while let Some(ready) = rows_out.next().await {
        for row in ready {
            let row = row.map_err(on_source)?;
            bytes += row.len() as u64;
            tuples.feed(&row);
            batch.extend_from_slice(&row);
        }
        if tuples.tuples() >= next_report || reported_at.elapsed() >= PROGRESS_AFTER {
            report(tuples.tuples(), bytes);
            next_report = tuples.tuples() + PROGRESS_EVERY;
            reported_at = tokio::time::Instant::now();
        }
        if batch.len() >= SEND_AT {
            sink.feed(batch.split().freeze()).await.map_err(on_target)?;
        }
        if let Some(rate) = pace {
            let due = std::time::Duration::from_secs_f64(tuples.tuples() as f64 / rate as f64);
            if let Some(ahead) = due.checked_sub(started.elapsed()) {
                if ahead >= std::time::Duration::from_millis(10) {
                    // Send what is gathered so the target is not left waiting.
                    sink.feed(batch.split().freeze()).await.map_err(on_target)?;
                    sink.flush().await.map_err(on_target)?;
                    tokio::time::sleep(ahead).await;
                }
            }
        }
    }
    if !batch.is_empty() {
        sink.feed(batch.freeze()).await.map_err(on_target)?;
    }
    let rows = sink.as_mut().finish().await.map_err(on_target)?;
    if rows != tuples.tuples() || !tuples.is_done() {
        return Err(CopyError::RowCount {
            table: table.name.clone(),
            source_shard: source_shard.to_string(),
            target_shard: target_shard.to_string(),
            sent: tuples.tuples(),
            complete: tuples.is_done(),
            written: rows,
        });
    }
    report(rows, bytes);
    Ok((rows, bytes))
}

fn query_error(
    side: &'static str,
    shard: &str,
    table: &str,
    source: tokio_postgres::Error,
) -> CopyError {
    CopyError::Query {
        side,
        shard: shard.to_string(),
        table: table.to_string(),
        detail: describe(&source),
        source,
    }
}
