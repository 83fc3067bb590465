//! Routers following the control store: flips via NOTIFY (also after the
//! listening connection is killed), lease lapse, and PS001 retried at the
//! new owner exactly once.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use postshard_rebalancer::control;
use postshard_rebalancer::fence::{self, TokenRange};
use postshard_rebalancer::init::{init, InitOptions};
use postshard_router::map::env_var;
use postshard_router::{ConnUrl, LiveOptions, Router, RouterError, ShardMap};
use postshard_sandbox::Cluster;

use crate::common::{connect, runtime, FORUM_SCHEMA};
use crate::control::{control_map, control_map_over, start_with_control};

fn url(text: &str) -> ConnUrl {
    ConnUrl::expand(text, env_var).expect("url")
}

/// Polls `check` every 10 ms until it holds; panics after `within`.
async fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let start = tokio::time::Instant::now();
    while !check() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

fn quick(watch: bool) -> LiveOptions {
    LiveOptions {
        lease: Duration::from_secs(2),
        renew_every: Duration::from_millis(200),
        watch,
        // Long enough that only NOTIFY (or a reconnect) can explain a quick follow.
        poll: Duration::from_secs(120),
        reconnect_after: Duration::from_millis(100),
        moved_wait: Duration::from_secs(10),
        moved_poll: Duration::from_millis(20),
        control_timeout: Duration::from_secs(2),
    }
}

#[test]
fn routers_follow_flips_by_notify_and_after_their_listener_is_killed() {
    let (cluster, control_url) = start_with_control(3);
    // Epochs 1-3 use two shards; epoch 4 adds the third.
    let two = &cluster.servers()[..2];
    let ring1 = [(i64::MIN, 0), (0, 1)];
    let map1 = control_map_over(two, &control_url, 1, 9, &ring1);
    let rt = runtime();
    rt.block_on(async {
        let mut control = connect(&control_url).await;
        control::install(&control).await.unwrap();
        control::seed(&mut control, &map1, &env_var).await.unwrap();
        let router = Router::from_control_with(&url(&control_url), quick(true))
            .await
            .expect("router");
        assert_eq!(router.epoch(), 1);
        let key = (1..).find(|k| map1.token(*k) >= 1 << 62).unwrap();
        assert_eq!(router.shard_for(key).name, "s1");

        // Flip 1 → 2: the arc holding `key` goes to s0.
        let map2 = control_map(
            &cluster,
            &control_url,
            2,
            9,
            &[(i64::MIN, 0), (0, 1), (1 << 62, 0)],
        );
        control::flip(&mut control, 1, &map2).await.unwrap();
        let took = eventually(Duration::from_secs(3), "follow flip 2", || {
            router.epoch() == 2
        })
        .await;
        eprintln!("followed a flip by NOTIFY in {took:?}");
        assert_eq!(router.shard_for(key).name, "s0");
        assert_eq!(router.shard_for(key).epoch(), 2);
        // It acknowledges the epoch in the control store.
        control::wait_for_acks(
            &control,
            2,
            Duration::ZERO,
            Duration::from_millis(20),
            Duration::from_secs(3),
        )
        .await
        .expect("router acknowledged epoch 2");

        // Kill the listening connection; the router reconnects and still follows.
        let killed: i64 = control
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE query LIKE 'LISTEN %' AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(killed, 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let map3 = control_map_over(two, &control_url, 3, 9, &ring1);
        control::flip(&mut control, 2, &map3).await.unwrap();
        eventually(
            Duration::from_secs(3),
            "follow flip 3 after the kill",
            || router.epoch() == 3,
        )
        .await;
        assert_eq!(router.shard_for(key).name, "s1");
        // A later flip, adding shard s2, arrives by NOTIFY on the new
        // listening connection; s1 keeps its pool (same server session),
        // s2 gets one.
        let pid = "SELECT pg_backend_pid()";
        let s1_session: i32 = router.query_one(key, pid, &[]).await.unwrap().get(0);
        let map4 = control_map(&cluster, &control_url, 4, 9, &[(i64::MIN, 1), (1 << 62, 2)]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        control::flip(&mut control, 3, &map4).await.unwrap();
        eventually(Duration::from_secs(3), "follow flip 4", || {
            router.epoch() == 4
        })
        .await;
        assert_eq!(router.shard_for(-key).name, "s1");
        let kept: i32 = router.query_one(-key, pid, &[]).await.unwrap().get(0);
        assert_eq!(kept, s1_session, "s1's pooled connection survives the swap");
        assert_eq!(router.shard_for(key).name, "s2");
        let port: String = router
            .query_one(key, "SELECT current_setting('port')", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(port, cluster.servers()[2].port().to_string());
        router.shutdown().await;
        assert!(control::routers(&control).await.unwrap().is_empty());
    });
}

#[test]
fn a_router_cut_off_from_the_control_store_refuses_statements_until_it_reloads() {
    // Two shards; the third server holds only the control store.
    let cluster = Cluster::start(3).expect("start PostgreSQL");
    let control_server = &cluster.servers()[2];
    control_server.psql("CREATE DATABASE control").unwrap();
    let control_url = control_server.url_for("control");
    for s in &cluster.servers()[..2] {
        s.psql(FORUM_SCHEMA).unwrap();
    }
    let map = control_map_over(
        &cluster.servers()[..2],
        &control_url,
        1,
        0,
        &[(i64::MIN, 0), (0, 1)],
    );
    let rt = runtime();
    rt.block_on(async {
        init(&map, &env_var, &InitOptions::default())
            .await
            .expect("init");
        let mut options = quick(true);
        options.lease = Duration::from_millis(800);
        let router = Router::from_control_with(&url(&control_url), options)
            .await
            .unwrap();
        let read = "SELECT count(*) FROM posts";
        router
            .query_one(1, read, &[])
            .await
            .expect("read while leased");

        control_server.stop().unwrap();
        let start = tokio::time::Instant::now();
        let error = loop {
            match router.query_one(1, read, &[]).await {
                Ok(_) => {
                    assert!(
                        start.elapsed() < Duration::from_secs(5),
                        "lease never lapsed"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => break e,
            }
        };
        assert!(matches!(error, RouterError::LeaseLapsed { .. }), "{error}");
        assert!(start.elapsed() <= Duration::from_millis(800) + Duration::from_millis(300));
        assert!(matches!(
            router.client(2).await,
            Err(RouterError::LeaseLapsed { .. })
        ));

        control_server.start().unwrap();
        let start = tokio::time::Instant::now();
        while router.query_one(1, read, &[]).await.is_err() {
            assert!(start.elapsed() < Duration::from_secs(10), "never recovered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // It registered again and reports the live epoch.
        let control = connect(&control_url).await;
        let routers = control::routers(&control).await.unwrap();
        assert_eq!(routers.len(), 1);
        assert_eq!(routers[0].epoch, 1);
        assert!(routers[0].lease_left_ms > 0);
    });
}

async fn count(c: &tokio_postgres::Client, k: i64) -> i64 {
    c.query_one("SELECT count(*) FROM posts WHERE id = $1", &[&k])
        .await
        .unwrap()
        .get(0)
}

/// The blocking-move protocol on the fence and the control store, by hand:
/// fence on the source, flip (target gains, control flips, source loses),
/// lower the fence.
async fn move_by_hand(
    control: &mut tokio_postgres::Client,
    source: &tokio_postgres::Client,
    target: &tokio_postgres::Client,
    old: &ShardMap,
    new: &ShardMap,
    range: TokenRange,
) {
    let wait = Duration::from_secs(5);
    fence::set_owned(target, new.version(), &fence::owned_ranges(new, 1), wait)
        .await
        .unwrap();
    control::flip(control, old.version(), new).await.unwrap();
    fence::set_owned(source, new.version(), &fence::owned_ranges(new, 0), wait)
        .await
        .unwrap();
    fence::lower(source, &[range]).await.unwrap();
}

#[test]
fn writes_refused_with_ps001_wait_for_the_new_epoch_and_land_once_on_the_new_owner() {
    let (cluster, control_url) = start_with_control(2);
    for s in cluster.servers() {
        s.psql(FORUM_SCHEMA).unwrap();
    }
    let moving = TokenRange::inclusive(-(1 << 62), -1).unwrap();
    let map1 = control_map(&cluster, &control_url, 1, 21, &[(i64::MIN, 0), (0, 1)]);
    let map2 = control_map(
        &cluster,
        &control_url,
        2,
        21,
        &[(i64::MIN, 0), (moving.from(), 1)],
    );
    let rt = runtime();
    rt.block_on(async {
        init(&map1, &env_var, &InitOptions::default())
            .await
            .expect("init");
        let mut control = connect(&control_url).await;
        let s0 = connect(&cluster.servers()[0].url()).await;
        let s1 = connect(&cluster.servers()[1].url()).await;
        // Routers that never watch: they learn the flip only from PS001.
        let r1 = Arc::new(
            Router::from_control_with(&url(&control_url), quick(false))
                .await
                .unwrap(),
        );
        let r2 = Router::from_control_with(&url(&control_url), quick(false))
            .await
            .unwrap();
        let fixed = Router::connect(map1.clone()).await.unwrap();
        let in_range = |k: &i64| moving.contains(map1.token(*k));
        let mut keys = (1..).filter(in_range);
        let (k1, k2, k3) = (
            keys.next().unwrap(),
            keys.next().unwrap(),
            keys.next().unwrap(),
        );

        // Fence the range on s0; a write to it waits through the move.
        fence::raise(&s0, &[moving], Duration::from_secs(5))
            .await
            .unwrap();
        let writer = Arc::clone(&r1);
        let write = tokio::spawn(async move {
            writer
                .execute(
                    k1,
                    "INSERT INTO posts (id, board, title) VALUES ($1, 1, 'w')",
                    &[&k1],
                )
                .await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !write.is_finished(),
            "the write must wait while the range is fenced"
        );
        move_by_hand(&mut control, &s0, &s1, &map1, &map2, moving).await;
        let inserted = tokio::time::timeout(Duration::from_secs(10), write)
            .await
            .expect("the write finishes after the flip")
            .unwrap()
            .expect("retried at the new owner");
        assert_eq!(inserted, 1);
        assert_eq!(r1.epoch(), 2);
        assert_eq!((count(&s0, k1).await, count(&s1, k1).await), (0, 1));

        // A whole closure (an explicit transaction) reruns at the new owner.
        let attempts = AtomicU32::new(0);
        r2.with_retry(k2, |mut client| {
            attempts.fetch_add(1, Ordering::SeqCst);
            async move {
                let tx = client.transaction().await?;
                tx.execute(
                    "INSERT INTO posts (id, board, title) VALUES ($1, 1, 't')",
                    &[&k2],
                )
                .await?;
                tx.execute(
                    "INSERT INTO comments (post_id, body) VALUES ($1, 'c')",
                    &[&k2],
                )
                .await?;
                tx.commit().await
            }
        })
        .await
        .expect("transaction retried");
        assert_eq!(attempts.load(Ordering::SeqCst), 2);
        assert_eq!((count(&s0, k2).await, count(&s1, k2).await), (0, 1));

        // A router without a control store gets the typed error, naming
        // the token and the shard's epoch.
        let error = fixed
            .execute(
                k3,
                "INSERT INTO posts (id, board, title) VALUES ($1, 1, 'f')",
                &[&k3],
            )
            .await
            .unwrap_err();
        match &error {
            RouterError::Moved {
                shard,
                token,
                epoch,
                routed_by,
                ..
            } => {
                assert_eq!(shard, "s0");
                assert_eq!(*token, Some(map1.token(k3)));
                assert_eq!(*epoch, Some(2));
                assert_eq!(*routed_by, 1);
            }
            other => panic!("expected Moved, got {other}"),
        }
        assert_eq!(count(&s0, k3).await + count(&s1, k3).await, 0);
    });
}
