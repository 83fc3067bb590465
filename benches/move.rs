//! A blocking move of a 100,000-row range while one writer inserts keys
//! inside the moving range and another keys outside it, both through live
//! routers: how long writes to the range were blocked (the longest insert
//! latency inside), against the writes outside in the same run, and how
//! long each step took. Not a criterion bench: one move is one sample.
//!
//! `cargo bench --bench move` (ROWS=… changes the source's row count; half
//! of it moves).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postshard_rebalancer::control;
use postshard_rebalancer::init::{init, InitOptions};
use postshard_rebalancer::migrate::{self, MoveOptions};
use postshard_rebalancer::plan::add_shard;
use postshard_router::map::env_var;
use postshard_router::map::raw::{RawMap, RawShard, RawTable};
use postshard_router::{ConnUrl, Router, ShardMap};
use postshard_sandbox::Cluster;

const SCHEMA: &str = "
    CREATE TABLE posts (id bigint PRIMARY KEY, board int NOT NULL DEFAULT 1,
                        title text NOT NULL, body text NOT NULL DEFAULT '');";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let at = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

/// Inserts `keys` one by one until `stop`; returns each insert's start
/// (since `origin`) and latency.
async fn writer(
    router: Arc<Router>,
    keys: Vec<i64>,
    stop: Arc<AtomicBool>,
    origin: Instant,
) -> Vec<(Duration, Duration)> {
    let mut out = Vec::new();
    for key in keys {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let start = Instant::now();
        router
            .execute(
                key,
                "INSERT INTO posts (id, title) VALUES ($1, 'during the move')",
                &[&key],
            )
            .await
            .expect("no write error during the move");
        out.push((start - origin, start.elapsed()));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    out
}

fn main() {
    let rows: i64 = std::env::var("ROWS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(200_000);
    let cluster = Cluster::start(2).expect("start PostgreSQL");
    let servers = cluster.servers();
    servers[0].psql("CREATE DATABASE control").unwrap();
    let control_url = servers[0].url_for("control");
    servers[0].psql(SCHEMA).unwrap();
    servers[0]
        .psql(&format!(
            "INSERT INTO posts (id, title, body) SELECT g, 'post ' || g, repeat(md5(g::text), 6) \
             FROM generate_series(1, {rows}) g; ANALYZE posts;"
        ))
        .unwrap();
    let mut raw = RawMap::new(
        1,
        7,
        vec![RawTable::new("posts", "id")],
        vec![RawShard::new("s0", &servers[0].url())],
        &[(i64::MIN, 0)],
    );
    raw.control = Some(control_url.clone());
    let map = ShardMap::from_raw(raw, "bench", &env_var).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        init(&map, &env_var, &InitOptions::default()).await.unwrap();
        let plan = add_shard(&map, "s1", &servers[1].url(), 1).unwrap();
        let after = plan.apply(&map).unwrap();
        let moving = (1..=rows)
            .filter(|k| after.shard_for(*k).name == "s1")
            .count();
        let inside: Vec<i64> = (rows + 1..)
            .filter(|k| after.shard_for(*k).name == "s1")
            .take(200_000)
            .collect();
        let outside: Vec<i64> = (rows + 1..)
            .filter(|k| after.shard_for(*k).name == "s0")
            .take(200_000)
            .collect();
        let control = ConnUrl::expand(&control_url, env_var).unwrap();
        let origin = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for keys in [inside, outside] {
            let router = Arc::new(Router::from_control(&control).await.unwrap());
            tasks.push(tokio::spawn(writer(router, keys, stop.clone(), origin)));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let events = Arc::new(Mutex::new(Vec::new()));
        let log = events.clone();
        let started = Instant::now();
        migrate::apply(
            &map,
            &plan,
            "blocking",
            &env_var,
            &MoveOptions::default(),
            &mut |e| {
                log.lock().unwrap().push((origin.elapsed(), e.clone()));
            },
        )
        .await
        .expect("the move");
        let took = started.elapsed();
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::Relaxed);
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        let events = events.lock().unwrap().clone();
        let at = |name: &str| {
            events
                .iter()
                .find(|(_, e)| e.event == name)
                .map(|(t, _)| *t)
                .unwrap_or_default()
        };
        let (fenced, copied, verified, flipped, acked, cleaned, done) = (
            at("fenced"),
            at("copied"),
            at("verified"),
            at("flipped"),
            at("routers_acked"),
            at("cleaned"),
            at("done"),
        );
        println!("blocking move of {moving} rows (of {rows} on the source), 2 servers, 2 live routers writing");
        println!("  whole apply                {took:>12.1?}");
        println!("  fence (raise + wait)       {:>12.1?}", copied - fenced);
        println!(
            "  copy                       {:>12.1?}  ({:.0} rows/s)",
            verified - copied,
            moving as f64 / (verified - copied).as_secs_f64()
        );
        println!("  verify                     {:>12.1?}", flipped - verified);
        println!("  flip (grant, flip, set)    {:>12.1?}", acked - flipped);
        println!("  wait for router acks       {:>12.1?}", cleaned - acked);
        println!("  delete from the source     {:>12.1?}", done - cleaned);
        println!(
            "  fenced window (fenced → routers acked) {:.1?}",
            acked - fenced
        );
        for (name, lat) in ["inside the moving range", "outside it"].iter().zip(&results) {
            let mut all: Vec<Duration> = lat.iter().map(|(_, l)| *l).collect();
            all.sort();
            let during: Vec<Duration> = lat
                .iter()
                .filter(|(s, _)| *s >= fenced && *s <= done)
                .map(|(_, l)| *l)
                .collect();
            println!(
                "  writes {name}: {} inserts, p50 {:.2?}, p99 {:.2?}, max {:.1?} ({} during the move)",
                all.len(),
                percentile(&all, 0.5),
                percentile(&all, 0.99),
                all.last().copied().unwrap_or_default(),
                during.len()
            );
        }
        let client = {
            let (c, conn) = tokio_postgres::connect(&control_url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            c
        };
        assert_eq!(
            control::live_map(&client, &env_var).await.unwrap().version(),
            2
        );
    });
}
