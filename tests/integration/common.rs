//! Helpers shared by the integration tests.

use postshard_router::map::raw::{RawMap, RawShard, RawTable};
use postshard_router::{ShardMap, Token};
use postshard_sandbox::Cluster;

/// A multi-threaded runtime for async tests.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Connects to `url` and drives the connection in the background.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    tokio::spawn(conn);
    client
}

/// The forum schema every test shard gets.
pub const FORUM_SCHEMA: &str = "
    CREATE TABLE posts (id bigint PRIMARY KEY, board int NOT NULL, title text NOT NULL);
    CREATE TABLE comments (id bigserial PRIMARY KEY, post_id bigint NOT NULL, body text NOT NULL);
    CREATE INDEX ON comments (post_id);";

/// A map over `cluster`'s servers with shards `s0..`, the given ring
/// (arc start, shard index), seed and shard URLs rewritten by `url`.
pub fn map_for(
    cluster: &Cluster,
    seed: i64,
    ring: &[(Token, usize)],
    url: impl Fn(String) -> String,
) -> ShardMap {
    map_with(cluster, seed, ring, |s| RawShard {
        url: url(s.url.clone()),
        ..s
    })
}

/// [`map_for`] with each shard's entry rewritten by `shard`.
pub fn map_with(
    cluster: &Cluster,
    seed: i64,
    ring: &[(Token, usize)],
    shard: impl Fn(RawShard) -> RawShard,
) -> ShardMap {
    let shards = cluster
        .servers()
        .iter()
        .enumerate()
        .map(|(i, s)| shard(RawShard::new(&format!("s{i}"), &s.url())))
        .collect();
    let tables = vec![
        RawTable::new("posts", "id"),
        RawTable::new("comments", "post_id"),
    ];
    let raw = RawMap::new(1, seed, tables, shards, ring);
    let env = |name: &str| (name == TEST_PASSWORD_VAR).then(|| TEST_PASSWORD.to_string());
    ShardMap::from_raw(raw, "test", &env).expect("valid test map")
}

/// A variable that test maps resolve to [`TEST_PASSWORD`].
pub const TEST_PASSWORD_VAR: &str = "POSTSHARD_TEST_PASSWORD";
/// A password the sandbox servers ignore (trust auth) but that must never be shown.
pub const TEST_PASSWORD: &str = "hunter2";

/// A small deterministic PRNG (xorshift64*), so tests need no extra crates.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}
