//! `postshard apply` refuses bad input with a clear error, having changed
//! nothing: no control store, a stale epoch, an unknown shard, an
//! unreachable target, a second apply while one runs, a sharded table
//! missing everywhere and a non-integer key.

use std::os::unix::process::ExitStatusExt;

use postshard_rebalancer::control;
use postshard_rebalancer::plan::{add_shard, Plan};
use postshard_router::map::env_var;
use postshard_router::map::raw::{RawMap, RawShard, RawTable};
use postshard_router::ShardMap;

use crate::cli_map::map_file;
use crate::common::{connect, runtime};
use crate::move_support::{plan_file, text, Forum, Rows};

/// Everything apply could change: live epoch, migrations, fences, rows.
#[derive(Debug, PartialEq)]
struct State {
    epoch: u64,
    migrations: i64,
    fences: Vec<(usize, i64, String, String, String)>,
    rows: Rows,
}

async fn state(forum: &Forum) -> State {
    let client = connect(&forum.control_url).await;
    State {
        epoch: forum.live().await.version(),
        migrations: client
            .query_one("SELECT count(*) FROM postshard_control.migrations", &[])
            .await
            .unwrap()
            .get(0),
        fences: forum.fences().await,
        rows: forum.rows().await,
    }
}

/// Runs apply on `plan` and returns (exit code, stderr).
fn apply(forum: &Forum, plan: &Plan, map: Option<&str>) -> (Option<i32>, String) {
    let file = plan_file(plan);
    let mut args = vec!["apply", file.path().to_str().unwrap()];
    let other;
    if let Some(yaml) = map {
        other = map_file(yaml);
        args.extend(["--map", other.path().to_str().unwrap()]);
    }
    let out = if map.is_some() {
        std::process::Command::new(env!("CARGO_BIN_EXE_postshard"))
            .args(&args)
            .output()
            .unwrap()
    } else {
        forum.postshard(&args, &[])
    };
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_plans_and_clusters_are_refused_before_anything_changes() {
    let forum = Forum::start(200);
    let rt = runtime();
    rt.block_on(async {
        let before = state(&forum).await;
        let good = forum.add_plan().await;
        let live = forum.live().await;

        // No control store in the map.
        let no_control: String = std::fs::read_to_string(forum.map_path())
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("control:"))
            .map(|l| format!("{l}\n"))
            .collect();
        let (code, err) = apply(&forum, &good, Some(&no_control));
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("names no control store"), "{err}");

        // A plan made for another epoch.
        let mut stale = good.clone();
        stale.base_version += 1;
        let (code, err) = apply(&forum, &stale, None);
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains("made for epoch 2, but the live epoch is 1"),
            "{err}"
        );

        // A move naming a shard nobody knows.
        let mut unknown = good.clone();
        unknown.moves[0].source = "nope".into();
        let (code, err) = apply(&forum, &unknown, None);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("unknown shard `nope`"), "{err}");

        // A target nobody listens on.
        let unreachable =
            add_shard(&live, "s2", "postgres://postgres@127.0.0.1:1/forum", 1).unwrap();
        let (code, err) = apply(&forum, &unreachable, None);
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains("shard s2"), "{err}");
        assert_eq!(state(&forum).await, before);
        // The new server was never touched.
        assert_eq!(
            forum.cluster.servers()[2]
                .psql(
                    "SELECT to_regnamespace('postshard') IS NULL AND to_regclass('posts') IS NULL"
                )
                .unwrap(),
            "t"
        );

        // Two applies at once: exactly one starts (it is killed at its first
        // fence, leaving its migration active); the other is refused.
        let file = plan_file(&good);
        let spawn = || {
            std::process::Command::new(env!("CARGO_BIN_EXE_postshard"))
                .args([
                    "apply",
                    file.path().to_str().unwrap(),
                    "--map",
                    forum.map_path(),
                ])
                .env("POSTSHARD_FAILPOINT", "fenced")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (a, b) = (spawn(), spawn());
        let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
        let killed = outs.iter().filter(|o| o.status.signal() == Some(9)).count();
        let refused: Vec<String> = outs
            .iter()
            .filter(|o| o.status.code() == Some(1))
            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            .collect();
        assert_eq!(killed, 1, "{}\n{}", text(&outs[0]), text(&outs[1]));
        assert_eq!(refused.len(), 1, "{}\n{}", text(&outs[0]), text(&outs[1]));
        assert!(
            refused[0].contains("migration 1 is active"),
            "{}",
            refused[0]
        );
        // A third, later, is refused too; aborting the first restores all.
        let (code, err) = apply(&forum, &good, None);
        assert_eq!(code, Some(1), "{err}");
        assert!(
            err.contains("migration 1 is active; resume or abort it first"),
            "{err}"
        );
        let out = forum.postshard(&["abort", "1"], &[]);
        assert!(out.status.success(), "{}", text(&out));
        let after_abort = state(&forum).await;
        assert_eq!(after_abort.migrations, 1);
        assert_eq!(after_abort.rows, before.rows);

        // The live map gains a table that exists nowhere and one keyed by
        // text: apply refuses both, naming them.
        let servers = forum.cluster.servers();
        for s in &servers[..2] {
            s.psql("CREATE TABLE tags (name text PRIMARY KEY)").unwrap();
        }
        let mut raw = RawMap::new(
            2,
            42,
            vec![
                RawTable::new("posts", "id"),
                RawTable::new("comments", "post_id"),
                RawTable::new("likes", "post_id"),
                RawTable::new("tags", "name"),
            ],
            vec![
                RawShard::new("s0", &servers[0].url()),
                RawShard::new("s1", &servers[1].url()),
            ],
            &[(i64::MIN, 0), (0, 1)],
        );
        raw.control = Some(forum.control_url.clone());
        let wider = ShardMap::from_raw(raw, "test", &env_var).unwrap();
        let mut client = connect(&forum.control_url).await;
        control::flip(&mut client, 1, &wider).await.unwrap();
        let before = state(&forum).await;
        let plan = forum.add_plan().await;
        let (code, err) = apply(&forum, &plan, None);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("table likes: exists on no shard"), "{err}");
        assert!(
            err.contains("table tags on shard s0: key column name is text"),
            "{err}"
        );
        assert_eq!(state(&forum).await, before);
    });
}
