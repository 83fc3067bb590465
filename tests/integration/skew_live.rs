//! `postshard skew` on three real shards with a known, skewed distribution.

use postshard_rebalancer::layout::balanced_arcs;
use postshard_router::ring::bucket_of;
use postshard_router::LoadReport;
use postshard_sandbox::Cluster;
use serde_json::Value;

use crate::cli_map::{map_file, postshard};
use crate::common::{map_for, FORUM_SCHEMA};

#[test]
fn live_skew_reports_exact_counts_histogram_and_unreachable_shards() {
    let cluster = Cluster::start(3).expect("start PostgreSQL");
    let map = map_for(&cluster, 0, &balanced_arcs(&[1, 1, 1]), |u| u);
    // Posts concentrated on purpose: 600 on s0, 300 on s1, 100 on s2, and one
    // viral post on s1 with 400 comments.
    let quotas = [600usize, 300, 100];
    let mut ids: [Vec<i64>; 3] = Default::default();
    for id in 1.. {
        let owner = map.shard_index_for(id);
        if ids[owner].len() < quotas[owner] {
            ids[owner].push(id);
        }
        if ids.iter().zip(quotas).all(|(v, q)| v.len() == q) {
            break;
        }
    }
    let viral = ids[1][7];
    for (i, server) in cluster.servers().iter().enumerate() {
        server.psql(FORUM_SCHEMA).expect("schema");
        let list: Vec<String> = ids[i].iter().map(i64::to_string).collect();
        server
            .psql(&format!(
                "INSERT INTO posts (id, board, title) SELECT id, 1, 't' FROM unnest('{{{}}}'::int8[]) id",
                list.join(",")
            ))
            .expect("posts");
    }
    cluster.servers()[1]
        .psql(&format!(
            "INSERT INTO comments (post_id, body) SELECT {viral}, 'wow' FROM generate_series(1, 400)"
        ))
        .expect("comments");
    let rows = [600u64, 700, 100];

    let f = map_file(&map.to_yaml());
    let load_path = f.path().with_extension("load.json");
    let path = f.path().to_str().unwrap();
    let out = postshard(
        &[
            "skew",
            "--map",
            path,
            "--by",
            "rows",
            "--json",
            "--save-load",
            load_path.to_str().unwrap(),
        ],
        "",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stderr}\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    for (i, want) in rows.iter().enumerate() {
        let shard = &report["shards"][i];
        assert_eq!(shard["name"], format!("s{i}"));
        assert_eq!(shard["rows"].as_u64(), Some(*want), "{shard}");
        assert_eq!(
            shard["tables"]["posts"]["rows"].as_u64(),
            Some(quotas[i] as u64)
        );
        assert!(shard["bytes"].as_u64().unwrap() > 0);
    }
    assert_eq!(report["total"]["rows"].as_u64(), Some(1_400));
    let skew = &report["skew"];
    let mean = 1_400.0 / 3.0;
    assert!(
        (skew["peak_to_mean"].as_f64().unwrap() - 700.0 / mean).abs() < 1e-9,
        "{skew}"
    );
    assert_eq!(skew["hottest"], "s1");
    assert!((skew["hottest_share"].as_f64().unwrap() - 0.5).abs() < 1e-9);
    let hot = &report["shards"][1]["hot_keys"][0];
    assert_eq!(hot["key"].as_i64(), Some(viral), "{hot}");
    assert_eq!(hot["rows"].as_u64(), Some(400));
    assert_eq!(hot["token"].as_i64(), Some(map.token(viral)));

    // The histogram, computed in SQL, matches the tokens of what was inserted.
    let mut want = vec![0u64; postshard_router::ring::BUCKETS];
    for id in ids.iter().flatten() {
        want[bucket_of(map.token(*id))] += 1;
    }
    want[bucket_of(map.token(viral))] += 400;
    let got: Vec<u64> = report["histogram"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(got, want);
    let saved: LoadReport =
        serde_json::from_str(&std::fs::read_to_string(&load_path).unwrap()).expect("load file");
    assert_eq!(saved.bucket_loads, want);
    assert_eq!(saved.shards["s1"], 700);

    // Plain output names every shard and the skew.
    let out = postshard(&["skew", "--map", path], "");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("peak-to-mean 1.500"), "{text}");

    // Balancing by rows counts them live and evens the shards out.
    let plan = f.path().with_extension("plan.yaml");
    let next = f.path().with_extension("next.yaml");
    let out = postshard(
        &[
            "plan",
            "balance",
            "--by",
            "rows",
            "--map",
            path,
            "--out",
            plan.to_str().unwrap(),
            "--emit-map",
            next.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan_text = std::fs::read_to_string(&plan).unwrap();
    assert!(
        plan_text.contains("from live shards") && plan_text.contains("rows:"),
        "{plan_text}"
    );
    let next = postshard_router::ShardMap::from_path(&next).expect("emitted map");
    let mut after = [0f64; 3];
    for id in ids.iter().flatten() {
        after[next.shard_index_for(*id)] += 1.0;
    }
    after[next.shard_index_for(viral)] += 400.0;
    let ptm = after.iter().cloned().fold(0.0, f64::max) / (1_400.0 / 3.0);
    assert!(ptm < 1.25, "rows per shard after balancing: {after:?}");

    // A stopped shard is reported unreachable, never as zero, and the run fails.
    cluster.servers()[2].stop().expect("stop s2");
    let out = postshard(&["skew", "--map", path, "--json"], "");
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let s2 = &report["shards"][2];
    assert_eq!(s2["status"], "unreachable");
    assert!(s2.get("rows").is_none(), "{s2}");
    assert!(s2["error"].as_str().unwrap().contains("shard s2"), "{s2}");
    assert_eq!(report["not_measured"][0], "s2");
    assert_eq!(report["total"]["rows"].as_u64(), Some(1_300));
    let ptm = report["skew"]["peak_to_mean"].as_f64().unwrap();
    assert!((ptm - 700.0 / 650.0).abs() < 1e-9, "{ptm}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("s2"));
}
