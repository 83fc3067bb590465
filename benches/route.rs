//! Routing speed: postshard's `shard_for` (hash included) against the classic
//! consistent-hash ring (`hashring`, 256 virtual nodes per shard) and jump
//! consistent hash. Also the cost of load counting: `Router::shard_for`
//! counts every call, `ShardMap::shard_index_for` does not.
//!
//! Maps: balanced (one arc per shard, as `map init` writes them) at 4, 16
//! and 64 shards, and maps grown one shard at a time with the planner
//! (`plan add-shard` from 4 to 64 and from 4 to 200 shards: the fragmented
//! rings real clusters end up with).
//!
//! Keys: 4M random i64 drawn once; each iteration routes the next 65,536 of
//! them, so a key comes back only after 64 iterations, 32 MB later: neither
//! the branch predictor nor the caches can learn them. `hash_only` is the
//! token computation alone over the same keys, the floor for every method
//! that hashes with PostgreSQL's function.

use std::cell::Cell;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hashring::HashRing;
use postshard_rebalancer::layout::balanced_arcs;
use postshard_rebalancer::plan::{add_shard, offline_env};
use postshard_rebalancer::simulate::jump_consistent_hash;
use postshard_router::map::raw::{RawMap, RawShard, RawTable};
use postshard_router::{hashint8extended, Router, ShardMap};

/// Random keys drawn once.
const KEYS: usize = 1 << 22;
/// Keys routed per iteration.
const BATCH: usize = 1 << 16;
const VNODES: usize = 256;

fn url(i: usize) -> String {
    format!("postgres://postgres@127.0.0.1/s{i}")
}

/// A balanced map of `n` shards, as `postshard map init` writes it.
fn balanced_map(n: usize) -> ShardMap {
    let shards = (0..n)
        .map(|i| RawShard::new(&format!("s{i}"), &url(i)))
        .collect();
    let tables = vec![RawTable::new("posts", "id")];
    let raw = RawMap::new(1, 0, tables, shards, &balanced_arcs(&vec![1; n]));
    ShardMap::from_raw(raw, "bench", &|_| None).expect("valid map")
}

/// A balanced map of 4 shards grown to `n`, one `plan add-shard` at a time.
fn grown_map(n: usize) -> ShardMap {
    let mut map = balanced_map(4);
    for i in 4..n {
        let plan = add_shard(&map, &format!("s{i}"), &url(i), 1).expect("plan");
        map = plan.apply_with_env(&map, &offline_env).expect("apply");
    }
    map
}

/// `KEYS` random i64 (xorshift64*), and a cursor handing out batches.
struct Keys {
    keys: Vec<i64>,
    next: Cell<usize>,
}

impl Keys {
    fn new() -> Keys {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let keys = (0..KEYS)
            .map(|_| {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                x.wrapping_mul(0x2545_F491_4F6C_DD1D) as i64
            })
            .collect();
        Keys {
            keys,
            next: Cell::new(0),
        }
    }

    /// The next `BATCH` keys, wrapping around after `KEYS`.
    fn batch(&self) -> &[i64] {
        let start = self.next.get();
        self.next.set((start + BATCH) % KEYS);
        &self.keys[start..start + BATCH]
    }
}

fn route(c: &mut Criterion) {
    let keys = Keys::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("route");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("hash_only", |b| {
        b.iter(|| {
            for &k in keys.batch() {
                black_box(hashint8extended(k, 0));
            }
        })
    });
    let maps = [
        ("balanced_4", 4, balanced_map(4)),
        ("balanced_16", 16, balanced_map(16)),
        ("balanced_64", 64, balanced_map(64)),
        ("grown_4_to_64", 64, grown_map(64)),
        ("grown_4_to_200", 200, grown_map(200)),
    ];
    for (label, shards, map) in maps {
        eprintln!(
            "{label}: {} shards, {} arcs, {} lookup buckets",
            map.shards().len(),
            map.ring().len(),
            map.ring().lookup_buckets()
        );
        group.bench_with_input(BenchmarkId::new("postshard", label), &map, |b, map| {
            b.iter(|| {
                for &k in keys.batch() {
                    black_box(map.shard_index_for(k));
                }
            })
        });
        let router = rt.block_on(Router::connect(map.clone())).expect("router");
        group.bench_with_input(
            BenchmarkId::new("postshard_counted", label),
            &router,
            |b, router| {
                b.iter(|| {
                    for &k in keys.batch() {
                        black_box(router.shard_for(k));
                    }
                })
            },
        );
        // hashring and jump hash depend on the shard count only.
        if label.starts_with("grown_4_to_64") {
            continue;
        }
        let mut ring = HashRing::new();
        for shard in 0..shards {
            for replica in 0..VNODES {
                ring.add((shard, replica));
            }
        }
        group.bench_with_input(
            BenchmarkId::new("hashring_256", shards),
            &ring,
            |b, ring| {
                b.iter(|| {
                    for &k in keys.batch() {
                        black_box(ring.get(&k));
                    }
                })
            },
        );
        let buckets = u32::try_from(shards).expect("shard count fits u32");
        group.bench_with_input(BenchmarkId::new("jump", shards), &buckets, |b, &n| {
            b.iter(|| {
                for &k in keys.batch() {
                    black_box(jump_consistent_hash(hashint8extended(k, 0) as u64, n));
                }
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = route
}
criterion_main!(benches);
