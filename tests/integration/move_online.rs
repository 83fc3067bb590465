//! Online add-shard moves while writers insert, update and delete posts and
//! comments through live routers: every acknowledged write is on its owner
//! exactly once afterwards (row by row), no write falls into the gap
//! between "capture on" and the backfill's snapshot (transactions held open
//! across both), nothing of the capture is left on any server, and the
//! events a renderer needs arrive in order.

use std::sync::mpsc;
use std::time::Duration;

use postshard_rebalancer::migrate::{self, Event, MoveOptions};
use postshard_rebalancer::plan::Plan;
use postshard_rebalancer::range::TokenRange;
use postshard_router::map::env_var;
use postshard_router::ShardMap;

use crate::common::{connect, runtime};
use crate::move_support::{text, Forum, Rows};
use crate::move_writers::{expected_rows, Body, Model, Post, Writers, WRITERS};

/// A connection on its own thread and runtime that holds a transaction
/// open while the move's event callback (which must not await) waits.
pub struct Held {
    commands: mpsc::Sender<(String, Duration)>,
    done: mpsc::Receiver<Result<(), String>>,
}

impl Held {
    /// A helper connected to `url`.
    pub fn new(url: String) -> Held {
        let (commands, inbox) = mpsc::channel::<(String, Duration)>();
        let (reply, done) = mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let client = connect(&url).await;
                while let Ok((sql, after)) = inbox.recv() {
                    if !after.is_zero() {
                        // Answer first, run later: the caller goes on.
                        let _ = reply.send(Ok(()));
                        tokio::time::sleep(after).await;
                        let r = client.batch_execute(&sql).await;
                        assert!(r.is_ok(), "{sql}: {r:?}");
                        continue;
                    }
                    let r = client
                        .batch_execute(&sql)
                        .await
                        .map_err(|e| format!("{e:?}"));
                    let _ = reply.send(r);
                }
            });
        });
        Held { commands, done }
    }

    /// Runs `sql` now and waits for it.
    pub fn run(&self, sql: &str) {
        self.commands.send((sql.into(), Duration::ZERO)).unwrap();
        self.done.recv().unwrap().unwrap();
    }

    /// Runs `sql` after `delay`, without waiting.
    pub fn run_later(&self, sql: &str, delay: Duration) {
        self.commands.send((sql.into(), delay)).unwrap();
        self.done.recv().unwrap().unwrap();
    }
}

/// The writers' starting models: the seeded rows, split by `id % WRITERS`.
pub fn seeded_models(before: &Rows) -> Vec<Model> {
    let mut models: Vec<Model> = (0..WRITERS).map(|_| Model::default()).collect();
    for (_, p) in &before.posts {
        models[(p.id % WRITERS) as usize].posts.insert(
            p.id,
            Post {
                board: p.board,
                title: p.title.clone(),
                body: Body::Md5(p.body_md5.clone(), p.body_len),
                comment_count: p.comment_count,
            },
        );
    }
    for (_, c) in &before.comments {
        models[(c.post_id % WRITERS) as usize]
            .comments
            .insert(c.id, (c.post_id, c.body.clone()));
    }
    models
}

/// Keys from `start` whose token lies in move `index`'s range.
pub fn keys_in_move<'a>(
    map: &'a ShardMap,
    plan: &Plan,
    index: usize,
    start: i64,
) -> impl Iterator<Item = i64> + 'a {
    let m = &plan.moves[index];
    let range = TokenRange::new(i128::from(m.from), m.to).unwrap();
    (start..).filter(move |k| range.contains(map.token(*k)))
}

/// Every row of `expected` is in `actual` and nothing else is (the first
/// few missing and unexpected ones named).
pub(crate) fn same_rows<T: PartialEq + std::fmt::Debug>(what: &str, expected: &[T], actual: &[T]) {
    let missing: Vec<_> = expected
        .iter()
        .filter(|r| !actual.contains(r))
        .take(5)
        .collect();
    let extra: Vec<_> = actual
        .iter()
        .filter(|r| !expected.contains(r))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what} missing {missing:?}, unexpected {extra:?}"
    );
}

/// [`assert_clean_against`] the rows seeded before the move (no writers).
pub async fn assert_clean_against_seeded(forum: &Forum, plan_after: &ShardMap, before: &Rows) {
    let mut model = Model::default();
    for m in seeded_models(before) {
        model.merge(m);
    }
    assert_clean_against(forum, plan_after, &model).await;
}

/// Checks the cluster against the acknowledged model: placement, content,
/// `verify`, and no leftovers.
pub async fn assert_clean_against(forum: &Forum, plan_after: &ShardMap, model: &Model) {
    let live = forum.live().await;
    assert_eq!(live.to_yaml(), plan_after.to_yaml());
    let rows = forum.rows().await;
    forum.assert_placed(&live, &rows);
    let control = connect(&forum.control_url).await;
    let expected = expected_rows(&control, model).await;
    let (posts, comments) = rows.content();
    same_rows("posts", &expected.0, &posts);
    assert_eq!(posts.len(), expected.0.len());
    same_rows("comments", &expected.1, &comments);
    let out = forum.postshard(&["verify"], &[]);
    assert!(out.status.success(), "verify: {}", text(&out));
    assert_eq!(forum.leftovers().await, Vec::<String>::new());
    for (server, _, _, fenced, _) in forum.fences().await {
        assert_eq!(fenced, "{}", "server {server} still fenced");
    }
}

#[test]
fn online_move_under_writers_loses_nothing_has_no_capture_gap_and_leaves_nothing() {
    let forum = Forum::start(1500);
    let rt = runtime();
    rt.block_on(async {
        let base = forum.live().await;
        let before = forum.rows().await;
        let models = seeded_models(&before);
        let plan = forum.add_plan().await;
        let after_map = plan.apply(&base).unwrap();
        let source = plan.moves[0].source.clone();
        let source_url = forum.cluster.servers()[source[1..].parse::<usize>().unwrap()].url();
        let mut keys = keys_in_move(&base, &plan, 0, 800_000_000);
        let (before_capture, in_gap) = (keys.next().unwrap(), keys.next().unwrap());

        let writers = Writers::start(&forum.control_url, models).await;

        // One transaction writes before capture is switched on and commits
        // while capture waits for it; another writes after capture is on,
        // before the snapshot, and commits once the snapshot is taken.
        let held = Held::new(source_url);
        let (mut began_early, mut began_in_gap, mut committed_in_gap) = (false, false, false);
        let mut events: Vec<Event> = Vec::new();
        let map = ShardMap::from_path(forum.map_path()).unwrap();
        let options = MoveOptions {
            catch_up_rows: 20,
            ..MoveOptions::default()
        };
        let id = migrate::apply(&map, &plan, "online", &env_var, &options, &mut |e| {
            events.push(e.clone());
            match (e.event.as_str(), e.move_index) {
                ("capturing", Some(0)) if !began_early => {
                    began_early = true;
                    held.run(&format!(
                        "BEGIN; INSERT INTO posts (id, title, body) VALUES ({before_capture}, 'early', 'before capture')"
                    ));
                    held.run_later("COMMIT", Duration::from_millis(300));
                }
                ("copied", Some(0)) if !began_in_gap => {
                    began_in_gap = true;
                    held.run(&format!(
                        "BEGIN; INSERT INTO posts (id, title, body) VALUES ({in_gap}, 'gap', 'after capture, before snapshot'); \
                         INSERT INTO comments (id, post_id, body) VALUES (4000000001, {in_gap}, 'gap comment')"
                    ));
                }
                ("progress", Some(0)) if began_in_gap && !committed_in_gap => {
                    committed_in_gap = true;
                    held.run("COMMIT");
                }
                _ => {}
            }
        })
        .await
        .expect("online apply");
        assert!(
            began_early && began_in_gap && committed_in_gap,
            "{began_early} {began_in_gap} {committed_in_gap}: {events:?}"
        );
        let (mut model, writes) = writers.stop(base.version() + 1).await;
        let held_post = |title: &str, body: &str, comment_count| Post {
            board: 1,
            title: title.into(),
            body: Body::Text(body.into()),
            comment_count,
        };
        model.posts.insert(before_capture, held_post("early", "before capture", 0));
        model.posts.insert(in_gap, held_post("gap", "after capture, before snapshot", 1));
        model.comments.insert(4_000_000_001, (in_gap, "gap comment".into()));
        assert_clean_against(&forum, &after_map, &model).await;
        let rows = forum.rows().await;
        let target = plan.moves[0].target[1..].parse::<usize>().unwrap();
        for key in [before_capture, in_gap] {
            let on = rows.posts.iter().find(|(_, p)| p.id == key).map(|(s, _)| *s);
            assert_eq!(on, Some(target), "held post {key}");
        }

        // The events, in the order a renderer expects them.
        let names: Vec<String> = events
            .iter()
            .filter(|e| !["progress", "lag", "copied_rows", "stall"].contains(&e.event.as_str()))
            .map(|e| match e.move_index {
                Some(i) => format!("{}@{i}", e.event),
                None => e.event.clone(),
            })
            .collect();
        let moves = u32::try_from(plan.moves.len()).unwrap();
        let mut want = vec!["planned".to_string()];
        want.extend(
            migrate::steps(migrate::Mode::Online, moves)
                .iter()
                .map(|s| match s.move_index {
                    Some(i) => format!("{}@{i}", s.phase),
                    None => s.phase.to_string(),
                }),
        );
        want.push("done".into());
        assert_eq!(names, want);
        for i in 0..moves {
            let mine = |name: &str| {
                events
                    .iter()
                    .filter(|e| e.move_index == Some(i) && e.event == name)
                    .collect::<Vec<_>>()
            };
            let progress = mine("progress");
            assert_eq!(progress.first().map(|e| e.detail["rows"].as_u64()), Some(Some(0)));
            let copied: u64 = mine("copied_rows")[0]
                .detail
                .as_object()
                .unwrap()
                .values()
                .map(|v| v.as_u64().unwrap())
                .sum();
            assert_eq!(progress.last().unwrap().detail["rows"].as_u64(), Some(copied));
            let lags = mine("lag");
            assert!(!lags.is_empty());
            assert_eq!(lags.last().unwrap().detail["backlog"], 0);
            assert_eq!(lags.last().unwrap().detail["fenced"], true);
        }
        let done = events.last().unwrap();
        eprintln!(
            "online move {id}: {writes} acknowledged writes; writes to moving ranges refused for {} ms per move",
            done.detail["writes_blocked_ms"]
        );
        assert_eq!(
            done.detail["writes_blocked_ms"].as_object().unwrap().len(),
            plan.moves.len()
        );
    });
}

#[test]
fn cancel_stops_a_throttled_backfill_at_a_resumable_point_and_resume_finishes() {
    let forum = Forum::start(1200);
    let rt = runtime();
    rt.block_on(async {
        let base = forum.live().await;
        let before = forum.rows().await;
        let plan = forum.add_plan().await;
        let after_map = plan.apply(&base).unwrap();
        let map = ShardMap::from_path(forum.map_path()).unwrap();
        let (cancel, cancelled) = tokio::sync::watch::channel(false);
        let options = MoveOptions {
            max_rows_per_sec: Some(2_000),
            cancel: cancelled,
            ..MoveOptions::default()
        };
        let mut events: Vec<Event> = Vec::new();
        let started = std::time::Instant::now();
        let result = migrate::apply(&map, &plan, "online", &env_var, &options, &mut |e| {
            events.push(e.clone());
            if e.event == "progress" && e.move_index == Some(1) && e.detail["rows"].as_u64() > Some(0) {
                let _ = cancel.send(true);
            }
        })
        .await;
        let err = result.expect_err("cancelled");
        assert!(
            matches!(err, migrate::MigrateError::Cancelled { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("postshard resume"), "{err}");
        assert_eq!(events.last().unwrap().event, "cancelled");
        // Move 0's backfill was paced: report the rate it ran at.
        let copied: u64 = events
            .iter()
            .filter(|e| e.event == "copied_rows" && e.move_index == Some(0))
            .flat_map(|e| e.detail.as_object().unwrap().values().map(|v| v.as_u64().unwrap()))
            .sum();
        eprintln!(
            "throttled to 2000 rows/s: move 0 copied {copied} rows; apply ran {:?} before the cancel",
            started.elapsed()
        );
        // Stopped before the flip, with capture on: resume finishes it.
        assert_eq!(forum.live().await.version(), base.version());
        assert!(!forum.leftovers().await.is_empty(), "capture should still be on");
        let out = forum.postshard(&["resume"], &[]);
        assert!(out.status.success(), "resume: {}", text(&out));
        assert_clean_against_seeded(&forum, &after_map, &before).await;
    });
}

#[test]
fn ctrl_c_stops_apply_at_a_resumable_point_and_resume_finishes() {
    let forum = Forum::start(400);
    let rt = runtime();
    rt.block_on(async {
        let base = forum.live().await;
        let before = forum.rows().await;
        let plan = forum.add_plan().await;
        let after_map = plan.apply(&base).unwrap();
        // A transaction on the first source holds `capturing` (its trigger
        // DDL waits for the table lock) while Ctrl-C arrives.
        let source = plan.moves[0].source[1..].parse::<usize>().unwrap();
        let held = connect(&forum.cluster.servers()[source].url()).await;
        held.batch_execute("BEGIN; SELECT 1 FROM posts FOR UPDATE").await.unwrap();
        let file = crate::move_support::plan_file(&plan);
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_postshard"))
            .args(["apply", file.path().to_str().unwrap(), "--map", forum.map_path()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let control = connect(&forum.control_url).await;
        let waiting_since = std::time::Instant::now();
        loop {
            let phase: Option<String> = control
                .query_opt(
                    "SELECT phase FROM postshard_control.journal ORDER BY migration_id DESC, seq DESC LIMIT 1",
                    &[],
                )
                .await
                .unwrap()
                .map(|r| r.get(0));
            if phase.as_deref() == Some("capturing") {
                break;
            }
            assert!(waiting_since.elapsed() < Duration::from_secs(60), "{phase:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let status = std::process::Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        tokio::time::sleep(Duration::from_millis(200)).await;
        held.batch_execute("COMMIT").await.unwrap();
        let out = tokio::task::block_in_place(|| child.wait_with_output().unwrap());
        assert_eq!(out.status.code(), Some(130), "{}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("stopped at a resumable point") && stderr.contains("postshard resume"),
            "{}",
            text(&out)
        );
        assert_eq!(forum.live().await.version(), base.version());
        let out = forum.postshard(&["resume"], &[]);
        assert!(out.status.success(), "resume: {}", text(&out));
        assert_clean_against_seeded(&forum, &after_map, &before).await;
    });
}

#[test]
fn parallel_backfills_overlap_and_resume_after_a_cancel_mid_stage() {
    let forum = Forum::start(1500);
    let rt = runtime();
    rt.block_on(async {
        let base = forum.live().await;
        let before = forum.rows().await;
        let plan = forum.add_plan().await;
        assert!(plan.moves.len() >= 2);
        let after_map = plan.apply(&base).unwrap();
        let map = ShardMap::from_path(forum.map_path()).unwrap();
        let (cancel, cancelled) = tokio::sync::watch::channel(false);
        let options = MoveOptions {
            parallel: 2,
            max_rows_per_sec: Some(1_000),
            cancel: cancelled,
            ..MoveOptions::default()
        };
        let mut events: Vec<Event> = Vec::new();
        let result = migrate::apply(&map, &plan, "online", &env_var, &options, &mut |e| {
            events.push(e.clone());
            let copying = |i: u32| {
                events.iter().any(|e| {
                    e.event == "progress"
                        && e.move_index == Some(i)
                        && e.detail["rows"].as_u64() > Some(0)
                })
            };
            if copying(0) && copying(1) {
                let _ = cancel.send(true);
            }
        })
        .await;
        assert!(
            matches!(result, Err(migrate::MigrateError::Cancelled { .. })),
            "{result:?}"
        );
        // Both backfills were copying at once: neither had finished.
        assert!(
            !events.iter().any(|e| e.event == "copied_rows"),
            "{events:?}"
        );
        let options = MoveOptions {
            parallel: 2,
            ..MoveOptions::default()
        };
        let mut resumed: Vec<Event> = Vec::new();
        migrate::resume(&map, None, &env_var, &options, &mut |e| {
            resumed.push(e.clone())
        })
        .await
        .expect("resume");
        // Resume copied both moves again (each had stopped midway).
        let copied: Vec<Option<u32>> = resumed
            .iter()
            .filter(|e| e.event == "copied_rows")
            .map(|e| e.move_index)
            .collect();
        assert_eq!(copied.len(), 2, "{resumed:?}");
        assert_clean_against_seeded(&forum, &after_map, &before).await;
    });
}
