//! Request counters: how many routed calls each shard and each token bucket
//! received, kept with one relaxed atomic increment per call.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::map::ShardMap;
use crate::ring::BUCKETS;

/// Format version of [`LoadReport`].
pub const LOAD_REPORT_VERSION: u32 = 1;

/// One counter per ring segment (the part of an arc inside a bucket), so a
/// single increment yields exact counts per shard and per bucket.
#[derive(Debug)]
pub(crate) struct LoadCounters {
    segments: Box<[AtomicU64]>,
}

impl LoadCounters {
    pub(crate) fn new(map: &ShardMap) -> LoadCounters {
        LoadCounters {
            segments: (0..map.ring().segment_count())
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    #[inline]
    pub(crate) fn record(&self, segment: usize) {
        if let Some(counter) = self.segments.get(segment) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn report(&self, map: &ShardMap) -> LoadReport {
        let mut shards = vec![0u64; map.shards().len()];
        let mut bucket_loads = vec![0u64; BUCKETS];
        for ((bucket, shard), counter) in map.ring().segments().zip(self.segments.iter()) {
            let n = counter.load(Ordering::Relaxed);
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
        }
    }
}

/// Routed calls counted since the router started, as saved for
/// `postshard plan balance --by load --load FILE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadReport {
    /// Format version ([`LOAD_REPORT_VERSION`]).
    pub version: u32,
    /// Version of the map the calls were routed with.
    pub map_version: u64,
    /// Number of equal token buckets ([`BUCKETS`]); bucket `b` starts at
    /// token `i64::MIN + b * 2^64 / buckets`.
    pub buckets: usize,
    /// Calls per shard, by name.
    pub shards: BTreeMap<String, u64>,
    /// Calls per token bucket.
    pub bucket_loads: Vec<u64>,
}
