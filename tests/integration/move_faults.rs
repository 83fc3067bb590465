//! `postshard apply` killed with SIGKILL at every journaled step, in both
//! modes: `resume` completes and `verify` passes; before the flip, `abort`
//! restores the original state (rows, fences, catalogs); after it, abort is
//! refused. Nothing of the online mode's capture is left either way.

use std::os::unix::process::ExitStatusExt;

use postshard_rebalancer::migrate::{steps, Mode};
use postshard_rebalancer::plan::Plan;

use crate::common::runtime;
use crate::move_support::{plan_file, text, Forum};

/// What the postshard schema holds when no move runs; no temporary tables.
const ONLY_FENCE: &str = "fence,fence_pkey";

/// The failpoint spec of a step (`fenced@0`, `flipped`, …).
fn spec(step: &postshard_rebalancer::migrate::StepId) -> String {
    match step.move_index {
        Some(i) => format!("{}@{i}", step.phase),
        None => step.phase.to_string(),
    }
}

/// Runs `apply` with the failpoint and asserts it died by SIGKILL there.
fn apply_killed(forum: &Forum, plan: &Plan, mode: Mode, failpoint: &str) {
    let file = plan_file(plan);
    let out = forum.postshard(
        &[
            "apply",
            file.path().to_str().unwrap(),
            "--mode",
            mode.as_str(),
        ],
        &[("POSTSHARD_FAILPOINT", failpoint)],
    );
    assert_eq!(
        out.status.signal(),
        Some(9),
        "apply with failpoint {failpoint} was not killed: {}",
        text(&out)
    );
}

fn active_migration(forum: &Forum) -> String {
    let out = forum.postshard(&["status", "--json"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let active: Vec<&serde_json::Value> = status["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["state"] == "active")
        .collect();
    assert_eq!(active.len(), 1, "{status}");
    active[0]["id"].to_string()
}

fn succeeds(forum: &Forum, args: &[&str]) -> String {
    let out = forum.postshard(args, &[]);
    assert!(out.status.success(), "{args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn apply_killed_at_each_step_resumes_and_aborts_cleanly() {
    killed_at_each_step(Mode::Blocking);
}

#[test]
fn online_apply_killed_at_each_step_resumes_and_aborts_cleanly() {
    killed_at_each_step(Mode::Online);
}

fn killed_at_each_step(mode: Mode) {
    let forum = Forum::start(600);
    let rt = runtime();
    rt.block_on(async {
        let original = forum.rows().await;
        let original_fences = forum.fences().await;
        assert_eq!(original_fences.len(), 2, "{original_fences:?}");
        let first = forum.add_plan().await;
        assert!(first.moves.len() >= 2, "{}", first.to_yaml());
        let all = steps(mode, u32::try_from(first.moves.len()).unwrap());
        let flip_at = all
            .iter()
            .position(|s| s.phase.as_str() == "flipped")
            .unwrap();
        let mut cases: Vec<(String, bool)> = all
            .iter()
            .enumerate()
            .map(|(i, s)| (spec(s), i <= flip_at))
            .collect();
        // Also once after a step's work, before the next step is journaled.
        cases.push(("copied@0:after".into(), true));
        cases.push(("flipped:after".into(), false));
        if mode == Mode::Online {
            cases.push(("capturing@1:after".into(), true));
            cases.push(("caught_up@1:after".into(), true));
        }
        for (failpoint, before_flip) in cases {
            eprintln!("failpoint {failpoint}");
            let epoch = forum.live().await.version();
            if before_flip {
                let plan = forum.add_plan().await;
                apply_killed(&forum, &plan, mode, &failpoint);
                let id = active_migration(&forum);
                if mode == Mode::Online && failpoint == "fenced@1" {
                    // The first `fenced` step raised every move's fence.
                    let live = forum.live().await;
                    for m in &plan.moves {
                        let source = live.shard_index(&m.source).unwrap();
                        let server = forum.server_of(&live, source);
                        assert!(
                            forum.fenced_covers(server, m.from, m.to).await,
                            "move {m:?} not fenced at {failpoint}"
                        );
                    }
                }
                if failpoint == "verified@1" {
                    // An abort killed midway is finished by resume.
                    let out =
                        forum.postshard(&["abort", &id], &[("POSTSHARD_FAILPOINT", "aborted")]);
                    assert_eq!(out.status.signal(), Some(9), "{}", text(&out));
                    succeeds(&forum, &["resume"]);
                } else {
                    succeeds(&forum, &["abort", &id]);
                }
                // Everything as it was: rows where they were, fences down,
                // ownership unchanged, nothing else in the postshard schema.
                assert_eq!(forum.rows().await, original, "after abort at {failpoint}");
                let fences = forum.fences().await;
                assert_eq!(fences.len(), 2, "{fences:?}");
                for (server, fence_epoch, owned, fenced, relations) in &fences {
                    assert_eq!(fenced, "{}", "server {server} after abort at {failpoint}");
                    assert_eq!(relations, ONLY_FENCE, "server {server}: no other objects");
                    let before = original_fences.iter().find(|f| f.0 == *server);
                    let before = before.expect("the added server keeps no fence after abort");
                    assert_eq!(owned, &before.2, "server {server}");
                    assert!(*fence_epoch <= epoch as i64);
                }
                assert_eq!(forum.live().await.version(), epoch);
                assert_eq!(
                    forum.leftovers().await,
                    Vec::<String>::new(),
                    "after abort at {failpoint}"
                );
                let out = forum.postshard(&["abort", &id], &[]);
                assert_eq!(out.status.code(), Some(2), "abort twice: {}", text(&out));
            }
            let plan = forum.add_plan().await;
            apply_killed(&forum, &plan, mode, &failpoint);
            let id = active_migration(&forum);
            if !before_flip {
                let out = forum.postshard(&["abort", &id], &[]);
                assert_eq!(out.status.code(), Some(2), "{}", text(&out));
                assert!(
                    String::from_utf8_lossy(&out.stderr).contains("already flipped"),
                    "{}",
                    text(&out)
                );
            }
            succeeds(&forum, &["resume"]);
            let live = forum.live().await;
            assert_eq!(live.version(), epoch + 1);
            assert_eq!(
                live.to_yaml(),
                plan.apply(&forum.live_at(epoch).await).unwrap().to_yaml()
            );
            succeeds(&forum, &["verify"]);
            let rows = forum.rows().await;
            forum.assert_placed(&live, &rows);
            assert_eq!(
                rows.content(),
                original.content(),
                "after resume at {failpoint}"
            );
            for (server, _, _, fenced, relations) in forum.fences().await {
                assert_eq!(fenced, "{}", "server {server} after resume at {failpoint}");
                assert_eq!(relations, ONLY_FENCE);
            }
            assert_eq!(
                forum.leftovers().await,
                Vec::<String>::new(),
                "after resume at {failpoint}"
            );
            // Back to two shards for the next case.
            let back = plan_file(&plan.reverse());
            succeeds(
                &forum,
                &[
                    "apply",
                    back.path().to_str().unwrap(),
                    "--mode",
                    mode.as_str(),
                ],
            );
            let rows = forum.rows().await;
            assert_eq!(rows, original, "after moving back from {failpoint}");
        }
    });
}
