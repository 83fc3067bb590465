//! Deleting a token range from a shard in batches, each its own short
//! transaction in replica role: the app's triggers (a comment counter, an
//! `ON DELETE CASCADE`) do not fire for rows that merely left the shard.
//!
//! A batch takes the next `batch_rows` rows of the range in key order,
//! starting at the last key the previous batch reached, so the whole delete
//! is one walk over the key's index (when the key is indexed, as sharding
//! keys are) rather than one scan per batch. Rows are picked by `(tableoid,
//! ctid)`, which is unique in partitioned tables too.

use postshard_router::map::Table;

use super::{describe, Endpoint, TokenRange, REPLICA_ROLE};

/// Default rows per batch: small enough that each transaction holds its
/// locks for milliseconds.
pub const DEFAULT_BATCH_ROWS: u32 = 5_000;

/// One table's share of a delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDeleted {
    /// Table as the map names it.
    pub table: String,
    /// Rows deleted.
    pub rows: u64,
    /// Transactions it took.
    pub batches: u64,
}

/// Why a delete stopped; batches already committed stay deleted (rerunning
/// the delete finishes the job).
#[derive(Debug, thiserror::Error)]
#[error("shard {shard}: table {table}: deleting range {range} failed: {detail}")]
pub struct DeleteError {
    /// Shard name.
    pub shard: String,
    /// Table as the map names it.
    pub table: String,
    /// The range being deleted.
    pub range: TokenRange,
    /// The server's or driver's message.
    pub detail: String,
    /// Driver error.
    pub source: tokio_postgres::Error,
}

/// Deletes the rows of `range` from each of `tables` on `side`, at most
/// `batch_rows` (at least 1) rows per transaction.
///
/// Errors: [`DeleteError`] when a statement fails (a missing table
/// included); committed batches stay deleted.
pub async fn delete_range(
    side: Endpoint<'_>,
    tables: &[Table],
    seed: i64,
    range: TokenRange,
    batch_rows: u32,
) -> Result<Vec<TableDeleted>, DeleteError> {
    let mut out = Vec::with_capacity(tables.len());
    for table in tables {
        out.push(delete_table(side.shard, side.client, table, seed, range, batch_rows).await?);
    }
    Ok(out)
}

async fn delete_table(
    shard: &str,
    client: &mut tokio_postgres::Client,
    table: &Table,
    seed: i64,
    range: TokenRange,
    batch_rows: u32,
) -> Result<TableDeleted, DeleteError> {
    let fail = |source: tokio_postgres::Error| DeleteError {
        shard: shard.to_string(),
        table: table.name.clone(),
        range,
        detail: describe(&source),
        source,
    };
    let (name, key) = (table.sql_name(), table.sql_key());
    let sql = format!(
        "WITH batch AS MATERIALIZED (
            SELECT tableoid, ctid FROM {name}
            WHERE {key} >= $1::int8 AND {pred}
            ORDER BY {key} LIMIT $2::int8
         ), gone AS (
            DELETE FROM {name}
            WHERE ctid = ANY (ARRAY(SELECT ctid FROM batch))
              AND (tableoid, ctid) IN (SELECT tableoid, ctid FROM batch)
            RETURNING {key}::int8 AS k
         )
         SELECT count(*), max(k) FROM gone",
        pred = range.predicate(table, seed)
    );
    let limit = i64::from(batch_rows.max(1));
    let mut done = TableDeleted {
        table: table.name.clone(),
        rows: 0,
        batches: 0,
    };
    let mut from_key = i64::MIN;
    loop {
        let tx = client.transaction().await.map_err(fail)?;
        tx.batch_execute(REPLICA_ROLE).await.map_err(fail)?;
        let row = tx
            .query_one(&sql, &[&from_key, &limit])
            .await
            .map_err(fail)?;
        let rows: i64 = row.try_get(0).map_err(fail)?;
        let last: Option<i64> = row.try_get(1).map_err(fail)?;
        tx.commit().await.map_err(fail)?;
        // The last key may have rows left (a post with more comments than a
        // batch), so the next batch starts at it, not after it.
        match last {
            Some(key) if rows > 0 => from_key = key,
            _ => return Ok(done),
        }
        done.batches += 1;
        done.rows += u64::try_from(rows).unwrap_or(0);
    }
}
