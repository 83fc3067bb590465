//! The online mode's comparison at the cut, before the fence: the fenced
//! verification compares only the keys changed since the cut, so a target
//! row that diverged earlier (for a key with no captured change) must be
//! caught at the cut, before any write is refused, and the move must still
//! abort cleanly.

use postshard_rebalancer::migrate::{self, MigrateError, MoveOptions};
use postshard_router::map::env_var;
use postshard_router::ShardMap;

use crate::common::{connect, runtime};
use crate::move_support::{text, Forum};

#[test]
fn a_target_row_diverging_before_the_cut_stops_the_move_unfenced_and_abort_cleans_up() {
    let forum = Forum::start(1200);
    let rt = runtime();
    rt.block_on(async {
        let base = forum.live().await;
        let before = forum.rows().await;
        let plan = forum.add_plan().await;
        let map = ShardMap::from_path(forum.map_path()).unwrap();
        // Stop once the backfills are done and `caught_up` is journaled.
        let (cancel, cancelled) = tokio::sync::watch::channel(false);
        let options = MoveOptions {
            cancel: cancelled,
            ..MoveOptions::default()
        };
        let mut id = None;
        let result = migrate::apply(&map, &plan, "online", &env_var, &options, &mut |e| {
            id = Some(e.migration);
            if e.event == "caught_up" {
                let _ = cancel.send(true);
            }
        })
        .await;
        assert!(
            matches!(result, Err(MigrateError::Cancelled { .. })),
            "{result:?}"
        );
        let id = id.unwrap().to_string();

        // Nobody writes, so the changelog is empty: the corrupted key is
        // not among the cut's pending keys, and no replay copies it again.
        let target = forum.cluster.servers()[2].url();
        let client = connect(&target).await;
        client
            .batch_execute(
                "SET session_replication_role = replica; \
                 UPDATE posts SET title = title || ' (diverged)' WHERE id = (SELECT min(id) FROM posts); \
                 RESET session_replication_role",
            )
            .await
            .unwrap();

        let out = forum.postshard(&["resume"], &[]);
        assert_eq!(out.status.code(), Some(1), "resume: {}", text(&out));
        let said = text(&out);
        assert!(said.contains("before the fence"), "{said}");
        assert!(said.contains("table posts"), "{said}");
        // Stopped before any fence: no source refuses writes to the range.
        for (server, _, _, fenced, _) in forum.fences().await {
            assert_eq!(fenced, "{}", "server {server} is fenced");
        }
        assert_eq!(forum.live().await.version(), base.version());

        let out = forum.postshard(&["abort", &id], &[]);
        assert!(out.status.success(), "abort: {}", text(&out));
        assert_eq!(forum.live().await.version(), base.version());
        assert_eq!(forum.rows().await.content(), before.content());
        assert_eq!(forum.leftovers().await, Vec::<String>::new());
    });
}
