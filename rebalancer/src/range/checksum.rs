//! Row count and content checksum of a table's rows over a token range,
//! computed in SQL, equal on two shards holding the same rows whatever the
//! physical column order.
//!
//! Each row's image is `ROW(columns in name order)::text`, generated columns
//! included (the target computed them; they must agree too); its hash is
//! `hashtextextended(image, 0)`; the checksum is the sum of the hashes as
//! `numeric` (no overflow), so row order does not matter. Text output depends
//! on session settings (time zone, date and interval style, float digits,
//! bytea and money format), so they are pinned for the transaction.

use postshard_router::map::Table;
use tokio_postgres::GenericClient;

use super::schema::{read_schema, SchemaError, TableSchema};
use super::{begin_snapshot, describe, Endpoint, TokenRange};

/// Count and checksum of one table over a range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableChecksum {
    /// Table as the map names it.
    pub table: String,
    /// Rows in the range.
    pub rows: u64,
    /// Sum of the rows' 64-bit hashes.
    pub sum: i128,
}

/// Why a checksum could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum ChecksumError {
    /// A table could not be read from the catalogs, or cannot be sharded.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// A statement failed, or its answer could not be read.
    #[error("shard {shard}: table {table}: checksum failed: {detail}")]
    Query {
        /// Shard name.
        shard: String,
        /// Table as the map names it (empty for the transaction itself).
        table: String,
        /// The server's or driver's message.
        detail: String,
    },
}

/// Pins every setting that changes a value's text output, for the rest of
/// the transaction.
pub(crate) const PIN_OUTPUT: &str = "SET LOCAL TimeZone = 'UTC'; \
    SET LOCAL DateStyle = 'ISO, YMD'; SET LOCAL IntervalStyle = 'postgres'; \
    SET LOCAL extra_float_digits = 1; SET LOCAL bytea_output = 'hex'; \
    SET LOCAL lc_monetary = 'C'";

/// SQL for one row's 64-bit hash (see the module docs).
pub(crate) fn row_hash_sql(schema: &TableSchema) -> String {
    format!(
        "hashtextextended(ROW({})::text, 0)",
        TableSchema::column_list(&schema.columns_by_name())
    )
}

/// Parses a `numeric` sum of 64-bit hashes sent as text.
pub(crate) fn parse_sum(text: &str) -> Option<i128> {
    text.parse().ok()
}

/// Which rows of a range a checksum covers, by key (the table's sharding
/// column, as the changelog records it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keys<'a> {
    /// Every row of the range.
    All,
    /// Only rows whose key is one of these.
    Only(&'a [i64]),
    /// Every row of the range except those whose key is one of these.
    Except(&'a [i64]),
}

impl Keys<'_> {
    /// The condition added to the range predicate over `table` (empty for
    /// [`Keys::All`]). Integers only: safe to splice, and a constant array
    /// lets PostgreSQL hash the list instead of scanning it per row.
    fn filter(self, table: &Table) -> String {
        let list = |keys: &[i64]| {
            let keys: Vec<String> = keys.iter().map(i64::to_string).collect();
            keys.join(",")
        };
        match self {
            Keys::All => String::new(),
            Keys::Only(keys) => format!(
                " AND {}::int8 = ANY ('{{{}}}'::int8[])",
                table.sql_key(),
                list(keys)
            ),
            Keys::Except(keys) => format!(
                " AND {}::int8 <> ALL ('{{{}}}'::int8[])",
                table.sql_key(),
                list(keys)
            ),
        }
    }
}

/// Count and checksum of each of `tables` (in that order) over `range` on
/// `side`, all in one
/// repeatable-read snapshot (`snapshot` when given: an exported snapshot id).
///
/// Errors: [`ChecksumError::Schema`] when a table is missing or its key is
/// not an integer; [`ChecksumError::Query`] when a statement fails.
pub async fn checksum_range(
    side: Endpoint<'_>,
    tables: &[Table],
    seed: i64,
    range: TokenRange,
    snapshot: Option<&str>,
) -> Result<Vec<TableChecksum>, ChecksumError> {
    checksum_range_keys(side, tables, seed, range, snapshot, Keys::All).await
}

/// [`checksum_range`] restricted to the rows of the range that `keys`
/// selects (the online mode compares the bulk of a range before its fence,
/// and only the keys changed since under it).
///
/// Errors: as [`checksum_range`].
pub async fn checksum_range_keys(
    side: Endpoint<'_>,
    tables: &[Table],
    seed: i64,
    range: TokenRange,
    snapshot: Option<&str>,
    keys: Keys<'_>,
) -> Result<Vec<TableChecksum>, ChecksumError> {
    let shard = side.shard;
    let tx = begin_snapshot(side.client, snapshot)
        .await
        .map_err(|e| query_error(shard, "", &e))?;
    tx.batch_execute(PIN_OUTPUT)
        .await
        .map_err(|e| query_error(shard, "", &e))?;
    let mut sums = Vec::with_capacity(tables.len());
    for table in tables {
        let schema = read_schema(&tx, shard, table).await?;
        sums.push(checksum_table(&tx, shard, &schema, seed, range, keys).await?);
    }
    tx.commit().await.map_err(|e| query_error(shard, "", &e))?;
    Ok(sums)
}

/// One table's count and checksum over the rows of `range` that `keys` selects, through `client` (a
/// transaction whose output settings are pinned with [`PIN_OUTPUT`]).
async fn checksum_table(
    client: &impl GenericClient,
    shard: &str,
    schema: &TableSchema,
    seed: i64,
    range: TokenRange,
    keys: Keys<'_>,
) -> Result<TableChecksum, ChecksumError> {
    let table = &schema.table;
    let fail = |e: tokio_postgres::Error| query_error(shard, &table.name, &e);
    let row = client
        .query_one(
            &format!(
                "SELECT count(*), coalesce(sum({}), 0)::text FROM {} WHERE {}{}",
                row_hash_sql(schema),
                table.sql_name(),
                range.predicate(table, seed),
                keys.filter(table)
            ),
            &[],
        )
        .await
        .map_err(fail)?;
    let rows: i64 = row.try_get(0).map_err(fail)?;
    let sum: String = row.try_get(1).map_err(fail)?;
    Ok(TableChecksum {
        table: table.name.clone(),
        rows: u64::try_from(rows).unwrap_or(0),
        sum: parse_sum(&sum).ok_or_else(|| ChecksumError::Query {
            shard: shard.to_string(),
            table: table.name.clone(),
            detail: format!("checksum {sum:?} is not an integer"),
        })?,
    })
}

fn query_error(shard: &str, table: &str, e: &tokio_postgres::Error) -> ChecksumError {
    ChecksumError::Query {
        shard: shard.to_string(),
        table: table.to_string(),
        detail: describe(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_lists_narrow_the_range_by_each_tables_key() {
        let comments = Table {
            name: "comments".into(),
            key: "post_id".into(),
        };
        assert_eq!(Keys::All.filter(&comments), "");
        assert_eq!(
            Keys::Only(&[3, -1]).filter(&comments),
            " AND \"post_id\"::int8 = ANY ('{3,-1}'::int8[])"
        );
        assert_eq!(
            Keys::Except(&[i64::MIN]).filter(&comments),
            " AND \"post_id\"::int8 <> ALL ('{-9223372036854775808}'::int8[])"
        );
        // No key excluded: every row of the range; no key selected: none.
        assert_eq!(
            Keys::Except(&[]).filter(&comments),
            " AND \"post_id\"::int8 <> ALL ('{}'::int8[])"
        );
    }
}
