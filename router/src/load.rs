//! Request counters: how many routed calls each shard and each token bucket
//! received.
//!
//! Counting must stay within a couple of nanoseconds, so the hot path has no
//! locked read-modify-write: each of the first [`ROWS`] threads that route in
//! the process gets its own row of counters, which only it writes (a plain
//! relaxed load and store); later threads share one row through `fetch_add`.
//! Either way every call is counted exactly, and a report sums all rows. A
//! counter is kept per ring segment (the part of an arc inside one bucket),
//! so one increment yields exact counts per shard and per bucket.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::hash::Token;
use crate::map::ShardMap;
use crate::ring::BUCKETS;

/// Format version of [`LoadReport`].
pub const LOAD_REPORT_VERSION: u32 = 1;

/// Threads that get a row of their own; row `ROWS` is the shared one.
const ROWS: usize = 64;

/// Hands out thread numbers, once per thread, for the life of the process.
static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's number, or `usize::MAX` before its first routed call.
    static THREAD: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// This thread's number.
#[inline(always)]
fn thread_number() -> usize {
    let n = THREAD.with(Cell::get);
    if n != usize::MAX {
        n
    } else {
        first_thread_number()
    }
}

#[cold]
fn first_thread_number() -> usize {
    let n = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
    THREAD.with(|t| t.set(n));
    n
}

/// Per-segment call counters of one router.
#[derive(Debug)]
pub(crate) struct LoadCounters {
    segments: usize,
    /// Rows `0..ROWS` belong to one thread each; row `ROWS` is shared.
    rows: Box<[OnceLock<Box<[AtomicU64]>>]>,
}

impl LoadCounters {
    pub(crate) fn new(map: &ShardMap) -> LoadCounters {
        LoadCounters {
            segments: map.ring().segment_count(),
            rows: (0..=ROWS).map(|_| OnceLock::new()).collect(),
        }
    }

    #[inline(always)]
    fn row(&self, index: usize) -> Option<&[AtomicU64]> {
        let row = self.rows.get(index)?;
        match row.get() {
            Some(row) => Some(row),
            None => Some(self.new_row(row)),
        }
    }

    #[cold]
    fn new_row<'a>(&self, row: &'a OnceLock<Box<[AtomicU64]>>) -> &'a [AtomicU64] {
        row.get_or_init(|| (0..self.segments).map(|_| AtomicU64::new(0)).collect())
    }

    /// Counts one call that landed in `segment`.
    #[inline(always)]
    pub(crate) fn record(&self, segment: usize) {
        let thread = thread_number();
        if thread < ROWS {
            if let Some(counter) = self.row(thread).and_then(|row| row.get(segment)) {
                // Only this thread writes this row: load + store is exact.
                counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
            }
        } else if let Some(counter) = self.row(ROWS).and_then(|row| row.get(segment)) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn report(&self, map: &ShardMap) -> LoadReport {
        let mut shards = vec![0u64; map.shards().len()];
        let mut bucket_loads = vec![0u64; BUCKETS];
        for (segment, (bucket, shard)) in map.ring().segments().enumerate() {
            let n: u64 = self
                .rows
                .iter()
                .filter_map(|row| row.get()?.get(segment))
                .map(|c| c.load(Ordering::Relaxed))
                .sum();
            bucket_loads[bucket] += n;
            shards[shard] += n;
        }
        LoadReport {
            version: LOAD_REPORT_VERSION,
            map_version: map.version(),
            buckets: BUCKETS,
            shards: map
                .shards()
                .iter()
                .map(|s| s.name.clone())
                .zip(shards)
                .collect(),
            bucket_loads,
            hot_tokens: Vec::new(),
        }
    }
}

/// Load over the token ring, as JSON: routed calls counted by a router
/// ([`crate::Router::load_report`]), or rows measured by `postshard skew
/// --save-load`. `postshard plan balance --load FILE` reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadReport {
    /// Format version ([`LOAD_REPORT_VERSION`]).
    pub version: u32,
    /// Version of the map the load was measured under.
    pub map_version: u64,
    /// Number of equal token buckets ([`BUCKETS`]); bucket `b` starts at
    /// token `i64::MIN + b * 2^64 / buckets`.
    pub buckets: usize,
    /// Load per shard, by name.
    pub shards: BTreeMap<String, u64>,
    /// Load per token bucket.
    pub bucket_loads: Vec<u64>,
    /// Single tokens (keys) whose load cannot be split; their load is part
    /// of their bucket's too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hot_tokens: Vec<HotToken>,
}

/// One token (one key) with its own load: a viral post.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HotToken {
    /// The token.
    pub token: Token,
    /// Its load (requests, rows or bytes).
    pub load: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_many_threads_add_up_exactly() {
        let map = ShardMap::from_yaml_str(
            "version: 3\nhash: {function: pg_hashint8extended, seed: 0}\n\
             tables: [{name: posts, key: id}]\n\
             shards: [{name: a, url: 'postgres://h/a'}, {name: b, url: 'postgres://h/b'}]\n\
             ring: [{from: -9223372036854775808, shard: a}, {from: 5, shard: b}, {from: 1000, shard: a}]\n",
        )
        .unwrap();
        let counters = LoadCounters::new(&map);
        let keys: Vec<i64> = (0..10_000).collect();
        // More threads than private rows, so the shared row is exercised too.
        std::thread::scope(|s| {
            for chunk in keys.chunks(100) {
                let (map, counters) = (&map, &counters);
                s.spawn(move || {
                    for &k in chunk {
                        let (_, segment) = map.ring().owner_and_segment(map.token(k));
                        counters.record(segment);
                    }
                });
            }
        });
        let report = counters.report(&map);
        let want_b = keys
            .iter()
            .filter(|k| map.shard_index_for(**k) == 1)
            .count() as u64;
        assert_eq!(report.shards["b"], want_b);
        assert_eq!(report.shards["a"], 10_000 - want_b);
        assert_eq!(report.map_version, 3);
        let mut want_buckets = vec![0u64; BUCKETS];
        for k in &keys {
            want_buckets[crate::ring::bucket_of(map.token(*k))] += 1;
        }
        assert_eq!(report.bucket_loads, want_buckets);
    }
}
