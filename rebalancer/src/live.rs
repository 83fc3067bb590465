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
    /// Rows in the sharded tables.
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

/// Counters of one sharded table on one shard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TableStats {
    /// Rows now.
    pub rows: u64,
    /// `pg_total_relation_size`.
    pub bytes: u64,
    /// Rows written during the window (absent without a window).
    pub writes: Option<u64>,
    /// Rows read during the window (absent without a window).
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

/// Cumulative activity counters of one table (`pg_stat_user_tables`).
#[derive(Debug, Clone, Copy)]
struct Activity {
    writes: i64,
    reads: i64,
}

/// Activity counters of every sharded table, in map order.
async fn activity(
    client: &tokio_postgres::Client,
    tables: &[Table],
    errors: Errors<'_>,
) -> Result<Vec<Activity>, MeasureError> {
    const SQL: &str = "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::int8, \
         coalesce(sum(coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)), 0)::int8 \
         FROM pg_stat_user_tables WHERE relid = $1::text::regclass";
    let mut out = Vec::with_capacity(tables.len());
    for t in tables {
        let fail = |e| errors.table(t, e);
        let row = client
            .query_one(SQL, &[&t.sql_name()])
            .await
            .map_err(fail)?;
        out.push(Activity {
            writes: row.try_get(0).map_err(fail)?,
            reads: row.try_get(1).map_err(fail)?,
        });
    }
    Ok(out)
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
        // Quoted names are safe to splice, reserved words included; keys of
        // any integer type are cast to the bigint hashint8extended takes.
        let (table, key) = (t.sql_name(), t.sql_key());
        let sizes = tx
            .query_one(
                &format!(
                    "SELECT count(*), pg_total_relation_size($1::text::regclass) FROM {table}"
                ),
                &[&table],
            )
            .await
            .map_err(fail)?;
        stats.tables.insert(
            t.name.clone(),
            TableStats {
                rows: count(sizes.try_get(0).map_err(fail)?),
                bytes: count(sizes.try_get(1).map_err(fail)?),
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
/// estimated from rows with each shard's mean row size. Every shard of `map`
/// must have been measured.
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
        // Rows and bytes are measured on every reachable shard.
        let rows = stats.total(Metric::Rows).unwrap_or(0);
        let total = stats.total(metric).unwrap_or(0);
        let per_row = total as f64 / rows.max(1) as f64;
        // Rounding is monotonic, so a hot key never outweighs its bucket.
        let scale = |n: u64| (n as f64 * per_row).round() as u64;
        report.shards.insert(shard.name.clone(), total);
        for (total, n) in report.bucket_loads.iter_mut().zip(&stats.bucket_rows) {
            *total += scale(*n);
        }
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
