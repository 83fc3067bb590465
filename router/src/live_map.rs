//! The router's side of the control store: reading the live map and keeping
//! a registration with a lease.
//!
//! The control store is a PostgreSQL database holding, in schema
//! [`CONTROL_SCHEMA`], every map by epoch (`epochs`), which one is live
//! (`live`), and the routers that route by it (`routers`). The rebalancer
//! creates the schema (`postshard init`) and flips epochs; it sends
//! `NOTIFY` on [`EPOCH_CHANNEL`] with the new epoch as payload when it does.
//!
//! A router registers *before* it loads the map, with epoch 0, and reports
//! the epoch it routes by only after it has swapped that map in. So a mover
//! that waits for every registered router to report epoch ≥ E (or to let
//! its lease lapse) after flipping to E cannot miss a router that started
//! concurrently: one that registered after the wait looked loaded the map
//! after the flip committed.

use std::time::Duration;

use tokio_postgres::{Client, GenericClient};

use crate::map::{MapError, ShardMap};
use crate::router::describe;

/// Schema of the control store's tables.
pub const CONTROL_SCHEMA: &str = "postshard_control";
/// `LISTEN`/`NOTIFY` channel announcing a new live epoch (payload: the epoch).
pub const EPOCH_CHANNEL: &str = "postshard_epoch";

/// A failure reading or writing the control store.
#[derive(Debug, thiserror::Error)]
pub enum LiveMapError {
    /// A statement failed on the control store.
    #[error("control store: {what}: {detail}")]
    Query {
        /// What was being done.
        what: &'static str,
        /// The server's or driver's message.
        detail: String,
    },
    /// The control store has no live map (`postshard init` has not run).
    #[error("control store: no live map; run `postshard init` first")]
    NotSeeded,
    /// The stored map of the live epoch does not validate here (for example
    /// a `${VAR}` it references is not set in this process).
    #[error("control store: the live map (epoch {epoch}) is invalid here: {source}")]
    Invalid {
        /// The live epoch.
        epoch: u64,
        /// Why it does not validate.
        source: MapError,
    },
}

/// A control-store query error described with the server's message.
pub(crate) fn query_error(what: &'static str) -> impl Fn(tokio_postgres::Error) -> LiveMapError {
    move |e| LiveMapError::Query {
        what,
        detail: describe(&e),
    }
}

/// The live epoch and its map text as stored (`${VAR}` unexpanded), or
/// `None` when the control store holds no live map yet.
pub async fn live_map_text(
    client: &impl GenericClient,
) -> Result<Option<(u64, String)>, LiveMapError> {
    let row = client
        .query_opt(
            &format!(
                "SELECT l.epoch, e.map FROM {CONTROL_SCHEMA}.live l \
                 JOIN {CONTROL_SCHEMA}.epochs e USING (epoch)"
            ),
            &[],
        )
        .await
        .map_err(query_error("reading the live map"))?;
    Ok(row.map(|r| (r.get::<_, i64>(0).max(0) as u64, r.get(1))))
}

/// The live epoch only (cheap: for polling).
pub async fn live_epoch(client: &Client) -> Result<Option<u64>, LiveMapError> {
    let row = client
        .query_opt(&format!("SELECT epoch FROM {CONTROL_SCHEMA}.live"), &[])
        .await
        .map_err(query_error("reading the live epoch"))?;
    Ok(row.map(|r| r.get::<_, i64>(0).max(0) as u64))
}

/// The live map, validated with `${VAR}` resolved by `env`.
///
/// Errors: [`LiveMapError::NotSeeded`] without a live map,
/// [`LiveMapError::Invalid`] when it does not validate here.
pub async fn load_live(
    client: &Client,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Result<ShardMap, LiveMapError> {
    let (epoch, text) = live_map_text(client)
        .await?
        .ok_or(LiveMapError::NotSeeded)?;
    ShardMap::parse(&text, &format!("control store epoch {epoch}"), env)
        .map_err(|source| LiveMapError::Invalid { epoch, source })
}

/// Registers router `id` (epoch 0: not yet routing) with a lease of `lease`
/// from the control server's clock; replaces an older registration of `id`.
pub async fn register(client: &Client, id: &str, lease: Duration) -> Result<(), LiveMapError> {
    client
        .execute(
            &format!(
                "INSERT INTO {CONTROL_SCHEMA}.routers (id, host, pid, epoch, lease_until) \
                 VALUES ($1, inet_client_addr()::text, $2, 0, now() + make_interval(secs => $3::float8)) \
                 ON CONFLICT (id) DO UPDATE SET epoch = 0, lease_until = EXCLUDED.lease_until, \
                 renewed_at = now()"
            ),
            &[&id, &(std::process::id() as i32), &lease.as_secs_f64()],
        )
        .await
        .map_err(query_error("registering the router"))?;
    Ok(())
}

/// Renews router `id`'s lease by `lease`, reporting that it routes by
/// `epoch`. Returns false when the lease had already lapsed (or the
/// registration is gone): the router must then register again and reload
/// before routing.
pub async fn renew(
    client: &Client,
    id: &str,
    epoch: u64,
    lease: Duration,
) -> Result<bool, LiveMapError> {
    let renewed = client
        .execute(
            &format!(
                "UPDATE {CONTROL_SCHEMA}.routers SET epoch = $2, \
                 lease_until = now() + make_interval(secs => $3::float8), renewed_at = now() \
                 WHERE id = $1 AND lease_until > now()"
            ),
            &[
                &id,
                &(epoch.min(i64::MAX as u64) as i64),
                &lease.as_secs_f64(),
            ],
        )
        .await
        .map_err(query_error("renewing the router's lease"))?;
    Ok(renewed == 1)
}

/// Removes router `id`'s registration (a clean shutdown).
pub async fn deregister(client: &Client, id: &str) -> Result<(), LiveMapError> {
    client
        .execute(
            &format!("DELETE FROM {CONTROL_SCHEMA}.routers WHERE id = $1"),
            &[&id],
        )
        .await
        .map_err(query_error("deregistering the router"))?;
    Ok(())
}
