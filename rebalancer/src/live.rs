//! Live skew: rows, bytes and activity measured on every shard, and a
//! token-space histogram of rows computed in SQL with `hashint8extended`.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::future::join_all;
use postshard_router::load::LOAD_REPORT_VERSION;
use postshard_router::map::Table;
use postshard_router::ring::{BUCKETS, BUCKET_BITS};
use postshard_router::{HotToken, LoadReport, LoadUnit, Router, RouterError, ShardMap, Token};
use serde::Serialize;
use tokio_postgres::IsolationLevel;

use crate::skew::Skew;

/// What to rank shards by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Rows with a key in the sharded tables (NULL keys are counted apart).
    Rows,
    /// Bytes on disk of the sharded tables, indexes and TOAST included.
    Bytes,
    /// Rows inserted, updated or deleted during the window.
    Writes,
    /// Rows read by scans and index fetches during the window.
    Reads,
}

impl Metric {
    /// The metric's name, as `postshard skew --by` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Rows => "rows",
            Metric::Bytes => "bytes",
            Metric::Writes => "writes",
            Metric::Reads => "reads",
        }
    }

    /// The unit of the load report this metric makes; `None` for activity,
    /// which has no token histogram.
    pub fn load_unit(self) -> Option<LoadUnit> {
        match self {
            Metric::Rows => Some(LoadUnit::Rows),
            Metric::Bytes => Some(LoadUnit::Bytes),
            Metric::Writes | Metric::Reads => None,
        }
    }
}

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Counters of one sharded table on one shard. A partitioned table (or one
/// with inheritance children) counts all its partitions, nested ones and
/// ones in other schemas included.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TableStats {
    /// Rows now with a key, the rows the ring places.
    pub rows: u64,
    /// Rows now whose key is NULL: they have no token, so no shard owns them
    /// and no plan can move them. Not in `rows`, nor in any bucket.
    pub null_keys: u64,
    /// Bytes on disk, indexes and TOAST included (`pg_total_relation_size`
    /// summed over the table and every partition).
    pub bytes: u64,
    /// Rows inserted, updated or deleted during the window, over every
    /// partition (absent without a window).
    pub writes: Option<u64>,
    /// Rows read during the window, over every partition (absent without
    /// a window).
    pub reads: Option<u64>,
}

/// A key holding many rows (a viral post with its comments).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HotKey {
    /// The key value (post ID).
    pub key: i64,
    /// Its token.
    pub token: Token,
    /// Rows with this key in the tables where it repeats (a post's comments).
    pub rows: u64,
}

/// Everything measured on one reachable shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShardStats {
    /// Per sharded table, by name.
    pub tables: BTreeMap<String, TableStats>,
    /// Rows per token bucket over all sharded tables ([`BUCKETS`] buckets).
    #[serde(skip)]
    pub bucket_rows: Vec<u64>,
    /// The keys with the most rows on this shard, most first.
    pub hot_keys: Vec<HotKey>,
}

impl ShardStats {
    /// Tables holding rows whose key is NULL, with how many, by name.
    pub fn null_keys(&self) -> impl Iterator<Item = (&str, u64)> {
        self.tables
            .iter()
            .filter(|(_, t)| t.null_keys > 0)
            .map(|(name, t)| (name.as_str(), t.null_keys))
    }

    /// The shard's total for `metric` (`None` for activity without a window).
    pub fn total(&self, metric: Metric) -> Option<u64> {
        self.tables
            .values()
            .map(|t| match metric {
                Metric::Rows => Some(t.rows),
                Metric::Bytes => Some(t.bytes),
                Metric::Writes => t.writes,
                Metric::Reads => t.reads,
            })
            .sum()
    }
}

/// Most hot keys a measurement lists per shard.
pub const MAX_HOT_KEYS: usize = 1000;

/// Why one shard could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    /// No connection, or a statement about no table in particular failed.
    #[error(transparent)]
    Router(#[from] RouterError),
    /// A sharded table of the map does not exist on the shard.
    #[error("shard {shard}: table {table} does not exist")]
    MissingTable {
        /// The shard.
        shard: String,
        /// The table, as the map names it.
        table: String,
    },
    /// The table has no column the map names as its key.
    #[error("shard {shard}: table {table} has no key column {key}")]
    MissingKey {
        /// The shard.
        shard: String,
        /// The table, as the map names it.
        table: String,
        /// The key column.
        key: String,
    },
    /// The key column is not an integer: its values have no token (a cast
    /// would round `1.5` to `2` or fail on `'abc'`).
    #[error(
        "shard {shard}: table {table}: key column {key} is of type {type_name}; \
         a key must be smallint, integer or bigint (or a domain over one)"
    )]
    KeyType {
        /// The shard.
        shard: String,
        /// The table, as the map names it.
        table: String,
        /// The key column.
        key: String,
        /// Its type as PostgreSQL spells it (`numeric(10,2)`, `text`).
        type_name: String,
    },
    /// A statement about one sharded table failed, or its answer could not
    /// be read.
    #[error("{error} (table {table}, key column {key})")]
    Table {
        /// The table, as the map names it.
        table: String,
        /// Its key column.
        key: String,
        /// What failed, naming the shard and its redacted URL.
        error: RouterError,
    },
}

impl MeasureError {
    /// Whether the shard could not be connected to at all.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, MeasureError::Router(RouterError::Connect { .. }))
    }

    /// Whether the shard's schema does not fit the map (a table or key
    /// column missing, a key that is not an integer): fixing it takes a
    /// change to the map or the schema, not a retry.
    pub fn is_schema(&self) -> bool {
        matches!(
            self,
            MeasureError::MissingTable { .. }
                | MeasureError::MissingKey { .. }
                | MeasureError::KeyType { .. }
        )
    }
}

/// One shard's measurement, or why it could not be measured.
#[derive(Debug)]
pub struct ShardMeasure {
    /// Shard name.
    pub shard: String,
    /// Its weight in the map.
    pub weight: u32,
    /// The numbers, or the error (naming the shard and its redacted URL).
    pub stats: Result<ShardStats, MeasureError>,
}

/// How to measure.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Sample activity counters twice this far apart; `None` skips activity.
    pub window: Option<Duration>,
    /// How many hot keys to keep per shard (at most [`MAX_HOT_KEYS`]).
    pub hot_keys: usize,
}

/// Measures every shard of `router` concurrently.
pub async fn measure(router: &Router, options: Options) -> Vec<ShardMeasure> {
    let map = router.map();
    join_all(
        map.shards()
            .iter()
            .enumerate()
            .map(|(i, shard)| async move {
                ShardMeasure {
                    shard: shard.name.clone(),
                    weight: shard.weight,
                    stats: measure_shard(router, i, options).await,
                }
            }),
    )
    .await
}

/// Turns driver errors on one shard into [`MeasureError`]s.
#[derive(Clone, Copy)]
struct Errors<'a> {
    router: &'a Router,
    index: usize,
}

impl Errors<'_> {
    fn shard_name(self) -> String {
        self.router
            .map()
            .shards()
            .get(self.index)
            .map_or_else(|| format!("#{}", self.index), |s| s.name.clone())
    }

    fn shard(self, e: tokio_postgres::Error) -> MeasureError {
        MeasureError::Router(self.router.query_error(self.index, e))
    }

    fn table(self, table: &Table, e: tokio_postgres::Error) -> MeasureError {
        MeasureError::Table {
            table: table.name.clone(),
            key: table.key.clone(),
            error: self.router.query_error(self.index, e),
        }
    }
}

/// The table named `$1` and its inheritance children at every depth:
/// declarative partitions (nested, in any schema) and legacy inheritance.
/// Partitioned parents hold no rows, bytes or activity of their own.
const TREE: &str = "WITH RECURSIVE tree(relid) AS ( \
         SELECT $1::text::regclass::oid \
         UNION SELECT i.inhrelid FROM pg_inherits i JOIN tree t ON i.inhparent = t.relid)";

/// Cumulative activity counters of one table (`pg_stat_user_tables`).
#[derive(Debug, Clone, Copy)]
struct Activity {
    writes: i64,
    reads: i64,
}

/// Activity counters of every sharded table, in map order, each summed
/// over the table and its partitions.
async fn activity(
    client: &tokio_postgres::Client,
    tables: &[Table],
    errors: Errors<'_>,
) -> Result<Vec<Activity>, MeasureError> {
    let sql = format!(
        "{TREE} SELECT coalesce(sum(s.n_tup_ins + s.n_tup_upd + s.n_tup_del), 0)::int8, \
         coalesce(sum(coalesce(s.seq_tup_read, 0) + coalesce(s.idx_tup_fetch, 0)), 0)::int8 \
         FROM tree JOIN pg_stat_user_tables s ON s.relid = tree.relid"
    );
    let mut out = Vec::with_capacity(tables.len());
    for t in tables {
        let fail = |e| errors.table(t, e);
        let row = client
            .query_one(&sql, &[&t.sql_name()])
            .await
            .map_err(fail)?;
        out.push(Activity {
            writes: row.try_get(0).map_err(fail)?,
            reads: row.try_get(1).map_err(fail)?,
        });
    }
    Ok(out)
}

/// Integer types a key may have (`int2`, `int4`, `int8` by OID), directly
/// or as the base of a domain.
const KEY_TYPES: [i64; 3] = [21, 23, 20];

/// Checks that every sharded table exists on the shard and that its key
/// column is an integer (for a partitioned table, the parent's column,
/// which every partition shares).
async fn check_tables(
    client: &tokio_postgres::Client,
    tables: &[Table],
    errors: Errors<'_>,
) -> Result<(), MeasureError> {
    // The declared type, and the type under any domains.
    const SQL: &str = "WITH RECURSIVE rel AS (SELECT to_regclass($1::text) AS oid), \
         col AS (SELECT a.atttypid, a.atttypmod FROM pg_attribute a, rel \
                 WHERE a.attrelid = rel.oid AND a.attname::text = $2::text \
                   AND a.attnum > 0 AND NOT a.attisdropped), \
         base(oid, depth) AS (SELECT atttypid, 0 FROM col \
                 UNION ALL SELECT t.typbasetype, b.depth + 1 FROM base b \
                 JOIN pg_type t ON t.oid = b.oid WHERE t.typtype = 'd') \
         SELECT rel.oid IS NOT NULL, \
                (SELECT format_type(atttypid, atttypmod) FROM col), \
                (SELECT oid::int8 FROM base ORDER BY depth DESC LIMIT 1) \
         FROM rel";
    for t in tables {
        let fail = |e| errors.table(t, e);
        let row = client
            .query_one(SQL, &[&t.sql_name(), &t.key])
            .await
            .map_err(fail)?;
        let exists: bool = row.try_get(0).map_err(fail)?;
        let declared: Option<String> = row.try_get(1).map_err(fail)?;
        let base: Option<i64> = row.try_get(2).map_err(fail)?;
        let (shard, table, key) = (errors.shard_name(), t.name.clone(), t.key.clone());
        match (exists, declared, base) {
            (false, _, _) => return Err(MeasureError::MissingTable { shard, table }),
            (true, None, _) => return Err(MeasureError::MissingKey { shard, table, key }),
            (true, Some(type_name), base) if !base.is_some_and(|b| KEY_TYPES.contains(&b)) => {
                return Err(MeasureError::KeyType {
                    shard,
                    table,
                    key,
                    type_name,
                })
            }
            _ => {}
        }
    }
    Ok(())
}

/// A count from SQL (never negative) as `u64`.
fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

async fn measure_shard(
    router: &Router,
    index: usize,
    options: Options,
) -> Result<ShardStats, MeasureError> {
    let map = router.map();
    let errors = Errors { router, index };
    let mut client = router.client_of(index).await?;
    check_tables(&client, map.tables(), errors).await?;
    // Activity is sampled outside any transaction: inside one, PostgreSQL
    // serves the same statistics snapshot twice.
    let (before, after) = match options.window {
        Some(window) => {
            let before = activity(&client, map.tables(), errors).await?;
            tokio::time::sleep(window).await;
            (before, activity(&client, map.tables(), errors).await?)
        }
        None => (Vec::new(), Vec::new()),
    };
    let delta = |i: usize, part: fn(&Activity) -> i64| {
        Some(count(part(after.get(i)?) - part(before.get(i)?)))
    };

    // One snapshot for every table, so hot keys never outnumber their bucket.
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(|e| errors.shard(e))?;
    let mut stats = ShardStats {
        tables: BTreeMap::new(),
        bucket_rows: vec![0; BUCKETS],
        hot_keys: Vec::new(),
    };
    let mut key_rows: BTreeMap<i64, u64> = BTreeMap::new();
    let shift = 64 - BUCKET_BITS;
    let offset = BUCKETS / 2;
    let limit = i64::try_from(options.hot_keys.min(MAX_HOT_KEYS)).unwrap_or(0);
    for (i, t) in map.tables().iter().enumerate() {
        let fail = |e| errors.table(t, e);
        // Quoted names are safe to splice, reserved words included; keys,
        // checked to be integers, are cast to the bigint hashint8extended
        // takes. A scan of a partitioned table reads every partition.
        let (table, key) = (t.sql_name(), t.sql_key());
        let sizes = tx
            .query_one(
                &format!(
                    "SELECT count({key}), count(*) - count({key}), \
                     ({TREE} SELECT coalesce(sum(pg_total_relation_size(relid)), 0)::int8 \
                      FROM tree) \
                     FROM {table}"
                ),
                &[&table],
            )
            .await
            .map_err(fail)?;
        stats.tables.insert(
            t.name.clone(),
            TableStats {
                rows: count(sizes.try_get(0).map_err(fail)?),
                null_keys: count(sizes.try_get(1).map_err(fail)?),
                bytes: count(sizes.try_get(2).map_err(fail)?),
                writes: delta(i, |a| a.writes),
                reads: delta(i, |a| a.reads),
            },
        );
        // Rows without a key have no token: no bucket holds them.
        let buckets = tx
            .query(
                &format!(
                    "SELECT (hashint8extended({key}::int8, $1) >> {shift}) + {offset}, count(*) \
                     FROM {table} WHERE {key} IS NOT NULL GROUP BY 1"
                ),
                &[&map.seed()],
            )
            .await
            .map_err(fail)?;
        for row in buckets {
            let (b, n): (i64, i64) = (row.try_get(0).map_err(fail)?, row.try_get(1).map_err(fail)?);
            if let Some(slot) = usize::try_from(b)
                .ok()
                .and_then(|b| stats.bucket_rows.get_mut(b))
            {
                *slot += count(n);
            }
        }
        if limit > 0 {
            let hot = tx
                .query(
                    &format!(
                        "SELECT {key}::int8, count(*) FROM {table} WHERE {key} IS NOT NULL \
                         GROUP BY 1 HAVING count(*) > 1 ORDER BY 2 DESC, 1 LIMIT $1"
                    ),
                    &[&limit],
                )
                .await
                .map_err(fail)?;
            for row in hot {
                let (k, n): (i64, i64) =
                    (row.try_get(0).map_err(fail)?, row.try_get(1).map_err(fail)?);
                *key_rows.entry(k).or_default() += count(n);
            }
        }
    }
    tx.commit().await.map_err(|e| errors.shard(e))?;
    stats.hot_keys = top_keys(&map, key_rows, options.hot_keys);
    Ok(stats)
}

fn top_keys(map: &ShardMap, key_rows: BTreeMap<i64, u64>, n: usize) -> Vec<HotKey> {
    let mut keys: Vec<HotKey> = key_rows
        .into_iter()
        .map(|(key, rows)| HotKey {
            key,
            token: map.token(key),
            rows,
        })
        .collect();
    keys.sort_by(|a, b| b.rows.cmp(&a.rows).then(a.key.cmp(&b.key)));
    keys.truncate(n);
    keys
}

/// Skew over the reachable shards for `metric`, per unit of weight. `None`
/// when no shard was reachable, the metric needs a window that was not
/// given, or everything is zero.
pub fn skew_of(measures: &[ShardMeasure], metric: Metric) -> Option<Skew> {
    let mut loads = Vec::new();
    let mut weights = Vec::new();
    for m in measures {
        if let Ok(stats) = &m.stats {
            loads.push(stats.total(metric)? as f64);
            weights.push(f64::from(m.weight));
        }
    }
    Skew::of(&loads, Some(&weights))
}

/// Rows per token bucket, summed over the reachable shards; `None` when no
/// shard was reachable.
pub fn bucket_rows(measures: &[ShardMeasure]) -> Option<Vec<u64>> {
    let mut reached = measures
        .iter()
        .filter_map(|m| m.stats.as_ref().ok())
        .peekable();
    reached.peek()?;
    let mut total = vec![0u64; BUCKETS];
    for stats in reached {
        for (t, n) in total.iter_mut().zip(&stats.bucket_rows) {
            *t += n;
        }
    }
    Some(total)
}

/// Why measurements cannot be turned into a load report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadReportError {
    /// Activity has no token histogram.
    #[error("{metric} has no token histogram: only rows and bytes make a load report")]
    NoHistogram {
        /// The metric asked for.
        metric: Metric,
    },
    /// Some shards were not measured; a report without them would read as idle.
    #[error("shard(s) {} were not measured; a load report must cover every shard", shards.join(", "))]
    NotMeasured {
        /// The shards missing.
        shards: Vec<String>,
    },
}

/// Rows or bytes over the token ring as a load report, the input of
/// `plan balance`: per bucket, and the hot keys as hot tokens. Bytes are
/// estimated from rows with each shard's mean row size. Rows whose key is
/// NULL are left out, so each shard's total is the sum of its buckets. Every
/// shard of `map` must have been measured.
pub fn load_report(
    map: &ShardMap,
    measures: &[ShardMeasure],
    metric: Metric,
) -> Result<LoadReport, LoadReportError> {
    let unit = metric
        .load_unit()
        .ok_or(LoadReportError::NoHistogram { metric })?;
    let measured = |name: &str| {
        measures
            .iter()
            .find(|m| m.shard == name)
            .and_then(|m| m.stats.as_ref().ok())
    };
    let missing: Vec<String> = map
        .shards()
        .iter()
        .filter(|s| measured(&s.name).is_none())
        .map(|s| s.name.clone())
        .collect();
    if !missing.is_empty() {
        return Err(LoadReportError::NotMeasured { shards: missing });
    }
    let mut report = LoadReport {
        version: LOAD_REPORT_VERSION,
        unit,
        map_version: map.version(),
        buckets: BUCKETS,
        shards: BTreeMap::new(),
        bucket_loads: vec![0; BUCKETS],
        hot_tokens: Vec::new(),
    };
    for shard in map.shards() {
        let Some(stats) = measured(&shard.name) else {
            continue;
        };
        // Rows and bytes are measured on every reachable shard. Rows with a
        // NULL key are in no bucket: their share of the bytes is left out
        // too, so that the shard's total is the sum of its buckets.
        let rows = stats.total(Metric::Rows).unwrap_or(0);
        let all_rows = rows + stats.null_keys().map(|(_, n)| n).sum::<u64>();
        let per_row = match metric {
            Metric::Bytes => stats.total(metric).unwrap_or(0) as f64 / all_rows.max(1) as f64,
            _ => 1.0,
        };
        // Rounding is monotonic, so a hot key never outweighs its bucket.
        let scale = |n: u64| (n as f64 * per_row).round() as u64;
        let mut total = 0u64;
        for (sum, n) in report.bucket_loads.iter_mut().zip(&stats.bucket_rows) {
            *sum += scale(*n);
            total += scale(*n);
        }
        report.shards.insert(shard.name.clone(), total);
        report
            .hot_tokens
            .extend(stats.hot_keys.iter().map(|k| HotToken {
                token: k.token,
                load: scale(k.rows),
            }));
    }
    // A key found on two shards (stray rows) is one token: add its loads.
    report.hot_tokens.sort_by_key(|h| h.token);
    let mut merged: Vec<HotToken> = Vec::with_capacity(report.hot_tokens.len());
    for h in report.hot_tokens.drain(..) {
        match merged.last_mut() {
            Some(last) if last.token == h.token => last.load += h.load,
            _ => merged.push(h),
        }
    }
    report.hot_tokens = merged;
    Ok(report)
}
