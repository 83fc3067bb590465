//! Fences in storage: unowned and fenced tokens refused with PS001 on a
//! direct connection; the mover bypasses them; raising waits for older writers.

use std::time::Duration;

use postshard_rebalancer::fence::{self, TokenRange};
use postshard_rebalancer::init::{init, InitOptions};
use postshard_router::map::env_var;
use postshard_router::ShardMap;

use crate::common::{connect, runtime, FORUM_SCHEMA};
use crate::control::{control_map, start_with_control};

/// First key ≥ `from` whose token satisfies `pred`.
fn key_where(map: &ShardMap, from: i64, pred: impl Fn(i64) -> bool) -> i64 {
    (from..).find(|k| pred(map.token(*k))).unwrap()
}

fn sqlstate_and_message(e: &tokio_postgres::Error) -> (String, String) {
    let db = e.as_db_error().expect("a server error");
    (db.code().code().to_string(), db.message().to_string())
}

#[test]
fn shards_refuse_unowned_and_fenced_tokens_and_raising_waits_for_older_writers() {
    let (cluster, control) = start_with_control(2);
    for s in cluster.servers() {
        s.psql(FORUM_SCHEMA).unwrap();
    }
    let map = control_map(&cluster, &control, 7, 3, &[(i64::MIN, 0), (0, 1)]);
    let rt = runtime();
    rt.block_on(async {
        init(&map, &env_var, &InitOptions::default())
            .await
            .expect("init");
        let s0 = connect(&cluster.servers()[0].url()).await;
        let insert = "INSERT INTO posts (id, board, title) VALUES ($1, 1, 't')";

        // Unowned: refused with PS001 naming token, key, table and epoch.
        let unowned = key_where(&map, 1, |t| t >= 0);
        let e = s0.execute(insert, &[&unowned]).await.unwrap_err();
        let (code, message) = sqlstate_and_message(&e);
        assert_eq!(code, fence::SQLSTATE_MOVED);
        let token = map.token(unowned);
        assert!(
            message.contains(&format!(
                "token {token} (key {unowned} of posts) is not owned by this shard at epoch 7"
            )),
            "{message}"
        );
        // Comments are checked by their own key column.
        let e = s0
            .execute(
                "INSERT INTO comments (post_id, body) VALUES ($1, 'c')",
                &[&unowned],
            )
            .await
            .unwrap_err();
        assert_eq!(sqlstate_and_message(&e).0, "PS001");

        // Owned keys are unaffected.
        let owned: Vec<i64> = (1..).filter(|k| map.token(*k) < 0).take(3).collect();
        for k in &owned {
            s0.execute(insert, &[k]).await.expect("owned insert");
        }

        // Fence the upper half of shard 0's range, holding one row already.
        let fenced = TokenRange::inclusive(i64::MIN / 2, -1).unwrap();
        let in_fence = |t: i64| fenced.contains(t);
        let fenced_row = key_where(&map, 2_000, in_fence);
        s0.execute(insert, &[&fenced_row]).await.unwrap();
        let other = connect(&cluster.servers()[0].url()).await;
        let warm = key_where(&map, 3_000, |t| t < fenced.from());
        other.execute(insert, &[&warm]).await.unwrap();
        fence::raise(&s0, &[fenced], Duration::from_secs(5))
            .await
            .unwrap();
        let inside = key_where(&map, 1_000, in_fence);
        let outside = key_where(&map, 1_000, |t| t < fenced.from());
        let e = s0.execute(insert, &[&inside]).await.unwrap_err();
        let (code, message) = sqlstate_and_message(&e);
        assert_eq!(code, "PS001");
        assert!(
            message.contains("is fenced for a move at epoch 7"),
            "{message}"
        );
        // Another session, whose trigger plans were cached before the raise,
        // judges by the new fence too.
        let e = other.execute(insert, &[&inside]).await.unwrap_err();
        assert_eq!(sqlstate_and_message(&e).0, "PS001");
        s0.execute(insert, &[&outside])
            .await
            .expect("outside the fence");
        // UPDATE moving a key into the fence, and UPDATE/DELETE of a fenced row.
        let e = s0
            .execute(
                "UPDATE posts SET id = $2 WHERE id = $1",
                &[&outside, &inside],
            )
            .await
            .unwrap_err();
        assert_eq!(sqlstate_and_message(&e).0, "PS001");
        let e = s0
            .execute("DELETE FROM posts WHERE id = $1", &[&fenced_row])
            .await
            .unwrap_err();
        assert_eq!(sqlstate_and_message(&e).0, "PS001");
        let e = s0
            .execute("UPDATE posts SET title = 'x' WHERE id = $1", &[&fenced_row])
            .await
            .unwrap_err();
        assert_eq!(sqlstate_and_message(&e).0, "PS001");
        // Updates that keep an unfenced key pass.
        s0.execute("UPDATE posts SET title = 'u' WHERE id = $1", &[&outside])
            .await
            .expect("update outside");
        // The mover (replica role) is not fenced.
        s0.batch_execute(&format!(
            "SET session_replication_role = replica; \
             INSERT INTO posts (id, board, title) VALUES ({inside}, 1, 'moved'); \
             RESET session_replication_role;"
        ))
        .await
        .expect("mover bypasses the fence");

        let state = fence::read(&s0).await.unwrap();
        assert_eq!(state.fenced, vec![fenced]);
        fence::lower(&s0, &[fenced]).await.unwrap();
        assert!(fence::read(&s0).await.unwrap().fenced.is_empty());
        s0.execute("DELETE FROM posts WHERE id = $1", &[&inside])
            .await
            .expect("lowered");

        // A transaction that wrote before the fence and commits after: the
        // raise waits for it. So does a REPEATABLE READ transaction whose
        // snapshot predates the fence and that writes only afterwards.
        for (round, isolation) in [(1, "READ COMMITTED"), (2, "REPEATABLE READ")] {
            let writer = connect(&cluster.servers()[0].url()).await;
            let key = key_where(&map, 10_000 * round, in_fence);
            writer
                .batch_execute(&format!("BEGIN ISOLATION LEVEL {isolation}"))
                .await
                .unwrap();
            if isolation == "READ COMMITTED" {
                writer
                    .execute(insert, &[&key])
                    .await
                    .expect("write before the fence");
            } else {
                writer
                    .query("SELECT count(*) FROM posts", &[])
                    .await
                    .unwrap();
            }
            let raiser = connect(&cluster.servers()[0].url()).await;
            let raising = tokio::spawn(async move {
                fence::raise(&raiser, &[fenced], Duration::from_secs(30)).await
            });
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(
                !raising.is_finished(),
                "{isolation}: the raise must wait for the writer"
            );
            let mut acknowledged = isolation == "READ COMMITTED";
            if isolation == "REPEATABLE READ" {
                // It may still judge by the fence it started with (then the
                // write passes and must be waited for) or already by the
                // new one (then it is refused): either way nothing is lost.
                match writer.execute(insert, &[&key]).await {
                    Ok(_) => acknowledged = true,
                    Err(e) => assert_eq!(sqlstate_and_message(&e).0, "PS001"),
                }
                // A refused write aborts the transaction, which ends the wait.
                tokio::time::sleep(Duration::from_millis(100)).await;
                assert!(
                    !acknowledged || !raising.is_finished(),
                    "the raise must wait for a write that passed"
                );
            }
            writer.batch_execute("COMMIT").await.unwrap();
            tokio::time::timeout(Duration::from_secs(10), raising)
                .await
                .expect("raise finishes once the writer committed")
                .unwrap()
                .unwrap();
            // An acknowledged row is there for the copy to find.
            let n: i64 = s0
                .query_one("SELECT count(*) FROM posts WHERE id = $1", &[&key])
                .await
                .unwrap()
                .get(0);
            assert_eq!(n, i64::from(acknowledged), "{isolation}");
            fence::lower(&s0, &[fenced]).await.unwrap();
        }

        // A raise that older transactions outlast fails after its wait.
        let idle = connect(&cluster.servers()[0].url()).await;
        idle.batch_execute("BEGIN; SELECT 1").await.unwrap();
        let e = fence::raise(&s0, &[fenced], Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(
            matches!(e, fence::FenceError::OlderTransactions { .. }),
            "{e}"
        );
        idle.batch_execute("ROLLBACK").await.unwrap();

        // A shrink waits for older transactions, also when redone after a
        // first attempt committed it and gave up waiting (an abort killed
        // there and run again); a grant does not wait.
        let owned = fence::owned_ranges(&map, 0);
        idle.batch_execute("BEGIN; SELECT 1").await.unwrap();
        for attempt in ["first", "redo"] {
            let e = fence::set_owned(&s0, 7, &[], Duration::from_millis(200))
                .await
                .unwrap_err();
            assert!(
                matches!(e, fence::FenceError::OlderTransactions { .. }),
                "{attempt}: {e}"
            );
        }
        tokio::time::timeout(Duration::from_secs(2), fence::grant(&s0, 7, &owned))
            .await
            .expect("a grant does not wait for older transactions")
            .unwrap();
        idle.batch_execute("ROLLBACK").await.unwrap();

        // Ownership after a flip: shard 0 gives up everything.
        fence::set_owned(&s0, 8, &[], Duration::from_secs(5))
            .await
            .unwrap();
        let e = s0
            .execute(insert, &[&(outside + 1_000_000)])
            .await
            .unwrap_err();
        assert!(sqlstate_and_message(&e).1.contains("at epoch 8"));
    });
}
