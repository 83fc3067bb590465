//! Online moves riding out server restarts: the target stopped and started
//! again mid-backfill, then the server holding both a source shard and the
//! control store: the move reports stalls, retries and completes; a live
//! router keeps writing keys outside the moving ranges without an error;
//! afterwards every row is where it belongs, once, and nothing is left.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use postshard_rebalancer::migrate::{self, Event, MoveOptions};
use postshard_router::map::env_var;
use postshard_router::{ConnUrl, Router, ShardMap};

use crate::common::runtime;
use crate::move_support::{text, Forum};

#[test]
fn online_move_rides_out_restarts_of_target_source_and_control_store() {
    let forum = Forum::start(3000);
    let rt = runtime();
    let servers = forum.cluster.servers();
    let (plan, base, original) = rt.block_on(async {
        (
            forum.add_plan().await,
            forum.live().await,
            forum.rows().await,
        )
    });
    assert!(plan.moves.len() >= 2, "{}", plan.to_yaml());
    // Server 0 holds shard s0 and the control store.
    let source_move = (1..plan.moves.len())
        .find(|i| plan.moves[*i].source == "s0")
        .or_else(|| plan.moves.iter().position(|m| m.source == "s0"))
        .expect("a move leaves s0");
    let target_move = (0..plan.moves.len()).find(|i| *i != source_move).unwrap();
    let after_map = plan.apply(&base).unwrap();
    let stable: Vec<i64> = (20_000_000i64..)
        .filter(|k| base.shard_for(*k).name == "s1" && after_map.shard_for(*k).name == "s1")
        .take(2_000)
        .collect();

    let mut events: Vec<Event> = Vec::new();
    let (acknowledged, errors) = std::thread::scope(|scope| {
        rt.block_on(async {
            let control = ConnUrl::expand(&forum.control_url, env_var).unwrap();
            let router = Arc::new(Router::from_control(&control).await.expect("live router"));
            let stop = Arc::new(AtomicBool::new(false));
            let writer = {
                let (router, stop, keys) = (router.clone(), stop.clone(), stable.clone());
                tokio::spawn(async move {
                    let (mut done, mut errors) = (Vec::new(), Vec::new());
                    for key in keys {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let r = router
                            .execute(
                                key,
                                "INSERT INTO posts (id, title) VALUES ($1, 'outside')",
                                &[&key],
                            )
                            .await;
                        match r {
                            Ok(_) => done.push(key),
                            Err(e) => errors.push(format!("{key}: {e}")),
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    (done, errors)
                })
            };
            let map = ShardMap::from_path(forum.map_path()).unwrap();
            let options = MoveOptions {
                // Slow enough that the restarts land mid-backfill.
                max_rows_per_sec: Some(1_500),
                ..MoveOptions::default()
            };
            let (mut target_down, mut source_down) = (false, false);
            let result = migrate::apply(&map, &plan, "online", &env_var, &options, &mut |e| {
                events.push(e.clone());
                let restart = |server: usize| {
                    let s = &servers[server];
                    s.stop().unwrap();
                    scope.spawn(move || {
                        std::thread::sleep(Duration::from_millis(1_500));
                        s.start().unwrap();
                    });
                };
                let progressing = e.event == "progress" && e.detail["rows"].as_u64() > Some(0);
                if progressing && e.move_index == Some(target_move as u32) && !target_down {
                    target_down = true;
                    restart(2);
                }
                if progressing && e.move_index == Some(source_move as u32) && !source_down {
                    source_down = true;
                    restart(0);
                }
            })
            .await;
            assert!(target_down && source_down, "{result:?} {events:?}");
            result.expect("the move completes after the restarts");
            stop.store(true, Ordering::Relaxed);
            writer.await.unwrap()
        })
    });
    assert!(
        errors.is_empty(),
        "writes outside the moving ranges failed: {errors:?}"
    );
    assert!(acknowledged.len() > 50, "{}", acknowledged.len());
    let stalls: Vec<&Event> = events.iter().filter(|e| e.event == "stall").collect();
    assert!(!stalls.is_empty(), "no stall reported");
    eprintln!("{} stall events; first: {}", stalls.len(), stalls[0].detail);

    rt.block_on(async {
        let live = forum.live().await;
        assert_eq!(live.to_yaml(), after_map.to_yaml());
        let rows = forum.rows().await;
        forum.assert_placed(&live, &rows);
        for key in &acknowledged {
            assert!(
                rows.posts.iter().any(|(_, p)| p.id == *key),
                "post {key} lost"
            );
        }
        let mut seeded = rows.clone();
        seeded.posts.retain(|(_, p)| p.id < 20_000_000);
        assert_eq!(seeded.content(), original.content());
        assert_eq!(forum.leftovers().await, Vec::<String>::new());
    });
    let out = forum.postshard(&["verify"], &[]);
    assert!(out.status.success(), "verify: {}", text(&out));
}
