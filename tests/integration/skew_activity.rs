//! `postshard skew --by writes|reads --window SECS`: activity counted on real
//! shards while known statements run on them during the window.

use std::time::{Duration, Instant};

use postshard_rebalancer::layout::balanced_arcs;
use postshard_sandbox::Cluster;
use serde_json::Value;

use crate::cli_map::{map_file, postshard};
use crate::common::{map_for, FORUM_SCHEMA};

/// The `application_name` the CLI's connections carry, to find them in
/// `pg_stat_activity`.
pub const APP: &str = "postshard_skew_activity";

/// Makes the session flush its statistics before psql gets its answer
/// (PostgreSQL 15 otherwise flushes at most once a second, or at exit,
/// after psql has returned).
pub const FLUSH: &str = "SELECT pg_stat_force_next_flush();";

/// Runs `postshard skew --by BY --window 2 --json` in a thread; once each
/// shard's first sample of the activity counters is taken, runs `during[i]`
/// on shard i, then returns the report, checking the exit code is `code`.
pub fn skew_while(
    cluster: &Cluster,
    map_path: &str,
    by: &str,
    during: &[String],
    code: i32,
) -> Value {
    let args: Vec<String> = [
        "skew", "--map", map_path, "--by", by, "--window", "2", "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let cli = std::thread::spawn(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        postshard(&args, "")
    });
    // The CLI sleeps through the window right after its first sample, so a
    // connection idle after that sample for a while has taken it.
    let deadline = Instant::now() + Duration::from_secs(10);
    for server in cluster.servers() {
        let sampled = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{APP}' \
             AND state = 'idle' AND query LIKE '%pg_stat_user_tables%' \
             AND now() - state_change > interval '100 ms'"
        );
        while server.psql(&sampled).expect("pg_stat_activity") != "1" {
            assert!(Instant::now() < deadline, "the CLI never sampled");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let started = Instant::now();
    for (server, sql) in cluster.servers().iter().zip(during) {
        if !sql.is_empty() {
            server.psql(&format!("{sql} {FLUSH}")).expect("activity");
        }
    }
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "the statements outlasted the window"
    );
    let out = cli.join().expect("CLI thread");
    assert_eq!(
        out.status.code(),
        Some(code),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON report")
}

#[test]
fn writes_and_reads_in_the_window_are_counted_exactly() {
    let cluster = Cluster::start(3).expect("start PostgreSQL");
    let map = map_for(&cluster, 0, &balanced_arcs(&[1, 1, 1]), |u| {
        format!("{u}?application_name={APP}")
    });
    let mut ids: [Vec<i64>; 3] = Default::default();
    for id in 1..=300 {
        ids[map.shard_index_for(id)].push(id);
    }
    // Posts before the window: 30, 20 and 10; comments: 5 on s0. Few enough
    // that autovacuum leaves the tables alone.
    let posts = [30usize, 20, 10];
    for (i, server) in cluster.servers().iter().enumerate() {
        let list: Vec<String> = ids[i][..posts[i]].iter().map(i64::to_string).collect();
        server
            .psql(&format!(
                "{FORUM_SCHEMA}
                 INSERT INTO posts (id, board, title) SELECT id, 1, 't' FROM unnest('{{{}}}'::int8[]) id;
                 {FLUSH}",
                list.join(",")
            ))
            .expect("schema and posts");
    }
    cluster.servers()[0]
        .psql(&format!(
            "INSERT INTO comments (post_id, body) SELECT {}, 'hi' FROM generate_series(1, 5); {FLUSH}",
            ids[0][0]
        ))
        .expect("comments");
    let f = map_file(&map.to_yaml());
    let path = f.path().to_str().unwrap();

    // Reads first: the CLI's own counting afterwards reads the tables, and
    // its sessions flush those reads only when they end.
    let seq_scan = "SET enable_indexscan = off; SET enable_bitmapscan = off; \
                    SET enable_indexonlyscan = off;";
    let report = skew_while(
        &cluster,
        path,
        "reads",
        &[
            format!(
                "{seq_scan} SELECT count(*) FROM posts; SELECT count(*) FROM posts; \
                 SELECT count(*) FROM comments;"
            ),
            format!("{seq_scan} SELECT count(*) FROM posts;"),
            String::new(),
        ],
        0,
    );
    // A sequential scan reads every row once.
    let reads = [30 + 30 + 5, 20, 0];
    for (i, want) in reads.iter().enumerate() {
        let shard = &report["shards"][i];
        assert_eq!(shard["reads"].as_u64(), Some(*want), "{shard}");
        assert_eq!(shard["writes"].as_u64(), Some(0), "{shard}");
    }
    assert_eq!(report["by"], "reads");
    assert_eq!(report["window_secs"].as_f64(), Some(2.0));
    assert_eq!(report["total"]["reads"].as_u64(), Some(85));
    assert_eq!(report["skew"]["hottest"], "s0");

    let fresh = |i: usize, n: usize| -> String {
        let list: Vec<String> = ids[i][posts[i]..posts[i] + n]
            .iter()
            .map(i64::to_string)
            .collect();
        format!(
            "INSERT INTO posts (id, board, title) SELECT id, 2, 'new' FROM unnest('{{{}}}'::int8[]) id;",
            list.join(",")
        )
    };
    let report = skew_while(
        &cluster,
        path,
        "writes",
        &[
            // 7 posts and 3 comments.
            format!(
                "{} INSERT INTO comments (post_id, body) SELECT {}, 'new' FROM generate_series(1, 3);",
                fresh(0, 7),
                ids[0][1]
            ),
            String::new(),
            // 4 posts, 2 updated, 1 deleted.
            format!(
                "{} UPDATE posts SET title = 'edited' WHERE id IN ({}, {}); DELETE FROM posts WHERE id = {};",
                fresh(2, 4),
                ids[2][0],
                ids[2][1],
                ids[2][2]
            ),
        ],
        0,
    );
    let writes = [10, 0, 7];
    for (i, want) in writes.iter().enumerate() {
        let shard = &report["shards"][i];
        assert_eq!(shard["writes"].as_u64(), Some(*want), "{shard}");
    }
    assert_eq!(
        report["shards"][0]["tables"]["comments"]["writes"].as_u64(),
        Some(3)
    );
    assert_eq!(report["total"]["writes"].as_u64(), Some(17));
    let skew = &report["skew"];
    assert_eq!(skew["hottest"], "s0");
    assert!(
        (skew["hottest_share"].as_f64().unwrap() - 10.0 / 17.0).abs() < 1e-9,
        "{skew}"
    );

    // Activity has no token histogram to save for the planner.
    let load = f.path().with_extension("load.json");
    let out = postshard(
        &[
            "skew",
            "--map",
            path,
            "--by",
            "writes",
            "--save-load",
            load.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--save-load needs --by rows or --by bytes"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!load.exists());
}
