//! A blocking add-shard move onto a server with no tables while writers
//! insert, update and delete posts and comments through live routers: every
//! acknowledged write is on its owner exactly once afterwards, checked row
//! by row; a transaction that wrote before the fence and commits during the
//! move lands on the new owner; the old owner refuses moved keys with PS001;
//! the real schema (comment-count trigger, generated and identity columns,
//! TOASTed bodies, a column added later on one shard) moves intact.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use postshard_router::map::env_var;
use postshard_router::{ConnUrl, Router};

use crate::common::{connect, runtime, Rng};
use crate::move_online::same_rows;
use crate::move_support::{plan_file, text, CommentRow, Forum, PostRow};

pub(crate) const WRITERS: i64 = 4;

#[derive(Debug, Clone)]
pub(crate) enum Body {
    /// A seeded body, known by its md5 and length.
    Md5(String, i32),
    /// A body a writer wrote.
    Text(String),
}

#[derive(Debug, Clone)]
pub(crate) struct Post {
    pub(crate) board: i32,
    pub(crate) title: String,
    pub(crate) body: Body,
    pub(crate) comment_count: i32,
}

/// What the writers had acknowledged: the expected rows.
#[derive(Debug, Default, Clone)]
pub(crate) struct Model {
    pub(crate) posts: BTreeMap<i64, Post>,
    /// Comment id → (post id, body).
    pub(crate) comments: BTreeMap<i64, (i64, String)>,
}

impl Model {
    pub(crate) fn merge(&mut self, other: Model) {
        self.posts.extend(other.posts);
        self.comments.extend(other.comments);
    }
}

/// Writers running until [`Writers::stop`], each from its model of
/// `models` through a live router of its own.
pub(crate) struct Writers {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<(Model, Vec<String>, u64)>>,
    routers: Vec<Arc<Router>>,
}

impl Writers {
    /// Starts one writer per model on `Router::from_control` of the control
    /// store at `control_url`, and lets them run 300 ms.
    pub(crate) async fn start(control_url: &str, models: Vec<Model>) -> Writers {
        let control = ConnUrl::expand(control_url, env_var).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let next_comment = Arc::new(AtomicI64::new(3_000_000_000));
        let mut tasks = Vec::new();
        let mut routers = Vec::new();
        for (w, model) in models.into_iter().enumerate() {
            let router = Arc::new(Router::from_control(&control).await.expect("live router"));
            routers.push(router.clone());
            tasks.push(tokio::spawn(writer(
                w as i64,
                0,
                router,
                model,
                stop.clone(),
                next_comment.clone(),
            )));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        Writers {
            stop,
            tasks,
            routers,
        }
    }

    /// Stops them after 300 ms more; checks that none saw an error and
    /// every router routes by `epoch`; returns what they acknowledged,
    /// merged, and how many writes they made.
    pub(crate) async fn stop(self, epoch: u64) -> (Model, u64) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.stop.store(true, Ordering::Relaxed);
        let mut model = Model::default();
        let mut writes = 0;
        for task in self.tasks {
            let (m, errors, n) = task.await.unwrap();
            assert!(errors.is_empty(), "writer errors: {errors:?}");
            model.merge(m);
            writes += n;
        }
        for router in &self.routers {
            assert_eq!(router.epoch(), epoch);
        }
        (model, writes)
    }
}

/// One writer: works on the posts with `id % WRITERS == w` (seeded and its
/// own), so writers never contend; returns what it acknowledged, its errors
/// and how many writes it made.
pub(crate) async fn writer(
    w: i64,
    seed: u64,
    router: Arc<Router>,
    mut model: Model,
    stop: Arc<AtomicBool>,
    next_comment: Arc<AtomicI64>,
) -> (Model, Vec<String>, u64) {
    let mut rng = Rng::new(0x5eed + w as u64 + (seed << 8));
    let mut errors = Vec::new();
    let mut writes = 0u64;
    let mut next_post = 0i64;
    while !stop.load(Ordering::Relaxed) && errors.len() < 5 {
        let ids: Vec<i64> = model.posts.keys().copied().collect();
        let pick = |rng: &mut Rng, n: usize| (rng.next_u64() % n.max(1) as u64) as usize;
        let dice = rng.next_u64() % 100;
        let result: Result<(), String> = async {
            if dice < 30 || ids.is_empty() {
                let id = 10_000_000 + (seed as i64 * 1_000_000 + next_post) * WRITERS + w;
                next_post += 1;
                let board = (next_post % 5) as i32;
                let title = format!("w{w} post {next_post}");
                let body = if next_post % 10 == 0 {
                    // Over 8 KB of incompressible text: stored out of line.
                    (0..600).map(|_| format!("{:016x}", rng.next_u64())).collect()
                } else {
                    format!("body {next_post}")
                };
                let n = router
                    .execute(
                        id,
                        "INSERT INTO posts (id, board, title, body) VALUES ($1, $2, $3, $4)",
                        &[&id, &board, &title, &body],
                    )
                    .await
                    .map_err(|e| format!("insert post {id}: {e}"))?;
                expect_one(n, "insert post")?;
                model.posts.insert(
                    id,
                    Post {
                        board,
                        title,
                        body: Body::Text(body),
                        comment_count: 0,
                    },
                );
            } else if dice < 55 {
                let post = ids[pick(&mut rng, ids.len())];
                let id = next_comment.fetch_add(1, Ordering::Relaxed);
                let body = format!("w{w} comment {id}");
                let n = router
                    .execute(
                        post,
                        "INSERT INTO comments (id, post_id, body) VALUES ($1, $2, $3)",
                        &[&id, &post, &body],
                    )
                    .await
                    .map_err(|e| format!("insert comment on {post}: {e}"))?;
                expect_one(n, "insert comment")?;
                model.comments.insert(id, (post, body));
                if let Some(p) = model.posts.get_mut(&post) {
                    p.comment_count += 1;
                }
            } else if dice < 70 {
                let post = ids[pick(&mut rng, ids.len())];
                let title = format!("w{w} retitled {}", rng.next_u64() % 1000);
                let n = router
                    .execute(
                        post,
                        "UPDATE posts SET title = $2 WHERE id = $1",
                        &[&post, &title],
                    )
                    .await
                    .map_err(|e| format!("update post {post}: {e}"))?;
                expect_one(n, "update post")?;
                if let Some(p) = model.posts.get_mut(&post) {
                    p.title = title;
                }
            } else if dice < 90 && !model.comments.is_empty() {
                let at = pick(&mut rng, model.comments.len());
                let (&id, &(post, _)) = model.comments.iter().nth(at).unwrap();
                if dice < 80 {
                    let body = format!("w{w} edited {id}");
                    let n = router
                        .execute(
                            post,
                            "UPDATE comments SET body = $3 WHERE id = $2 AND post_id = $1",
                            &[&post, &id, &body],
                        )
                        .await
                        .map_err(|e| format!("update comment {id}: {e}"))?;
                    expect_one(n, "update comment")?;
                    model.comments.insert(id, (post, body));
                } else {
                    let n = router
                        .execute(
                            post,
                            "DELETE FROM comments WHERE id = $2 AND post_id = $1",
                            &[&post, &id],
                        )
                        .await
                        .map_err(|e| format!("delete comment {id}: {e}"))?;
                    expect_one(n, "delete comment")?;
                    model.comments.remove(&id);
                }
            } else {
                // A post with its comments, in one implicit transaction.
                let post = ids[pick(&mut rng, ids.len())];
                let sql = format!(
                    "DELETE FROM comments WHERE post_id = {post}; DELETE FROM posts WHERE id = {post}"
                );
                router
                    .with_retry(post, |client| {
                        let sql = sql.clone();
                        async move { client.batch_execute(&sql).await }
                    })
                    .await
                    .map_err(|e| format!("delete post {post}: {e}"))?;
                model.posts.remove(&post);
                model.comments.retain(|_, (p, _)| *p != post);
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => writes += 1,
            Err(e) => errors.push(e),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    (model, errors, writes)
}

fn expect_one(n: u64, what: &str) -> Result<(), String> {
    if n == 1 {
        Ok(())
    } else {
        Err(format!("{what}: {n} rows, expected 1"))
    }
}

/// The model as rows, bodies hashed by the server.
pub(crate) async fn expected_rows(
    client: &tokio_postgres::Client,
    model: &Model,
) -> (Vec<PostRow>, Vec<CommentRow>) {
    let mut posts = Vec::new();
    for (id, p) in &model.posts {
        let (body_md5, body_len) = match &p.body {
            Body::Md5(md5, len) => (md5.clone(), *len),
            Body::Text(text) => {
                let row = client
                    .query_one("SELECT md5($1), length($1)", &[text])
                    .await
                    .unwrap();
                (row.get(0), row.get(1))
            }
        };
        posts.push(PostRow {
            id: *id,
            board: p.board,
            title: p.title.clone(),
            body_md5,
            body_len,
            comment_count: p.comment_count,
            title_len: p.title.chars().count() as i32,
        });
    }
    let comments = model
        .comments
        .iter()
        .map(|(id, (post_id, body))| CommentRow {
            id: *id,
            post_id: *post_id,
            body: body.clone(),
        })
        .collect();
    posts.sort();
    (posts, comments)
}

#[test]
fn writers_lose_nothing_during_a_blocking_add_shard_move() {
    let forum = Forum::start(1500);
    let rt = runtime();
    rt.block_on(async {
        let base = forum.live().await;
        let before = forum.rows().await;
        assert!(before.posts.iter().any(|(_, p)| p.body_len > 8192));
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
        let plan = forum.add_plan().await;
        let after_map = plan.apply(&base).unwrap();
        let plan_path = plan_file(&plan);

        // A transaction that writes into a moving range before the fence
        // and commits while the move waits for it.
        let (held_key, held_source) = (900_000_000i64..)
            .map(|k| (k, after_map.shard_for(k).name.clone()))
            .find(|(_, owner)| owner == "s2")
            .map(|(k, _)| (k, base.shard_for(k).name.clone()))
            .unwrap();
        let held_server = forum.cluster.servers()[held_source[1..].parse::<usize>().unwrap()].url();
        let mut held = connect(&held_server).await;
        let held_tx = held.transaction().await.unwrap();
        held_tx
            .execute(
                "INSERT INTO posts (id, title, body) VALUES ($1, 'held', 'written before the fence')",
                &[&held_key],
            )
            .await
            .unwrap();
        held_tx
            .execute(
                "INSERT INTO comments (id, post_id, body) VALUES (4000000000, $1, 'held comment')",
                &[&held_key],
            )
            .await
            .unwrap();

        let writers = Writers::start(&forum.control_url, models).await;

        let map_path = forum.map_path().to_string();
        let plan_arg = plan_path.path().to_str().unwrap().to_string();
        let apply = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_postshard"))
                .args(["apply", &plan_arg, "--mode", "blocking", "--map", &map_path])
                .output()
                .unwrap()
        });
        // Commit the held transaction once the move fences its source (the
        // raise waits for it).
        let control_client = connect(&forum.control_url).await;
        let waiting_since = std::time::Instant::now();
        let fencing_held = loop {
            assert!(
                waiting_since.elapsed() < Duration::from_secs(60),
                "the move never reached fencing {held_source}"
            );
            let row = control_client
                .query_opt(
                    "SELECT phase, move_index FROM postshard_control.journal ORDER BY migration_id DESC, seq DESC LIMIT 1",
                    &[],
                )
                .await
                .unwrap();
            if let Some(row) = row {
                let (phase, index): (String, Option<i32>) = (row.get(0), row.get(1));
                if phase == "fenced"
                    && plan.moves[index.unwrap() as usize].source == held_source
                {
                    break true;
                }
                if phase != "planned" && phase != "prepared" && phase != "fenced" {
                    break false;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert!(fencing_held, "the move went past fencing {held_source} without waiting");
        tokio::time::sleep(Duration::from_millis(300)).await;
        held_tx.commit().await.expect("the held transaction commits");
        // Its post and comment were acknowledged: the model expects them.
        let held_model = Post {
            board: 1,
            title: "held".into(),
            body: Body::Text("written before the fence".into()),
            comment_count: 1,
        };

        let out = apply.await.unwrap();
        assert!(out.status.success(), "apply: {}", text(&out));
        let (mut model, writes) = writers.stop(base.version() + 1).await;
        model.posts.insert(held_key, held_model);
        model
            .comments
            .insert(4_000_000_000, (held_key, "held comment".into()));
        eprintln!("{writes} acknowledged writes during the test");
        assert!(writes > 100, "writers barely wrote: {writes}");

        // The live ring is the plan's.
        let live = forum.live().await;
        assert_eq!(live.to_yaml(), after_map.to_yaml());
        // Every acknowledged write, once, on its owner; nothing else anywhere.
        let rows = forum.rows().await;
        forum.assert_placed(&live, &rows);
        assert!(rows.posts.iter().any(|(server, _)| *server == 2));
        let expected = expected_rows(&control_client, &model).await;
        let (posts, comments) = rows.content();
        same_rows("posts", &expected.0, &posts);
        assert_eq!(posts.len(), expected.0.len());
        assert_eq!(comments, expected.1);
        // The held transaction's rows are on the new owner.
        let held_on = rows.posts.iter().find(|(_, p)| p.id == held_key).unwrap().0;
        assert_eq!(held_on, 2);
        // The new shard got a schema with the trigger, generated column and
        // identity from the donor.
        let described = forum.cluster.servers()[2]
            .psql(
                "SELECT string_agg(x, ';' ORDER BY x) FROM (
                   SELECT tgname::text FROM pg_trigger WHERE tgrelid = 'comments'::regclass AND NOT tgisinternal
                   UNION ALL SELECT attname || attgenerated::text || attidentity::text FROM pg_attribute
                   WHERE attrelid IN ('posts'::regclass, 'comments'::regclass) AND (attgenerated <> '' OR attidentity <> '')
                 ) s(x)",
            )
            .unwrap();
        assert_eq!(
            described,
            "comments_count;idd;title_lens;zz_postshard_fence;zz_postshard_fence_d;zz_postshard_fence_u"
        );

        // The old owner refuses a moved key, even from a direct connection.
        let moved = (1..)
            .find(|k| base.shard_for(*k).name == "s0" && live.shard_for(*k).name == "s2")
            .unwrap();
        let s0 = connect(&forum.cluster.servers()[0].url()).await;
        let err = s0
            .execute("INSERT INTO posts (id, title) VALUES ($1, 'stale')", &[&moved])
            .await
            .expect_err("a moved key is refused");
        assert_eq!(err.code().map(|c| c.code()), Some("PS001"), "{err:?}");
        let message = err.as_db_error().unwrap().message().to_string();
        assert!(message.contains(&format!("epoch {}", live.version())), "{message}");

        let out = forum.postshard(&["verify"], &[]);
        assert!(out.status.success(), "verify: {}", text(&out));
        let out = forum.postshard(&["status"], &[]);
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}", text(&out));
        assert!(shown.contains("live epoch 2"), "{shown}");
        assert!(shown.contains("shard s2"), "{shown}");
        assert!(shown.contains("migration 1 (done, blocking, from epoch 1)\n"), "{shown}");
        assert!(shown.contains("-> s2: cleaned, "), "{shown}");
        assert!(shown.contains(" rows copied (comments "), "{shown}");
        let out = forum.postshard(&["status", "--json"], &[]);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(status["epoch"], live.version());
        assert_eq!(status["migrations"][0]["state"], "done");
        assert!(status["migrations"][0]["moves"][0]["copied"]["posts"].as_u64().unwrap() > 0);
    });
}
