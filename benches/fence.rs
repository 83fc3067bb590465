//! Cost of the storage fence: single-row INSERTs through the router into a
//! table with the fence trigger against the same table without it, same
//! servers, same run. Two shards with interleaved arcs and one fenced range
//! in flight, as during a move: 16 arcs (8 owned ranges per shard, a ring
//! after a few moves) and 256 arcs (128 per shard, a heavily cut ring). Besides criterion's figures, an interleaved A/B run (alternating
//! batches, so drift on a shared machine hits both) prints the ratio.
//! Commits do not wait for WAL flushes (`synchronous_commit = off`).

use std::hint::black_box;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use postshard_rebalancer::fence::{self, TokenRange};
use postshard_rebalancer::init::{init, InitOptions};
use postshard_router::map::raw::{RawMap, RawShard, RawTable};
use postshard_router::{Router, ShardMap};
use postshard_sandbox::{Cluster, Options};

const TABLES: &str = "
    CREATE TABLE posts (id bigint PRIMARY KEY, board int NOT NULL, title text NOT NULL);
    CREATE TABLE posts_plain (id bigint PRIMARY KEY, board int NOT NULL, title text NOT NULL);";
const FENCED: &str = "INSERT INTO posts (id, board, title) VALUES ($1, 1, 'a post title')";
const PLAIN: &str = "INSERT INTO posts_plain (id, board, title) VALUES ($1, 1, 'a post title')";

struct Setup {
    _cluster: Cluster,
    rt: tokio::runtime::Runtime,
    router: Router,
    next: AtomicI64,
}

fn setup(arc_count: i64) -> Setup {
    // Without waiting for WAL flushes an INSERT costs ~0.1 ms instead of a
    // disk's ~1 ms, so the trigger's share is measured against the cheapest
    // realistic statement rather than hidden in fsync noise.
    let options = Options::new(2).setting("synchronous_commit", "off");
    let cluster = Cluster::start_with(&options).expect("start PostgreSQL");
    let servers = cluster.servers();
    servers[0]
        .psql("CREATE DATABASE control")
        .expect("control db");
    for s in servers {
        s.psql(TABLES).expect("tables");
    }
    // Equal arcs, alternating owners.
    let width = (1i128 << 64) / i128::from(arc_count);
    let arcs: Vec<(i64, usize)> = (0..arc_count)
        .map(|i| {
            (
                (i128::from(i64::MIN) + i128::from(i) * width) as i64,
                (i % 2) as usize,
            )
        })
        .collect();
    let shards = servers
        .iter()
        .enumerate()
        .map(|(i, s)| RawShard::new(&format!("s{i}"), &s.url()))
        .collect();
    let mut raw = RawMap::new(1, 0, vec![RawTable::new("posts", "id")], shards, &arcs);
    raw.control = Some(servers[0].url_for("control"));
    let map = ShardMap::from_raw(raw, "bench", &|_| None).expect("valid map");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let router = rt.block_on(async {
        init(&map, &|_| None, &InitOptions::default())
            .await
            .expect("init");
        // A range fenced for an in-flight move, away from the keys inserted.
        let s0 = postshard_router::connect(&map.shards()[0].url, Duration::from_secs(5))
            .await
            .expect("connect");
        fence::raise(
            &s0,
            &[TokenRange::inclusive(i64::MIN, i64::MIN + 1000).expect("range")],
            Duration::from_secs(5),
        )
        .await
        .expect("fence");
        Router::connect(map.clone()).await.expect("router")
    });
    Setup {
        _cluster: cluster,
        rt,
        router,
        next: AtomicI64::new(1),
    }
}

fn insert(s: &Setup, sql: &str) {
    let key = s.next.fetch_add(1, Ordering::Relaxed);
    s.rt.block_on(s.router.execute(key, sql, &[&key]))
        .expect("insert");
}

fn fence_cost(c: &mut Criterion) {
    for arc_count in [16, 256] {
        let s = setup(arc_count);
        // Warm both tables and pools.
        for _ in 0..2_000 {
            insert(&s, PLAIN);
            insert(&s, FENCED);
        }
        let mut group = c.benchmark_group(format!("fence/single_row_insert/{arc_count}_arcs"));
        group.measurement_time(Duration::from_secs(5));
        group.bench_function("without_trigger", |b| {
            b.iter(|| insert(&s, black_box(PLAIN)))
        });
        group.bench_function("with_fence_trigger", |b| {
            b.iter(|| insert(&s, black_box(FENCED)))
        });
        group.finish();
        interleaved(&s, arc_count);
    }
}

/// 40 rounds of 500 inserts each way, the order swapped every round (so a
/// drift or a second-half penalty hits both sides alike); prints the ratio
/// of the totals and the median of the rounds' ratios.
fn interleaved(s: &Setup, arc_count: i64) {
    let batch = |sql: &str| {
        let t = Instant::now();
        for _ in 0..500 {
            insert(s, sql);
        }
        t.elapsed()
    };
    let mut ratios = Vec::new();
    let (mut plain_total, mut fenced_total) = (Duration::ZERO, Duration::ZERO);
    for round in 0..40 {
        let (plain, fenced) = if round % 2 == 0 {
            let plain = batch(PLAIN);
            (plain, batch(FENCED))
        } else {
            let fenced = batch(FENCED);
            (batch(PLAIN), fenced)
        };
        plain_total += plain;
        fenced_total += fenced;
        ratios.push(fenced.as_secs_f64() / plain.as_secs_f64());
    }
    ratios.sort_by(f64::total_cmp);
    let median = ratios.get(20).copied().unwrap_or(f64::NAN);
    eprintln!(
        "fence A/B interleaved, {arc_count} arcs: without {:.1} µs/insert, with {:.1} µs/insert, \
         ratio of totals {:.3}, median ratio {median:.3} (goal ≤ 1.05, floor 1.10)",
        plain_total.as_secs_f64() * 1e6 / 20_000.0,
        fenced_total.as_secs_f64() * 1e6 / 20_000.0,
        fenced_total.as_secs_f64() / plain_total.as_secs_f64(),
    );
}

criterion_group!(benches, fence_cost);
criterion_main!(benches);
