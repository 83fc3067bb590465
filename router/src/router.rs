//! [`Router`]: a map, swappable while lookups run, plus one lazily
//! connected pool per shard that survives map swaps.
//!
//! The map, its pools and its load counters form one [`Routing`] behind an
//! `ArcSwap`: a lookup is one atomic load, never a lock, and a statement keeps
//! the routing it started with. A router made with [`Router::from_control`]
//! follows the control store's live map (see [`crate::live_router`]).

use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};
use bb8::{Pool, PooledConnection, RunError};
use bb8_postgres::PostgresConnectionManager;
use futures_util::future::join_all;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use crate::connect::{pg_config, ConnectError};
use crate::connect_failures::ConnectFailures;
use crate::live_router::{Live, LiveOptions};
use crate::load::{LoadCounters, LoadReport};
use crate::map::{Shard, ShardMap};
use crate::url::ConnUrl;

type Manager = PostgresConnectionManager<NoTls>;

/// A pooled connection to one shard; `Client<'static>` owns its pool handle,
/// so it outlives map swaps.
pub type Client<'a> = PooledConnection<'a, Manager>;

/// SQL parameters, as tokio-postgres takes them.
pub type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// A failure talking to a shard; always names the shard and its (redacted) URL.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The shard's URL is not a valid tokio-postgres configuration.
    #[error("shard {shard}: {source}")]
    Config {
        /// Shard name.
        shard: String,
        /// What is wrong with the URL (redacted).
        source: ConnectError,
    },
    /// No connection to the shard could be had.
    #[error("shard {shard} ({url}): cannot connect: {detail}")]
    Connect {
        /// Shard name.
        shard: String,
        /// Redacted URL.
        url: ConnUrl,
        /// What the driver or pool said.
        detail: String,
    },
    /// No shard has this index in the map.
    #[error("no shard #{index} in the map")]
    UnknownShard {
        /// The index asked for.
        index: usize,
    },
    /// The shard rejected or failed a statement.
    #[error("shard {shard} ({url}): query failed: {detail}")]
    Query {
        /// Shard name.
        shard: String,
        /// Redacted URL.
        url: ConnUrl,
        /// The server's message (with SQLSTATE) or the driver's.
        detail: String,
        /// Driver error.
        source: tokio_postgres::Error,
    },
    /// The shard refused the write with SQLSTATE `PS001`: it does not own
    /// the key's token (moved away, or fenced for a move). Single
    /// statements are retried at the new owner; inside an explicit
    /// transaction the caller gets this error (or uses [`Router::with_retry`]).
    #[error("shard {shard} ({url}): key moved: {}", describe(source))]
    Moved {
        /// Shard that refused.
        shard: String,
        /// Redacted URL.
        url: ConnUrl,
        /// The token the shard named, if it could be read from the message.
        token: Option<i64>,
        /// The shard's fence epoch, if it could be read from the message.
        epoch: Option<u64>,
        /// The epoch this router routed by.
        routed_by: u64,
        /// Driver error (with the shard's message).
        source: tokio_postgres::Error,
    },
    /// The router's lease in the control store has lapsed (the control store
    /// was unreachable too long): it may route by a stale map, so it refuses
    /// statements until it has renewed its lease and reloaded the map.
    #[error("router lease lapsed {lapsed_for:?} ago; refusing statements until the live map is reloaded")]
    LeaseLapsed {
        /// How long ago the lease lapsed.
        lapsed_for: Duration,
    },
    /// The control store could not be read.
    #[error("control store: {detail}")]
    Control {
        /// What failed.
        detail: String,
    },
}

/// SQLSTATE of a shard refusing a write to a token it does not own.
pub const SQLSTATE_MOVED: &str = "PS001";

impl RouterError {
    /// The SQLSTATE the shard returned, if the failure was a server error.
    pub fn sqlstate(&self) -> Option<&tokio_postgres::error::SqlState> {
        match self {
            RouterError::Query { source, .. } | RouterError::Moved { source, .. } => source.code(),
            _ => None,
        }
    }
}

/// The number following `label` in `message` (`token 42`, `epoch 7`).
fn number_after<T: std::str::FromStr>(message: &str, label: &str) -> Option<T> {
    let rest = &message.get(message.find(label)? + label.len()..)?;
    let digits: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '-')
        .collect();
    digits.parse().ok()
}

/// Describes a driver error with the server's message, which the error's own
/// `Display` leaves out ("db error").
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({}): {}", db.severity(), db.code().code(), db.message()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    }
}

/// Rows returned by one shard in a [`Router::fan_out`].
#[derive(Debug)]
pub struct ShardRows {
    /// Index of the shard in the map.
    pub shard: usize,
    /// The rows, or why the shard failed.
    pub rows: Result<Vec<Row>, RouterError>,
}

/// One shard's pool, shared by every routing that keeps the shard at the
/// same URL and pool settings.
pub(crate) struct ShardPool {
    shard: Shard,
    pool: Pool<Manager>,
    failures: ConnectFailures,
}

impl ShardPool {
    /// Builds the shard's pool without connecting yet.
    fn build(shard: &Shard) -> Result<ShardPool, RouterError> {
        let config =
            pg_config(&shard.url, shard.pool.connect_timeout).map_err(|e| RouterError::Config {
                shard: shard.name.clone(),
                source: e,
            })?;
        let failed = ConnectFailures::default();
        let pool = Pool::builder()
            .max_size(shard.pool.max_size)
            .connection_timeout(shard.pool.connect_timeout)
            // A failed connect is reported (to `failed`) rather than retried,
            // so `client_of` can fail fast with the driver's reason.
            .retry_connection(false)
            .error_sink(Box::new(failed.clone()))
            .build_unchecked(PostgresConnectionManager::new(config, NoTls));
        Ok(ShardPool {
            shard: shard.clone(),
            pool,
            failures: failed,
        })
    }
}

/// A map with its pools (one per shard, in map order) and load counters.
pub(crate) struct Routing {
    map: ShardMap,
    pools: Vec<Arc<ShardPool>>,
    load: LoadCounters,
    /// Returned by [`ShardRef`] for an index the map lacks (never, for a
    /// validated map; it keeps lookups free of panics).
    first: Shard,
}

impl Routing {
    /// The routing for `map`, reusing the pools of `previous` for shards
    /// whose name, URL and pool settings are unchanged.
    pub(crate) fn new(map: ShardMap, previous: Option<&Routing>) -> Result<Routing, RouterError> {
        let mut pools = Vec::with_capacity(map.shards().len());
        for shard in map.shards() {
            let kept = previous.and_then(|p| p.pools.iter().find(|old| old.shard == *shard));
            pools.push(match kept {
                Some(pool) => Arc::clone(pool),
                None => Arc::new(ShardPool::build(shard)?),
            });
        }
        let first = map
            .shards()
            .first()
            .cloned()
            .ok_or(RouterError::UnknownShard { index: 0 })?;
        Ok(Routing {
            load: LoadCounters::new(&map),
            map,
            pools,
            first,
        })
    }

    pub(crate) fn map(&self) -> &ShardMap {
        &self.map
    }

    /// Index of the shard owning `key`, counted and sampled for hot keys.
    #[inline]
    fn route(&self, key: i64) -> usize {
        let token = self.map.token(key);
        let (shard, segment) = self.map.ring().owner_and_segment(token);
        self.load.record_sampled(token, segment);
        shard
    }

    async fn client_of(&self, index: usize) -> Result<Client<'static>, RouterError> {
        let Some(entry) = self.pools.get(index) else {
            return Err(RouterError::UnknownShard { index });
        };
        let shard = &entry.shard;
        let connect_error = |detail: String| RouterError::Connect {
            shard: shard.name.clone(),
            url: shard.url.clone(),
            detail,
        };
        let since = tokio::time::Instant::now();
        tokio::select! {
            got = entry.pool.get_owned() => match got {
                Ok(client) => Ok(client),
                Err(RunError::User(e)) => Err(connect_error(describe(&e))),
                Err(RunError::TimedOut) => Err(connect_error(format!(
                    "no connection within {:?} (last failure: {})",
                    shard.pool.connect_timeout, entry.failures
                ))),
            },
            detail = entry.failures.after(since) => Err(connect_error(detail)),
        }
    }

    fn query_error(&self, index: usize, source: tokio_postgres::Error) -> RouterError {
        let Some(shard) = self.map.shards().get(index) else {
            return RouterError::UnknownShard { index };
        };
        let detail = describe(&source);
        match source.as_db_error() {
            Some(db) if db.code().code() == SQLSTATE_MOVED => RouterError::Moved {
                shard: shard.name.clone(),
                url: shard.url.clone(),
                token: number_after(db.message(), "token "),
                epoch: number_after(db.message(), "epoch "),
                routed_by: self.map.version(),
                source,
            },
            _ => RouterError::Query {
                shard: shard.name.clone(),
                url: shard.url.clone(),
                detail,
                source,
            },
        }
    }
}

/// The shard owning a key, as [`Router::shard_for`] found it: holds the
/// routing it came from, so it stays valid across map swaps. Hold it briefly.
pub struct ShardRef {
    routing: Guard<Arc<Routing>>,
    index: usize,
}

impl ShardRef {
    /// The shard's index in the map it was routed by.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The epoch of the map it was routed by.
    pub fn epoch(&self) -> u64 {
        self.routing.map.version()
    }
}

impl Deref for ShardRef {
    type Target = Shard;

    #[inline]
    fn deref(&self) -> &Shard {
        self.routing
            .map
            .shards()
            .get(self.index)
            .unwrap_or(&self.routing.first)
    }
}

/// The map a router routed by at one moment; see [`Router::map`].
pub struct MapRef {
    routing: Guard<Arc<Routing>>,
}

impl Deref for MapRef {
    type Target = ShardMap;

    fn deref(&self) -> &ShardMap {
        &self.routing.map
    }
}

/// Most times one call is re-routed after `PS001` before giving up.
const MAX_REROUTES: u32 = 8;

/// Routes keys to shards and runs statements on the owner's pooled connection.
///
/// Routing is pure and never blocks; connections open lazily, so one shard
/// being down affects only the keys it owns. A router from
/// [`Router::from_control`] swaps in each new live map and keeps a lease;
/// while its lease has lapsed it refuses statements with
/// [`RouterError::LeaseLapsed`].
pub struct Router {
    routing: Arc<ArcSwap<Routing>>,
    live: Option<Arc<Live>>,
}

impl Router {
    /// Builds one pool per shard without connecting yet; the map never changes.
    pub async fn connect(map: ShardMap) -> Result<Router, RouterError> {
        Ok(Router {
            routing: Arc::new(ArcSwap::from_pointee(Routing::new(map, None)?)),
            live: None,
        })
    }

    /// A router following the live map of the control store at `control`
    /// with default [`LiveOptions`]: it registers with a lease, loads the
    /// live map, then follows epoch flips (LISTEN/NOTIFY, a slow poll as
    /// fallback, reconnecting when the listening connection drops) and
    /// renews its lease in the background (tasks on the current tokio runtime,
    /// ended when the router is dropped).
    ///
    /// Errors: [`RouterError::Control`] when the control store cannot be
    /// read or holds no valid live map; [`RouterError::Config`] for a bad
    /// shard URL.
    pub async fn from_control(control: &ConnUrl) -> Result<Router, RouterError> {
        Router::from_control_with(control, LiveOptions::default()).await
    }

    /// [`Router::from_control`] with explicit options.
    pub async fn from_control_with(
        control: &ConnUrl,
        options: LiveOptions,
    ) -> Result<Router, RouterError> {
        let (routing, live) = Live::start(control, options).await?;
        Ok(Router {
            routing,
            live: Some(live),
        })
    }

    /// The map this router routes with now (kept alive by the returned
    /// handle even if a newer one is swapped in; hold it briefly).
    pub fn map(&self) -> MapRef {
        MapRef {
            routing: self.routing.load(),
        }
    }

    /// The epoch (map version) this router routes with now.
    pub fn epoch(&self) -> u64 {
        self.routing.load().map.version()
    }

    /// The shard owning `key`, counted in the load report. One atomic load
    /// of the current map; no allocation, no lock.
    #[inline]
    pub fn shard_for(&self, key: i64) -> ShardRef {
        let routing = self.routing.load();
        let (index, segment) = routing.map.ring().owner_and_segment(routing.map.token(key));
        routing.load.record(segment);
        ShardRef { routing, index }
    }

    /// Calls routed so far with the current map, per shard and per token
    /// bucket (counters start afresh with each new map).
    pub fn load_report(&self) -> LoadReport {
        let routing = self.routing.load();
        routing.load.report(&routing.map)
    }

    /// Refuses when the lease has lapsed (see [`RouterError::LeaseLapsed`]).
    fn check_lease(&self) -> Result<(), RouterError> {
        match &self.live {
            Some(live) => live.check_lease(),
            None => Ok(()),
        }
    }

    /// A pooled connection to the shard owning `key` (not retried on
    /// `PS001`: for explicit transactions; see [`Router::with_retry`]).
    pub async fn client(&self, key: i64) -> Result<Client<'static>, RouterError> {
        self.check_lease()?;
        let routing = self.routing.load_full();
        let index = routing.route(key);
        routing.client_of(index).await
    }

    /// A pooled connection to shard `index` of the current map. When the
    /// shard cannot be reached, fails as soon as a connection attempt made
    /// during the call fails, with the driver's reason, rather than after
    /// the pool timeout.
    pub async fn client_of(&self, index: usize) -> Result<Client<'static>, RouterError> {
        self.check_lease()?;
        self.routing.load_full().client_of(index).await
    }

    /// A query error on shard `index` of the current map, naming the shard
    /// and its redacted URL; `PS001` becomes [`RouterError::Moved`].
    pub fn query_error(&self, index: usize, source: tokio_postgres::Error) -> RouterError {
        self.routing.load().query_error(index, source)
    }

    /// Runs `work` with a connection to the owner of `key`. When the shard
    /// refuses with `PS001` (the key moved, or is fenced for a move), waits
    /// (bounded by [`LiveOptions::moved_wait`]) for a newer live epoch,
    /// re-routes and runs `work` again from the start with the new owner's
    /// connection. `work` must therefore be safe to rerun after a `PS001`
    /// (a refused statement aborts its transaction, so an explicit
    /// transaction in `work` has left nothing behind).
    ///
    /// Errors: [`RouterError::Moved`] when no newer epoch came in time (or
    /// the router does not follow a control store); other failures as
    /// [`RouterError::Query`] / [`RouterError::Connect`];
    /// [`RouterError::LeaseLapsed`].
    pub async fn with_retry<T, F, Fut>(&self, key: i64, mut work: F) -> Result<T, RouterError>
    where
        F: FnMut(Client<'static>) -> Fut,
        Fut: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let mut reroutes = 0;
        loop {
            self.check_lease()?;
            let routing = self.routing.load_full();
            let index = routing.route(key);
            let client = routing.client_of(index).await?;
            let error = match work(client).await {
                Ok(value) => return Ok(value),
                Err(e) => routing.query_error(index, e),
            };
            let RouterError::Moved { routed_by, .. } = &error else {
                return Err(error);
            };
            let newer = match &self.live {
                Some(live) if reroutes < MAX_REROUTES => {
                    live.wait_for_epoch_after(*routed_by).await
                }
                _ => false,
            };
            if !newer {
                return Err(error);
            }
            reroutes += 1;
        }
    }

    /// Runs a statement on the owner of `key`; returns the rows affected.
    /// Retried at the new owner after `PS001` (see [`Router::with_retry`]).
    pub async fn execute(
        &self,
        key: i64,
        sql: &str,
        params: Params<'_>,
    ) -> Result<u64, RouterError> {
        self.with_retry(key, move |client| async move {
            client.execute(sql, params).await
        })
        .await
    }

    /// Runs a query on the owner of `key` (retried after `PS001`).
    pub async fn query(
        &self,
        key: i64,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Vec<Row>, RouterError> {
        self.with_retry(
            key,
            move |client| async move { client.query(sql, params).await },
        )
        .await
    }

    /// Runs a query that returns exactly one row on the owner of `key`
    /// (retried after `PS001`).
    pub async fn query_one(
        &self,
        key: i64,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Row, RouterError> {
        self.with_retry(key, move |client| async move {
            client.query_one(sql, params).await
        })
        .await
    }

    /// Runs a query that returns at most one row on the owner of `key`
    /// (retried after `PS001`).
    pub async fn query_opt(
        &self,
        key: i64,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Option<Row>, RouterError> {
        self.with_retry(key, move |client| async move {
            client.query_opt(sql, params).await
        })
        .await
    }

    /// Runs a query on every shard of the current map concurrently; one
    /// entry per shard, in map order, each with its rows or its own error.
    pub async fn fan_out(&self, sql: &str, params: Params<'_>) -> Vec<ShardRows> {
        let routing = self.routing.load_full();
        if let Err(e) = self.check_lease() {
            let lapsed = match e {
                RouterError::LeaseLapsed { lapsed_for } => lapsed_for,
                _ => Duration::ZERO,
            };
            return (0..routing.pools.len())
                .map(|shard| ShardRows {
                    shard,
                    rows: Err(RouterError::LeaseLapsed { lapsed_for: lapsed }),
                })
                .collect();
        }
        let routing = &routing;
        join_all((0..routing.pools.len()).map(|shard| async move {
            let rows = match routing.client_of(shard).await {
                Ok(client) => client
                    .query(sql, params)
                    .await
                    .map_err(|e| routing.query_error(shard, e)),
                Err(e) => Err(e),
            };
            ShardRows { shard, rows }
        }))
        .await
    }

    /// Deregisters from the control store (a router that is just dropped
    /// lets its lease lapse instead) and stops the background tasks.
    pub async fn shutdown(self) {
        if let Some(live) = &self.live {
            live.deregister().await;
        }
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        if let Some(live) = &self.live {
            live.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::number_after;

    #[test]
    fn moved_messages_give_their_token_and_epoch() {
        let message =
            "postshard: token -4454309705 (key 20007 of posts) is fenced for a move at epoch 7";
        assert_eq!(number_after::<i64>(message, "token "), Some(-4_454_309_705));
        assert_eq!(number_after::<u64>(message, "epoch "), Some(7));
        assert_eq!(number_after::<u64>("no numbers here", "epoch "), None);
        assert_eq!(number_after::<u64>("at epoch ", "epoch "), None);
    }
}
