//! Map, plan and load files as editors and other tools write them, through
//! the built binary: BOM, CRLF, tabs, numbers beyond 64 bits, duplicate keys,
//! alias bombs; and YAML we write read back by a YAML 1.1 reader (PyYAML).

use std::io::Write;
use std::process::{Command, Stdio};

use postshard_rebalancer::plan::Plan;

use super::cli_map::{map_file, postshard};

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
    weight: 1
ring:
  - { from: -9223372036854775808, shard: s0 }
  - { from: 0, shard: s1 }
";

const BIG: &str = "99999999999999999999999999999999999999999999";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `MAP` with a BOM, CRLF line ends, tabs after colons and/or a comment
/// first, as `(what, bytes)`.
fn styles(map: &str) -> Vec<(&'static str, String)> {
    let crlf = |s: &str| s.replace('\n', "\r\n");
    let tabs = |s: &str| s.replace(": ", ":\t");
    vec![
        ("plain", map.to_string()),
        ("bom", format!("\u{feff}{map}")),
        ("crlf", crlf(map)),
        ("bom crlf", format!("\u{feff}{}", crlf(map))),
        ("bom comment", format!("\u{feff}# the forum\n{map}")),
        ("tabs", tabs(map)),
        (
            "bom comment crlf tabs",
            format!("\u{feff}{}", crlf(&tabs(&format!("# map\n{map}")))),
        ),
    ]
}

#[test]
fn maps_with_bom_crlf_and_tabs_check_and_keep_locations() {
    for (what, yaml) in styles(MAP) {
        let f = map_file(&yaml);
        let path = f.path().to_str().unwrap();
        let out = postshard(&["check", "--map", path], "");
        assert_eq!(out.status.code(), Some(0), "{what}: {}", text(&out.stderr));
        // One fault: the location still names s1's weight, whatever the style.
        let bad = yaml.replace("weight:", "weight: 0 #");
        let line = bad.lines().position(|l| l.contains("weight:")).unwrap() + 1;
        let f = map_file(&bad);
        let path = f.path().to_str().unwrap();
        let out = postshard(&["check", "--map", path], "");
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {stderr}");
        assert!(
            stderr.contains(&format!("{path}:{line}:13: shards[1].weight: weight `0`")),
            "{what}: {stderr}"
        );
    }
}

#[test]
fn numbers_are_quoted_as_written_and_duplicates_located() {
    // (what, replace this, with this, expected line:col, expected text)
    let cases: &[(&str, &str, &str, &str, String)] = &[
        (
            "big from",
            "from: 0,",
            &format!("from: {BIG},"),
            "15:13",
            format!("`{BIG}` is out of the 64-bit range"),
        ),
        (
            "big weight",
            "weight: 1",
            &format!("weight: {BIG}"),
            "12:13",
            format!("`{BIG}` is out of range 1..=1000000"),
        ),
        (
            "big seed",
            "seed: 0",
            &format!("seed: {BIG}"),
            "4:9",
            format!("`{BIG}` is out of the 64-bit range"),
        ),
        (
            "big version",
            "version: 3",
            &format!("version: {BIG}"),
            "1:10",
            format!("`{BIG}` is out of range 0..="),
        ),
        (
            "big pool",
            "    weight: 1",
            &format!("    pool: {{ max_size: {BIG} }}"),
            "12:23",
            format!("`{BIG}` is out of range 1..=10000"),
        ),
        (
            "u64 from",
            "from: 0,",
            "from: 18446744073709551616,",
            "15:13",
            "`18446744073709551616` is out of the 64-bit range".to_string(),
        ),
        (
            "big weight with separators",
            "weight: 1",
            "weight: 1_000_000_000_000_000_000_000",
            "12:13",
            "`1_000_000_000_000_000_000_000` is out of range 1..=1000000".to_string(),
        ),
        (
            "a name that reads as null",
            "  - name: s1",
            "  - name: null",
            "10:11",
            "shards[1].name: `null` reads as null, not a string; write \"null\"".to_string(),
        ),
        (
            "leading zero",
            "weight: 1",
            "weight: 010",
            "12:13",
            "`010` has a leading zero, which YAML 1.1 tools read as octal".to_string(),
        ),
        (
            "quoted number",
            "weight: 1",
            "weight: '5'",
            "12:13",
            "`5` is written as a string (quoted or tagged); write a plain number".to_string(),
        ),
        (
            "tagged string",
            "weight: 1",
            "weight: !!str 5",
            "12:19",
            "`5` is written as a string (quoted or tagged)".to_string(),
        ),
        (
            "zero written 00",
            "weight: 1",
            "weight: 00",
            "12:13",
            "weight `00` must be greater than 0".to_string(),
        ),
        (
            "big negative weight",
            "weight: 1",
            "weight: -99999999999999999999",
            "12:13",
            "weight `-99999999999999999999` must be greater than 0".to_string(),
        ),
        (
            "big hex from",
            "from: 0,",
            "from: 0x99999999999999999999,",
            "15:13",
            "`0x99999999999999999999` is out of the 64-bit range".to_string(),
        ),
        (
            "infinite weight",
            "weight: 1",
            "weight: .inf",
            "12:13",
            "`.inf` is not a finite number".to_string(),
        ),
        (
            "no-break space after a colon",
            "weight: 1",
            "weight:\u{a0}1",
            "12:5",
            "column 12 holds U+00A0, a space-like character YAML does not read as a space"
                .to_string(),
        ),
        (
            "duplicate key",
            "    weight: 1",
            "    weight: 1\n    weight: 2",
            "13:5",
            "shards[1].weight: duplicate key `weight`".to_string(),
        ),
        (
            "duplicate top key",
            "version: 3",
            "version: 3\nversion: 4",
            "2:1",
            "duplicate key `version`".to_string(),
        ),
    ];
    for (what, from, to, at, want) in cases {
        assert!(MAP.contains(from), "{what}");
        for (style, yaml) in styles(&MAP.replacen(from, to, 1)) {
            if style.contains("comment") {
                continue; // shifts lines; the others keep `at`
            }
            let f = map_file(&yaml);
            let path = f.path().to_str().unwrap();
            let out = postshard(&["check", "--map", path], "");
            let stderr = text(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{what} {style}: {stderr}");
            let (line, col) = at.split_once(':').unwrap();
            // A tab is one column, like a space.
            let located = format!("{path}:{line}:{col}: ");
            assert!(
                stderr
                    .lines()
                    .any(|l| l.starts_with(&located) && l.contains(want.as_str())),
                "{what} {style}: want `{located}…{want}` in\n{stderr}"
            );
            assert!(
                !stderr.contains("e44") && !stderr.contains("e+"),
                "{stderr}"
            );
        }
    }
}

#[test]
fn an_alias_bomb_is_refused_with_a_location() {
    // Each list holds ten of the one before: 10^12 items once expanded.
    let mut lists = vec!["&l0 [a, a, a, a, a, a, a, a, a, a]".to_string()];
    for i in 1..12 {
        let refs = vec![format!("*l{}", i - 1); 10].join(", ");
        lists.push(format!("&l{i} [{refs}]"));
    }
    let bomb = MAP.replace("version: 3", &format!("version: [{}]", lists.join(", ")));
    let f = map_file(&bomb);
    let path = f.path().to_str().unwrap();
    let out = postshard(&["check", "--map", path], "");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("{path}:")), "{stderr}");
    assert!(stderr.contains("budget"), "{stderr}");
}

#[test]
fn load_files_with_a_bom_and_crlf_are_read() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("shardmap.yaml"), format!("\u{feff}{MAP}")).unwrap();
    // s0 (the lower half of the ring) carries three times s1's rows, so
    // balancing has something to move and prints a plan.
    let mut buckets = vec!["3"; 512];
    buckets.extend(vec!["1"; 512]);
    let buckets = buckets.join(",\r\n ");
    let load = format!(
        "\u{feff}{{\"version\": 1, \"unit\": \"rows\", \"map_version\": 3, \"buckets\": 1024,\r\n \
         \"shards\": {{\"s0\": 1536, \"s1\": 512}},\r\n \"bucket_loads\": [{buckets}]}}\r\n"
    );
    std::fs::write(dir.path().join("rows.json"), load).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_postshard"))
        .args(["plan", "balance", "--by", "rows", "--load", "rows.json"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let plan = Plan::from_yaml_str(&text(&out.stdout)).expect("plan");
    assert_eq!(plan.base_version, 3);
    assert!(!plan.moves.is_empty(), "{}", text(&out.stdout));
}

#[test]
fn plan_files_with_a_bom_crlf_and_tabs_are_read() {
    let plan =
        "base_version: 3\nintent: reweight\nbase_shards:\n  - { name: s0, url: x, weight: 1 }\n\
                shards:\n  - { name: s0, url: x, weight: 2 }\nmoves: []\n";
    let want = Plan::from_yaml_str(plan).unwrap();
    let styled = format!(
        "\u{feff}# plan\r\n{}",
        plan.replace('\n', "\r\n").replace(": ", ":\t")
    );
    assert_eq!(Plan::from_yaml_str(&styled).unwrap(), want);
    let e =
        Plan::from_yaml_str(&styled.replace("base_version:\t3", &format!("base_version:\t{BIG}")))
            .unwrap_err()
            .to_string();
    assert!(
        e.starts_with(&format!(
            "<string>:2:15: base_version: `{BIG}` is out of range"
        )),
        "{e}"
    );
}

/// `yaml` as JSON, read by PyYAML's `safe_load` (YAML 1.1), or `None` with a
/// notice when python3 or PyYAML is missing — except under CI (`CI` set),
/// whose `.ci/run` installs PyYAML: there a missing reader fails the test.
fn pyyaml(yaml: &str) -> Option<serde_json::Value> {
    let skip = |why: &str| {
        assert!(
            std::env::var_os("CI").is_none(),
            "{why}: .ci/run should have installed PyYAML"
        );
        eprintln!("NOTICE: {why}; PyYAML round trip skipped");
    };
    let script =
        "import sys, json, yaml\njson.dump(yaml.safe_load(sys.stdin), sys.stdout, default=str)";
    let child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        skip("python3 not found");
        return None;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if text(&out.stderr).contains("No module named 'yaml'") {
        skip("PyYAML not installed");
        return None;
    }
    assert!(
        out.status.success(),
        "PyYAML: {}\n{yaml}",
        text(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).expect("PyYAML's JSON"))
}

/// Names YAML 1.1 readers take for booleans, nulls, numbers or dates.
const TRICKY: &[&str] = &[
    "no",
    "on",
    "off",
    "y",
    "n",
    "yes",
    "true",
    "False",
    "null",
    "NULL",
    "0x10",
    "1_000",
    "1e3",
    "2001-12-14",
    "012",
    "-1",
    "Y",
    "ON",
];

#[test]
fn written_maps_and_plans_read_back_identically_in_pyyaml() {
    let mut args = vec!["map".to_string(), "init".to_string()];
    for (i, name) in TRICKY.iter().enumerate() {
        args.push(format!("--shard={name}=postgres://app@db{i}:5432/forum"));
    }
    for table in ["no:on", "null:y", "true:off"] {
        args.extend(["--table".to_string(), table.to_string()]);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = postshard(&refs, "");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let yaml = text(&out.stdout);
    let Some(read) = pyyaml(&yaml) else { return };
    let names: Vec<&str> = read["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap_or("<not a string>"))
        .collect();
    assert_eq!(names, TRICKY, "{yaml}");
    assert_eq!(read["shards"][0]["url"], "postgres://app@db0:5432/forum");
    assert_eq!(read["tables"][0]["name"], "no");
    assert_eq!(read["tables"][0]["key"], "on");
    assert_eq!(read["tables"][2]["key"], "off");
    let ring = read["ring"].as_array().unwrap();
    assert_eq!(ring[0]["from"], i64::MIN);
    assert_eq!(ring[1]["shard"], "on");

    // A plan adding shard `off`, and the map after it, read back the same.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("shardmap.yaml"), MAP.replace("s1", "no")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_postshard"))
        .args([
            "plan",
            "add-shard",
            "off=postgres://app@db9/forum",
            "--out",
            "plan.yaml",
        ])
        .args(["--emit-map", "next.yaml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let plan_text = std::fs::read_to_string(dir.path().join("plan.yaml")).unwrap();
    let plan = Plan::from_yaml_str(&plan_text).unwrap();
    let read = pyyaml(&plan_text).unwrap();
    assert_eq!(read["intent"], plan.intent.as_str());
    assert_eq!(read["shards"][2]["name"], "off");
    assert_eq!(read["base_shards"][1]["name"], "no");
    for (i, m) in plan.moves.iter().enumerate() {
        assert_eq!(read["moves"][i]["source"], m.source.as_str());
        assert_eq!(read["moves"][i]["target"], "off");
        assert_eq!(read["moves"][i]["from"], m.from);
    }
    let next = std::fs::read_to_string(dir.path().join("next.yaml")).unwrap();
    let read = pyyaml(&next).unwrap();
    let names: Vec<&str> = read["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap_or("<not a string>"))
        .collect();
    assert_eq!(names, ["s0", "no", "off"], "{next}");
}

/// `text` as UTF-16LE with a byte-order mark, as PowerShell 5's `>` writes.
fn utf16le(text: &str) -> Vec<u8> {
    let mut bytes = vec![0xFF, 0xFE];
    for unit in text.encode_utf16() {
        bytes.extend(unit.to_le_bytes());
    }
    bytes
}

#[test]
fn utf16_files_are_read_and_bad_bytes_located() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_postshard"))
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    std::fs::write(
        dir.path().join("shardmap.yaml"),
        utf16le(&MAP.replace('\n', "\r\n")),
    )
    .unwrap();
    let out = run(&["check", "--map", "shardmap.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let buckets = vec!["1"; 1024].join(", ");
    let load = format!(
        "{{\"version\": 1, \"unit\": \"rows\", \"map_version\": 3, \"buckets\": 1024, \
         \"shards\": {{\"s0\": 512, \"s1\": 512}}, \"bucket_loads\": [{buckets}]}}\r\n"
    );
    std::fs::write(dir.path().join("rows.json"), utf16le(&load)).unwrap();
    let out = run(&["plan", "balance", "--by", "rows", "--load", "rows.json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // A fault in a UTF-16 map keeps its location.
    let bad = MAP.replace("weight: 1", "weight: 0");
    std::fs::write(dir.path().join("bad.yaml"), utf16le(&bad)).unwrap();
    let out = run(&["check", "--map", "bad.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("bad.yaml:12:13: shards[1].weight: weight `0`"),
        "{}",
        text(&out.stderr)
    );

    // Bytes that are not text are located, in maps and load files alike.
    let mut latin1 = MAP.replace("forum", "f\u{f6}rum").into_bytes();
    let at = latin1.iter().position(|b| *b == 0xC3).unwrap();
    latin1.splice(at..at + 2, [0xF6]);
    std::fs::write(dir.path().join("latin1.yaml"), &latin1).unwrap();
    let out = run(&["check", "--map", "latin1.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr
            .contains("latin1.yaml:9:30: the file is not valid UTF-8 text here; save it as UTF-8"),
        "{stderr}"
    );
    std::fs::write(dir.path().join("bad.json"), b"{\"version\": \xff}").unwrap();
    let out = run(&["plan", "balance", "--by", "rows", "--load", "bad.json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("bad.json:1:13: the file is not valid UTF-8"),
        "{}",
        text(&out.stderr)
    );
}
