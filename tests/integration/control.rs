//! The control store: seeding, epoch flips with NOTIFY, journal, router leases.

use std::time::Duration;

use futures_util::StreamExt;
use postshard_rebalancer::control::{self, ControlError, Migration, MigrationState, Phase, Seeded};
use postshard_router::live_map;
use postshard_router::map::env_var;
use postshard_router::map::raw::{RawMap, RawShard, RawTable};
use postshard_router::{ShardMap, Token};
use postshard_sandbox::{Cluster, Server};
use tokio_postgres::AsyncMessage;

use crate::common::{connect, runtime};

/// `servers` servers; server 0 also holds the control database `control`.
pub fn start_with_control(servers: usize) -> (Cluster, String) {
    let cluster = Cluster::start(servers).expect("start PostgreSQL");
    let first = &cluster.servers()[0];
    first.psql("CREATE DATABASE control").expect("control db");
    let url = first.url_for("control");
    (cluster, url)
}

/// A map over `cluster` at `version` with the control store at `control`.
pub fn control_map(
    cluster: &Cluster,
    control: &str,
    version: u64,
    seed: i64,
    ring: &[(Token, usize)],
) -> ShardMap {
    control_map_over(cluster.servers(), control, version, seed, ring)
}

/// [`control_map`] over some of a cluster's servers.
pub fn control_map_over(
    servers: &[Server],
    control: &str,
    version: u64,
    seed: i64,
    ring: &[(Token, usize)],
) -> ShardMap {
    let shards = servers
        .iter()
        .enumerate()
        .map(|(i, s)| RawShard::new(&format!("s{i}"), &s.url()))
        .collect();
    let tables = vec![
        RawTable::new("posts", "id"),
        RawTable::new("comments", "post_id"),
    ];
    let mut raw = RawMap::new(version, seed, tables, shards, ring);
    raw.control = Some(control.to_string());
    ShardMap::from_raw(raw, "test", &env_var).expect("valid test map")
}

#[test]
fn seed_flip_notify_journal_and_leases() {
    let (cluster, url) = start_with_control(2);
    let ring = [(i64::MIN, 0), (0, 1)];
    let map1 = control_map(&cluster, &url, 1, 5, &ring);
    let map2 = control_map(&cluster, &url, 2, 5, &[(i64::MIN, 0), (0, 1), (1 << 62, 0)]);
    let rt = runtime();
    rt.block_on(async {
        let mut client = connect(&url).await;
        control::install(&client).await.expect("install");
        control::install(&client).await.expect("install again");
        assert_eq!(
            control::seed(&mut client, &map1, &env_var).await.unwrap(),
            Seeded::Created
        );
        assert_eq!(
            control::seed(&mut client, &map1, &env_var).await.unwrap(),
            Seeded::AlreadyLive
        );
        let other = control::seed(&mut client, &map2, &env_var)
            .await
            .unwrap_err();
        assert!(
            matches!(other, ControlError::OtherEpoch { live: 1, file: 2 }),
            "{other}"
        );
        let live = control::live_map(&client, &env_var).await.unwrap();
        assert_eq!(live, map1);
        // The stored text keeps the URL as written.
        let (epoch, text) = control::live_map_yaml(&client).await.unwrap();
        assert_eq!(epoch, 1);
        assert!(
            text.contains(&format!(
                "control: {}",
                postshard_router::map::yaml_scalar(&url)
            )),
            "{text}"
        );

        // A flip is announced on the channel, on commit.
        let (listener, mut conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
            while let Some(Ok(message)) = messages.next().await {
                if let AsyncMessage::Notification(n) = message {
                    let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
                }
            }
        });
        listener
            .batch_execute(&format!("LISTEN {}", live_map::EPOCH_CHANNEL))
            .await
            .unwrap();
        let conflict = control::flip(&mut client, 0, &map2).await.unwrap_err();
        assert!(
            matches!(conflict, ControlError::FlipConflict { live: 1, .. }),
            "{conflict}"
        );
        let skip = control_map(&cluster, &url, 3, 5, &ring);
        assert!(control::flip(&mut client, 1, &skip).await.is_err());
        assert_eq!(control::flip(&mut client, 1, &map2).await.unwrap(), 2);
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("notification within 5 s");
        assert_eq!(
            got,
            Some((live_map::EPOCH_CHANNEL.to_string(), "2".to_string()))
        );
        assert_eq!(control::live_map(&client, &env_var).await.unwrap(), map2);
        assert!(control::map_at(&client, 1).await.unwrap().is_some());

        // Journal: one active migration, steps in order, last phase per move.
        let mut m = Migration::begin(&client, 2, "blocking", "plan text")
            .await
            .unwrap();
        let second = Migration::begin(&client, 2, "blocking", "other")
            .await
            .unwrap_err();
        assert!(
            matches!(second, ControlError::MigrationActive { id } if id == m.id),
            "{second}"
        );
        m.append(&client, None, Phase::Planned, "{}").await.unwrap();
        m.append(&client, Some(0), Phase::Fenced, "{}")
            .await
            .unwrap();
        m.append(&client, Some(1), Phase::Fenced, "{}")
            .await
            .unwrap();
        m.append(&client, Some(0), Phase::Copied, r#"{"rows": 12}"#)
            .await
            .unwrap();
        let steps = m.steps(&client).await.unwrap();
        assert_eq!(
            steps
                .iter()
                .map(|s| (s.seq, s.move_index, s.phase))
                .collect::<Vec<_>>(),
            vec![
                (1, None, Phase::Planned),
                (2, Some(0), Phase::Fenced),
                (3, Some(1), Phase::Fenced),
                (4, Some(0), Phase::Copied)
            ]
        );
        assert_eq!(steps[3].detail, r#"{"rows": 12}"#);
        let last = m.last_phases(&client).await.unwrap();
        assert_eq!(last[&Some(0)].phase, Phase::Copied);
        assert_eq!(last[&Some(1)].phase, Phase::Fenced);
        assert!(m
            .append(&client, Some(0), Phase::Copied, "not json")
            .await
            .is_err());
        assert_eq!(
            Migration::active(&client).await.unwrap().map(|a| a.id),
            Some(m.id)
        );
        m.finish(&client, MigrationState::Done).await.unwrap();
        assert!(m.append(&client, None, Phase::Cleaned, "{}").await.is_err());
        assert_eq!(Migration::active(&client).await.unwrap(), None);

        // Leases: a router at epoch 0 holds the wait until it acknowledges...
        live_map::register(&client, "r1", Duration::from_secs(30))
            .await
            .unwrap();
        let behind = control::wait_for_acks(
            &client,
            2,
            Duration::ZERO,
            Duration::from_millis(20),
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&behind, ControlError::AckTimeout { routers, .. } if routers == &["r1"]),
            "{behind}"
        );
        assert!(live_map::renew(&client, "r1", 2, Duration::from_secs(30))
            .await
            .unwrap());
        control::wait_for_acks(
            &client,
            2,
            Duration::ZERO,
            Duration::from_millis(20),
            Duration::from_secs(1),
        )
        .await
        .expect("acknowledged");
        // ...or until its lease lapses; a lapsed lease cannot be renewed.
        live_map::register(&client, "r2", Duration::from_millis(300))
            .await
            .unwrap();
        control::wait_for_acks(
            &client,
            2,
            Duration::ZERO,
            Duration::from_millis(20),
            Duration::from_secs(5),
        )
        .await
        .expect("lapsed");
        assert!(!live_map::renew(&client, "r2", 2, Duration::from_secs(30))
            .await
            .unwrap());
        let routers = control::routers(&client).await.unwrap();
        assert_eq!(
            routers
                .iter()
                .map(|r| (r.id.as_str(), r.epoch))
                .collect::<Vec<_>>(),
            vec![("r1", 2), ("r2", 0)]
        );
        assert!(routers[1].lease_left_ms < 0 && routers[0].lease_left_ms > 0);
        assert_eq!(
            control::forget_lapsed_routers(&client, Duration::ZERO)
                .await
                .unwrap(),
            1
        );
    });
}

#[test]
fn the_map_names_its_control_store_like_a_shard_url() {
    let base = "version: 1\nhash: { function: pg_hashint8extended, seed: 0 }\n\
                tables: [{ name: posts, key: id }]\n\
                shards: [{ name: a, url: postgres://u@h/a }]\n\
                ring: [{ from: -9223372036854775808, shard: a }]\n";
    let env = |name: &str| (name == "PW").then(|| "s3cret@x".to_string());
    let map = ShardMap::parse(
        &format!("{base}control: postgres://u:${{PW}}@ctl/control\n"),
        "m.yaml",
        &env,
    )
    .expect("valid");
    let control = map.control().expect("control");
    assert_eq!(control.template(), "postgres://u:${PW}@ctl/control");
    assert!(!control.to_string().contains("s3cret"));
    // Written back as written, and read back the same.
    let again = ShardMap::parse(&map.to_yaml(), "again", &env).expect("round trip");
    assert_eq!(again, map);
    assert!(!map.to_yaml().contains("s3cret"));
    // Without `control:` there is none.
    assert!(ShardMap::parse(base, "m.yaml", &env)
        .unwrap()
        .control()
        .is_none());
    for (control, want) in [
        ("postgres://u:hunter2@ctl/control", "literal password"),
        (
            "postgres://u:${MISSING}@ctl/control",
            "`MISSING` is not set",
        ),
        ("postgres:///control", "names no host"),
    ] {
        let e = ShardMap::parse(&format!("{base}control: {control}\n"), "m.yaml", &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("control") && e.contains(want), "{control}: {e}");
        assert!(!e.contains("hunter2"), "{e}");
    }
}
