//! The control store: live map by epoch, epoch flips, router leases and the
//! migration journal.
//!
//! Schema [`CONTROL_SCHEMA`] in the database named by the map's `control:`:
//!
//! - `epochs (epoch PK, map text, created_at)`: every map that was ever live,
//!   as YAML in the documented format, URLs as written (`${VAR}` unexpanded).
//! - `live (singleton PK, epoch → epochs)`: the one live epoch.
//! - `routers (id PK, host, pid, epoch, lease_until, registered_at,
//!   renewed_at)`: live routers and the epoch each routes by (0 while it
//!   loads); a lease is judged on the control server's clock.
//! - `migrations (id PK, base_epoch, mode, plan, state, started_at,
//!   finished_at)`: at most one `active` (a partial unique index).
//! - `journal (migration_id, seq, move_index, phase, detail jsonb, at)`: every
//!   step, appended *before* it is done; see [`journal`].
//!
//! A flip ([`flip`]) inserts the next epoch's map and moves `live` in one
//! transaction that also sends `NOTIFY postshard_epoch, '<epoch>'`, which
//! PostgreSQL delivers only if and when the transaction commits.

pub mod journal;
mod schema;

use std::time::Duration;

use postshard_router::live_map::{self, LiveMapError, CONTROL_SCHEMA, EPOCH_CHANNEL};
use postshard_router::{describe_db_error, ShardMap};
use tokio_postgres::Client;

pub use journal::{Migration, MigrationState, Phase, Step};
pub use schema::install;

/// A failure in the control store.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A statement failed.
    #[error("control store: {what}: {detail}")]
    Query {
        /// What was being done.
        what: &'static str,
        /// The server's or driver's message.
        detail: String,
    },
    /// Reading the live map failed.
    #[error(transparent)]
    Live(#[from] LiveMapError),
    /// The control store already has a live map of another epoch.
    #[error(
        "control store: the live map is at epoch {live}, the map file at {file}; \
         refusing to overwrite it (`postshard map export` prints the live map)"
    )]
    OtherEpoch {
        /// The live epoch.
        live: u64,
        /// The epoch offered.
        file: u64,
    },
    /// The live map has the offered epoch but different contents.
    #[error(
        "control store: the live map at epoch {epoch} differs from the map file; \
         refusing to overwrite it (`postshard map export` prints the live map)"
    )]
    Differs {
        /// The epoch.
        epoch: u64,
    },
    /// A flip expected another live epoch (someone else flipped, or the new
    /// map's version is not the next one).
    #[error(
        "control store: cannot flip to epoch {new}: the live epoch is {live}, expected {expected}"
    )]
    FlipConflict {
        /// The live epoch found.
        live: u64,
        /// The live epoch the caller expected.
        expected: u64,
        /// The epoch of the new map.
        new: u64,
    },
    /// Another migration is active.
    #[error("control store: migration {id} is active; resume or abort it first")]
    MigrationActive {
        /// The active migration.
        id: i64,
    },
    /// No migration has this id.
    #[error("control store: no migration {id}")]
    NoMigration {
        /// The id asked for.
        id: i64,
    },
    /// Routers neither acknowledged the epoch nor let their leases lapse in time.
    #[error(
        "control store: routers {routers:?} have not acknowledged epoch {epoch} within {waited:?}"
    )]
    AckTimeout {
        /// The epoch waited for.
        epoch: u64,
        /// The routers still behind, by id.
        routers: Vec<String>,
        /// How long we waited.
        waited: Duration,
    },
    /// A stored value could not be read back.
    #[error("control store: {what}")]
    Corrupt {
        /// What is wrong.
        what: String,
    },
}

pub(crate) fn query_error(what: &'static str) -> impl Fn(tokio_postgres::Error) -> ControlError {
    move |e| ControlError::Query {
        what,
        detail: describe_db_error(&e),
    }
}

/// What [`seed`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seeded {
    /// The map became the live map.
    Created,
    /// The same map was already live at this epoch; nothing changed.
    AlreadyLive,
}

/// Makes `map` the live map when the store has none; accepts the same map
/// at the same epoch again. Refuses ([`ControlError::OtherEpoch`],
/// [`ControlError::Differs`]) otherwise, changing nothing.
pub async fn seed(
    client: &mut Client,
    map: &ShardMap,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Result<Seeded, ControlError> {
    let tx = client
        .transaction()
        .await
        .map_err(query_error("starting the seed"))?;
    // Serializes concurrent inits and flips on the live row.
    tx.batch_execute(&format!(
        "LOCK TABLE {CONTROL_SCHEMA}.live IN SHARE ROW EXCLUSIVE MODE"
    ))
    .await
    .map_err(query_error("locking the live map"))?;
    if let Some((live, text)) = live_map::live_map_text(&tx).await? {
        if live != map.version() {
            return Err(ControlError::OtherEpoch {
                live,
                file: map.version(),
            });
        }
        let stored = ShardMap::parse(&text, &format!("control store epoch {live}"), env).map_err(
            |source| LiveMapError::Invalid {
                epoch: live,
                source,
            },
        )?;
        if stored.to_yaml() != map.to_yaml() {
            return Err(ControlError::Differs { epoch: live });
        }
        return Ok(Seeded::AlreadyLive);
    }
    let epoch = epoch_param(map.version());
    tx.execute(
        &format!(
            "INSERT INTO {CONTROL_SCHEMA}.epochs (epoch, map) VALUES ($1, $2) \
             ON CONFLICT (epoch) DO UPDATE SET map = EXCLUDED.map"
        ),
        &[&epoch, &map.to_yaml()],
    )
    .await
    .map_err(query_error("storing the map"))?;
    tx.execute(
        &format!("INSERT INTO {CONTROL_SCHEMA}.live (epoch) VALUES ($1)"),
        &[&epoch],
    )
    .await
    .map_err(query_error("making the map live"))?;
    tx.commit()
        .await
        .map_err(query_error("committing the seed"))?;
    Ok(Seeded::Created)
}

/// The live map, validated with `${VAR}` resolved by `env`.
pub async fn live_map(
    client: &Client,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Result<ShardMap, ControlError> {
    Ok(live_map::load_live(client, env).await?)
}

/// The live map's text as stored (`${VAR}` unexpanded), for `map export`.
pub async fn live_map_yaml(client: &Client) -> Result<(u64, String), ControlError> {
    live_map::live_map_text(client)
        .await?
        .ok_or(ControlError::Live(LiveMapError::NotSeeded))
}

/// The map stored for `epoch`, if any (text as stored).
pub async fn map_at(client: &Client, epoch: u64) -> Result<Option<String>, ControlError> {
    let row = client
        .query_opt(
            &format!("SELECT map FROM {CONTROL_SCHEMA}.epochs WHERE epoch = $1"),
            &[&epoch_param(epoch)],
        )
        .await
        .map_err(query_error("reading a stored map"))?;
    Ok(row.map(|r| r.get(0)))
}

/// Makes `new` the live map if the live epoch is still `expected` and
/// `new.version() == expected + 1`, and announces it with
/// `NOTIFY postshard_epoch` (delivered on commit). Returns the new epoch.
///
/// Errors: [`ControlError::FlipConflict`] (nothing changed) when the live
/// epoch is not `expected` or the version is not the next one.
pub async fn flip(client: &mut Client, expected: u64, new: &ShardMap) -> Result<u64, ControlError> {
    let tx = client
        .transaction()
        .await
        .map_err(query_error("starting the flip"))?;
    let live = tx
        .query_opt(
            &format!("SELECT epoch FROM {CONTROL_SCHEMA}.live FOR UPDATE"),
            &[],
        )
        .await
        .map_err(query_error("locking the live epoch"))?
        .map(|r| epoch_of(r.get(0)))
        .ok_or(ControlError::Live(LiveMapError::NotSeeded))?;
    if live != expected || Some(new.version()) != expected.checked_add(1) {
        return Err(ControlError::FlipConflict {
            live,
            expected,
            new: new.version(),
        });
    }
    let epoch = epoch_param(new.version());
    tx.execute(
        &format!("INSERT INTO {CONTROL_SCHEMA}.epochs (epoch, map) VALUES ($1, $2)"),
        &[&epoch, &new.to_yaml()],
    )
    .await
    .map_err(query_error("storing the new map"))?;
    tx.execute(
        &format!("UPDATE {CONTROL_SCHEMA}.live SET epoch = $1, updated_at = now()"),
        &[&epoch],
    )
    .await
    .map_err(query_error("flipping the live epoch"))?;
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&EPOCH_CHANNEL, &new.version().to_string()],
    )
    .await
    .map_err(query_error("announcing the new epoch"))?;
    tx.commit()
        .await
        .map_err(query_error("committing the flip"))?;
    Ok(new.version())
}

/// A registered router, as the control store sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterLease {
    /// The router's id.
    pub id: String,
    /// Client address it registered from (none over a Unix socket).
    pub host: Option<String>,
    /// Its process id.
    pub pid: i32,
    /// The epoch it routes by (0 while loading).
    pub epoch: u64,
    /// Milliseconds until its lease lapses (negative: lapsed that long ago).
    pub lease_left_ms: i64,
}

/// Every registered router, lapsed leases included, by id.
pub async fn routers(client: &Client) -> Result<Vec<RouterLease>, ControlError> {
    let rows = client
        .query(
            &format!(
                "SELECT id, host, pid, epoch, \
                 (extract(epoch FROM lease_until - now()) * 1000)::bigint \
                 FROM {CONTROL_SCHEMA}.routers ORDER BY id"
            ),
            &[],
        )
        .await
        .map_err(query_error("listing routers"))?;
    Ok(rows
        .iter()
        .map(|r| RouterLease {
            id: r.get(0),
            host: r.get(1),
            pid: r.get(2),
            epoch: epoch_of(r.get(3)),
            lease_left_ms: r.get(4),
        })
        .collect())
}

/// Waits until every registered router either reports an epoch ≥ `epoch`
/// or has a lease that lapsed more than `margin` ago (a router refuses
/// statements once its lease lapses; `margin` covers statements it started
/// just before). Polls every `poll`; gives up after `timeout`.
///
/// Errors: [`ControlError::AckTimeout`] naming the routers still behind.
pub async fn wait_for_acks(
    client: &Client,
    epoch: u64,
    margin: Duration,
    poll: Duration,
    timeout: Duration,
) -> Result<(), ControlError> {
    let start = tokio::time::Instant::now();
    loop {
        let rows = client
            .query(
                &format!(
                    "SELECT id FROM {CONTROL_SCHEMA}.routers \
                     WHERE epoch < $1 AND lease_until + make_interval(secs => $2::float8) > now() \
                     ORDER BY id"
                ),
                &[&epoch_param(epoch), &margin.as_secs_f64()],
            )
            .await
            .map_err(query_error("checking router acknowledgements"))?;
        if rows.is_empty() {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            return Err(ControlError::AckTimeout {
                epoch,
                routers: rows.iter().map(|r| r.get(0)).collect(),
                waited: start.elapsed(),
            });
        }
        tokio::time::sleep(poll).await;
    }
}

/// Deletes registrations whose lease lapsed more than `older_than` ago.
pub async fn forget_lapsed_routers(
    client: &Client,
    older_than: Duration,
) -> Result<u64, ControlError> {
    client
        .execute(
            &format!(
                "DELETE FROM {CONTROL_SCHEMA}.routers \
                 WHERE lease_until + make_interval(secs => $1::float8) < now()"
            ),
            &[&older_than.as_secs_f64()],
        )
        .await
        .map_err(query_error("forgetting lapsed routers"))
}

/// An epoch as the `bigint` it is stored as (map validation keeps versions ≤ i64::MAX).
pub(crate) fn epoch_param(epoch: u64) -> i64 {
    i64::try_from(epoch).unwrap_or(i64::MAX)
}

/// A stored `bigint` epoch (never negative: see the schema's CHECK).
pub(crate) fn epoch_of(stored: i64) -> u64 {
    u64::try_from(stored).unwrap_or(0)
}
