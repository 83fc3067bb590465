//! The router against three real shards: placement, fan-out, a dead shard.

use std::collections::BTreeSet;

use postshard_router::ring::bucket_of;
use postshard_router::{Router, RouterError, ShardMap};
use postshard_sandbox::Cluster;

use postshard_router::map::raw::{RawPool, RawShard, RawValue};

use crate::cli_map::postshard;
use crate::common::{connect, map_with, runtime, FORUM_SCHEMA, TEST_PASSWORD, TEST_PASSWORD_VAR};

const SEED: i64 = 7_777;
const POSTS: i64 = 3_000;
/// Reads of one viral post: more than all other calls together.
const VIRAL_CALLS: u64 = 8_000;

/// Six arcs, two per shard, interleaved, so ownership is not one range each.
const RING: [(i64, usize); 6] = [
    (i64::MIN, 0),
    (-6_000_000_000_000_000_000, 1),
    (-2_000_000_000_000_000_000, 2),
    (0, 0),
    (3_000_000_000_000_000_000, 1),
    (6_000_000_000_000_000_000, 2),
];

/// SQL that is true when `hashint8extended(col, SEED)` lies in an arc of `shard`.
fn owned_predicate(map: &ShardMap, shard: usize, col: &str) -> String {
    let arcs: Vec<String> = map
        .ring()
        .arcs()
        .filter(|a| a.shard == shard)
        .map(|a| {
            format!(
                "hashint8extended({col}, {}) BETWEEN {} AND {}",
                map.seed(),
                a.from,
                a.last
            )
        })
        .collect();
    format!("({})", arcs.join(" OR "))
}

#[test]
fn rows_land_on_their_owner_fan_out_sees_all_and_a_dead_shard_fails_alone() {
    let cluster = Cluster::start(3).expect("start PostgreSQL");
    for s in cluster.servers() {
        s.psql(FORUM_SCHEMA).expect("schema");
    }
    // A password in the URL (ignored by the servers, never to be shown), and
    // a connect timeout far beyond the test's patience: a dead shard must be
    // reported from the refused connection, not from the pool timing out.
    let map = map_with(&cluster, SEED, &RING, |s| RawShard {
        url: s
            .url
            .replace("postgres@", &format!("postgres:${{{TEST_PASSWORD_VAR}}}@")),
        pool: Some(RawPool {
            max_size: None,
            connect_timeout_ms: Some(RawValue::Int(600_000)),
        }),
        ..s
    });
    let rt = runtime();
    rt.block_on(async {
        let router = Router::connect(map.clone()).await.expect("router");
        for id in 1..=POSTS {
            router
                .execute(
                    id,
                    "INSERT INTO posts (id, board, title) VALUES ($1, $2, $3)",
                    &[&id, &((id % 7) as i32), &format!("post {id}")],
                )
                .await
                .expect("insert post");
            router
                .execute(
                    id,
                    "INSERT INTO comments (post_id, body) VALUES ($1, 'first'), ($1, 'second')",
                    &[&id],
                )
                .await
                .expect("insert comments");
        }
        let row = router
            .query_one(42, "SELECT title FROM posts WHERE id = $1", &[&42i64])
            .await
            .expect("read back");
        assert_eq!(row.get::<_, String>(0), "post 42");
        assert!(router
            .query_opt(
                POSTS + 1,
                "SELECT 1 FROM posts WHERE id = $1",
                &[&(POSTS + 1)]
            )
            .await
            .expect("query_opt")
            .is_none());

        // Placement, checked by SQL on each shard: every row's token is in an
        // arc the shard owns, and each post is on exactly one shard.
        let mut seen = BTreeSet::new();
        for (i, server) in cluster.servers().iter().enumerate() {
            let client = connect(&server.url()).await;
            for (table, col) in [("posts", "id"), ("comments", "post_id")] {
                let stray: i64 = client
                    .query_one(
                        &format!(
                            "SELECT count(*) FROM {table} WHERE NOT {}",
                            owned_predicate(&map, i, col)
                        ),
                        &[],
                    )
                    .await
                    .expect("count strays")
                    .get(0);
                assert_eq!(
                    stray, 0,
                    "shard s{i} holds {stray} {table} rows it does not own"
                );
            }
            let ids: Vec<i64> = client
                .query("SELECT id FROM posts", &[])
                .await
                .expect("ids")
                .iter()
                .map(|r| r.get(0))
                .collect();
            assert!(!ids.is_empty(), "shard s{i} got no posts");
            for id in ids {
                assert!(seen.insert(id), "post {id} is on two shards");
                assert_eq!(map.shard_index_for(id), i, "post {id}");
            }
        }
        assert_eq!(seen, (1..=POSTS).collect::<BTreeSet<_>>());

        // fan_out returns every shard's rows, in map order.
        let out = router
            .fan_out("SELECT id FROM posts WHERE board = $1", &[&3i32])
            .await;
        assert_eq!(out.len(), 3);
        let mut fanned = BTreeSet::new();
        for (i, shard) in out.into_iter().enumerate() {
            assert_eq!(shard.shard, i);
            for row in shard.rows.expect("fan-out rows") {
                let id: i64 = row.get(0);
                assert_eq!(map.shard_index_for(id), i);
                fanned.insert(id);
            }
        }
        let expected: BTreeSet<i64> = (1..=POSTS).filter(|id| id % 7 == 3).collect();
        assert_eq!(fanned, expected);

        // Every routed call above was counted against its shard.
        let report = router.load_report();
        let total: u64 = report.shards.values().sum();
        assert_eq!(
            total,
            2 * POSTS as u64 + 2,
            "inserts + query_one + query_opt"
        );
        assert_eq!(report.bucket_loads.iter().sum::<u64>(), total);
        let expected_s1 = 2
            * (1..=POSTS)
                .filter(|id| map.shard_index_for(*id) == 1)
                .count() as u64
            + u64::from(map.shard_index_for(42) == 1)
            + u64::from(map.shard_index_for(POSTS + 1) == 1);
        assert_eq!(report.shards["s1"], expected_s1);

        // A viral post: its calls are sampled into the report as a hot token,
        // and a balance by load that it alone makes impossible names it.
        let viral = 77i64;
        for _ in 0..VIRAL_CALLS {
            router
                .query_opt(viral, "SELECT 1 FROM posts WHERE id = $1", &[&viral])
                .await
                .expect("viral read");
        }
        let report = router.load_report();
        let hot = report
            .hot_tokens
            .iter()
            .find(|h| h.token == map.token(viral))
            .unwrap_or_else(|| panic!("viral post not reported hot: {:?}", report.hot_tokens));
        assert!(hot.load <= report.bucket_loads[bucket_of(hot.token)]);
        assert!(
            hot.load >= VIRAL_CALLS / 2,
            "estimated {} of {VIRAL_CALLS}",
            hot.load
        );
        let dir = tempfile::tempdir().unwrap();
        let (map_path, load_path) = (dir.path().join("map.yaml"), dir.path().join("load.json"));
        std::fs::write(&map_path, map.to_yaml()).unwrap();
        std::fs::write(&load_path, serde_json::to_string(&report).unwrap()).unwrap();
        let out = postshard(
            &[
                "plan",
                "balance",
                "--by",
                "load",
                "--map",
                map_path.to_str().unwrap(),
                "--load",
                load_path.to_str().unwrap(),
            ],
            "",
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(&map.token(viral).to_string()), "{stderr}");
        assert!(out.stdout.is_empty());

        // Stop s1: its keys fail with an error naming it; the others still work.
        cluster.servers()[1].stop().expect("stop s1");
        let dead = (1..=POSTS)
            .find(|id| map.shard_index_for(*id) == 1)
            .unwrap();
        let alive = (1..=POSTS)
            .find(|id| map.shard_index_for(*id) == 2)
            .unwrap();
        // Pooled connections to s1 die with the server; retry until the pool notices.
        let mut err = None;
        for _ in 0..3 {
            match router
                .query(dead, "SELECT title FROM posts WHERE id = $1", &[&dead])
                .await
            {
                Ok(_) => continue,
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        let err = err.expect("s1 is stopped: its keys must fail");
        let text = err.to_string();
        assert!(text.starts_with("shard s1 ("), "{text}");
        assert!(
            text.contains(&format!(":{}/forum", cluster.servers()[1].port())),
            "{text}"
        );
        assert!(
            !text.contains(TEST_PASSWORD) && !format!("{err:?}").contains(TEST_PASSWORD),
            "{err:?}"
        );
        assert!(matches!(
            err,
            RouterError::Connect { .. } | RouterError::Query { .. }
        ));
        let row = router
            .query_one(alive, "SELECT title FROM posts WHERE id = $1", &[&alive])
            .await
            .expect("s2 still serves while s1 is down");
        assert_eq!(row.get::<_, String>(0), format!("post {alive}"));
        let out = router.fan_out("SELECT count(*) FROM posts", &[]).await;
        assert!(out[0].rows.is_ok() && out[2].rows.is_ok());
        assert!(out[1]
            .rows
            .as_ref()
            .is_err_and(|e| e.to_string().contains("shard s1")));
        // A fresh connection attempt to the dead shard is a Connect error.
        let fresh = Router::connect(map.clone()).await.expect("router");
        let Err(err) = fresh.client(dead).await else {
            panic!("no connection to s1 may succeed");
        };
        assert!(matches!(err, RouterError::Connect { .. }), "{err}");
        assert!(err.to_string().contains("refused"), "{err}");
        assert!(err.to_string().contains("postgres:***@"), "{err}");
    });
}
