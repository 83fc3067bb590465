//! Live skew: rows, bytes and activity measured on every shard, and a
//! token-space histogram of rows computed in SQL with `hashint8extended`.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::future::join_all;
use postshard_router::load::LOAD_REPORT_VERSION;
use postshard_router::ring::{BUCKETS, BUCKET_BITS};
use postshard_router::{HotToken, LoadReport, Router, RouterError, ShardMap, Token};
use serde::Serialize;

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

/// One shard's measurement, or why it could not be measured.
#[derive(Debug)]
pub struct ShardMeasure {
    /// Shard name.
    pub shard: String,
    /// Its weight in the map.
    pub weight: u32,
    /// The numbers, or the error (naming the shard and its redacted URL).
    pub stats: Result<ShardStats, RouterError>,
}

/// How to measure.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Sample activity counters twice this far apart; `None` skips activity.
    pub window: Option<Duration>,
    /// How many hot keys to keep per shard.
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

async fn measure_shard(
    router: &Router,
    index: usize,
    options: Options,
) -> Result<ShardStats, RouterError> {
    let map = router.map();
    let client = router.client_of(index).await?;
    let fail = |e| router.query_error(index, e);
    let activity = |sql: &'static str| {
        let client = &client;
        async move {
            let mut out = BTreeMap::new();
            for t in map.tables() {
                let row = client.query_one(sql, &[&t.name]).await?;
                out.insert(t.name.clone(), (row.get::<_, i64>(0), row.get::<_, i64>(1)));
            }
            Ok::<_, tokio_postgres::Error>(out)
        }
    };
    // Activity counters as of the window's start; the per-table counters of
    // pg_stat_user_tables are cumulative.
    const ACTIVITY: &str = "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::int8, \
         coalesce(sum(coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)), 0)::int8 \
         FROM pg_stat_user_tables WHERE relid = $1::text::regclass";
    let before = match options.window {
        Some(_) => Some(activity(ACTIVITY).await.map_err(fail)?),
        None => None,
    };
    if let Some(window) = options.window {
        tokio::time::sleep(window).await;
    }
    let after = match options.window {
        Some(_) => Some(activity(ACTIVITY).await.map_err(fail)?),
        None => None,
    };

    let mut stats = ShardStats {
        tables: BTreeMap::new(),
        bucket_rows: vec![0; BUCKETS],
        hot_keys: Vec::new(),
    };
    let mut key_rows: BTreeMap<i64, u64> = BTreeMap::new();
    let shift = 64 - BUCKET_BITS;
    let offset = (BUCKETS / 2) as i64;
    for t in map.tables() {
        // Table and key names are validated SQL identifiers: safe to splice.
        let (table, key) = (&t.name, &t.key);
        let sizes = client
            .query_one(
                &format!(
                    "SELECT count(*), pg_total_relation_size($1::text::regclass) FROM {table}"
                ),
                &[table],
            )
            .await
            .map_err(fail)?;
        let delta = |i: usize| {
            before
                .as_ref()
                .zip(after.as_ref())
                .and_then(|(b, a)| Some(pick(a.get(table)?, i) - pick(b.get(table)?, i)))
                .map(|d| d.max(0) as u64)
        };
        stats.tables.insert(
            table.clone(),
            TableStats {
                rows: sizes.get::<_, i64>(0) as u64,
                bytes: sizes.get::<_, i64>(1) as u64,
                writes: delta(0),
                reads: delta(1),
            },
        );
        let buckets = client
            .query(
                &format!(
                    "SELECT (hashint8extended({key}, $1) >> {shift}) + {offset}, count(*) \
                     FROM {table} GROUP BY 1"
                ),
                &[&map.seed()],
            )
            .await
            .map_err(fail)?;
        for row in buckets {
            let (b, n): (i64, i64) = (row.get(0), row.get(1));
            if let Some(slot) = stats.bucket_rows.get_mut(b as usize) {
                *slot += n as u64;
            }
        }
        if options.hot_keys > 0 {
            let hot = client
                .query(
                    &format!(
                        "SELECT {key}, count(*) FROM {table} GROUP BY {key} \
                         HAVING count(*) > 1 ORDER BY 2 DESC, 1 LIMIT $1"
                    ),
                    &[&(options.hot_keys as i64)],
                )
                .await
                .map_err(fail)?;
            for row in hot {
                *key_rows.entry(row.get(0)).or_default() += row.get::<_, i64>(1) as u64;
            }
        }
    }
    stats.hot_keys = top_keys(map, key_rows, options.hot_keys);
    Ok(stats)
}

fn pick(pair: &(i64, i64), i: usize) -> i64 {
    if i == 0 {
        pair.0
    } else {
        pair.1
    }
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

/// Rows per token bucket, summed over the reachable shards.
pub fn bucket_rows(measures: &[ShardMeasure]) -> Vec<u64> {
    let mut total = vec![0u64; BUCKETS];
    for stats in measures.iter().filter_map(|m| m.stats.as_ref().ok()) {
        for (t, n) in total.iter_mut().zip(&stats.bucket_rows) {
            *t += n;
        }
    }
    total
}

/// Rows or bytes over the token ring as a load report, the input of
/// `plan balance`: per bucket, and the hot keys as hot tokens. Bytes are
/// estimated from rows with each shard's mean row size. `None` for activity
/// metrics, which have no token histogram.
pub fn load_report(
    map: &ShardMap,
    measures: &[ShardMeasure],
    metric: Metric,
) -> Option<LoadReport> {
    let mut report = LoadReport {
        version: LOAD_REPORT_VERSION,
        map_version: map.version(),
        buckets: BUCKETS,
        shards: BTreeMap::new(),
        bucket_loads: vec![0; BUCKETS],
        hot_tokens: Vec::new(),
    };
    for m in measures {
        let Ok(stats) = &m.stats else { continue };
        let rows = stats.total(Metric::Rows)?;
        let per_row = match metric {
            Metric::Rows => 1.0,
            Metric::Bytes => stats.total(Metric::Bytes)? as f64 / rows.max(1) as f64,
            Metric::Writes | Metric::Reads => return None,
        };
        let scale = |n: u64| (n as f64 * per_row).round() as u64;
        report.shards.insert(m.shard.clone(), stats.total(metric)?);
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
    report.hot_tokens.sort_by_key(|h| h.token);
    report.hot_tokens.dedup_by_key(|h| h.token);
    Some(report)
}
