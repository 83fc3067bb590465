//! `postshard plan` as a user runs it: the built binary on temporary files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use postshard_rebalancer::plan::{offline_env, Plan};
use postshard_router::ShardMap;

const BIN: &str = env!("CARGO_BIN_EXE_postshard");

const MAP: &str = "\
version: 3
hash:
  function: pg_hashint8extended
  seed: 0
tables:
  - { name: posts, key: id }
shards:
  - name: s0
    url: postgres://app@db0/forum
  - name: s1
    url: postgres://app@db1/forum
  - name: s2
    url: postgres://app@db2/forum
  - name: s3
    url: postgres://app@db3/forum
ring:
  - { from: -9223372036854775808, shard: s0 }
  - { from: -4611686018427387904, shard: s1 }
  - { from: 0, shard: s2 }
  - { from: 4611686018427387904, shard: s3 }
";

/// A temporary directory holding `shardmap.yaml`.
struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Dir {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("shardmap.yaml"), MAP).expect("write map");
        Dir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).expect("write file");
        path
    }

    /// Runs `postshard ARGS` in the directory.
    fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .current_dir(self.0.path())
            .output()
            .expect("run postshard")
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

/// A load file counting `unit` with `loads` over 1,024 buckets, figures for
/// every shard of [`MAP`] and optional hot tokens.
fn load_file(unit: &str, loads: impl Fn(usize) -> u64, hot: &str) -> String {
    let buckets: Vec<String> = (0..1024).map(|b| loads(b).to_string()).collect();
    format!(
        "{{\"version\": 1, \"unit\": \"{unit}\", \"map_version\": 3, \"buckets\": 1024, \
         \"shards\": {{\"s0\": 1, \"s1\": 1, \"s2\": 1, \"s3\": 1}}, \"bucket_loads\": [{}]{hot}}}",
        buckets.join(", ")
    )
}

/// The load [`load_file`] puts in [from, to), loads spread evenly over each
/// bucket of 2^54 tokens.
fn load_between(loads: impl Fn(usize) -> u64, from: i64, to: i128) -> f64 {
    let offset = |t: i128| t - i128::from(i64::MIN);
    let (start, end) = (offset(i128::from(from)), offset(to));
    (0..1024i128)
        .map(|b| {
            let (lo, hi) = (b << 54, (b + 1) << 54);
            let overlap = (end.min(hi) - start.max(lo)).max(0);
            loads(b as usize) as f64 * overlap as f64 / (1u64 << 54) as f64
        })
        .sum()
}

fn check(dir: &Dir, map: &Path) -> Output {
    dir.run(&["check", "--map", &map.display().to_string()])
}

#[test]
fn add_shard_prints_the_plan_and_summarizes_on_stderr() {
    let dir = Dir::new();
    let out = dir.run(&["plan", "add-shard", "s4=postgres://app@db4/forum"]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    let plan = Plan::from_yaml_str(&text(&out.stdout)).expect("plan on stdout");
    assert_eq!(plan.base_version, 3);
    assert_eq!(plan.moves.len(), 4);
    assert!(plan.moves.iter().all(|m| m.target == "s4"));
    let summary = text(&out.stderr);
    assert!(summary.contains("20.0000% of the token space"), "{summary}");
    assert!(
        summary.contains("s4") && summary.contains("(new)"),
        "{summary}"
    );
}

#[test]
fn plans_write_files_and_emit_maps_that_pass_check() {
    let dir = Dir::new();
    let cases: &[(&[&str], usize, &str)] = &[
        (
            &["add-shard", "s4=postgres://app@db4/forum", "--weight", "2"],
            5,
            "add shard s4",
        ),
        (&["remove-shard", "s2"], 3, "remove shard s2"),
        (&["reweight", "s1=4"], 4, "reweight shard s1 from 1 to 4"),
    ];
    for (args, shards, intent) in cases {
        let (plan_path, map_path) = (dir.path("plan.yaml"), dir.path("next.yaml"));
        let mut full = vec!["plan"];
        full.extend_from_slice(args);
        let (plan_arg, map_arg) = (
            plan_path.display().to_string(),
            map_path.display().to_string(),
        );
        full.extend(["--out", &plan_arg, "--emit-map", &map_arg]);
        let out = dir.run(&full);
        assert_eq!(code(&out), Some(0), "{args:?}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains(intent), "{}", text(&out.stdout));
        assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
        let checked = check(&dir, &map_path);
        assert_eq!(code(&checked), Some(0), "{}", text(&checked.stderr));
        assert!(
            text(&checked.stdout).contains("version 4"),
            "{}",
            text(&checked.stdout)
        );
        let next = ShardMap::from_path(&map_path).expect("emitted map");
        assert_eq!(next.shards().len(), *shards);
        // The plan file reads back, applies to the old map to give the emitted
        // one, and its reverse restores the old ownership.
        let plan = Plan::from_path(&plan_path).expect("plan file");
        let base = ShardMap::from_path(dir.path("shardmap.yaml")).expect("base map");
        assert_eq!(plan.apply(&base).expect("apply"), next);
        let back = plan
            .reverse()
            .apply_with_env(&next, &offline_env)
            .expect("reverse");
        assert_eq!(back.ring(), base.ring());
        assert_eq!(back.shards(), base.shards());
    }
}

#[test]
fn balance_by_rows_records_estimates() {
    let dir = Dir::new();
    // The last 64 buckets (all in s3's arc) carry 20 times the rest.
    let loads = |b: usize| if b >= 960 { 200 } else { 10 };
    let load = dir.write("rows.json", &load_file("rows", loads, ""));
    let out = dir.run(&[
        "plan",
        "balance",
        "--by",
        "rows",
        "--load",
        &load.display().to_string(),
        "--emit-map",
        "next.yaml",
    ]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    let plan = Plan::from_yaml_str(&text(&out.stdout)).expect("plan");
    assert!(!plan.moves.is_empty());
    for m in &plan.moves {
        assert_eq!(m.source, "s3", "{m:?}");
        let want = load_between(loads, m.from, m.to).round() as u64;
        assert_eq!(m.rows, Some(want), "{m:?}");
        assert_eq!(m.bytes, None, "{m:?}");
    }
    // s3 sheds what lies above 1.05 times the mean.
    let total = 960.0 * 10.0 + 64.0 * 200.0;
    let s3 = load_between(loads, 1 << 62, 1 << 63);
    let moved: u64 = plan.moves.iter().filter_map(|m| m.rows).sum();
    assert!(
        (moved as f64 - (s3 - 1.05 * total / 4.0)).abs() <= plan.moves.len() as f64,
        "moved {moved} rows"
    );
    assert!(plan.intent.contains("by rows"), "{}", plan.intent);
    let summary = text(&out.stderr);
    assert!(summary.contains("-> 1.0500 (target 1.05)"), "{summary}");
    assert_eq!(code(&check(&dir, &dir.path("next.yaml"))), Some(0));
}

#[test]
fn invalid_input_exits_2_without_writing_the_plan() {
    let dir = Dir::new();
    let rows = dir.write("rows.json", &load_file("rows", |_| 5, ""));
    let requests = dir.write("requests.json", &load_file("requests", |_| 5, ""));
    let partial = dir.write(
        "partial.json",
        &load_file("requests", |_| 5, "").replace("\"s2\": 1, \"s3\": 1", "\"s9\": 1"),
    );
    let broken = dir.write("broken.json", "{\"version\": 1,\n \"buckets\": 2}");
    let bad_map = dir.write("bad.yaml", "version: 1\n");
    let rows = rows.display().to_string();
    let requests = requests.display().to_string();
    let partial = partial.display().to_string();
    let broken = broken.display().to_string();
    let bad_map = bad_map.display().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["remove-shard", "nope"], "no shard `nope` in the map"),
        (vec!["reweight", "nope=2"], "no shard `nope`"),
        (
            vec!["add-shard", "s1=postgres://app@db9/forum"],
            "shard `s1` is already in the map",
        ),
        (
            vec!["add-shard", "s9=postgres://app@db9/forum", "--weight", "0"],
            "weight 0",
        ),
        (
            vec!["add-shard", "s9=postgres://app@db9/forum", "--weight", "-3"],
            "invalid value '-3' for '--weight",
        ),
        (
            vec!["reweight", "s1=lots"],
            "weight `lots` is not an integer",
        ),
        (vec!["reweight", "s1=2000000"], "must be from 1 to 1000000"),
        (vec!["reweight", "s1"], "expected NAME=W"),
        (vec!["add-shard", "s9"], "expected NAME=URL"),
        (
            vec!["add-shard", "s9=postgres://app:hunter2@db9/forum"],
            "literal password",
        ),
        (
            vec!["add-shard", "bad/name=postgres://app@db9/forum"],
            "shard name `bad/name`",
        ),
        (
            vec!["add-shard", "s9=postgres://app@db0/forum"],
            "same server and database",
        ),
        (
            vec!["balance", "--by", "load"],
            "--by load needs --load FILE",
        ),
        (
            vec!["balance", "--by", "load", "--load", "missing.json"],
            "cannot read load file",
        ),
        (
            vec!["balance", "--by", "load", "--load", &broken],
            "broken.json:2:",
        ),
        (
            vec![
                "balance", "--by", "load", "--load", &requests, "--target", "0.9",
            ],
            "at least 1",
        ),
        (
            vec!["balance", "--by", "load", "--load", &rows],
            "--by load needs a load file counting requests: ",
        ),
        (
            vec!["balance", "--by", "rows", "--load", &requests],
            "counts requests, not rows",
        ),
        (
            vec!["balance", "--by", "bytes", "--load", &rows],
            "--by bytes needs a load file counting bytes",
        ),
        (
            vec!["balance", "--by", "load", "--load", &partial],
            "has no figures for shard(s) s2, s3 of the map",
        ),
        (
            vec!["balance", "--by", "load", "--target", "2"],
            "needs --load",
        ),
        (vec!["remove-shard", "s0", "--map", &bad_map], "bad.yaml"),
        (
            vec!["remove-shard", "s0", "--map", "missing.yaml"],
            "cannot read shard map",
        ),
    ];
    for (args, want) in cases {
        let mut full = vec!["plan"];
        full.extend_from_slice(&args);
        full.extend(["--out", "plan.yaml", "--emit-map", "next.yaml"]);
        let out = dir.run(&full);
        let stderr = text(&out.stderr);
        assert_eq!(code(&out), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert!(!stderr.contains("hunter2"), "{stderr}");
        assert!(!dir.path("plan.yaml").exists(), "{args:?} wrote the plan");
        assert!(!dir.path("next.yaml").exists(), "{args:?} wrote the map");
    }
}

#[test]
fn runtime_failures_exit_1() {
    let dir = Dir::new();
    // One key carries most of the load: no shard can hold it within the target.
    let hot = dir.write(
        "hot.json",
        &load_file(
            "requests",
            |b| if b == 734 { 5000 } else { 1 },
            ", \"hot_tokens\": [{\"token\": 4000000000000000000, \"load\": 4900}]",
        ),
    );
    let hot = hot.display().to_string();
    let out = dir.run(&[
        "plan",
        "balance",
        "--by",
        "load",
        "--load",
        &hot,
        "--out",
        "plan.yaml",
    ]);
    assert_eq!(code(&out), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("hot token 4000000000000000000"),
        "{}",
        text(&out.stderr)
    );
    assert!(!dir.path("plan.yaml").exists());
    let out = dir.run(&[
        "plan",
        "remove-shard",
        "s1",
        "--out",
        "no/such/dir/plan.yaml",
    ]);
    assert_eq!(code(&out), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("writing no/such/dir/plan.yaml"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_failed_write_leaves_neither_file() {
    let dir = Dir::new();
    for (out, emit) in [
        ("plan.yaml", "no/such/dir/next.yaml"),
        ("no/such/dir/plan.yaml", "next.yaml"),
    ] {
        let result = dir.run(&[
            "plan",
            "remove-shard",
            "s1",
            "--out",
            out,
            "--emit-map",
            emit,
        ]);
        assert_eq!(code(&result), Some(1), "{}", text(&result.stderr));
        assert!(
            text(&result.stderr).contains("no/such/dir/"),
            "{}",
            text(&result.stderr)
        );
        let left: Vec<String> = std::fs::read_dir(dir.0.path())
            .expect("list dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["shardmap.yaml"], "{out}, {emit}");
    }
    // Both written: the plan and the map after it, nothing else.
    let result = dir.run(&[
        "plan",
        "remove-shard",
        "s1",
        "--out",
        "plan.yaml",
        "--emit-map",
        "next.yaml",
    ]);
    assert_eq!(code(&result), Some(0), "{}", text(&result.stderr));
    let mut left: Vec<String> = std::fs::read_dir(dir.0.path())
        .expect("list dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["next.yaml", "plan.yaml", "shardmap.yaml"]);
}
