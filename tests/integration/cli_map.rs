//! `postshard check`, `route` and `map init` as a user runs them.

use std::io::Write;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_postshard");

const VALID: &str = "\
version: 1
hash:
  function: pg_hashint8extended
  seed: 0
tables:
  - { name: posts, key: id }
  - { name: comments, key: post_id }
shards:
  - name: s0
    url: postgres://postgres@127.0.0.1:5433/forum
  - name: s1
    url: postgres://postgres@127.0.0.1:5434/forum
ring:
  - { from: -9223372036854775808, shard: s0 }
  - { from: 0, shard: s1 }
";

/// Runs `postshard ARGS` with `stdin`, `POSTSHARD_TEST_UNSET` unset.
pub fn postshard(args: &[&str], stdin: &str) -> Output {
    postshard_bytes(args, stdin.as_bytes())
}

/// [`postshard`] with raw bytes on stdin.
pub fn postshard_bytes(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("POSTSHARD_TEST_UNSET")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run postshard");
    let mut input = child.stdin.take().expect("stdin");
    let stdin = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let out = child.wait_with_output().expect("wait for postshard");
    feeder.join().expect("stdin feeder");
    out
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Writes `yaml` to a temporary map file.
pub fn map_file(yaml: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile()
        .expect("temp map");
    f.write_all(yaml.as_bytes()).expect("write map");
    f
}

#[test]
fn valid_map_checks_with_shares_arcs_and_notes() {
    let extra = VALID.replace(
        "ring:",
        "  - name: s2\n    url: postgres://postgres@127.0.0.1:5435/forum\nring:",
    );
    let f = map_file(&extra);
    let out = postshard(&["check", "--map", f.path().to_str().unwrap()], "");
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        stdout.contains("s0") && stdout.contains("50.0000%"),
        "{stdout}"
    );
    assert!(stdout.contains("[0, 9223372036854775807]"), "{stdout}");
    assert!(stdout.contains("posts (key id)"), "{stdout}");
    assert!(stdout.contains("shard `s2` owns no arc"), "{stdout}");
}

#[test]
fn malformed_maps_exit_2_naming_problem_and_line() {
    // (what, replace this, with this, expected line, expected text)
    let cases: &[(&str, &str, &str, usize, &str)] = &[
        ("yaml syntax", "seed: 0", "seed: [0", 5, "illegal placement of ':' indicator"),
        ("unknown top field", "version: 1", "version: 1\nowner: me", 2, "unknown field `owner`"),
        ("unknown shard field", "  - name: s1", "  - name: s1\n    wieght: 2", 12, "unknown field `wieght`"),
        ("missing field", "  - { name: posts, key: id }", "  - { name: posts }", 6, "missing field `key`"),
        ("missing ring", "ring:\n  - { from: -9223372036854775808, shard: s0 }\n  - { from: 0, shard: s1 }\n", "", 1, "missing field `ring`"),
        ("no shards", "shards:\n  - name: s0\n    url: postgres://postgres@127.0.0.1:5433/forum\n  - name: s1\n    url: postgres://postgres@127.0.0.1:5434/forum\n", "shards: []\n", 8, "no shards"),
        ("duplicate shard name", "  - name: s1", "  - name: s0", 11, "duplicate shard name `s0`"),
        ("duplicate table", "{ name: comments, key: post_id }", "{ name: posts, key: post_id }", 7, "duplicate table `posts`"),
        ("same url twice", "127.0.0.1:5434/forum", "127.0.0.1:5433/forum", 12, "same server and database as shard `s0`"),
        ("zero weight", "  - name: s1", "  - name: s1\n    weight: 0", 12, "weight `0` must be greater than 0"),
        ("negative weight", "  - name: s1", "  - name: s1\n    weight: -3", 12, "weight `-3` must be greater than 0"),
        ("fractional weight", "  - name: s1", "  - name: s1\n    weight: 1.5", 12, "`1.5` is not an integer"),
        ("url does not parse", "127.0.0.1:5434/forum", "127.0.0.1:notaport/forum", 12, "invalid connection URL"),
        ("unknown hash", "pg_hashint8extended", "murmur3", 3, "unknown hash function `murmur3`"),
        ("seed not integer", "seed: 0", "seed: zero", 4, "`zero` is not an integer"),
        ("negative version", "version: 1", "version: -1", 1, "`-1` is out of range"),
        ("ring not at min", "from: -9223372036854775808", "from: -5", 14, "must start at -9223372036854775808, not -5"),
        ("from not increasing", "from: 0,", "from: -9223372036854775808,", 15, "must be greater than the previous arc's"),
        ("from above i64", "from: 0,", "from: 9223372036854775808,", 15, "`9223372036854775808` is out of the 64-bit range"),
        ("from below i64", "from: 0,", "from: -9223372036854775809,", 15, "`-9223372036854775809` is out of the 64-bit range"),
        ("from not a number", "from: 0,", "from: zero,", 15, "`zero` is not an integer"),
        ("from a float", "from: 0,", "from: 0.5,", 15, "`0.5` is not an integer"),
        ("from an integral float", "from: 0,", "from: 1e3,", 15, "written as a floating-point number"),
        ("literal password", "postgres@127.0.0.1:5434", "postgres:s3cret@127.0.0.1:5434", 12, "holds a literal password; write it as ${VAR}"),
        ("ring names unknown shard", "shard: s1 }", "shard: s9 }", 15, "unknown shard `s9`"),
        ("unset variable", "postgres@127.0.0.1:5434", "postgres:${POSTSHARD_TEST_UNSET}@127.0.0.1:5434", 12, "environment variable `POSTSHARD_TEST_UNSET` is not set"),
        ("unsafe table name", "name: posts,", "name: \"posts; drop table x\",", 6, "is not a lower-case SQL identifier"),
        ("bad shard name", "  - name: s1", "  - name: \"s 1\"", 11, "shard name `s 1` must be"),
        ("pool size zero", "  - name: s1", "  - name: s1\n    pool: { max_size: 0 }", 12, "`0` is out of range 1..=10000"),
        ("empty ring", "ring:\n  - { from: -9223372036854775808, shard: s0 }\n  - { from: 0, shard: s1 }\n", "ring: []\n", 13, "empty ring"),
        ("not a mapping", VALID, "- just\n- a list\n", 1, "expected a mapping"),
    ];
    assert!(cases.len() >= 20);
    for (what, from, to, line, expected) in cases {
        assert!(VALID.contains(from), "{what}: base map lacks {from:?}");
        let yaml = VALID.replacen(from, to, 1);
        let f = map_file(&yaml);
        let path = f.path().to_str().unwrap();
        let before = std::fs::read(f.path()).unwrap();
        for args in [
            vec!["check", "--map", path],
            vec!["route", "--map", path, "1"],
        ] {
            let out = postshard(&args, "");
            let stderr = text(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{what}: {args:?}: {stderr}");
            assert!(
                out.stdout.is_empty(),
                "{what}: printed {}",
                text(&out.stdout)
            );
            assert!(!stderr.contains("panicked"), "{what}: {stderr}");
            assert!(
                !stderr.contains("s3cret"),
                "{what}: leaked the password: {stderr}"
            );
            let located = format!("{path}:{line}:");
            let hit = stderr
                .lines()
                .any(|l| l.starts_with(&located) && l.contains(expected));
            assert!(hit, "{what}: want `{located}` … `{expected}` in:\n{stderr}");
        }
        assert_eq!(
            std::fs::read(f.path()).unwrap(),
            before,
            "{what}: map changed"
        );
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let yaml = VALID
        .replace("pg_hashint8extended", "md5")
        .replace("  - name: s1", "  - name: s0")
        .replace("from: 0,", "from: 1.5,");
    // md5, the duplicate s0, the float `from`, and the ring arc naming s1 (now gone).
    let f = map_file(&yaml);
    let path = f.path().to_str().unwrap();
    let out = postshard(&["check", "--map", path], "");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with(path)).collect();
    assert_eq!(lines.len(), 4, "{stderr}");
    assert!(
        stderr.contains("invalid shard map (4 problems)"),
        "{stderr}"
    );
}

#[test]
fn missing_map_file_is_invalid_input_naming_the_path() {
    let out = postshard(&["check", "--map", "/nonexistent/shardmap.yaml"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("/nonexistent/shardmap.yaml"));
}

#[test]
fn route_prints_tokens_and_owners_from_args_and_stdin() {
    let f = map_file(VALID);
    let path = f.path().to_str().unwrap();
    // Tokens from PostgreSQL: SELECT hashint8extended(k, 0) for k in (42, -5, 1).
    let out = postshard(&["route", "--map", path, "42", "-5"], "");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "42\t8010225493015854792\ts1\n-5\t-9082176226831438310\ts0\n"
    );
    let out = postshard(&["route", "--map", path, "--json"], "42\n1\n");
    assert_eq!(
        text(&out.stdout),
        "{\"id\": 42, \"token\": 8010225493015854792, \"shard\": \"s1\"}\n\
         {\"id\": 1, \"token\": -3670598878359251130, \"shard\": \"s0\"}\n"
    );
    let out = postshard(&["route", "--map", path], "1\n2\nnot-a-number\n4\n");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("stdin:3: `not-a-number`"),
        "{}",
        text(&out.stderr)
    );
    let out = postshard(&["route", "--map", path], "1\n99999999999999999999\n");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("stdin:2:"));
    let out = postshard_bytes(&["route", "--map", path], b"1\n\xff\xfe\n");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("stdin:2: not valid UTF-8"),
        "{}",
        text(&out.stderr)
    );
    let long = "9".repeat(10_000);
    let out = postshard(&["route", "--map", path], &long);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).len() < 200,
        "the error echoes the whole line"
    );
    let out = postshard(&["route", "--map", path, "12", "x"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        out.stdout.is_empty(),
        "nothing is routed when an argument is bad"
    );
}

#[test]
fn route_streams_a_million_ids() {
    let f = map_file(VALID);
    let ids: String = (0..1_000_000i64)
        .map(|i| format!("{}\n", i * 7_919))
        .collect();
    let out = postshard(&["route", "--map", f.path().to_str().unwrap()], &ids);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1_000_000);
    let last = stdout.lines().last().unwrap();
    assert!(last.starts_with("7918992081\t"), "{last}");
}

#[test]
fn map_init_writes_a_balanced_valid_map() {
    let out = postshard(
        &[
            "map",
            "init",
            "--shard",
            "a=postgres://u@h1/db",
            "--shard",
            "b=postgres://u:${PW}@h2/db",
            "--shard",
            "c=postgres://u@h3/db",
            "--weight",
            "b=2",
            "--seed",
            "9",
            "--table",
            "posts:id",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let yaml = text(&out.stdout);
    assert!(yaml.contains("postgres://u:${PW}@h2/db"), "{yaml}");
    let map = postshard_router::ShardMap::parse(&yaml, "init", &|_| Some("pw".into()))
        .expect("map init output is valid");
    assert_eq!(map.seed(), 9);
    assert_eq!(map.tables().len(), 1);
    let owned = map.ring().owned_tokens(3);
    // Weights 1:2:1 of 2^64, to within one token.
    for (got, want) in owned.iter().zip([1u128 << 62, 1 << 63, 1 << 62]) {
        assert!(got.abs_diff(want) <= 1, "{owned:?}");
    }
    let f = map_file(&yaml);
    let out = Command::new(BIN)
        .args(["check", "--map", f.path().to_str().unwrap()])
        .env("PW", "x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for bad in [
        vec!["map", "init", "--shard", "a=postgres://u:s3cret@h/db"],
        vec![
            "map",
            "init",
            "--shard",
            "a=postgres://h/db",
            "--weight",
            "a=0",
        ],
        vec![
            "map",
            "init",
            "--shard",
            "a=postgres://h/db",
            "--weight",
            "zz=2",
        ],
        vec!["map", "init", "--shard", "nourl"],
        vec![
            "map",
            "init",
            "--shard",
            "a=postgres://h/db",
            "--shard",
            "a=postgres://h2/db",
        ],
        vec!["map", "init"],
    ] {
        let out = postshard(&bad, "");
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{bad:?}");
        assert!(
            !stderr.contains("s3cret"),
            "{bad:?} leaked the password: {stderr}"
        );
    }
}
