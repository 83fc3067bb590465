//! Files and pipes as users have them, through the built binary: outputs
//! written through symlinks, FIFOs and devices; stdout closed early in every
//! command that prints; `route` stdin with a BOM, CRLF and invisible
//! characters.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::cli_map::{postshard, postshard_bytes};

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
ring:
  - { from: -9223372036854775808, shard: s0 }
  - { from: 0, shard: s1 }
";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Creates a FIFO at `path` with mkfifo(1).
fn mkfifo(path: &Path) {
    let ok = Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("run mkfifo")
        .success();
    assert!(ok, "mkfifo {}", path.display());
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// An output the CLI writes: how to ask for it, and a line it must contain.
struct Writer {
    what: &'static str,
    args: fn(&Path, &Path) -> Vec<String>,
    contains: &'static str,
}

/// Every kind of file the CLI writes, each given `out` (and the map).
const WRITERS: [Writer; 3] = [
    Writer {
        what: "plan --out",
        args: |map, out| {
            strings(&["plan", "add-shard", "s2=postgres://app@db2/forum", "--map"])
                .into_iter()
                .chain([arg(map), "--out".into(), arg(out)])
                .collect()
        },
        contains: "base_version: 3",
    },
    Writer {
        what: "plan --emit-map",
        args: |map, out| {
            strings(&["plan", "reweight", "s0=3", "--map"])
                .into_iter()
                .chain([arg(map), "--emit-map".into(), arg(out)])
                .collect()
        },
        contains: "version: 4",
    },
    Writer {
        what: "skew simulate --plot",
        args: |_, out| {
            strings(&[
                "skew", "simulate", "--shards", "2", "--keys", "100", "--plot",
            ])
            .into_iter()
            .chain([arg(out)])
            .collect()
        },
        contains: "<svg ",
    },
];

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

fn arg(p: &Path) -> String {
    p.to_str().expect("UTF-8 path").to_string()
}

fn run(args: &[String]) -> Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    postshard(&args, "")
}

/// Temporary files are named `.NAME.PID.N.tmp`: none may be left behind.
fn assert_no_temp_files(dir: &Path) {
    let left: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(
        left.is_empty(),
        "left behind in {}: {left:?}",
        dir.display()
    );
}

#[test]
fn outputs_follow_symlinks_and_write_through_fifos_and_devices() {
    for w in &WRITERS {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        let map = d.join("shardmap.yaml");
        std::fs::write(&map, MAP).expect("map");
        let what = w.what;
        let check = |out: &Output, case: &str| {
            assert_eq!(
                out.status.code(),
                Some(0),
                "{what}, {case}: {}",
                text(&out.stderr)
            );
        };
        let content = |p: &Path| std::fs::read_to_string(p).expect("read output");

        // A regular file is replaced, keeping its permissions.
        let plain = d.join("plain.out");
        std::fs::write(&plain, "old").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o640)).unwrap();
        check(&run(&(w.args)(&map, &plain)), "regular file");
        assert!(content(&plain).contains(w.contains), "{what}");
        let mode = std::fs::metadata(&plain).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640, "{what}: permissions kept");

        // Symlinks (relative, absolute, chained, into another directory):
        // the target gets the content, the links stay links.
        let sub = d.join("sub");
        std::fs::create_dir(&sub).unwrap();
        let target = sub.join("target.out");
        std::fs::write(&target, "old").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        let rel = d.join("rel.link");
        std::os::unix::fs::symlink("sub/target.out", &rel).unwrap();
        let chain = d.join("chain.link");
        std::os::unix::fs::symlink(&rel, &chain).unwrap();
        for link in [&rel, &chain] {
            std::fs::write(&target, "old").unwrap();
            check(&run(&(w.args)(&map, link)), "symlink");
            assert!(
                std::fs::symlink_metadata(link)
                    .unwrap()
                    .file_type()
                    .is_symlink(),
                "{what}: {} is no longer a symlink",
                link.display()
            );
            assert!(content(&target).contains(w.contains), "{what}");
            let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, 0o600, "{what}: target permissions kept");
        }
        assert_eq!(
            std::fs::read_link(&rel).unwrap(),
            Path::new("sub/target.out")
        );
        assert_no_temp_files(d);
        assert_no_temp_files(&sub);

        // A dangling symlink: its target is created, the link kept.
        let dangling = d.join("dangling.link");
        let missing = sub.join("new.out");
        std::os::unix::fs::symlink(&missing, &dangling).unwrap();
        check(&run(&(w.args)(&map, &dangling)), "dangling symlink");
        assert!(std::fs::symlink_metadata(&dangling)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(content(&missing).contains(w.contains), "{what}");

        // A FIFO is written through: a reader gets the content, and the FIFO
        // is still a FIFO afterwards.
        let fifo = d.join("out.fifo");
        mkfifo(&fifo);
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || {
                let mut got = String::new();
                std::fs::File::open(&fifo)
                    .expect("open FIFO")
                    .read_to_string(&mut got)
                    .expect("read FIFO");
                got
            })
        };
        check(&run(&(w.args)(&map, &fifo)), "FIFO");
        let got = reader.join().expect("FIFO reader");
        assert!(got.contains(w.contains), "{what}: FIFO got {got:?}");
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
        assert_no_temp_files(d);

        // A character device is written through: as root, /dev/null stays
        // the device (today's bug replaced it with a regular file).
        if is_root() {
            check(&run(&(w.args)(&map, Path::new("/dev/null"))), "/dev/null");
            let meta = std::fs::metadata("/dev/null").unwrap();
            assert!(
                meta.file_type().is_char_device(),
                "{what}: /dev/null replaced"
            );
            assert_no_temp_files(Path::new("/dev"));
        }

        // A symlink loop is refused (exit 1), naming the link.
        let looped = d.join("loop.link");
        std::os::unix::fs::symlink("loop.link", &looped).unwrap();
        let out = run(&(w.args)(&map, &looped));
        assert_eq!(out.status.code(), Some(1), "{what}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("loop.link"),
            "{}",
            text(&out.stderr)
        );

        // A directory is refused (exit 1), naming it.
        let out = run(&(w.args)(&map, &sub));
        assert_eq!(out.status.code(), Some(1), "{what}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains("sub"), "{}", text(&out.stderr));
    }
}

#[test]
fn plan_writes_both_files_through_links_or_neither() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let map = d.join("shardmap.yaml");
    std::fs::write(&map, MAP).unwrap();
    let plan_target = d.join("plan-target.yaml");
    let plan_link = d.join("plan.yaml");
    std::os::unix::fs::symlink("plan-target.yaml", &plan_link).unwrap();
    std::fs::write(&plan_target, "old plan").unwrap();
    // The map goes into a directory that does not exist: nothing changes.
    let bad = d.join("missing/next.yaml");
    let args = |emit: &Path| {
        strings(&["plan", "reweight", "s0=3", "--map"])
            .into_iter()
            .chain([
                arg(&map),
                "--out".into(),
                arg(&plan_link),
                "--emit-map".into(),
                arg(emit),
            ])
            .collect::<Vec<_>>()
    };
    let out = run(&args(&bad));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(&plan_target).unwrap(), "old plan");
    assert!(std::fs::symlink_metadata(&plan_link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_no_temp_files(d);
    let next = d.join("next.yaml");
    let out = run(&args(&next));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(std::fs::read_to_string(&plan_target)
        .unwrap()
        .contains("base_version: 3"));
    assert!(std::fs::read_to_string(&next)
        .unwrap()
        .contains("version: 4"));
}

#[test]
fn a_plan_with_no_moves_says_so_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let map = d.join("shardmap.yaml");
    std::fs::write(&map, MAP).unwrap();
    let (plan, next) = (d.join("plan.yaml"), d.join("next.yaml"));
    let out = run(&strings(&[
        "plan",
        "reweight",
        "s0=1",
        "--map",
        &arg(&map),
        "--out",
        &arg(&plan),
        "--emit-map",
        &arg(&next),
    ]));
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        stdout.contains("nothing to move: the map stays at version 3"),
        "{stdout}"
    );
    assert!(!plan.exists() && !next.exists());
    // Without --out the plan would go to stdout: it stays empty.
    let out = run(&strings(&["plan", "reweight", "s0=1", "--map", &arg(&map)]));
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("nothing to move"));
    // No `-0.0000%` in any summary.
    for args in [
        vec!["plan", "reweight", "s0=1"],
        vec!["plan", "reweight", "s1=5"],
        vec!["plan", "add-shard", "s2=postgres://app@db2/forum"],
        vec!["plan", "remove-shard", "s1"],
    ] {
        let mut args = strings(&args);
        args.extend(["--map".into(), arg(&map)]);
        let out = run(&args);
        let all = text(&out.stdout) + &text(&out.stderr);
        assert!(!all.contains("-0.0"), "{args:?}: {all}");
    }
}

/// A map with `arcs` arcs, so that `check` prints well over a pipe's buffer.
fn big_map(arcs: i64) -> String {
    let step = (u64::MAX / arcs as u64) as i64;
    let mut map = MAP.split("ring:").next().unwrap_or_default().to_string();
    map.push_str("ring:\n");
    for i in 0..arcs {
        let from = i64::MIN.wrapping_add(step.wrapping_mul(i));
        map.push_str(&format!("  - {{ from: {from}, shard: s{} }}\n", i % 2));
    }
    map
}

/// Runs `args` with stdout a pipe whose reader reads `lines` lines, then
/// closes it; returns the exit code and stderr.
pub fn closed_early(
    args: &[String],
    cwd: &Path,
    lines: usize,
    stdin: &[u8],
) -> (Option<i32>, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run postshard");
    let stdout = child.stdout.take().expect("stdout");
    let mut input = child.stdin.take().expect("stdin");
    let stdin = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = std::io::Write::write_all(&mut input, &stdin);
    });
    let mut reader = BufReader::new(stdout);
    for _ in 0..lines {
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
    }
    drop(reader);
    let out = child.wait_with_output().expect("wait");
    feeder.join().expect("feeder");
    (out.status.code(), text(&out.stderr))
}

#[test]
fn a_closed_stdout_ends_every_command_quietly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    std::fs::write(d.join("shardmap.yaml"), MAP).unwrap();
    std::fs::write(d.join("big.yaml"), big_map(5_000)).unwrap();
    let ids: String = (0..300_000).map(|i| format!("{i}\n")).collect();
    let cases: Vec<(Vec<&str>, &[u8])> = vec![
        (vec!["check", "--map", "big.yaml"], b""),
        (vec!["check"], b""),
        (vec!["route", "1", "2", "3"], b""),
        (vec!["route"], ids.as_bytes()),
        (vec!["route", "--json"], ids.as_bytes()),
        (
            vec![
                "map",
                "init",
                "--shard",
                "a=postgres://h/db",
                "--shard",
                "b=postgres://h/db2",
            ],
            b"",
        ),
        (
            vec!["plan", "add-shard", "s2=postgres://app@db2/forum"],
            b"",
        ),
        (
            vec![
                "plan",
                "add-shard",
                "s2=postgres://app@db2/forum",
                "--out",
                "p.yaml",
            ],
            b"",
        ),
        (vec!["plan", "reweight", "s0=1"], b""),
        (
            vec!["skew", "simulate", "--shards", "4", "--keys", "1000"],
            b"",
        ),
        (
            vec![
                "skew", "simulate", "--shards", "4", "--keys", "1000", "--json",
            ],
            b"",
        ),
        (
            vec![
                "skew",
                "simulate",
                "--shards",
                "4",
                "--strategy",
                "all",
                "--keys",
                "1000",
            ],
            b"",
        ),
        (vec!["--help"], b""),
        (vec!["--version"], b""),
        (vec!["plan", "--help"], b""),
        (vec!["skew", "--help"], b""),
    ];
    for (args, stdin) in &cases {
        let args = strings(args);
        for lines in [0, 1] {
            let (code, stderr) = closed_early(&args, d, lines, stdin);
            assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
            assert!(
                !stderr.to_lowercase().contains("broken pipe"),
                "{args:?}: {stderr}"
            );
            assert_eq!(code, Some(0), "{args:?} after {lines} lines: {stderr}");
        }
    }
    // A closed stderr loses the message but neither panics nor changes the
    // exit code.
    let out = Command::new(BIN)
        .args(["check", "--map", "missing.yaml"])
        .current_dir(d)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            drop(child.stderr.take());
            child.wait_with_output()
        })
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn route_stdin_with_a_bom_crlf_and_invisible_characters() {
    let dir = tempfile::tempdir().expect("temp dir");
    let map = dir.path().join("shardmap.yaml");
    std::fs::write(&map, MAP).unwrap();
    let map = arg(&map);
    // Tokens from PostgreSQL: hashint8extended(42, 0) and (1, 0).
    let routed = "42\t8010225493015854792\ts1\n1\t-3670598878359251130\ts0\n";
    let good: [(&str, &[u8]); 4] = [
        ("BOM", b"\xEF\xBB\xBF42\n1\n"),
        ("BOM and CRLF", b"\xEF\xBB\xBF42\r\n1\r\n"),
        ("CRLF without a final line end", b"42\r\n1"),
        ("spaces around", b"  42 \r\n\t1\n"),
    ];
    for (case, input) in good {
        let out = postshard_bytes(&["route", "--map", &map], input);
        assert_eq!(out.status.code(), Some(0), "{case}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), routed, "{case}");
    }
    let bad: [(&str, &[u8], &str); 7] = [
        (
            "no-break space",
            b"1\n2\n12\xC2\xA03\n",
            "stdin:3: `12\\u{a0}3`",
        ),
        (
            "zero-width space",
            b"1\n\xE2\x80\x8B7\n",
            "stdin:2: `\\u{200b}7`",
        ),
        (
            "BOM on line 2",
            b"1\n\xEF\xBB\xBF2\n",
            "stdin:2: `\\u{feff}2`",
        ),
        (
            "two BOMs",
            b"\xEF\xBB\xBF\xEF\xBB\xBF1\n",
            "stdin:1: `\\u{feff}1`",
        ),
        ("lone CR inside", b"4\r2\n", "stdin:1: `4\\r2`"),
        ("NUL byte", b"7\x00\n", "stdin:1: `7\\0`"),
        (
            "not UTF-8",
            b"1\n\xff\xfe9\n",
            "stdin:2: not valid UTF-8: `\\xff\\xfe9`",
        ),
    ];
    for (case, input, want) in bad {
        let out = postshard_bytes(&["route", "--map", &map], input);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{case}: {stderr}");
        assert!(stderr.contains(want), "{case}: want {want:?} in {stderr}");
        assert!(!stderr.contains("panicked"), "{case}: {stderr}");
    }
}
