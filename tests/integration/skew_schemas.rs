//! `postshard skew` and `plan balance` on schemas as sites have them:
//! nested partitions (range → hash, range → list, a partition in another
//! schema), keys of a domain type, rows whose key is NULL, and key columns
//! that are not integers.

use std::path::Path;

use postshard_rebalancer::layout::balanced_arcs;
use postshard_router::map::raw::{RawMap, RawShard, RawTable};
use postshard_router::ring::{bucket_of, BUCKETS};
use postshard_router::{LoadReport, ShardMap};
use postshard_sandbox::Cluster;
use serde_json::Value;

use crate::cli_files::closed_early;
use crate::cli_map::{map_file, postshard};
use crate::skew_activity::{skew_while, APP, FLUSH};

/// Posts partitioned by month range, 2025 by hash of the key (one half in
/// schema `archive`), 2026 by list of board; comments partitioned by list of
/// kind, their key a domain over bigint that allows NULL.
const SCHEMA: &str = "
    CREATE SCHEMA archive;
    CREATE DOMAIN post_ref AS bigint;
    CREATE TABLE posts (id bigint NOT NULL, created date NOT NULL, board int NOT NULL,
                        title text NOT NULL) PARTITION BY RANGE (created);
    CREATE TABLE posts_2025 PARTITION OF posts
        FOR VALUES FROM ('2025-01-01') TO ('2026-01-01') PARTITION BY HASH (id);
    CREATE TABLE archive.posts_2025_h0 PARTITION OF posts_2025
        FOR VALUES WITH (MODULUS 2, REMAINDER 0);
    CREATE TABLE posts_2025_h1 PARTITION OF posts_2025
        FOR VALUES WITH (MODULUS 2, REMAINDER 1);
    CREATE TABLE posts_2026 PARTITION OF posts
        FOR VALUES FROM ('2026-01-01') TO ('2027-01-01') PARTITION BY LIST (board);
    CREATE TABLE posts_2026_b1 PARTITION OF posts_2026 FOR VALUES IN (1);
    CREATE TABLE posts_2026_rest PARTITION OF posts_2026 DEFAULT;
    CREATE INDEX ON posts (id);
    CREATE TABLE comments (id bigserial, post_id post_ref, kind text NOT NULL, body text NOT NULL)
        PARTITION BY LIST (kind);
    CREATE TABLE comments_text PARTITION OF comments FOR VALUES IN ('text');
    CREATE TABLE comments_image PARTITION OF comments FOR VALUES IN ('image');";

/// A map of the cluster's servers (shards `s0..`) with the given tables.
fn map_of(cluster: &Cluster, tables: &[(&str, &str)]) -> ShardMap {
    let shards = cluster
        .servers()
        .iter()
        .enumerate()
        .map(|(i, s)| {
            RawShard::new(
                &format!("s{i}"),
                &format!("{}?application_name={APP}", s.url()),
            )
        })
        .collect();
    let tables = tables.iter().map(|(n, k)| RawTable::new(n, k)).collect();
    let raw = RawMap::new(1, 0, tables, shards, &balanced_arcs(&[1, 1]));
    ShardMap::from_raw(raw, "test", &|_| None).expect("valid map")
}

/// Inserts posts `ids` spread over every leaf partition.
fn insert_posts(ids: &[i64]) -> String {
    let list: Vec<String> = ids.iter().map(i64::to_string).collect();
    format!(
        "INSERT INTO posts SELECT id, CASE WHEN id % 2 = 0 THEN date '2025-06-01' \
         ELSE date '2026-06-01' END, id % 3 + 1, 't' FROM unnest('{{{}}}'::int8[]) id;",
        list.join(",")
    )
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn nested_partitions_null_keys_and_non_integer_keys() {
    let cluster = Cluster::start(2).expect("start PostgreSQL");
    let map = map_of(&cluster, &[("posts", "id"), ("comments", "post_id")]);
    let mut ids: [Vec<i64>; 2] = Default::default();
    for id in 1..=600 {
        ids[map.shard_index_for(id)].push(id);
    }
    // 20 posts per shard stay for the window below.
    let kept: Vec<usize> = ids.iter().map(|v| v.len() - 20).collect();
    let hot = [ids[0][0], ids[1][0]];
    // Comments with a key: 10 on s0, 4 on s1; with a NULL key: 3 on s0.
    let comments = [10u64, 4];
    let nulls = [3u64, 0];
    for (i, server) in cluster.servers().iter().enumerate() {
        server
            .psql(&format!(
                "{SCHEMA} {} \
                 INSERT INTO comments (post_id, kind, body) \
                   SELECT {}, CASE WHEN g % 2 = 0 THEN 'text' ELSE 'image' END, 'c' \
                   FROM generate_series(1, {}) g; \
                 INSERT INTO comments (post_id, kind, body) \
                   SELECT NULL, 'text', 'orphan' FROM generate_series(1, {}); {FLUSH}",
                insert_posts(&ids[i][..kept[i]]),
                hot[i],
                comments[i],
                nulls[i]
            ))
            .expect("schema and rows");
        // Every leaf holds rows, the one in another schema included.
        for leaf in [
            "archive.posts_2025_h0",
            "posts_2025_h1",
            "posts_2026_b1",
            "posts_2026_rest",
        ] {
            let n: u64 = server
                .psql(&format!("SELECT count(*) FROM {leaf}"))
                .expect("leaf count")
                .parse()
                .expect("a count");
            assert!(n > 0, "shard {i}: {leaf} is empty");
        }
    }
    let f = map_file(&map.to_yaml());
    let path = f.path().to_str().unwrap();
    // The load file is saved through a symlink, which stays one.
    let load = f.path().with_extension("load.json");
    let load_target = f.path().with_extension("load-target.json");
    std::os::unix::fs::symlink(&load_target, &load).expect("symlink");

    // Activity during a window lands on the leaves and is summed. Reads
    // first: no earlier CLI session's own scans can be flushed late.
    let seq_scan = "SET enable_indexscan = off; SET enable_bitmapscan = off; \
                    SET enable_indexonlyscan = off;";
    let report = skew_while(
        &cluster,
        path,
        "reads",
        &[
            String::new(),
            format!("{seq_scan} SELECT count(*) FROM posts;"),
        ],
        1,
    );
    assert_eq!(
        report["shards"][1]["tables"]["posts"]["reads"], kept[1] as u64,
        "{report}"
    );
    assert_eq!(report["shards"][0]["reads"], 0, "{report}");
    let fresh = &ids[0][kept[0]..kept[0] + 5];
    let during = format!(
        "{} UPDATE posts SET title = 'edited' WHERE id IN ({}, {}); \
         DELETE FROM posts WHERE id = {}; \
         INSERT INTO comments (post_id, kind, body) VALUES (NULL, 'image', 'x'), ({}, 'text', 'y');",
        insert_posts(fresh),
        ids[0][1],
        ids[0][2],
        ids[0][3],
        hot[0]
    );
    let report = skew_while(&cluster, path, "writes", &[during, String::new()], 1);
    let s0 = &report["shards"][0];
    // 5 inserted + 2 updated + 1 deleted posts; 2 comments.
    assert_eq!(s0["tables"]["posts"]["writes"], 8, "{s0}");
    assert_eq!(s0["tables"]["comments"]["writes"], 2, "{s0}");
    assert_eq!(s0["writes"], 10, "{s0}");
    assert_eq!(report["shards"][1]["writes"], 0, "{report}");
    // What each shard holds now.
    let mut posts: Vec<Vec<i64>> = (0..2).map(|i| ids[i][..kept[i]].to_vec()).collect();
    posts[0].retain(|id| *id != ids[0][3]);
    posts[0].extend_from_slice(fresh);
    let comments = [comments[0] + 1, comments[1]];
    let nulls = [nulls[0] + 1, nulls[1]];

    // Rows and bytes over every leaf; NULL keys reported apart, exit 1.
    let out = postshard(
        &[
            "skew",
            "--map",
            path,
            "--json",
            "--save-load",
            load.to_str().unwrap(),
        ],
        "",
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("shard s0: table comments: 4 rows with a NULL post_id cannot be routed"),
        "{err}"
    );
    assert!(!err.contains("shard s1: table comments"), "{err}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let mut want = vec![0u64; BUCKETS];
    for i in 0..2 {
        let shard = &report["shards"][i];
        let tables = &shard["tables"];
        assert_eq!(tables["posts"]["rows"], posts[i].len() as u64, "{tables}");
        assert_eq!(tables["posts"]["null_keys"], 0, "{tables}");
        assert_eq!(tables["comments"]["rows"], comments[i], "{tables}");
        assert_eq!(tables["comments"]["null_keys"], nulls[i], "{tables}");
        assert_eq!(
            shard["rows"],
            posts[i].len() as u64 + comments[i],
            "{shard}"
        );
        assert_eq!(shard["null_keys"], nulls[i], "{shard}");
        // Bytes are every partition's, as PostgreSQL sizes them.
        let server = &cluster.servers()[i];
        for table in ["posts", "comments"] {
            let bytes: u64 = server
                .psql(&format!(
                    "SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('{table}')"
                ))
                .expect("size")
                .parse()
                .expect("a size");
            assert!(bytes > 0);
            assert_eq!(tables[table]["bytes"], bytes, "{table}: {tables}");
        }
        for id in &posts[i] {
            want[bucket_of(map.token(*id))] += 1;
        }
        want[bucket_of(map.token(hot[i]))] += comments[i];
    }
    let got: Vec<u64> = report["histogram"]["rows"]
        .as_array()
        .expect("histogram")
        .iter()
        .map(|v| v.as_u64().expect("count"))
        .collect();
    assert_eq!(got, want);
    assert_eq!(report["null_keys"][0]["shard"], "s0", "{report}");
    assert_eq!(report["null_keys"][0]["rows"], 4, "{report}");
    assert!(std::fs::symlink_metadata(&load)
        .expect("link")
        .file_type()
        .is_symlink());
    assert!(load_target.exists());
    // The load file adds up: shard totals are their buckets' sum.
    let saved: LoadReport =
        serde_json::from_str(&std::fs::read_to_string(&load).expect("load file written"))
            .expect("load file");
    assert_eq!(saved.bucket_loads, want);
    assert_eq!(
        saved.shards.values().copied().collect::<Vec<_>>(),
        [
            posts[0].len() as u64 + comments[0],
            posts[1].len() as u64 + comments[1]
        ]
    );
    // By bytes too (NULL-key rows' share of the bytes left out).
    let out = postshard(
        &[
            "skew",
            "--map",
            path,
            "--by",
            "bytes",
            "--save-load",
            load.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("rows with a NULL key") && text.contains("s0 comments: 4 rows"),
        "{text}"
    );
    let saved: LoadReport =
        serde_json::from_str(&std::fs::read_to_string(&load).expect("load file")).unwrap();
    assert_eq!(
        saved.shards.values().sum::<u64>(),
        saved.bucket_loads.iter().sum::<u64>()
    );
    for path in [&load, &load_target] {
        std::fs::remove_file(path).expect("remove load file");
    }
    // With stdout closed early the problems still reach stderr, exit 1.
    for json in [false, true] {
        let mut args = vec!["skew".to_string(), "--map".into(), path.into()];
        if json {
            args.push("--json".into());
        }
        let (code, err) = closed_early(&args, Path::new("."), 0, b"");
        assert_eq!(code, Some(1), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(err.contains("shard s0: table comments: 4 rows"), "{err}");
    }
    // Planning from live counts warns about the rows it cannot move.
    let out = postshard(&["plan", "balance", "--map", path, "--by", "rows"], "");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("warning: shard s0: table comments: 4 rows with a NULL post_id"),
        "{err}"
    );
}

#[test]
fn keys_that_are_not_integers_and_missing_tables_are_refused() {
    let cluster = Cluster::start(2).expect("start PostgreSQL");
    let map = map_of(&cluster, &[("posts", "id"), ("votes", "post_id")]);
    let f = map_file(&map.to_yaml());
    let path = f.path().to_str().unwrap();
    for server in cluster.servers() {
        server
            .psql(
                "CREATE DOMAIN small_ref AS smallint; CREATE DOMAIN ref AS small_ref;
                 CREATE TABLE posts (id integer PRIMARY KEY);
                 INSERT INTO posts SELECT generate_series(1, 50);
                 CREATE TABLE posts_old () INHERITS (posts);
                 INSERT INTO posts_old SELECT generate_series(1001, 1007);",
            )
            .expect("schema");
    }
    let plan = f.path().with_extension("plan.yaml");
    // (type on s1, what the error calls it); s0 always has a bigint key.
    let cases = [
        ("numeric(12,1)", Some("numeric(12,1)")),
        ("numeric", Some("numeric")),
        ("text", Some("text")),
        ("uuid", Some("uuid")),
        ("real", Some("real")),
        ("ref", None),
        ("smallint", None),
    ];
    for (type_name, refused) in cases {
        cluster.servers()[0]
            .psql("DROP TABLE IF EXISTS votes; CREATE TABLE votes (post_id bigint, up bool);")
            .expect("votes on s0");
        let value = match type_name {
            "uuid" => "gen_random_uuid()",
            "text" => "'1.5'",
            "ref" | "smallint" => "2",
            _ => "1.5",
        };
        cluster.servers()[1]
            .psql(&format!(
                "DROP TABLE IF EXISTS votes; CREATE TABLE votes (post_id {type_name}, up bool);
                 INSERT INTO votes VALUES ({value}, true);"
            ))
            .expect("votes on s1");
        let out = postshard(&["skew", "--map", path, "--json"], "");
        let err = stderr(&out);
        let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
        assert_eq!(report["shards"][0]["status"], "ok", "{type_name}: {report}");
        match refused {
            Some(shown) => {
                let want = format!(
                    "shard s1: table votes: key column post_id is of type {shown}; \
                     a key must be smallint, integer or bigint (or a domain over one)"
                );
                assert_eq!(out.status.code(), Some(2), "{type_name}: {err}");
                assert!(err.contains(&want), "{type_name}: {err}");
                assert_eq!(report["shards"][1]["error"], want.as_str());
                // Nothing is planned from such a shard.
                let out = postshard(
                    &[
                        "plan",
                        "balance",
                        "--map",
                        path,
                        "--by",
                        "rows",
                        "--out",
                        plan.to_str().unwrap(),
                    ],
                    "",
                );
                assert_eq!(out.status.code(), Some(2), "{type_name}: {}", stderr(&out));
                assert!(stderr(&out).contains(&want), "{}", stderr(&out));
                assert!(!plan.exists());
            }
            None => {
                assert_eq!(out.status.code(), Some(0), "{type_name}: {err}");
                assert_eq!(report["shards"][1]["tables"]["votes"]["rows"], 1);
                // Legacy inheritance children count with their parent.
                let posts = &report["shards"][1]["tables"]["posts"];
                assert_eq!(posts["rows"], 57, "{posts}");
                let bytes: u64 = cluster.servers()[1]
                    .psql(
                        "SELECT pg_total_relation_size('posts') \
                         + pg_total_relation_size('posts_old')",
                    )
                    .expect("sizes")
                    .parse()
                    .expect("a size");
                assert_eq!(posts["bytes"], bytes, "{posts}");
            }
        }
    }
    // A table of the map missing on a shard, and a key column missing.
    cluster.servers()[1]
        .psql("DROP TABLE votes")
        .expect("drop votes");
    let out = postshard(&["skew", "--map", path], "");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("shard s1: table votes does not exist"),
        "{}",
        stderr(&out)
    );
    cluster.servers()[1]
        .psql("CREATE TABLE votes (post bigint)")
        .expect("votes without key");
    let out = postshard(&["skew", "--map", path], "");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("shard s1: table votes has no key column post_id"),
        "{}",
        stderr(&out)
    );
}
