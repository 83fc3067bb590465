//! The forum's traffic, through one live router (`Router::from_control`):
//! reads of posts and threads (new posts hot, a few viral threads, Zipf),
//! new posts and comments, edits and deletes. Every acknowledged write is
//! recorded so the end check can compare the shards row by row.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postshard_router::Router;

use super::forum::{self, Forum, DELETABLE, EDITABLE, FIRST_NEW_COMMENT};

/// Read or write, for latency figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A SELECT.
    Read,
    /// An INSERT, UPDATE or DELETE.
    Write,
}

/// One request as the app saw it.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When it started, since the workload began.
    pub at: Duration,
    /// How long it took until the router answered.
    pub latency: Duration,
    /// Read or write.
    pub kind: Kind,
    /// The shard the router routed it to when it started.
    pub shard: String,
}

/// What one worker did.
#[derive(Debug, Default)]
pub struct Record {
    /// Every request.
    pub samples: Vec<Sample>,
    /// Posts inserted and acknowledged.
    pub posts: Vec<i64>,
    /// Comments inserted and acknowledged: (post ID, comment ID).
    pub comments: Vec<(i64, i64)>,
    /// Last acknowledged title of each edited post.
    pub edits: HashMap<i64, String>,
    /// Posts deleted (acknowledged).
    pub deletes: Vec<i64>,
    /// Writes that failed, so their outcome is unknown: (key, error).
    pub errors: Vec<(i64, String)>,
}

/// The running workload.
pub struct Workload {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Record>>,
    /// When it started.
    pub origin: Instant,
}

/// Shared counters of the workers.
struct Shared {
    router: Arc<Router>,
    forum: Forum,
    next_post: AtomicI64,
    next_comment: AtomicI64,
    newest: AtomicI64,
    stop: Arc<AtomicBool>,
    origin: Instant,
    workers: i64,
    pause: Duration,
}

impl Workload {
    /// Starts `workers` workers, each pausing `pause` between requests.
    pub fn start(router: Arc<Router>, forum: &Forum, workers: i64, pause: Duration) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let origin = Instant::now();
        let shared = Arc::new(Shared {
            router,
            forum: forum.clone(),
            next_post: AtomicI64::new(forum.posts + 1),
            next_comment: AtomicI64::new(FIRST_NEW_COMMENT),
            newest: AtomicI64::new(forum.posts),
            stop: stop.clone(),
            origin,
            workers,
            pause,
        });
        let tasks = (0..workers)
            .map(|w| tokio::spawn(worker(shared.clone(), w)))
            .collect();
        Workload {
            stop,
            tasks,
            origin,
        }
    }

    /// Stops the workers and returns what they did.
    pub async fn finish(self) -> Vec<Record> {
        self.stop.store(true, Ordering::Relaxed);
        let mut records = Vec::new();
        for task in self.tasks {
            // A worker that panicked recorded nothing usable; the check
            // then reports its writes as missing.
            if let Ok(record) = task.await {
                records.push(record);
            }
        }
        records
    }
}

/// A small xorshift PRNG per worker.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Shared {
    /// A hot post: a viral thread (Zipf over the ten: the first is ten times
    /// as popular as the tenth) or a recent one (popularity halves every
    /// 1,000 posts back from the newest).
    fn hot_post(&self, rng: &mut Rng, newest: i64) -> i64 {
        if rng.below(10) < 3 {
            let weights: Vec<f64> = (1..=self.forum.viral.len())
                .map(|k| 1.0 / k as f64)
                .collect();
            let total: f64 = weights.iter().sum();
            let mut pick = rng.unit() * total;
            for (id, w) in self.forum.viral.iter().zip(&weights) {
                if pick < *w {
                    return *id;
                }
                pick -= w;
            }
            return self.forum.viral.first().copied().unwrap_or(1);
        }
        let back = (-(1.0 - rng.unit()).ln() * 1000.0 / std::f64::consts::LN_2) as i64;
        (newest - back).max(1)
    }

    /// A post of this worker's share with `id % 10 == residue`, in 1..=limit.
    fn own_post(&self, rng: &mut Rng, worker: i64, residue: i64, limit: i64) -> Option<i64> {
        let stride = 10 * self.workers;
        let slots = (limit - residue - 10 * worker) / stride;
        (slots > 0).then(|| residue + 10 * worker + stride * rng.below(slots as u64) as i64)
    }
}

async fn worker(shared: Arc<Shared>, w: i64) -> Record {
    let mut rng = Rng(forum::mix(w + 1) | 1);
    let mut record = Record::default();
    let router = &shared.router;
    let mut mine: Vec<i64> = Vec::new();
    while !shared.stop.load(Ordering::Relaxed) {
        let roll = rng.below(100);
        let newest = shared.newest.load(Ordering::Relaxed);
        let at = shared.origin.elapsed();
        let start = Instant::now();
        let (key, kind, result): (i64, Kind, Result<(), String>) = match roll {
            0..=59 => {
                let id = shared.hot_post(&mut rng, newest);
                let r = router
                    .query_opt(
                        id,
                        "SELECT p.title, (SELECT count(*) FROM comments c WHERE c.post_id = p.id) \
                         FROM posts p WHERE p.id = $1",
                        &[&id],
                    )
                    .await;
                (id, Kind::Read, r.map(drop).map_err(|e| e.to_string()))
            }
            60..=69 => {
                let id = shared.hot_post(&mut rng, newest);
                let r = router
                    .query(
                        id,
                        "SELECT id, body FROM comments WHERE post_id = $1 ORDER BY id DESC LIMIT 20",
                        &[&id],
                    )
                    .await;
                (id, Kind::Read, r.map(drop).map_err(|e| e.to_string()))
            }
            70..=77 => {
                let id = shared.next_post.fetch_add(1, Ordering::Relaxed);
                let title = forum::title(id);
                let r = router
                    .execute(
                        id,
                        "INSERT INTO posts (id, board_id, author_id, title, body) \
                         VALUES ($1, $2, $3, $4, 'new post during the demo')",
                        &[&id, &((id % forum::BOARDS + 1) as i32), &w, &title],
                    )
                    .await;
                if r.is_ok() {
                    record.posts.push(id);
                    mine.push(id);
                    shared.newest.fetch_max(id, Ordering::Relaxed);
                }
                (id, Kind::Write, r.map(drop).map_err(|e| e.to_string()))
            }
            78..=92 => {
                // Half on this worker's own new posts (known to exist), half
                // on hot loaded posts (never deletable ones).
                let post = match mine.len() {
                    n if n > 0 && rng.below(2) == 0 => mine
                        .get(n - 1 - (rng.below(n.min(50) as u64) as usize))
                        .copied()
                        .unwrap_or(1),
                    _ => {
                        let id = shared.hot_post(&mut rng, shared.forum.posts);
                        if id % 10 == DELETABLE {
                            id + 1
                        } else {
                            id
                        }
                    }
                };
                let id = shared.next_comment.fetch_add(1, Ordering::Relaxed);
                let r = router
                    .execute(
                        post,
                        "INSERT INTO comments (post_id, id, author_id, body) \
                         VALUES ($1, $2, $3, 'a reply during the demo')",
                        &[&post, &id, &w],
                    )
                    .await;
                if r.is_ok() {
                    record.comments.push((post, id));
                }
                (post, Kind::Write, r.map(drop).map_err(|e| e.to_string()))
            }
            93..=96 => {
                let Some(id) = shared.own_post(&mut rng, w, EDITABLE, shared.forum.posts) else {
                    continue;
                };
                let title = format!("edited by worker {w} at {} µs", at.as_micros());
                let r = router
                    .execute(
                        id,
                        "UPDATE posts SET title = $2, edited_at = now() WHERE id = $1",
                        &[&id, &title],
                    )
                    .await;
                if r.is_ok() {
                    record.edits.insert(id, title);
                }
                (id, Kind::Write, r.map(drop).map_err(|e| e.to_string()))
            }
            _ => {
                let Some(id) = shared.own_post(&mut rng, w, DELETABLE, shared.forum.posts / 2)
                else {
                    continue;
                };
                let r = router
                    .execute(id, "DELETE FROM posts WHERE id = $1", &[&id])
                    .await;
                if r.is_ok() {
                    record.deletes.push(id);
                }
                (id, Kind::Write, r.map(drop).map_err(|e| e.to_string()))
            }
        };
        let latency = start.elapsed();
        if let Err(e) = result {
            record.errors.push((key, e));
        }
        let shard = router.map().shard_for(key).name.clone();
        record.samples.push(Sample {
            at,
            latency,
            kind,
            shard,
        });
        tokio::time::sleep(shared.pause).await;
    }
    record
}
