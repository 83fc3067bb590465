//! Whole-cluster verification: every row of every sharded table sits on the
//! shard owning its token, with row counts and checksums per arc.
//!
//! One statement per table per shard, in one snapshot per shard: SQL finds
//! each row's arc with `width_bucket(token, arc starts)`, groups by arc for
//! counts and checksums, and returns a key only when its arc's owner is
//! another shard (at most `max_problems` of them per table). Rows never
//! travel unless misplaced. A misplaced key that its owner also holds is
//! reported as duplicated.

use futures_util::future::join_all;
use postshard_router::map::Table;
use postshard_router::{Router, RouterError, ShardMap, Token};
use serde::Serialize;
use tokio_postgres::types::ToSql;

use super::checksum::{parse_sum, row_hash_sql, PIN_OUTPUT};
use super::schema::{read_schema, SchemaError};
use super::{begin_snapshot, describe, TableChecksum};

/// How to verify.
#[derive(Debug, Clone, Copy)]
pub struct VerifyOptions {
    /// Most problems listed (all are counted).
    pub max_problems: usize,
}

impl Default for VerifyOptions {
    fn default() -> VerifyOptions {
        VerifyOptions { max_problems: 20 }
    }
}

/// Counts and checksums of one arc, measured on its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArcSums {
    /// First token.
    pub from: Token,
    /// Last token (inclusive).
    pub last: Token,
    /// Owning shard.
    pub owner: String,
    /// One per sharded table, in map order.
    pub tables: Vec<TableChecksum>,
    /// False when the owner could not be scanned: the counts and checksums
    /// are then not known (not zero); the reason is in
    /// [`VerifyReport::errors`].
    pub verified: bool,
}

/// What is wrong with a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// Its key is NULL: it has no token and no owner.
    NullKey,
    /// The owner holds the same key too.
    Duplicated,
    /// It is on a shard that does not own its token.
    Misplaced,
}

impl ProblemKind {
    /// The kind as JSON spells it (`null_key`, `duplicated`, `misplaced`).
    pub fn name(self) -> &'static str {
        match self {
            ProblemKind::NullKey => "null_key",
            ProblemKind::Duplicated => "duplicated",
            ProblemKind::Misplaced => "misplaced",
        }
    }
}

/// Rows of one key (or, for [`ProblemKind::NullKey`], of no key) found where
/// they must not be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// What is wrong.
    pub kind: ProblemKind,
    /// Shard holding the rows.
    pub shard: String,
    /// Table as the map names it.
    pub table: String,
    /// The key (`None` for NULL keys).
    pub key: Option<i64>,
    /// Its token.
    pub token: Option<Token>,
    /// The shard owning the token.
    pub owner: Option<String>,
    /// Rows with this key on `shard` in `table`.
    pub rows: u64,
}

/// A shard or table that could not be verified.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// No connection to the shard.
    #[error(transparent)]
    Router(#[from] RouterError),
    /// A table is missing or its key is not an integer.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// A statement failed, or its answer could not be read.
    #[error("shard {shard}: table {table}: verify failed: {detail}")]
    Query {
        /// Shard name.
        shard: String,
        /// Table as the map names it (empty for the transaction itself).
        table: String,
        /// The server's or driver's message.
        detail: String,
    },
}

/// The outcome of [`verify`].
#[derive(Debug)]
pub struct VerifyReport {
    /// Every arc of the ring, in token order.
    pub arcs: Vec<ArcSums>,
    /// The first problems: NULL keys, then misplaced or duplicated keys by
    /// shard, table and key.
    pub problems: Vec<Problem>,
    /// Rows on a shard that does not own their token (duplicates included).
    pub misplaced_rows: u64,
    /// Rows whose key is NULL.
    pub null_key_rows: u64,
    /// Shards or tables that could not be verified.
    pub errors: Vec<VerifyError>,
}

impl VerifyReport {
    /// Every row was checked and is on its owner.
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty() && self.misplaced_rows == 0 && self.null_key_rows == 0
    }

    /// Rows counted on their owners.
    pub fn rows(&self) -> u64 {
        self.arcs
            .iter()
            .flat_map(|a| a.tables.iter())
            .map(|t| t.rows)
            .sum()
    }
}

/// What one shard said about one table.
struct TableScan {
    table: usize,
    /// (arc index, rows, checksum) for arcs this shard owns.
    owned: Vec<(usize, u64, i128)>,
    misplaced_rows: u64,
    null_key_rows: u64,
    /// (key, rows) on arcs owned elsewhere, lowest keys first.
    strays: Vec<(i64, u64)>,
}

/// Verifies every sharded table on every shard of `router`'s map.
pub async fn verify(router: &Router, options: VerifyOptions) -> VerifyReport {
    let map_ref = router.map();
    let map: &ShardMap = &map_ref;
    let mut report = VerifyReport {
        arcs: map
            .ring()
            .arcs()
            .map(|arc| ArcSums {
                from: arc.from,
                last: arc.last,
                owner: shard_name(map, arc.shard),
                tables: map
                    .tables()
                    .iter()
                    .map(|t| TableChecksum {
                        table: t.name.clone(),
                        rows: 0,
                        sum: 0,
                    })
                    .collect(),
                verified: true,
            })
            .collect(),
        problems: Vec::new(),
        misplaced_rows: 0,
        null_key_rows: 0,
        errors: Vec::new(),
    };
    let scans = join_all((0..map.shards().len()).map(|i| scan_shard(router, i, options))).await;
    let mut strays = Vec::new();
    for (shard, scan) in scans.into_iter().enumerate() {
        let scans = match scan {
            Ok(scans) => scans,
            Err(e) => {
                report.errors.push(e);
                let owner = shard_name(map, shard);
                for arc in report.arcs.iter_mut().filter(|a| a.owner == owner) {
                    arc.verified = false;
                }
                continue;
            }
        };
        for scan in scans {
            let Some(table) = map.tables().get(scan.table) else {
                continue;
            };
            for (arc, rows, sum) in scan.owned {
                if let Some(t) = report
                    .arcs
                    .get_mut(arc)
                    .and_then(|a| a.tables.get_mut(scan.table))
                {
                    t.rows += rows;
                    t.sum += sum;
                }
            }
            report.misplaced_rows += scan.misplaced_rows;
            report.null_key_rows += scan.null_key_rows;
            if scan.null_key_rows > 0 {
                report.problems.push(Problem {
                    kind: ProblemKind::NullKey,
                    shard: shard_name(map, shard),
                    table: table.name.clone(),
                    key: None,
                    token: None,
                    owner: None,
                    rows: scan.null_key_rows,
                });
            }
            for (key, rows) in scan.strays {
                strays.push((shard, scan.table, key, rows));
            }
        }
    }
    strays.sort_by_key(|&(shard, table, key, _)| (shard, table, key));
    let room = options.max_problems.saturating_sub(report.problems.len());
    for (shard, table_index, key, rows) in strays.into_iter().take(room) {
        let Some(table) = map.tables().get(table_index) else {
            continue;
        };
        let owner = map.shard_index_for(key);
        let kind = match owner_holds(router, owner, table, key).await {
            Ok(true) => ProblemKind::Duplicated,
            Ok(false) => ProblemKind::Misplaced,
            Err(e) => {
                report.errors.push(e);
                ProblemKind::Misplaced
            }
        };
        report.problems.push(Problem {
            kind,
            shard: shard_name(map, shard),
            table: table.name.clone(),
            key: Some(key),
            token: Some(map.token(key)),
            owner: Some(shard_name(map, owner)),
            rows,
        });
    }
    report.problems.truncate(options.max_problems);
    report
}

fn shard_name(map: &ShardMap, index: usize) -> String {
    map.shards()
        .get(index)
        .map_or_else(|| format!("#{index}"), |s| s.name.clone())
}

/// Whether shard `owner` holds rows of `table` with `key`.
async fn owner_holds(
    router: &Router,
    owner: usize,
    table: &Table,
    key: i64,
) -> Result<bool, VerifyError> {
    let client = router.client_of(owner).await?;
    let row = client
        .query_one(
            &format!(
                "SELECT EXISTS (SELECT 1 FROM {} WHERE {} = $1::int8)",
                table.sql_name(),
                table.sql_key()
            ),
            &[&key],
        )
        .await
        .map_err(|e| query_error(&router.map(), owner, &table.name, &e))?;
    row.try_get(0)
        .map_err(|e| query_error(&router.map(), owner, &table.name, &e))
}

/// Scans every table of shard `index` in one snapshot.
async fn scan_shard(
    router: &Router,
    index: usize,
    options: VerifyOptions,
) -> Result<Vec<TableScan>, VerifyError> {
    let map_ref = router.map();
    let map: &ShardMap = &map_ref;
    let name = shard_name(map, index);
    let mut client = router.client_of(index).await?;
    let tx = begin_snapshot(&mut client, None)
        .await
        .map_err(|e| query_error(map, index, "", &e))?;
    tx.batch_execute(PIN_OUTPUT)
        .await
        .map_err(|e| query_error(map, index, "", &e))?;
    let starts: Vec<i64> = map.ring().arcs().map(|a| a.from).collect();
    let owners: Vec<i32> = map
        .ring()
        .arcs()
        .map(|a| i32::try_from(a.shard).unwrap_or(-1))
        .collect();
    let me = i32::try_from(index).unwrap_or(-1);
    let limit = i64::try_from(options.max_problems).unwrap_or(i64::MAX);
    let mut scans = Vec::with_capacity(map.tables().len());
    for (t, table) in map.tables().iter().enumerate() {
        let schema = read_schema(&tx, &name, table).await?;
        let fail = |e: tokio_postgres::Error| query_error(map, index, &table.name, &e);
        // Arc numbers from width_bucket are 1-based: every token is at or
        // above the first start, i64::MIN. NULL keys have no arc.
        let sql = format!(
            "SELECT arc, stray, n, total, whole FROM (
                SELECT arc, stray, count(*) AS n, coalesce(sum(h), 0)::text AS total,
                       GROUPING(stray) = 1 AS whole,
                       row_number() OVER (PARTITION BY GROUPING(stray) ORDER BY stray) AS nth
                FROM (
                    SELECT arc, CASE WHEN ($2::int4[])[arc] = $3 THEN NULL ELSE k END AS stray, h
                    FROM (
                        SELECT width_bucket(hashint8extended({key}::int8, $4::int8), $1::int8[]) AS arc,
                               {key}::int8 AS k, {hash} AS h
                        FROM {name}
                    ) AS r
                ) AS s
                GROUP BY GROUPING SETS ((arc), (arc, stray))
                HAVING GROUPING(stray) = 1 OR stray IS NOT NULL
            ) AS g
            WHERE whole OR nth <= $5",
            key = table.sql_key(),
            hash = row_hash_sql(&schema),
            name = table.sql_name(),
        );
        let rows = tx
            .query(
                &sql,
                &[
                    &starts as &(dyn ToSql + Sync),
                    &owners,
                    &me,
                    &map.seed(),
                    &limit,
                ],
            )
            .await
            .map_err(fail)?;
        let mut scan = TableScan {
            table: t,
            owned: Vec::new(),
            misplaced_rows: 0,
            null_key_rows: 0,
            strays: Vec::new(),
        };
        for row in rows {
            let arc: Option<i32> = row.try_get(0).map_err(fail)?;
            let stray: Option<i64> = row.try_get(1).map_err(fail)?;
            let n = u64::try_from(row.try_get::<_, i64>(2).map_err(fail)?).unwrap_or(0);
            let total: String = row.try_get(3).map_err(fail)?;
            let whole: bool = row.try_get(4).map_err(fail)?;
            let arc = arc.and_then(|a| usize::try_from(a).ok()?.checked_sub(1));
            match (whole, arc, stray) {
                (true, None, _) => scan.null_key_rows += n,
                (true, Some(arc), _) if owners.get(arc) == Some(&me) => {
                    let sum = parse_sum(&total).ok_or_else(|| VerifyError::Query {
                        shard: name.clone(),
                        table: table.name.clone(),
                        detail: format!("checksum {total:?} is not an integer"),
                    })?;
                    scan.owned.push((arc, n, sum));
                }
                (true, Some(_), _) => scan.misplaced_rows += n,
                (false, _, Some(key)) => scan.strays.push((key, n)),
                (false, _, None) => {}
            }
        }
        scans.push(scan);
    }
    tx.commit()
        .await
        .map_err(|e| query_error(map, index, "", &e))?;
    Ok(scans)
}

fn query_error(
    map: &ShardMap,
    shard: usize,
    table: &str,
    e: &tokio_postgres::Error,
) -> VerifyError {
    VerifyError::Query {
        shard: shard_name(map, shard),
        table: table.to_string(),
        detail: describe(e),
    }
}
