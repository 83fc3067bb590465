//! Request counters: how many routed calls each shard and each token bucket
//! received.
//!
//! Counting must stay within a couple of nanoseconds, so the hot path has no
//! locked read-modify-write: each thread that routes holds one of [`ROWS`]
//! slots (handed back when the thread exits) and writes only its own row of
//! counters, with a plain relaxed load and store. A thread that finds all
//! slots taken (more than [`ROWS`] routing threads alive at once) counts in
//! one shared row through `fetch_add` for the rest of its life, and holds no
//! slot, so it never hands one out later. Either way every call is counted
//! exactly, and a report sums all rows. A counter is kept per ring segment
//! (the part of an arc inside one counting bucket), so one increment yields
//! exact counts per shard and per bucket. All rows are allocated up front, in
//! one block, so counting never allocates.
//!
//! Memory: a ring of A arcs has at most A + [`BUCKETS`] segments, 8 bytes
//! each per row. A router keeps [`ROWS`] private rows plus the shared one
//! while they fit in [`COUNTER_BUDGET`] (8 MiB: up to about 15,000 arcs),
//! fewer on bigger rings (threads whose slot has no row count in the shared
//! row), and always at least one private row: at most
//! max(8 MiB, 2 × 8 × (A + 1,024)) bytes, e.g. 5.7 MiB at 10,000 arcs and
//! 8 MiB at 20,000.
//!
//! Hot keys are found by sampling the calls that run statements (not bare
//! `shard_for` lookups): each time a thread's counter of a segment reaches a
//! multiple of [`SAMPLE_EVERY`], the key being routed is recorded
//! in a small direct-mapped table where each entry keeps the token that
//! outvotes the others hashing to it (Misra-Gries per entry). A key that
//! carries most of its segment's calls dominates those samples, so the
//! report can name it; recording a sample is O(1).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use crate::hash::Token;
use crate::map::ShardMap;
use crate::ring::{bucket_of, BUCKETS};

/// Format version of [`LoadReport`].
pub const LOAD_REPORT_VERSION: u32 = 1;

/// Slots handed to routing threads; a router gives each slot below its row
/// count a row of its own.
const ROWS: usize = 64;

/// Bytes of counters a router allocates at most when it keeps more than one
/// private row (see the module docs).
pub const COUNTER_BUDGET: usize = 8 << 20;

/// The slot of a thread that found all [`ROWS`] slots taken.
const SHARED: usize = usize::MAX - 1;

/// One routed call in this many (per thread and segment) is sampled for hot keys.
pub const SAMPLE_EVERY: u64 = 1024;

/// Entries of the hot-key table (a power of two).
const TRACKED: usize = 1024;

/// Hot tokens a report lists at most.
const REPORTED: usize = 16;

/// Slots of exited threads, and the first slot never handed out.
static SLOTS: Mutex<Slots> = Mutex::new(Slots {
    free: Vec::new(),
    next: 0,
});

/// Which of the [`ROWS`] slots are free.
struct Slots {
    /// Handed back by exited threads; always below [`ROWS`].
    free: Vec<usize>,
    /// Slots `next..ROWS` were never handed out.
    next: usize,
}

impl Slots {
    /// A free slot, if any.
    fn take(&mut self) -> Option<usize> {
        self.free.pop().or_else(|| {
            let n = self.next;
            (n < ROWS).then(|| {
                self.next += 1;
                n
            })
        })
    }
}

thread_local! {
    /// This thread's slot, or `usize::MAX` before its first routed call.
    static SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
    /// Hands the slot back when the thread exits.
    static RELEASE: RefCell<Option<SlotRelease>> = const { RefCell::new(None) };
}

/// Returns a thread's slot to `SLOTS` when the thread exits. The mutex
/// orders the old thread's last counter writes before the next owner's.
struct SlotRelease(usize);

impl Drop for SlotRelease {
    fn drop(&mut self) {
        SLOTS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .free
            .push(self.0);
    }
}

/// This thread's slot: below [`ROWS`], or [`SHARED`].
#[inline(always)]
fn slot() -> usize {
    let n = SLOT.with(Cell::get);
    if n != usize::MAX {
        n
    } else {
        first_slot()
    }
}

#[cold]
fn first_slot() -> usize {
    let taken = SLOTS.lock().unwrap_or_else(PoisonError::into_inner).take();
    let Some(n) = taken else {
        // All slots are held by live threads: count in the shared row, and
        // hold nothing that could be handed back.
        SLOT.with(|t| t.set(SHARED));
        return SHARED;
    };
    SLOT.with(|t| t.set(n));
    // Without a destructor (thread-local storage being torn down), the slot is
    // simply not reused; counting stays exact.
    let _ = RELEASE.try_with(|r| *r.borrow_mut() = Some(SlotRelease(n)));
    n
}

/// Per-segment call counters of one router, and its hot-key samples.
#[derive(Debug)]
pub(crate) struct LoadCounters {
    segments: usize,
    /// Private rows: slots below this have a row of their own.
    rows: usize,
    /// `rows + 1` rows of `segments` counters, row after row: rows
    /// `0..rows` belong to one slot each; row `rows` is shared.
    counters: Box<[AtomicU64]>,
    /// Sampled tokens: `(token, votes)` per entry, indexed by token bits.
    samples: Mutex<Box<[(Token, u64)]>>,
}

impl LoadCounters {
    pub(crate) fn new(map: &ShardMap) -> LoadCounters {
        let segments = map.ring().segment_count();
        let rows = private_rows(segments);
        LoadCounters {
            segments,
            rows,
            counters: (0..(rows + 1) * segments)
                .map(|_| AtomicU64::new(0))
                .collect(),
            samples: Mutex::new(vec![(0, 0); TRACKED].into_boxed_slice()),
        }
    }

    /// Counts one call that landed in `segment`.
    #[inline(always)]
    pub(crate) fn record(&self, segment: usize) {
        self.count(segment);
    }

    /// Counts one call for `token`, which landed in `segment`, and samples
    /// it for hot keys. The sampling check costs about half a nanosecond, so
    /// only calls that go on to run a statement take this path.
    #[inline(always)]
    pub(crate) fn record_sampled(&self, token: Token, segment: usize) {
        if self.count(segment).is_multiple_of(SAMPLE_EVERY) {
            self.sample(token);
        }
    }

    /// Adds one to this thread's counter of `segment`; returns the new count.
    #[inline(always)]
    fn count(&self, segment: usize) -> u64 {
        let slot = slot();
        let own = slot < self.rows;
        let row = if own { slot } else { self.rows };
        let Some(counter) = self.counters.get(row * self.segments + segment) else {
            return 0;
        };
        if own {
            // Only this thread writes this row: load + store is exact.
            let n = counter.load(Ordering::Relaxed) + 1;
            counter.store(n, Ordering::Relaxed);
            n
        } else {
            counter.fetch_add(1, Ordering::Relaxed) + 1
        }
    }

    /// Votes for `token` in its entry; a different token there loses a vote
    /// and yields the entry when it has none left.
    #[cold]
    fn sample(&self, token: Token) {
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        // Tokens are hashes: their low bits are as good as any.
        if let Some(entry) = samples.get_mut(token as usize & (TRACKED - 1)) {
            match entry {
                (t, votes) if *t == token => *votes += 1,
                (_, 0) => *entry = (token, 1),
                (_, votes) => *votes -= 1,
            }
        }
    }

    /// The most sampled tokens with their estimated load (samples ×
    /// [`SAMPLE_EVERY`], never more than their bucket's exact load).
    fn hot_tokens(&self, bucket_loads: &[u64]) -> Vec<HotToken> {
        let samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        let mut hot: Vec<HotToken> = samples
            .iter()
            .filter(|(_, votes)| *votes >= 2)
            .map(|(token, n)| HotToken {
                token: *token,
                load: (n * SAMPLE_EVERY)
                    .min(bucket_loads.get(bucket_of(*token)).copied().unwrap_or(0)),
            })
            .collect();
        hot.sort_by_key(|h| (std::cmp::Reverse(h.load), h.token));
        hot.truncate(REPORTED);
        hot.sort_by_key(|h| h.token);
        hot
    }

    pub(crate) fn report(&self, map: &ShardMap) -> LoadReport {
        let mut shards = vec![0u64; map.shards().len()];
        let mut bucket_loads = vec![0u64; BUCKETS];
        for (segment, (bucket, shard)) in map.ring().segments().enumerate() {
            let n: u64 = (0..=self.rows)
                .filter_map(|row| self.counters.get(row * self.segments + segment))
                .map(|c| c.load(Ordering::Relaxed))
                .sum();
            if let Some(load) = bucket_loads.get_mut(bucket) {
                *load += n;
            }
            if let Some(load) = shards.get_mut(shard) {
                *load += n;
            }
        }
        LoadReport {
            version: LOAD_REPORT_VERSION,
            unit: LoadUnit::Requests,
            map_version: map.version(),
            buckets: BUCKETS,
            shards: map
                .shards()
                .iter()
                .map(|s| s.name.clone())
                .zip(shards)
                .collect(),
            hot_tokens: self.hot_tokens(&bucket_loads),
            bucket_loads,
        }
    }
}

/// Private rows of `segments` counters that fit in [`COUNTER_BUDGET`] with
/// the shared row: from 1 to [`ROWS`].
fn private_rows(segments: usize) -> usize {
    let row_bytes = segments
        .max(1)
        .saturating_mul(std::mem::size_of::<AtomicU64>());
    (COUNTER_BUDGET / row_bytes)
        .saturating_sub(1)
        .clamp(1, ROWS)
}

/// Load over the token ring, as JSON: routed calls counted by a router
/// ([`crate::Router::load_report`]), or rows measured by `postshard skew
/// --save-load`. `postshard plan balance --load FILE` reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadReport {
    /// Format version ([`LOAD_REPORT_VERSION`]).
    pub version: u32,
    /// What the loads count.
    pub unit: LoadUnit,
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

/// What a [`LoadReport`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadUnit {
    /// Routed calls, counted by a router.
    Requests,
    /// Rows, counted on the shards.
    Rows,
    /// Bytes on disk, estimated per row from each shard's tables.
    Bytes,
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

    /// Serializes the tests that hold many slots at once: slots are global.
    static MANY_THREADS: Mutex<()> = Mutex::new(());

    fn three_arc_map() -> ShardMap {
        ShardMap::from_yaml_str(
            "version: 3\nhash: {function: pg_hashint8extended, seed: 0}\n\
             tables: [{name: posts, key: id}]\n\
             shards: [{name: a, url: 'postgres://h/a'}, {name: b, url: 'postgres://h/b'}]\n\
             ring: [{from: -9223372036854775808, shard: a}, {from: 5, shard: b}, {from: 1000, shard: a}]\n",
        )
        .unwrap()
    }

    /// Routes `keys` from `threads` threads all alive at once (each routes
    /// its first key, then waits for the others before routing the rest);
    /// returns the slot each thread held.
    fn route_from_live_threads(
        map: &ShardMap,
        counters: &LoadCounters,
        keys: &[i64],
        threads: usize,
    ) -> Vec<usize> {
        let barrier = std::sync::Barrier::new(threads);
        std::thread::scope(|s| {
            let handles: Vec<_> = keys
                .chunks(keys.len().div_ceil(threads))
                .map(|chunk| {
                    let barrier = &barrier;
                    s.spawn(move || {
                        for (i, &k) in chunk.iter().enumerate() {
                            let token = map.token(k);
                            let (_, segment) = map.ring().owner_and_segment(token);
                            counters.record_sampled(token, segment);
                            if i == 0 {
                                barrier.wait();
                            }
                        }
                        slot()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn counts_from_more_threads_than_rows_add_up_exactly() {
        let _serial = MANY_THREADS.lock().unwrap_or_else(PoisonError::into_inner);
        let map = three_arc_map();
        let counters = LoadCounters::new(&map);
        assert_eq!(counters.rows, ROWS);
        let threads = ROWS + 16;
        let keys: Vec<i64> = (0..(threads as i64) * 1000).collect();
        let slots = route_from_live_threads(&map, &counters, &keys, threads);
        assert_eq!(slots.len(), threads);
        // All alive at once: at least 16 found every slot taken.
        let shared = slots.iter().filter(|s| **s == SHARED).count();
        assert!(
            shared >= 16,
            "only {shared} threads counted in the shared row"
        );
        let mut private: Vec<usize> = slots.iter().copied().filter(|s| *s != SHARED).collect();
        private.sort_unstable();
        private.dedup();
        assert_eq!(
            private.len(),
            threads - shared,
            "two live threads held one slot"
        );
        let shared_calls: u64 = (0..counters.segments)
            .filter_map(|segment| counters.counters.get(ROWS * counters.segments + segment))
            .map(|c| c.load(Ordering::Relaxed))
            .sum();
        assert!(
            shared_calls >= 16 * 1000,
            "shared row counted {shared_calls}"
        );
        let report = counters.report(&map);
        let want_b = keys
            .iter()
            .filter(|k| map.shard_index_for(**k) == 1)
            .count() as u64;
        assert_eq!(report.shards["b"], want_b);
        assert_eq!(report.shards["a"], keys.len() as u64 - want_b);
        assert_eq!(report.map_version, 3);
        let mut want_buckets = vec![0u64; BUCKETS];
        for k in &keys {
            want_buckets[crate::ring::bucket_of(map.token(*k))] += 1;
        }
        assert_eq!(report.bucket_loads, want_buckets);
    }

    #[test]
    fn threads_after_a_crowd_get_rows_of_their_own() {
        let _serial = MANY_THREADS.lock().unwrap_or_else(PoisonError::into_inner);
        let map = three_arc_map();
        let counters = LoadCounters::new(&map);
        let keys: Vec<i64> = (0..(ROWS as i64 + 8) * 10).collect();
        let slots = route_from_live_threads(&map, &counters, &keys, ROWS + 8);
        assert!(slots.contains(&SHARED));
        // The crowd has exited: a second crowd, alive at once, finds free
        // slots (all handed out before, so these are reused ones); 8 are left
        // for other tests' threads.
        let again = route_from_live_threads(&map, &counters, &keys, ROWS - 8);
        assert!(
            again.iter().all(|s| *s < ROWS),
            "threads after the crowd got {again:?}"
        );
    }

    #[test]
    fn rows_fit_the_budget_on_big_rings() {
        assert_eq!(private_rows(64 + BUCKETS), ROWS);
        for arcs in [10_000usize, 20_000, 200_000, 10_000_000] {
            let segments = arcs + BUCKETS;
            let rows = private_rows(segments);
            assert!((1..=ROWS).contains(&rows));
            let bytes = (rows + 1) * segments * 8;
            assert!(
                bytes <= COUNTER_BUDGET.max(2 * 8 * segments),
                "{arcs} arcs: {bytes} bytes"
            );
        }
        assert_eq!(private_rows(10_000 + BUCKETS), ROWS);
    }

    #[test]
    fn a_key_carrying_most_calls_is_reported_hot() {
        let map = ShardMap::from_yaml_str(
            "version: 1\nhash: {function: pg_hashint8extended, seed: 0}\n\
             tables: [{name: posts, key: id}]\n\
             shards: [{name: a, url: 'postgres://h/a'}]\n\
             ring: [{from: -9223372036854775808, shard: a}]\n",
        )
        .unwrap();
        let counters = LoadCounters::new(&map);
        let viral = 4_242i64;
        // 60,000 calls for the viral post among 60,000 spread over 30,000 others.
        for i in 0..120_000i64 {
            let key = if i % 2 == 0 { viral } else { i % 30_000 };
            let token = map.token(key);
            let (_, segment) = map.ring().owner_and_segment(token);
            counters.record_sampled(token, segment);
        }
        let report = counters.report(&map);
        let hot = report
            .hot_tokens
            .iter()
            .find(|h| h.token == map.token(viral))
            .expect("the viral key is reported hot");
        assert!(
            (45_000..=75_000).contains(&hot.load),
            "estimated {}",
            hot.load
        );
        assert!(hot.load <= report.bucket_loads[bucket_of(hot.token)]);
        // Keys with two calls each are not hot.
        assert!(report
            .hot_tokens
            .iter()
            .all(|h| h.load < 2_000 || h.token == hot.token));
    }
}
