//! `postshard verify` on three real shards: clean, then with a misplaced
//! row, a duplicated key and a NULL key planted behind the router's back.

use std::collections::BTreeMap;

use postshard_rebalancer::layout::balanced_arcs;
use postshard_sandbox::Cluster;
use serde_json::Value;

use crate::cli_map::{map_file, postshard};
use crate::common::{map_for, FORUM_SCHEMA};

fn verify(map: &str, extra: &[&str]) -> (Option<i32>, String, String) {
    let mut args = vec!["verify", "--map", map];
    args.extend_from_slice(extra);
    let out = postshard(&args, "");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// (arc index, table) → (rows, checksum) from a JSON report.
fn arc_sums(report: &Value) -> BTreeMap<(usize, String), (u64, String)> {
    let mut out = BTreeMap::new();
    for (i, arc) in report["arcs"].as_array().unwrap().iter().enumerate() {
        for t in arc["tables"].as_array().unwrap() {
            out.insert(
                (i, t["table"].as_str().unwrap().to_string()),
                (
                    t["rows"].as_u64().unwrap(),
                    t["checksum"].as_str().unwrap().to_string(),
                ),
            );
        }
    }
    out
}

#[test]
fn verify_reports_counts_per_arc_and_every_kind_of_stray_row() {
    let cluster = Cluster::start(3).expect("start PostgreSQL");
    // Two arcs per shard, so arcs and shards are not the same thing.
    let mut ring = balanced_arcs(&[1, 1, 1, 1, 1, 1]);
    for (i, arc) in ring.iter_mut().enumerate() {
        arc.1 = i % 3;
    }
    let map = map_for(&cluster, 11, &ring, |u| u);
    let servers = cluster.servers();
    let mut owned: [Vec<i64>; 3] = Default::default();
    for id in 1..=600i64 {
        owned[map.shard_index_for(id)].push(id);
    }
    for (server, ids) in servers.iter().zip(&owned) {
        server.psql(FORUM_SCHEMA).expect("schema");
        let list: Vec<String> = ids.iter().map(i64::to_string).collect();
        server
            .psql(&format!(
                "INSERT INTO posts (id, board, title) SELECT id, 1, 'post ' || id FROM unnest('{{{list}}}'::int8[]) id;
                 INSERT INTO comments (post_id, body) SELECT id, 'c' || n FROM posts, generate_series(1, 2) n;",
                list = list.join(",")
            ))
            .expect("rows");
    }
    let f = map_file(&map.to_yaml());
    let path = f.path().to_str().unwrap();

    // Clean: exit 0, every row counted on the arc its token falls in.
    let (code, stdout, stderr) = verify(path, &["--json"]);
    assert_eq!(code, Some(0), "{stderr}\n{stdout}");
    let clean: Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(clean["clean"], true);
    assert_eq!(clean["rows"], 1800);
    let sums = arc_sums(&clean);
    for (i, arc) in map.ring().arcs().enumerate() {
        let posts = (1..=600i64)
            .filter(|id| (arc.from..=arc.last).contains(&map.token(*id)))
            .count() as u64;
        assert!(posts > 50, "arc {i}: {posts}");
        assert_eq!(sums[&(i, "posts".to_string())].0, posts, "arc {i}");
        assert_eq!(sums[&(i, "comments".to_string())].0, 2 * posts, "arc {i}");
        assert_eq!(clean["arcs"][i]["owner"], format!("s{}", arc.shard));
    }
    let (code, text, _) = verify(path, &[]);
    assert_eq!(code, Some(0));
    assert!(
        text.contains("1800 row(s) on their owners over 6 arc(s)") && text.contains("clean"),
        "{text}"
    );

    // A changed row changes its arc's checksum, and only that one.
    let changed = owned[1][0];
    servers[1]
        .psql(&format!(
            "UPDATE posts SET title = 'edited' WHERE id = {changed}"
        ))
        .unwrap();
    let (code, stdout, _) = verify(path, &["--json"]);
    assert_eq!(code, Some(0));
    let after = arc_sums(&serde_json::from_str(&stdout).unwrap());
    let arc_of = map.ring().arc_index(map.token(changed));
    for (k, v) in &sums {
        if *k == (arc_of, "posts".to_string()) {
            assert_ne!(after[k].1, v.1, "the edited arc's checksum changes");
            assert_eq!(after[k].0, v.0);
        } else {
            assert_eq!(&after[k], v, "{k:?}");
        }
    }

    // Plant strays behind the router's back: a post owned by s0 on s1 (not
    // on s0), an existing post of s2 again on s0, and a comment with no post.
    let misplaced = (10_000i64..)
        .find(|id| map.shard_index_for(*id) == 0)
        .unwrap();
    let duplicated = owned[2][3];
    servers[1]
        .psql(&format!(
            "INSERT INTO posts VALUES ({misplaced}, 1, 'lost')"
        ))
        .unwrap();
    servers[0]
        .psql(&format!(
            "INSERT INTO posts VALUES ({duplicated}, 1, 'twice');
             INSERT INTO comments (post_id, body) VALUES ({duplicated}, 'twice'), ({duplicated}, 'thrice');"
        ))
        .unwrap();
    servers[2]
        .psql("ALTER TABLE comments ALTER COLUMN post_id DROP NOT NULL; INSERT INTO comments (post_id, body) VALUES (NULL, 'orphan')")
        .unwrap();
    let (code, stdout, stderr) = verify(path, &["--json"]);
    assert_eq!(code, Some(1), "{stderr}\n{stdout}");
    assert!(
        stderr.contains("4 row(s) on a shard that does not own their token"),
        "{stderr}"
    );
    assert!(stderr.contains("1 row(s) with a NULL key"), "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["clean"], false);
    assert_eq!(report["misplaced_rows"], 4);
    assert_eq!(report["null_key_rows"], 1);
    let problems: Vec<(String, String, String, Value, Value, u64)> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["kind"].as_str().unwrap().to_string(),
                p["shard"].as_str().unwrap().to_string(),
                p["table"].as_str().unwrap().to_string(),
                p["key"].clone(),
                p["owner"].clone(),
                p["rows"].as_u64().unwrap(),
            )
        })
        .collect();
    let s = |x: &str| x.to_string();
    assert_eq!(
        problems,
        [
            (
                s("null_key"),
                s("s2"),
                s("comments"),
                Value::Null,
                Value::Null,
                1
            ),
            (
                s("duplicated"),
                s("s0"),
                s("posts"),
                duplicated.into(),
                "s2".into(),
                1
            ),
            (
                s("duplicated"),
                s("s0"),
                s("comments"),
                duplicated.into(),
                "s2".into(),
                2
            ),
            (
                s("misplaced"),
                s("s1"),
                s("posts"),
                misplaced.into(),
                "s0".into(),
                1
            ),
        ]
    );
    // Counts on the owners do not include strays.
    assert_eq!(report["rows"], 1800);

    let (code, text, _) = verify(path, &["--max-problems", "2"]);
    assert_eq!(code, Some(1));
    assert!(
        text.contains(&format!(
            "duplicated: shard s0 table posts key {duplicated}"
        )),
        "{text}"
    );
    assert!(
        text.contains("null_key: shard s2 table comments: 1 row(s) with a NULL key"),
        "{text}"
    );
    assert!(
        !text.contains("misplaced: shard s1"),
        "only two problems listed: {text}"
    );
    assert!(
        text.contains("4 misplaced, 1 with a NULL key: NOT clean"),
        "{text}"
    );
}

#[test]
fn verify_names_a_missing_table_and_an_unreachable_shard() {
    let cluster = Cluster::start(2).expect("start PostgreSQL");
    let map = map_for(&cluster, 0, &balanced_arcs(&[1, 1]), |u| u);
    cluster.servers()[0].psql(FORUM_SCHEMA).unwrap();
    let f = map_file(&map.to_yaml());
    let (code, _, stderr) = verify(f.path().to_str().unwrap(), &[]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("not verified: shard s1: table posts does not exist"),
        "{stderr}"
    );
    cluster.servers()[1].psql(FORUM_SCHEMA).unwrap();
    cluster.servers()[1].stop().unwrap();
    let (code, stdout, stderr) = verify(f.path().to_str().unwrap(), &[]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("shard s1") && stderr.contains("cannot connect"),
        "{stderr}"
    );
    // The down shard's arcs are not shown as empty: their counts are unknown.
    let s1_lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.split_whitespace().nth(2) == Some("s1"))
        .collect();
    assert!(!s1_lines.is_empty(), "{stdout}");
    assert!(
        s1_lines.iter().all(|l| l.ends_with("not verified")),
        "{stdout}"
    );
    let (_, json, _) = verify(f.path().to_str().unwrap(), &["--json"]);
    let report: serde_json::Value = serde_json::from_str(&json).expect("JSON report");
    for arc in report["arcs"].as_array().expect("arcs") {
        assert_eq!(arc["verified"], arc["owner"] != "s1", "{arc}");
    }
    // Bad input is exit 2.
    let (code, _, stderr) = verify("/nonexistent/map.yaml", &[]);
    assert_eq!(code, Some(2), "{stderr}");
}
