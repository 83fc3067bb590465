//! A move under a forum's write load: half of a loaded shard moves to an
//! empty server (`plan add-shard`) through the public apply API while
//! writers keep inserting posts and comments, updating and deleting through
//! live routers (`Router::from_control`), some on keys inside the moving
//! range. Reports, each against a baseline measured in the same run:
//!
//! - backfill rows/s against the physical baseline, `psql -c "COPY (SELECT …
//!   WHERE token in range) TO STDOUT (FORMAT binary)" | psql -c "COPY … FROM
//!   STDIN (FORMAT binary)"` between the same two servers on the same rows
//!   (run before the move, source → target, and after it, target → source,
//!   both under the same write load);
//! - write latency p50, p99 and max for keys inside and outside the moving
//!   range, before, during and after the move, and while the baseline
//!   copies (what a plain COPY alone costs the writers), and errors surfaced
//!   to the app (the longest write inside during the move is the stall);
//! - with a mode that captures changes (not `blocking`), the source's cost
//!   per write while capture is on: a server-side loop of single-row
//!   INSERTs into the moving range, rolled back, during the backfill against
//!   the same loop before the move;
//! - how long each step took.
//!
//! Not a criterion bench (one move is one sample) and not run in CI:
//! `cargo bench --bench move`. Environment:
//! `POSTSHARD_BENCH_ROWS` rows on the source (default 1,000,000: a fifth
//! posts, four comments each), `POSTSHARD_BENCH_MODE` (default `online`, as
//! `apply`),
//! `POSTSHARD_BENCH_WRITERS` (default 4) writing `POSTSHARD_BENCH_RATE`
//! operations per second each (default 100), `POSTSHARD_BENCH_WINDOW` seconds
//! measured before and after the move (default 5), `POSTSHARD_BENCH_CAPTURE=0`
//! to leave out the capture-cost loops (they share the source's CPU with the
//! backfill they run beside).

#[path = "common/psql_pipe.rs"]
mod psql_pipe;

use psql_pipe::{pipe_rows, psql_path};

use std::collections::VecDeque;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postshard_rebalancer::control;
use postshard_rebalancer::init::{init, InitOptions};
use postshard_rebalancer::migrate::{self, Event, MoveOptions};
use postshard_rebalancer::plan::{add_shard, Plan};
use postshard_rebalancer::range::TokenRange;
use postshard_router::map::env_var;
use postshard_router::map::raw::{RawMap, RawShard, RawTable};
use postshard_router::map::Table;
use postshard_router::{hashint8extended, ConnUrl, Router, ShardMap};
use postshard_sandbox::{Cluster, Server};
use serde_json::Value;

const SEED: i64 = 7;
const COMMENTS_PER_POST: i64 = 4;

/// A forum's two sharded tables, loaded without indexes (added after the
/// COPY, as a bulk load does). Posts of 200 B to 1 KB, one in 200 an essay
/// of 12 KB (TOASTed); comments of 50 to 300 B. No identity: ids come from
/// the app (snowflake-like), so rows from two shards never collide.
const TABLES: &str = "
    CREATE TABLE posts (id bigint NOT NULL, board int NOT NULL, author bigint NOT NULL,
        title text NOT NULL, body text NOT NULL, created timestamptz NOT NULL,
        score int NOT NULL DEFAULT 0, comment_count int NOT NULL DEFAULT 0);
    CREATE TABLE comments (id bigint NOT NULL, post_id bigint NOT NULL, author bigint NOT NULL,
        body text NOT NULL, created timestamptz NOT NULL DEFAULT now());";

const INDEXES: &str = "
    ALTER TABLE posts ADD PRIMARY KEY (id);
    ALTER TABLE comments ADD PRIMARY KEY (id);
    CREATE INDEX comments_post ON comments (post_id);
    CREATE INDEX posts_board ON posts (board, created);";

/// The app's trigger: a comment counter per post (moved rows must not fire
/// it; the writers' comments do).
const COUNTER: &str = "
    CREATE FUNCTION count_comment() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            UPDATE posts SET comment_count = comment_count + 1 WHERE id = NEW.post_id;
            RETURN NEW;
        END IF;
        UPDATE posts SET comment_count = comment_count - 1 WHERE id = OLD.post_id;
        RETURN OLD;
    END $$;
    CREATE TRIGGER comments_count AFTER INSERT OR DELETE ON comments
        FOR EACH ROW EXECUTE FUNCTION count_comment();";

/// Columns in name order, as the mover copies them.
fn columns(table: &str) -> &'static str {
    match table {
        "posts" => "author, board, body, comment_count, created, id, score, title",
        _ => "author, body, created, id, post_id",
    }
}

fn tables() -> Vec<Table> {
    vec![
        Table {
            name: "posts".into(),
            key: "id".into(),
        },
        Table {
            name: "comments".into(),
            key: "post_id".into(),
        },
    ]
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// SplitMix64: a small deterministic generator for the dataset and the mix.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn run(server: &Server, sql: &str) -> String {
    server.psql(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn run_in(url: &str, sql: &str) -> String {
    let out = Command::new(psql_path())
        .args([
            "-X",
            "-q",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `2024-MM-DD HH:MM:00+00` for minute `m` of 2024 (wrapping after a year).
fn minute_of_2024(m: i64) -> String {
    const DAYS: [i64; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let m = m.rem_euclid(366 * 1440);
    let (mut day, minute) = (m / 1440, m % 1440);
    let mut month = 0;
    for d in DAYS {
        if day < d {
            break;
        }
        day -= d;
        month += 1;
    }
    format!(
        "2024-{:02}-{:02} {:02}:{:02}:00+00",
        month + 1,
        day + 1,
        minute / 60,
        minute % 60
    )
}

/// Streams rows generated by `row` (text COPY format, one line each) into
/// `COPY table FROM STDIN` through psql.
fn copy_in(url: &str, table: &str, rows: i64, row: impl Fn(i64, &mut Vec<u8>)) {
    let mut child = Command::new(psql_path())
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            &format!("COPY {table} FROM STDIN"),
        ])
        .stdin(Stdio::piped())
        .spawn()
        .expect("psql COPY");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut buf = Vec::with_capacity(1 << 20);
    for i in 1..=rows {
        row(i, &mut buf);
        if buf.len() >= 1 << 20 {
            stdin.write_all(&buf).expect("COPY data");
            buf.clear();
        }
    }
    stdin.write_all(&buf).expect("COPY data");
    drop(stdin);
    assert!(child.wait().expect("psql").success(), "COPY {table}");
}

/// Loads `posts` posts and four comments each with COPY (both tables at
/// once), then indexes, statistics and the app's trigger.
fn load(server: &Server, posts: i64) {
    run(server, TABLES);
    // 64 KiB of words to cut bodies from.
    let mut rng = Rng(42);
    let text: String = (0..8192)
        .map(|_| format!("{:07x} ", rng.next() & 0x0fff_ffff))
        .collect();
    let text = Arc::new(text);
    let slice = |text: &str, seed: i64, len: usize| -> String {
        let at = (seed as usize).wrapping_mul(7919) % (text.len() - len);
        text[at..at + len].to_string()
    };
    let url = server.url();
    std::thread::scope(|scope| {
        let (t1, u1) = (text.clone(), url.clone());
        scope.spawn(move || {
            copy_in(&u1, "posts", posts, |p, buf| {
                let len = if p % 200 == 0 {
                    12_000
                } else {
                    200 + (p * 37 % 800) as usize
                };
                let _ = writeln!(
                    buf,
                    "{p}\t{}\t{}\tThread {p}: {}\t{}\t{}\t{}\t{COMMENTS_PER_POST}",
                    p % 50,
                    p * 7 % 10007,
                    slice(&t1, p, 40),
                    slice(&t1, p * 3, len),
                    minute_of_2024(p),
                    p % 97,
                );
            })
        });
        let (t2, u2) = (text.clone(), url.clone());
        scope.spawn(move || {
            copy_in(&u2, "comments", posts * COMMENTS_PER_POST, |c, buf| {
                let post = (c - 1) / COMMENTS_PER_POST + 1;
                let _ = writeln!(
                    buf,
                    "{c}\t{post}\t{}\t{}\t{}",
                    c * 13 % 10007,
                    slice(&t2, c * 5, 50 + (c * 13 % 250) as usize),
                    minute_of_2024(post + c % COMMENTS_PER_POST),
                );
            })
        });
    });
    run(server, INDEXES);
    run(server, COUNTER);
    run(server, "ANALYZE posts; ANALYZE comments;");
}

/// One write as the app saw it.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Start, since the bench's origin.
    at: Duration,
    latency: Duration,
    inside: bool,
    ok: bool,
}

/// What the writers share: which keys move, where new ids start, when to stop.
struct Load {
    posts: i64,
    writers: i64,
    interval: Duration,
    moves: Vec<TokenRange>,
    stop: AtomicBool,
    origin: Instant,
    first_error: Mutex<Option<String>>,
}

impl Load {
    fn inside(&self, key: i64) -> bool {
        let token = hashint8extended(key, SEED);
        self.moves.iter().any(|r| r.contains(token))
    }
}

/// Writes at a steady rate until told to stop: new posts (30%), new
/// comments (30%), score updates (25%), deletes of its own comments (15%).
async fn writer(router: Arc<Router>, load: Arc<Load>, me: i64) -> Vec<Sample> {
    let mut rng = Rng(1000 + me as u64);
    let mut out = Vec::new();
    let mut mine: VecDeque<(i64, i64)> = VecDeque::new();
    let mut next_post = load.posts + 1 + me;
    let mut next_comment = 1_000_000_000_000 + me * 10_000_000_000;
    let mut tick = tokio::time::interval(load.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let body =
        "a comment of about a hundred bytes, which is what most comments on a forum are like";
    while !load.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let existing = 1 + rng.below(load.posts as u64) as i64;
        let roll = rng.below(100);
        let start = Instant::now();
        let (key, result) = if roll < 30 {
            let id = next_post;
            next_post += load.writers;
            let r = router
                .execute(
                    id,
                    "INSERT INTO posts (id, board, author, title, body, created) \
                     VALUES ($1, 3, 17, 'new thread', $2, now())",
                    &[&id, &body],
                )
                .await;
            (id, r)
        } else if roll < 60 || (roll >= 85 && mine.is_empty()) {
            let id = next_comment;
            next_comment += 1;
            let r = router
                .execute(
                    existing,
                    "INSERT INTO comments (id, post_id, author, body) VALUES ($1, $2, 5, $3)",
                    &[&id, &existing, &body],
                )
                .await;
            if r.is_ok() {
                mine.push_back((existing, id));
            }
            (existing, r)
        } else if roll < 85 {
            let r = router
                .execute(
                    existing,
                    "UPDATE posts SET score = score + 1 WHERE id = $1",
                    &[&existing],
                )
                .await;
            (existing, r)
        } else {
            let (post, id) = mine.pop_front().unwrap_or((existing, 0));
            let r = router
                .execute(
                    post,
                    "DELETE FROM comments WHERE post_id = $1 AND id = $2",
                    &[&post, &id],
                )
                .await;
            (post, r)
        };
        let latency = start.elapsed();
        if let Err(e) = &result {
            load.first_error
                .lock()
                .unwrap()
                .get_or_insert_with(|| format!("key {key}: {e}"));
        }
        out.push(Sample {
            at: start - load.origin,
            latency,
            inside: load.inside(key),
            ok: result.is_ok(),
        });
    }
    out
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let at = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Rows in the moving ranges on `url`, both tables.
fn rows_in(url: &str, moves: &[TokenRange]) -> u64 {
    let mut sum = 0;
    for t in tables() {
        for r in moves {
            sum += run_in(
                url,
                &format!(
                    "SELECT count(*) FROM {} WHERE {}",
                    t.name,
                    r.predicate(&t, SEED)
                ),
            )
            .trim()
            .parse::<u64>()
            .expect("count");
        }
    }
    sum
}

/// The baseline: two psql processes piping binary COPY, table by table and
/// range by range, from `from` into the `baseline` database at `to` (emptied
/// first). Returns the time and the rows copied.
fn physical_copy(from: &str, to: &str, moves: &[TokenRange]) -> (Duration, u64) {
    run_in(to, "TRUNCATE posts, comments");
    let start = Instant::now();
    for t in tables() {
        let cols = columns(&t.name);
        for r in moves {
            pipe_rows(from, to, &t.name, cols, &r.predicate(&t, SEED));
        }
    }
    let took = start.elapsed();
    let rows = run_in(
        to,
        "SELECT (SELECT count(*) FROM posts) + (SELECT count(*) FROM comments)",
    )
    .trim()
    .parse()
    .expect("count");
    (took, rows)
}

/// Median µs per write of [`insert_loop_cost`] on keys `inside` and
/// `outside` the moving range, three rounds alternated.
async fn cost_pair(source: &str, inside: &[i64], outside: &[i64]) -> (f64, f64) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        a.push(insert_loop_cost(source, inside).await);
        b.push(insert_loop_cost(source, outside).await);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    (median(a), median(b))
}

/// A server-side loop of single-row INSERTs of posts with `keys` on the
/// source, rolled back: µs per write.
async fn insert_loop_cost(source: &str, keys: &[i64]) -> f64 {
    let (mut client, conn) = tokio_postgres::connect(source, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let list = keys
        .iter()
        .map(|k| k.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let tx = client.transaction().await.expect("begin");
    let start = Instant::now();
    tx.batch_execute(&format!(
        "DO $$ DECLARE k bigint; BEGIN FOREACH k IN ARRAY '{{{list}}}'::bigint[] LOOP \
           INSERT INTO posts (id, board, author, title, body, created) \
           VALUES (k, 1, 1, 'capture cost', 'a post of a few words', now()); \
         END LOOP; END $$"
    ))
    .await
    .expect("insert loop");
    let took = start.elapsed();
    tx.rollback().await.expect("rollback");
    took.as_secs_f64() * 1e6 / keys.len() as f64
}

/// Per move: backfill time and rows, read from the events. Blocking mode:
/// `copied` (journaled) to `copied_rows` (per-table counts). Modes that
/// report progress: from the move's first event naming a backfill (or its
/// first progress report) to its last progress report, rows the largest
/// reported.
fn backfills(events: &[(Duration, Event)]) -> Vec<(u32, Duration, u64)> {
    let mut out = Vec::new();
    let moves: std::collections::BTreeSet<u32> =
        events.iter().filter_map(|(_, e)| e.move_index).collect();
    for m in moves {
        let mine: Vec<&(Duration, Event)> = events
            .iter()
            .filter(|(_, e)| e.move_index == Some(m))
            .collect();
        let rows_of = |e: &Event| e.detail.get("rows").and_then(Value::as_u64);
        let start = mine
            .iter()
            .find(|(_, e)| {
                e.event == "copied"
                    || e.event.contains("backfill")
                    || e.detail.get("phase").and_then(Value::as_str) == Some("backfill")
                    || rows_of(e).is_some()
            })
            .map(|(t, _)| *t);
        let copied = mine.iter().rfind(|(_, e)| e.event == "copied_rows");
        let (end, rows) = match copied {
            Some((t, e)) => (
                Some(*t),
                e.detail
                    .as_object()
                    .map(|o| o.values().filter_map(Value::as_u64).sum())
                    .unwrap_or(0),
            ),
            None => (
                mine.iter()
                    .rfind(|(_, e)| rows_of(e).is_some())
                    .map(|(t, _)| *t),
                mine.iter()
                    .filter_map(|(_, e)| rows_of(e))
                    .max()
                    .unwrap_or(0),
            ),
        };
        if let (Some(start), Some(end)) = (start, end) {
            out.push((m, end.saturating_sub(start), rows));
        }
    }
    out
}

fn main() {
    // `cargo bench` passes harness flags; `--list` must not start servers.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rows: i64 = env_num("POSTSHARD_BENCH_ROWS", 1_000_000);
    let mode = std::env::var("POSTSHARD_BENCH_MODE").unwrap_or_else(|_| "online".into());
    let writers: i64 = env_num("POSTSHARD_BENCH_WRITERS", 4);
    let rate: u64 = env_num("POSTSHARD_BENCH_RATE", 100);
    let window = Duration::from_secs(env_num("POSTSHARD_BENCH_WINDOW", 5));
    // The capture-cost loops run on the source during the backfill and so
    // slow it a little: `POSTSHARD_BENCH_CAPTURE=0` leaves them out.
    let measure_capture = mode != "blocking" && env_num("POSTSHARD_BENCH_CAPTURE", 1) != 0;
    let posts = (rows / (1 + COMMENTS_PER_POST)).max(1);
    let load_start = loadavg();

    let cluster = Cluster::start(2).expect("start PostgreSQL");
    let servers = cluster.servers();
    let (source, target) = (&servers[0], &servers[1]);
    run(source, "CREATE DATABASE control");
    run(source, "CREATE DATABASE baseline");
    run(target, "CREATE DATABASE baseline");
    for server in [source, target] {
        let url = server.url_for("baseline");
        run_in(&url, TABLES);
        run_in(&url, INDEXES);
    }
    let control_url = source.url_for("control");
    let started = Instant::now();
    load(source, posts);
    let total: u64 = run(
        source,
        "SELECT (SELECT count(*) FROM posts) + (SELECT count(*) FROM comments)",
    )
    .trim()
    .parse()
    .expect("count");
    let size = run(
        source,
        "SELECT pg_size_pretty(pg_database_size(current_database()))",
    );
    eprintln!(
        "loaded {total} rows ({posts} posts, {} comments, {}) with COPY in {:.1?}",
        posts * COMMENTS_PER_POST,
        size.trim(),
        started.elapsed()
    );

    let mut raw = RawMap::new(
        1,
        SEED,
        vec![
            RawTable::new("posts", "id"),
            RawTable::new("comments", "post_id"),
        ],
        vec![RawShard::new("s0", &source.url())],
        &[(i64::MIN, 0)],
    );
    raw.control = Some(control_url.clone());
    let map = ShardMap::from_raw(raw, "bench", &env_var).expect("map");
    let plan: Plan = add_shard(&map, "s1", &target.url(), 1).expect("plan");
    let moves: Vec<TokenRange> = plan
        .moves
        .iter()
        .map(|m| TokenRange::new(i128::from(m.from), m.to).expect("range"))
        .collect();
    let moving = rows_in(&source.url(), &moves);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        init(&map, &env_var, &InitOptions::default())
            .await
            .expect("init");
        let origin = Instant::now();
        let load = Arc::new(Load {
            posts,
            writers,
            interval: Duration::from_micros(1_000_000 / rate.max(1)),
            moves: moves.clone(),
            stop: AtomicBool::new(false),
            origin,
            first_error: Mutex::new(None),
        });
        // Keys no writer uses, inside the moving range (captured) and
        // outside it (the same contention, no capture), for the cost loops.
        let loop_keys: Vec<i64> = (1..)
            .map(|k: i64| -k)
            .filter(|k| load.inside(*k))
            .take(2_000)
            .collect();
        let outside_keys: Vec<i64> = (1..)
            .map(|k: i64| -k)
            .filter(|k| !load.inside(*k))
            .take(2_000)
            .collect();
        let control = ConnUrl::expand(&control_url, env_var).expect("control url");
        // Two app servers, each with its own live router.
        let mut routers = Vec::new();
        for _ in 0..2 {
            routers.push(Arc::new(
                Router::from_control(&control).await.expect("live router"),
            ));
        }
        let mut tasks = Vec::new();
        for me in 0..writers {
            let router = routers[me as usize % routers.len()].clone();
            tasks.push(tokio::spawn(writer(router, load.clone(), me)));
        }
        // Warm-up, then the window before the move.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = (origin.elapsed(), origin.elapsed() + window);
        let cost_before = if measure_capture {
            Some(cost_pair(&source.url(), &loop_keys, &outside_keys).await)
        } else {
            None
        };
        tokio::time::sleep(window.saturating_sub(origin.elapsed() - before.0)).await;
        let load_before = loadavg();

        // The physical baseline, under the same write load.
        let source_db = source.url();
        let target_db = target.url_for("baseline");
        let copying_start = origin.elapsed();
        let baseline_1 = {
            let (from, to, moves) = (source_db.clone(), target_db.clone(), moves.clone());
            tokio::task::spawn_blocking(move || physical_copy(&from, &to, &moves))
                .await
                .expect("baseline")
        };
        let copying = (copying_start, origin.elapsed());
        tokio::time::sleep(Duration::from_secs(1)).await;

        // The move, events timed; capture cost measured at the first
        // progress report (capture is on while a backfill runs).
        let events: Arc<Mutex<Vec<(Duration, Event)>>> = Arc::default();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
        let capture = {
            let (source, keys) = (source.url(), loop_keys.clone());
            let outside = outside_keys.clone();
            tokio::spawn(async move {
                while let Some(e) = rx.recv().await {
                    if measure_capture && e.detail.get("rows").is_some() {
                        return Some(cost_pair(&source, &keys, &outside).await);
                    }
                }
                None
            })
        };
        let during_start = origin.elapsed();
        let log = events.clone();
        let applied = migrate::apply(
            &map,
            &plan,
            &mode,
            &env_var,
            &MoveOptions::default(),
            &mut |e| {
                log.lock().unwrap().push((origin.elapsed(), e.clone()));
                let _ = tx.send(e.clone());
            },
        )
        .await;
        let during_end = origin.elapsed();
        drop(tx);
        let cost_during = capture.await.expect("capture cost");
        if let Err(e) = &applied {
            panic!("the move failed: {e}");
        }
        let load_during = loadavg();

        tokio::time::sleep(window).await;
        let after = (during_end, origin.elapsed());
        // The baseline again, back from the new owner to the old server.
        let baseline_2 = {
            let (from, to, moves) = (target.url(), source.url_for("baseline"), moves.clone());
            tokio::task::spawn_blocking(move || physical_copy(&from, &to, &moves))
                .await
                .expect("baseline")
        };
        load.stop.store(true, Ordering::Relaxed);
        let mut samples = Vec::new();
        for t in tasks {
            samples.extend(t.await.expect("writer"));
        }
        let client = {
            let (c, conn) = tokio_postgres::connect(&control_url, tokio_postgres::NoTls)
                .await
                .expect("control");
            tokio::spawn(conn);
            c
        };
        let live = control::live_map(&client, &env_var).await.expect("live map");
        assert_eq!(live.version(), 2, "the plan's epoch is live");

        // The report.
        let events = events.lock().unwrap().clone();
        println!(
            "move bench: mode {mode}, {total} rows on the source ({posts} posts, {} comments), \
             {moving} in the moving range ({} range(s)); 2 servers, 2 live routers, \
             {writers} writers at {rate} writes/s each",
            posts * COMMENTS_PER_POST,
            moves.len()
        );
        println!(
            "load average: {load_start} at start, {load_before} before the move, \
             {load_during} after it, {} at the end",
            loadavg()
        );
        let (copied_time, copied_rows) = backfills(&events)
            .iter()
            .fold((Duration::ZERO, 0), |(t, r), (_, d, n)| (t + *d, r + n));
        let ours = copied_rows as f64 / copied_time.as_secs_f64();
        let base = |(d, n): (Duration, u64)| n as f64 / d.as_secs_f64();
        let (b1, b2) = (base(baseline_1), base(baseline_2));
        println!();
        println!("backfill                              rows     time      rows/s");
        println!(
            "  postshard ({mode:<8})         {copied_rows:>12} {:>8.2}s {ours:>11.0}",
            copied_time.as_secs_f64()
        );
        println!(
            "  psql | psql, before, s0 -> s1  {:>12} {:>8.2}s {b1:>11.0}",
            baseline_1.1,
            baseline_1.0.as_secs_f64()
        );
        println!(
            "  psql | psql, after,  s1 -> s0  {:>12} {:>8.2}s {b2:>11.0}",
            baseline_2.1,
            baseline_2.0.as_secs_f64()
        );
        println!(
            "  ratio to baseline: {:.2} (to the mean of both; {:.2} and {:.2} to each)",
            ours / ((b1 + b2) / 2.0),
            ours / b1,
            ours / b2
        );

        println!();
        println!("steps: journaled at (since apply began), took (until the next)");
        let shown: Vec<&(Duration, Event)> = events
            .iter()
            .filter(|(_, e)| e.detail.get("rows").is_none())
            .collect();
        for (i, (t, e)) in shown.iter().enumerate() {
            let name = match e.move_index {
                Some(m) => format!("{} @{m}", e.event),
                None => e.event.clone(),
            };
            let next = shown.get(i + 1).map(|(n, _)| *n).unwrap_or(during_end);
            println!(
                "  {name:<24} {:>9.3}s {:>9.3}s",
                (*t - during_start).as_secs_f64(),
                (next - *t).as_secs_f64()
            );
        }

        println!();
        println!("write latency (ms)         writes  errors      p50      p99      max");
        println!("  (copying: during the psql | psql baseline, before the move)");
        // `copying`: while the psql | psql baseline copied the same rows,
        // what a plain COPY alone costs the writers on this machine.
        let windows = [
            ("before", before),
            ("copying", copying),
            ("during", (during_start, during_end)),
            ("after", after),
        ];
        let mut stall = Duration::ZERO;
        for (name, (from, to)) in windows {
            for inside in [true, false] {
                let picked: Vec<&Sample> = samples
                    .iter()
                    .filter(|s| s.inside == inside && s.at >= from && s.at < to)
                    .collect();
                let errors = picked.iter().filter(|s| !s.ok).count();
                let mut lat: Vec<Duration> = picked.iter().map(|s| s.latency).collect();
                lat.sort();
                let max = lat.last().copied().unwrap_or_default();
                if inside && name == "during" {
                    stall = max;
                }
                println!(
                    "  {name:<7} {:<8}  {:>11} {errors:>7} {:>8.2} {:>8.2} {:>8.1}",
                    if inside { "inside" } else { "outside" },
                    lat.len(),
                    ms(percentile(&lat, 0.5)),
                    ms(percentile(&lat, 0.99)),
                    ms(max)
                );
            }
        }
        let errors = samples.iter().filter(|s| !s.ok).count();
        println!(
            "longest write to the moving range during the move (stall): {:.1} ms; errors surfaced: {errors}{}",
            ms(stall),
            load.first_error
                .lock()
                .unwrap()
                .as_ref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        );
        match (cost_before, cost_during) {
            (Some((bi, bo)), Some((di, d_o))) => {
                println!(
                    "source cost per single-row INSERT (server-side loops of {} rows, rolled back, \
                     inside / outside the moving range, alternated):",
                    loop_keys.len()
                );
                println!("  before the move       {bi:>7.1} µs / {bo:>7.1} µs");
                println!("  with capture on       {di:>7.1} µs / {d_o:>7.1} µs (while the backfill runs)");
                println!(
                    "  ratio inside, capture on to before: {:.2}; capture's own cost \
                     (inside minus outside, during minus before): {:.1} µs",
                    di / bi,
                    (di - d_o) - (bi - bo)
                );
            }
            _ => println!(
                "source cost per write with capture on: not measured ({mode} mode{})",
                if mode == "blocking" { " captures nothing" } else { ", POSTSHARD_BENCH_CAPTURE=0" }
            ),
        }
    });
}
