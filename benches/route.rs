//! Routing speed: postshard's `shard_for` (hash included) against the classic
//! consistent-hash ring (`hashring`, 256 virtual nodes per shard) and jump
//! consistent hash, at 4, 16 and 64 shards. Also the cost of load counting:
//! `Router::shard_for` counts every call, `ShardMap::shard_index_for` does not.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hashring::HashRing;
use postshard_rebalancer::layout::balanced_arcs;
use postshard_rebalancer::simulate::jump_consistent_hash;
use postshard_router::map::raw::{RawMap, RawShard, RawTable};
use postshard_router::{hashint8extended, Router, ShardMap};

const KEYS: usize = 4096;
const VNODES: usize = 256;

/// A balanced map of `n` shards, as `postshard map init` writes it.
fn balanced_map(n: usize) -> ShardMap {
    let shards = (0..n)
        .map(|i| {
            RawShard::new(
                &format!("s{i}"),
                &format!("postgres://postgres@127.0.0.1/s{i}"),
            )
        })
        .collect();
    let tables = vec![RawTable::new("posts", "id")];
    let raw = RawMap::new(1, 0, tables, shards, &balanced_arcs(&vec![1; n]));
    ShardMap::from_raw(raw, "bench", &|_| None).expect("valid map")
}

/// Snowflake-like post IDs: what a forum's keys look like.
fn keys() -> Vec<i64> {
    (0..KEYS as i64)
        .map(|i| ((1_700_000_000_000 + i * 13) << 22) | ((i % 1024) << 12) | (i % 4096))
        .collect()
}

fn route(c: &mut Criterion) {
    let keys = keys();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("route");
    group.throughput(Throughput::Elements(KEYS as u64));
    for shards in [4usize, 16, 64] {
        let map = balanced_map(shards);
        group.bench_with_input(BenchmarkId::new("postshard", shards), &map, |b, map| {
            b.iter(|| {
                for &k in &keys {
                    black_box(map.shard_index_for(black_box(k)));
                }
            })
        });
        let router = rt.block_on(Router::connect(map.clone())).expect("router");
        group.bench_with_input(
            BenchmarkId::new("postshard_counted", shards),
            &router,
            |b, router| {
                b.iter(|| {
                    for &k in &keys {
                        black_box(router.shard_for(black_box(k)));
                    }
                })
            },
        );
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
                    for &k in &keys {
                        black_box(ring.get(&black_box(k)));
                    }
                })
            },
        );
        let buckets = u32::try_from(shards).expect("shard count fits u32");
        group.bench_with_input(BenchmarkId::new("jump", shards), &buckets, |b, &n| {
            b.iter(|| {
                for &k in &keys {
                    black_box(jump_consistent_hash(
                        hashint8extended(black_box(k), 0) as u64,
                        n,
                    ));
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, route);
criterion_main!(benches);
