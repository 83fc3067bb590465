//! What `apply`, `resume` and `status` print, through the built binary as
//! a script or a log sees it (stdout and stderr are pipes, not terminals):
//! `--json` lines all parse, carry a time and run through the phases in
//! order to `done`; `--quiet` prints the final line only; text has no
//! escape codes (no bars off a terminal); `status` shows a migration's
//! phase and rows copied during and after it, and `--watch` refreshes; on
//! a terminal, bars go to stderr and stdout keeps its plain lines; a
//! closed stdout silences the output but not the migration.

use std::process::{Command, Stdio};
use std::time::Duration;

use postshard_rebalancer::migrate::{steps, Mode};
use postshard_router::hashint8extended;
use serde_json::Value;

use crate::common::runtime;
use crate::move_support::{plan_file, text, Forum};

const ESC: u8 = 0x1b;

fn no_escape_codes(what: &str, bytes: &[u8]) {
    assert!(
        !bytes.contains(&ESC),
        "{what} has escape codes: {:?}",
        String::from_utf8_lossy(bytes)
    );
}

/// Every line of `stdout` as JSON.
fn json_lines(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8(stdout.to_vec())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// The status as JSON, and migration `id` in it.
fn status_of(forum: &Forum, id: i64) -> (Value, Value) {
    let out = forum.postshard(&["status", "--json"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let m = status["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == id)
        .unwrap_or_else(|| panic!("migration {id} in {status}"))
        .clone();
    (status, m)
}

/// Rows copied by a move, from status's per-table counts.
fn copied(mv: &Value) -> u64 {
    mv["copied"]
        .as_object()
        .unwrap_or_else(|| panic!("copied rows in {mv}"))
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum()
}

#[test]
fn json_quiet_text_and_status_show_a_migration() {
    let forum = Forum::start(300);
    runtime().block_on(async {
        // --json: every line an event with a time; phases in order; done last.
        let plan = forum.add_plan().await;
        let file = plan_file(&plan);
        let out = forum.postshard(&["apply", file.path().to_str().unwrap(), "--json"], &[]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(out.stderr.is_empty(), "{}", text(&out));
        let events = json_lines(&out.stdout);
        let id = events[0]["migration"].as_i64().unwrap();
        for e in &events {
            assert_eq!(e["migration"], id, "{e}");
            let time = e["time"].as_str().unwrap_or_else(|| panic!("time in {e}"));
            assert!(time.ends_with('Z') && time.len() == 24, "{time}");
            assert!(e["event"].is_string() && e.get("detail").is_some(), "{e}");
        }
        let names: Vec<&str> = events
            .iter()
            .map(|e| e["event"].as_str().unwrap())
            .collect();
        // Every step of an online move (the default mode), in order.
        let moves = u32::try_from(plan.moves.len()).unwrap();
        let mut expected = vec!["planned".to_string()];
        expected.extend(
            steps(Mode::Online, moves)
                .iter()
                .map(|s| s.phase.to_string()),
        );
        expected.push("done".into());
        let mut at = 0;
        for phase in &expected {
            let found = names[at..]
                .iter()
                .position(|n| n == phase)
                .unwrap_or_else(|| panic!("{phase} after {:?} in {names:?}", names.get(at)));
            at += found + 1;
        }
        // Backfill progress between `copied` and `copied_rows` of move 0:
        // rows of the move that only grow, the last one all of them.
        let of_move_0 = |name: &str| {
            events
                .iter()
                .position(|e| e["event"] == name && e["move_index"] == 0)
                .unwrap_or_else(|| panic!("{name} of move 0 in {names:?}"))
        };
        let (start, end) = (of_move_0("copied"), of_move_0("copied_rows"));
        let rows: Vec<u64> = events[start..end]
            .iter()
            .filter(|e| e["event"] == "progress" && e["move_index"] == 0)
            .map(|e| e["detail"]["rows"].as_u64().unwrap())
            .collect();
        assert!(!rows.is_empty(), "no progress in {names:?}");
        assert!(rows.windows(2).all(|w| w[0] <= w[1]), "{rows:?}");
        let committed: u64 = events[end]["detail"]
            .as_object()
            .unwrap()
            .values()
            .map(|n| n.as_u64().unwrap())
            .sum();
        assert_eq!(rows.last(), Some(&committed), "{rows:?}");
        assert_eq!(names.last(), Some(&"done"), "{names:?}");
        // Status after: done, every move cleaned, its rows counted as moved.
        let live = forum.live().await;
        let (status, m) = status_of(&forum, id);
        assert_eq!(status["epoch"], live.version(), "{status}");
        assert_eq!(m["state"], "done", "{m}");
        let rows = forum.rows().await;
        let on_new = rows.posts.iter().filter(|(s, _)| *s == 2).count()
            + rows.comments.iter().filter(|(s, _)| *s == 2).count();
        let moves = m["moves"].as_array().unwrap();
        assert!(moves.iter().all(|mv| mv["phase"] == "cleaned"), "{m}");
        assert_eq!(moves.iter().map(copied).sum::<u64>(), on_new as u64, "{m}");
        assert!(on_new > 0);

        // --quiet, killed mid-move: nothing at all on stdout.
        let back = plan_file(&plan.reverse());
        let back_arg = back.path().to_str().unwrap();
        let out = forum.postshard(
            &["apply", back_arg, "--quiet"],
            &[("POSTSHARD_FAILPOINT", "verified@0")],
        );
        assert!(!out.status.success(), "{}", text(&out));
        assert!(out.stdout.is_empty(), "{}", text(&out));
        // Status during the move: active, the move verified with its rows.
        let (_, m) = status_of(&forum, id + 1);
        assert_eq!(m["state"], "active", "{m}");
        assert_eq!(m["phase"], "prepared", "{m}");
        let first = &m["moves"][0];
        assert_eq!(first["phase"], "verified", "{m}");
        let during = copied(first);
        assert!(during > 0, "{m}");
        let out = forum.postshard(&["status"], &[]);
        assert!(out.status.success(), "{}", text(&out));
        let shown = String::from_utf8(out.stdout).unwrap();
        let heading = format!(
            "migration {} (active, online, from epoch {}): prepared",
            id + 1,
            live.version()
        );
        assert!(shown.contains(&heading), "{shown}");
        let move_line = shown
            .lines()
            .skip_while(|l| !l.contains(&heading))
            .find(|l| l.trim_start().starts_with("move 0 "))
            .unwrap_or_else(|| panic!("move 0 of migration {} in {shown}", id + 1));
        assert!(
            move_line.contains(": verified, ")
                && move_line.contains(&format!("{during} rows copied")),
            "{move_line}"
        );

        // Text off a terminal: plain lines, no bars, no escape codes.
        let out = forum.postshard(&["resume"], &[]);
        assert!(out.status.success(), "{}", text(&out));
        no_escape_codes("stdout", &out.stdout);
        no_escape_codes("stderr", &out.stderr);
        assert!(out.stderr.is_empty(), "{}", text(&out));
        let shown = String::from_utf8(out.stdout).unwrap();
        let prefix = format!("migration {}: ", id + 1);
        assert!(shown.lines().all(|l| l.starts_with(&prefix)), "{shown}");
        assert!(
            shown.contains(&format!("{prefix}flipped epoch=")),
            "{shown}"
        );
        assert_eq!(
            shown.lines().last(),
            Some(format!("{prefix}finished").as_str()),
            "{shown}"
        );

        // --quiet to the end: the final line only (both moves backfilled at
        // once, paced); a pace of 0 is refused first.
        let again_plan = forum.add_plan().await;
        let again = plan_file(&again_plan);
        let again_arg = again.path().to_str().unwrap();
        for bad in [["--parallel", "0"], ["--max-rows-per-sec", "0"]] {
            let out = forum.postshard(&["apply", again_arg, bad[0], bad[1]], &[]);
            assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", text(&out));
            assert!(out.stdout.is_empty(), "{}", text(&out));
        }
        let out = forum.postshard(
            &[
                "apply",
                again_arg,
                "--quiet",
                "--parallel",
                "2",
                "--max-rows-per-sec",
                "100000",
            ],
            &[],
        );
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("migration {}: done\n", id + 2),
            "{}",
            text(&out)
        );
        assert!(out.stderr.is_empty(), "{}", text(&out));

        // On a terminal (a pty from util-linux `script`): bars on stderr,
        // stdout (a file here) still plain lines.
        let back = plan_file(&again_plan.reverse());
        let back_arg = back.path().to_str().unwrap();
        let lines = tempfile::NamedTempFile::new().unwrap();
        let command = format!(
            "{} apply {back_arg} --map {} > {}",
            env!("CARGO_BIN_EXE_postshard"),
            forum.map_path(),
            lines.path().display()
        );
        let out = Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .env("TERM", "xterm-256color")
            .env_remove("POSTSHARD_FAILPOINT")
            .stdin(Stdio::null())
            .output()
            .expect("util-linux `script` runs a command on a pseudo-terminal");
        assert!(out.status.success(), "{}", text(&out));
        let terminal = String::from_utf8_lossy(&out.stdout);
        assert!(
            terminal.contains("move 0") && out.stdout.contains(&ESC),
            "no bar drawn on the terminal: {terminal:?}"
        );
        let stdout = std::fs::read(lines.path()).unwrap();
        no_escape_codes("stdout beside the bars", &stdout);
        let stdout = String::from_utf8(stdout).unwrap();
        assert_eq!(
            stdout.lines().last(),
            Some(format!("migration {}: done", id + 3).as_str()),
            "{stdout}"
        );
        assert!(stdout.contains(": move 0: fenced"), "{stdout}");

        // A reader that goes away (`| head -0`) silences the output, not
        // the migration: it finishes, exit 0, nothing on stderr.
        let add = plan_file(&forum.add_plan().await);
        let mut child = Command::new(env!("CARGO_BIN_EXE_postshard"))
            .args(["apply", add.path().to_str().unwrap(), "--json"])
            .args(["--map", forum.map_path()])
            .env_remove("POSTSHARD_FAILPOINT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        assert!(out.stderr.is_empty(), "{}", text(&out));
        let (_, m) = status_of(&forum, id + 4);
        assert_eq!(m["state"], "done", "{m}");

        // --json and --quiet together is a usage error.
        let out = forum.postshard(
            &["apply", file.path().to_str().unwrap(), "--json", "-q"],
            &[],
        );
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(out.stdout.is_empty(), "{}", text(&out));
    });

    // status --watch refreshes until stopped; one JSON object per line.
    let mut watch = Command::new(env!("CARGO_BIN_EXE_postshard"))
        .args([
            "status",
            "--watch",
            "1",
            "--json",
            "--map",
            forum.map_path(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    watch.kill().unwrap();
    let out = watch.wait_with_output().unwrap();
    let refreshes = json_lines(&out.stdout);
    assert!(refreshes.len() >= 2, "{}", text(&out));
    for r in &refreshes {
        assert!(r["time"].is_string() && r["epoch"].is_u64(), "{r}");
        assert_eq!(r["migrations"].as_array().unwrap().len(), 5, "{r}");
    }
}

/// `status` in another terminal shows a running backfill's progress as
/// `apply` records it: rows of the estimate growing, rows/s and ETA; and
/// nothing once the migration ended.
#[test]
fn status_from_another_terminal_shows_a_running_backfills_progress() {
    let forum = Forum::start(600);
    let rt = runtime();
    rt.block_on(async {
        let mut plan = forum.add_plan().await;
        // Each move's rows, as `plan` estimates them from live counts.
        let (rows, seed) = (forum.rows().await, forum.live().await.seed());
        let keys = rows.posts.iter().map(|(_, p)| p.id);
        let keys: Vec<i64> = keys
            .chain(rows.comments.iter().map(|(_, c)| c.post_id))
            .collect();
        for m in &mut plan.moves {
            let inside = |k: &&i64| {
                let token = i128::from(hashint8extended(**k, seed));
                i128::from(m.from) <= token && token < m.to
            };
            m.rows = Some(keys.iter().filter(inside).count() as u64);
        }
        let file = plan_file(&plan);
        // Throttled so each move's backfill lasts several seconds (records
        // come once a second; a loaded machine polls status slowly); text
        // off a terminal (plain progress lines).
        let child = Command::new(env!("CARGO_BIN_EXE_postshard"))
            .args([
                "apply",
                file.path().to_str().unwrap(),
                "--max-rows-per-sec",
                "60",
                "--map",
                forum.map_path(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        let mut seen: Vec<Value> = Vec::new();
        let mut line = None;
        while seen.len() < 2 {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no progress in status: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
            let out = forum.postshard(&["status", "--json"], &[]);
            assert!(out.status.success(), "{}", text(&out));
            let status: Value = serde_json::from_slice(&out.stdout).unwrap();
            let Some(m) = status["migrations"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["state"] == "active")
            else {
                continue;
            };
            let copying =
                m["moves"].as_array().unwrap().iter().find(|mv| {
                    mv["phase"] == "copied" && mv["progress"]["rows_per_sec"].is_number()
                });
            if let Some(mv) = copying {
                let p = &mv["progress"];
                if seen.last().is_none_or(|last| last["rows"] != p["rows"]) {
                    seen.push(p.clone());
                }
                if line.is_none() {
                    let out = forum.postshard(&["status"], &[]);
                    line = String::from_utf8(out.stdout)
                        .unwrap()
                        .lines()
                        .find(|l| l.contains(": copied, progress: "))
                        .map(str::to_string);
                }
            }
        }
        let (first, last) = (&seen[0], &seen[1]);
        assert!(last["rows"].as_u64() > first["rows"].as_u64(), "{seen:?}");
        for p in &seen {
            let (rows, estimate) = (p["rows"].as_u64().unwrap(), p["estimate"].as_u64().unwrap());
            assert!(0 < estimate && rows <= estimate, "{p}");
            let rate = p["rows_per_sec"].as_f64().unwrap();
            // Paced to 60 rows/s (the rate is measured, so give it room).
            assert!(rate > 0.0 && rate < 400.0, "{p}");
            assert!(p["eta_s"].as_f64().unwrap() >= 0.0, "{p}");
            assert!(p["age_ms"].as_i64().unwrap() >= 0, "{p}");
        }
        let line = line.expect("a text status line with the progress");
        assert!(
            line.contains(" rows (") && line.contains(" rows/s, ETA "),
            "{line}"
        );

        let out = tokio::task::block_in_place(|| child.wait_with_output()).unwrap();
        assert!(out.status.success(), "{}", text(&out));
        // The plain progress line says what the move is doing: the journal's
        // `copied` is written before the copy starts.
        let shown = String::from_utf8(out.stdout).unwrap();
        assert!(
            shown
                .lines()
                .any(|l| l.contains(": copying ") && l.contains(" rows")),
            "{shown}"
        );
        assert!(!shown.contains("copied 0 rows"), "{shown}");
        let out = forum.postshard(&["status", "--json"], &[]);
        let status: Value = serde_json::from_slice(&out.stdout).unwrap();
        for m in status["migrations"].as_array().unwrap() {
            assert_eq!(m["state"], "done", "{m}");
            for mv in m["moves"].as_array().unwrap() {
                assert!(mv["progress"].is_null(), "{mv}");
            }
        }
    });
}

/// Rows a copy moved are journaled with its step once it is done, so a
/// process killed later (here right after the next move's capture was
/// journaled) leaves them for `status`, and the resumed run reports them.
#[test]
fn rows_copied_before_a_kill_stay_in_status_through_resume() {
    let forum = Forum::start(300);
    runtime().block_on(async {
        let plan = forum.add_plan().await;
        assert!(plan.moves.len() >= 2, "{}", plan.to_yaml());
        let file = plan_file(&plan);
        let out = forum.postshard(
            &["apply", file.path().to_str().unwrap(), "--quiet"],
            &[("POSTSHARD_FAILPOINT", "capturing@1")],
        );
        assert!(!out.status.success(), "{}", text(&out));
        let out = forum.postshard(&["status", "--json"], &[]);
        let status: Value = serde_json::from_slice(&out.stdout).unwrap();
        let id = status["migrations"][0]["id"].as_i64().unwrap();
        let (_, m) = status_of(&forum, id);
        let before = copied(&m["moves"][0]);
        assert!(before > 0, "{m}");
        assert!(m["moves"][1]["copied"].is_null(), "{m}");

        let out = forum.postshard(&["resume", "--quiet"], &[]);
        assert!(out.status.success(), "{}", text(&out));
        let (_, m) = status_of(&forum, id);
        assert_eq!(m["state"], "done", "{m}");
        assert_eq!(copied(&m["moves"][0]), before, "{m}");
        for mv in m["moves"].as_array().unwrap() {
            assert!(!mv["copied"].is_null(), "{m}");
        }
    });
}
