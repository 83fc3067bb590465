//! `postshard status`: what the control store says now.

use postshard_router::ShardMap;
use serde::Serialize;
use serde_json::Value;

use super::{stored_plan, MigrateError};
use crate::control::{self, Migration, MigrationState, Phase, RouterLease};

/// The live epoch, shards, routers and migrations.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The live epoch.
    pub epoch: u64,
    /// Each shard of the live map and its share of the token space (0 to 1).
    pub shards: Vec<ShardShare>,
    /// Registered routers, lapsed leases included.
    pub routers: Vec<RouterStatus>,
    /// Every migration, oldest first.
    pub migrations: Vec<MigrationStatus>,
}

/// A shard's share of the ring.
#[derive(Debug, Clone, Serialize)]
pub struct ShardShare {
    /// Shard name.
    pub name: String,
    /// Fraction of the token space it owns.
    pub share: f64,
}

/// A router as the control store sees it.
#[derive(Debug, Clone, Serialize)]
pub struct RouterStatus {
    /// Its id.
    pub id: String,
    /// Client address, when known.
    pub host: Option<String>,
    /// Process id.
    pub pid: i32,
    /// The epoch it routes by.
    pub epoch: u64,
    /// Milliseconds until its lease lapses (negative: lapsed).
    pub lease_left_ms: i64,
}

/// A migration's state and each move's progress.
#[derive(Debug, Clone, Serialize)]
pub struct MigrationStatus {
    /// Its id.
    pub id: i64,
    /// `active`, `done` or `aborted`.
    pub state: &'static str,
    /// `blocking` or `online`.
    pub mode: String,
    /// The epoch the plan was made for.
    pub base_epoch: u64,
    /// The last journaled migration-wide step (`planned`, `prepared`,
    /// `flipped`, `routers_acked`, `aborted`).
    pub phase: Option<String>,
    /// Each move of the plan.
    pub moves: Vec<MoveStatus>,
}

/// One move's progress.
#[derive(Debug, Clone, Serialize)]
pub struct MoveStatus {
    /// Position in the plan.
    pub index: u32,
    /// First token.
    pub from: i64,
    /// One past the last token.
    pub to: String,
    /// Source shard.
    pub source: String,
    /// Target shard.
    pub target: String,
    /// Last journaled phase of this move, if any.
    pub phase: Option<String>,
    /// Rows copied per table, once the copy finished (null before, and for
    /// a copy done before this version recorded it on the `copied` step).
    pub copied: Value,
    /// While the migration is active, the latest progress its process
    /// recorded (`rows`, `estimate`, `rows_per_sec`, `eta_s`, `backlog`,
    /// each when known, and `age_ms` since it was recorded); null before
    /// the first record and once the migration ended.
    pub progress: Value,
}

/// Reads the status from `map`'s control store.
///
/// Errors: [`MigrateError::NoControl`], [`MigrateError::Connect`],
/// [`MigrateError::Control`].
pub async fn status(
    map: &ShardMap,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
    connect_timeout: std::time::Duration,
) -> Result<Status, MigrateError> {
    let url = map.control().ok_or(MigrateError::NoControl)?;
    let client = postshard_router::connect(url, connect_timeout)
        .await
        .map_err(|source| MigrateError::Connect {
            what: "control store".into(),
            source,
        })?;
    let live = control::live_map(&client, env).await?;
    let shards = live
        .shards()
        .iter()
        .zip(live.shares())
        .map(|(s, share)| ShardShare {
            name: s.name.clone(),
            share,
        })
        .collect();
    let routers = control::routers(&client)
        .await?
        .into_iter()
        .map(|r: RouterLease| RouterStatus {
            id: r.id,
            host: r.host,
            pid: r.pid,
            epoch: r.epoch,
            lease_left_ms: r.lease_left_ms,
        })
        .collect();
    let mut migrations = Vec::new();
    for m in Migration::list(&client).await? {
        migrations.push(migration_status(&client, &m).await?);
    }
    Ok(Status {
        epoch: live.version(),
        shards,
        routers,
        migrations,
    })
}

async fn migration_status(
    client: &tokio_postgres::Client,
    m: &Migration,
) -> Result<MigrationStatus, MigrateError> {
    let steps = m.steps(client).await?;
    let plan = stored_plan(m.id, &m.plan)?;
    let recorded = match m.state {
        MigrationState::Active => m.progress(client).await?,
        MigrationState::Done | MigrationState::Aborted => Vec::new(),
    };
    let phase = steps
        .iter()
        .rev()
        .find(|s| s.move_index.is_none())
        .map(|s| s.phase.to_string());
    let moves = plan
        .moves
        .iter()
        .enumerate()
        .map(|(i, pm)| {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            let mine = || steps.iter().filter(move |s| s.move_index == Some(index));
            // Recorded on the `copied` step once the copy is done, and
            // carried by `verified`.
            let copied = mine()
                .filter_map(|s| {
                    let key = match s.phase {
                        Phase::Copied => "rows",
                        Phase::Verified => "copied",
                        _ => return None,
                    };
                    serde_json::from_str::<Value>(&s.detail)
                        .ok()?
                        .get(key)
                        .cloned()
                })
                .rfind(|c| !c.is_null())
                .unwrap_or(Value::Null);
            let progress = recorded
                .iter()
                .find(|(i, _, _)| *i == index)
                .and_then(|(_, detail, age)| {
                    let mut detail = serde_json::from_str::<Value>(detail).ok()?;
                    detail
                        .as_object_mut()?
                        .insert("age_ms".into(), Value::from(*age));
                    Some(detail)
                })
                .unwrap_or(Value::Null);
            MoveStatus {
                index,
                progress,
                from: pm.from,
                to: pm.to.to_string(),
                source: pm.source.clone(),
                target: pm.target.clone(),
                phase: mine().next_back().map(|s| s.phase.to_string()),
                copied,
            }
        })
        .collect();
    Ok(MigrationStatus {
        id: m.id,
        state: match m.state {
            MigrationState::Active => "active",
            MigrationState::Done => "done",
            MigrationState::Aborted => "aborted",
        },
        mode: m.mode.clone(),
        base_epoch: m.base_epoch,
        phase,
        moves,
    })
}
