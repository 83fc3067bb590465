//! Randomized online moves under writers: each seed picks the plan (add a
//! shard with weight 1 or 2, or remove one of three), the step at which
//! `apply` is killed with SIGKILL (or none), whether the added shard's
//! server is stopped and restarted once the backfill runs (it serves no
//! app traffic before the flip), and the writers' mix; writers
//! insert, update and delete posts and comments through live routers the
//! whole time, `resume` finishes the move, and the cluster is checked row
//! by row against what the writers acknowledged, with `verify` and the
//! catalogs (nothing of the capture left). State carries over from seed to
//! seed on the same servers. Seeds 1–2 run by default; `POSTSHARD_SEEDS=N`
//! runs seeds 1..=N.

use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use postshard_rebalancer::migrate::{steps, Mode};
use postshard_rebalancer::plan::{add_shard, remove_shard};
use postshard_router::map::env_var;
use postshard_router::{ConnUrl, Router};

use crate::common::{runtime, Rng};
use crate::move_online::{assert_clean_against, seeded_models};
use crate::move_support::{plan_file, text, Forum};
use crate::move_writers::{writer, Model};

fn seeds() -> u64 {
    std::env::var("POSTSHARD_SEEDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2)
}

#[test]
fn randomized_online_moves_with_kills_lose_nothing() {
    let forum = Forum::start(800);
    let rt = runtime();
    rt.block_on(async {
        let mut models = seeded_models(&forum.rows().await);
        let control = ConnUrl::expand(&forum.control_url, env_var).unwrap();
        let next_comment = Arc::new(AtomicI64::new(3_000_000_000));
        for seed in 1..=seeds() {
            let mut rng = Rng::new(seed * 7919);
            let live = forum.live().await;
            let plan = if live.shards().len() == 2 {
                let missing = (0..3)
                    .find(|i| live.shard_index(&format!("s{i}")).is_none())
                    .unwrap();
                let weight = 1 + (rng.next_u64() % 2) as u32;
                add_shard(
                    &live,
                    &format!("s{missing}"),
                    &forum.cluster.servers()[missing].url(),
                    weight,
                )
                .unwrap()
            } else {
                let gone = live.shards()[(rng.next_u64() % 3) as usize].name.clone();
                remove_shard(&live, &gone).unwrap()
            };
            let after = plan.apply(&live).unwrap();
            let all = steps(Mode::Online, u32::try_from(plan.moves.len()).unwrap());
            let pick = (rng.next_u64() % (all.len() as u64 + 1)) as usize;
            let failpoint = all.get(pick).map(|s| {
                let name = match s.move_index {
                    Some(i) => format!("{}@{i}", s.phase),
                    None => s.phase.to_string(),
                };
                if rng.next_u64().is_multiple_of(2) {
                    format!("{name}:after")
                } else {
                    name
                }
            });
            eprintln!(
                "seed {seed}: {} ({} moves), kill at {failpoint:?}",
                plan.intent,
                plan.moves.len()
            );

            let stop = Arc::new(AtomicBool::new(false));
            let mut tasks = Vec::new();
            for (w, model) in std::mem::take(&mut models).into_iter().enumerate() {
                let router = Arc::new(Router::from_control(&control).await.expect("live router"));
                tasks.push(tokio::spawn(writer(
                    w as i64,
                    seed,
                    router,
                    model,
                    stop.clone(),
                    next_comment.clone(),
                )));
            }
            tokio::time::sleep(Duration::from_millis(100 + rng.next_u64() % 400)).await;
            let file = plan_file(&plan);
            let path = file.path().to_str().unwrap().to_string();
            let (forum_ref, failpoint_env) = (&forum, failpoint.clone().unwrap_or_default());
            // The shard the plan adds, restarted mid-move when the seed says so.
            let added = (live.shards().len() == 2 && rng.next_u64().is_multiple_of(2))
                .then(|| {
                    plan.shards
                        .iter()
                        .find(|s| live.shard_index(&s.name).is_none())
                })
                .flatten()
                .map(|s| s.name[1..].parse::<usize>().unwrap());
            let moving = AtomicBool::new(true);
            let restarted = AtomicBool::new(false);
            tokio::task::block_in_place(|| {
                std::thread::scope(|scope| {
                    if let Some(server) = added {
                        let (control_url, moving, restarted) =
                            (forum_ref.control_url.clone(), &moving, &restarted);
                        let server = &forum_ref.cluster.servers()[server];
                        scope.spawn(move || {
                            restart_mid_backfill(&control_url, server, moving, restarted)
                        });
                    }
                    let out = forum_ref.postshard(
                        &["apply", &path],
                        &[("POSTSHARD_FAILPOINT", failpoint_env.as_str())],
                    );
                    match &failpoint {
                        Some(f) => {
                            assert_eq!(out.status.signal(), Some(9), "{f}: {}", text(&out));
                            let out = forum_ref.postshard(&["resume"], &[]);
                            assert!(out.status.success(), "resume after {f}: {}", text(&out));
                        }
                        None => assert!(out.status.success(), "apply: {}", text(&out)),
                    }
                    moving.store(false, Ordering::Relaxed);
                });
            });
            if added.is_some() {
                eprintln!(
                    "seed {seed}: added shard restarted: {}",
                    restarted.load(Ordering::Relaxed)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            stop.store(true, Ordering::Relaxed);
            let mut acknowledged = Model::default();
            for task in tasks {
                let (m, errors, _) = task.await.unwrap();
                assert!(errors.is_empty(), "seed {seed}: writer errors: {errors:?}");
                models.push(m.clone());
                acknowledged.merge(m);
            }
            assert_clean_against(&forum, &after, &acknowledged).await;
        }
    });
}

/// Once the control store's journal shows a backfill or catch-up running,
/// stops `server` and starts it again a second later (while `moving`).
fn restart_mid_backfill(
    control_url: &str,
    server: &postshard_sandbox::Server,
    moving: &AtomicBool,
    restarted: &AtomicBool,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(crate::common::connect(control_url));
    while moving.load(Ordering::Relaxed) {
        let phase: Option<String> = rt.block_on(async {
            client
                .query_opt(
                    "SELECT j.phase FROM postshard_control.journal j \
                     JOIN postshard_control.migrations m ON m.id = j.migration_id \
                     WHERE m.state = 'active' ORDER BY j.seq DESC LIMIT 1",
                    &[],
                )
                .await
                .unwrap()
                .map(|r| r.get(0))
        });
        if matches!(phase.as_deref(), Some("copied" | "caught_up")) {
            server.stop().unwrap();
            std::thread::sleep(Duration::from_secs(1));
            server.start().unwrap();
            restarted.store(true, Ordering::Relaxed);
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
