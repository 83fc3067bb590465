//! [`Router`]: a validated map plus one lazily connected pool per shard.

use std::sync::Arc;

use bb8::{Pool, PooledConnection, RunError};
use bb8_postgres::PostgresConnectionManager;
use futures_util::future::join_all;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use crate::connect::{pg_config, ConnectError};
use crate::connect_failures::ConnectFailures;
use crate::load::{LoadCounters, LoadReport};
use crate::map::{Shard, ShardMap};
use crate::url::ConnUrl;

type Manager = PostgresConnectionManager<NoTls>;

/// A pooled connection to one shard.
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
}

impl RouterError {
    /// The SQLSTATE the shard returned, if the failure was a server error.
    pub fn sqlstate(&self) -> Option<&tokio_postgres::error::SqlState> {
        match self {
            RouterError::Query { source, .. } => source.code(),
            _ => None,
        }
    }
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

/// Routes keys to shards and runs statements on the owner's pooled connection.
///
/// Routing is pure and never blocks; connections open lazily, so one shard
/// being down affects only the keys it owns.
pub struct Router {
    map: Arc<ShardMap>,
    pools: Vec<Pool<Manager>>,
    failures: Vec<ConnectFailures>,
    load: LoadCounters,
}

impl Router {
    /// Builds one pool per shard without connecting yet.
    pub async fn connect(map: ShardMap) -> Result<Router, RouterError> {
        let mut pools = Vec::with_capacity(map.shards().len());
        let mut failures = Vec::with_capacity(map.shards().len());
        for shard in map.shards() {
            let config = pg_config(&shard.url, shard.pool.connect_timeout).map_err(|e| {
                RouterError::Config {
                    shard: shard.name.clone(),
                    source: e,
                }
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
            pools.push(pool);
            failures.push(failed);
        }
        Ok(Router {
            load: LoadCounters::new(&map),
            map: Arc::new(map),
            pools,
            failures,
        })
    }

    /// The map this router routes with.
    pub fn map(&self) -> &ShardMap {
        &self.map
    }

    /// The shard owning `key`, counted in the load report.
    #[inline]
    pub fn shard_for(&self, key: i64) -> &Shard {
        let (shard, segment) = self.map.ring().owner_and_segment(self.map.token(key));
        self.load.record(segment);
        &self.map.shards()[shard]
    }

    /// Index of the shard owning `key` for a call that runs a statement:
    /// counted, and sampled for hot keys.
    #[inline]
    fn route(&self, key: i64) -> usize {
        let token = self.map.token(key);
        let (shard, segment) = self.map.ring().owner_and_segment(token);
        self.load.record_sampled(token, segment);
        shard
    }

    /// Calls routed so far, per shard and per token bucket.
    pub fn load_report(&self) -> LoadReport {
        self.load.report(&self.map)
    }

    /// A pooled connection to the shard owning `key`.
    pub async fn client(&self, key: i64) -> Result<Client<'_>, RouterError> {
        self.client_of(self.route(key)).await
    }

    /// A pooled connection to shard `index`. When the shard cannot be
    /// reached, fails as soon as a connection attempt made during the call
    /// fails, with the driver's reason, rather than after the pool timeout.
    pub async fn client_of(&self, index: usize) -> Result<Client<'_>, RouterError> {
        let (Some(shard), Some(pool), Some(failures)) = (
            self.map.shards().get(index),
            self.pools.get(index),
            self.failures.get(index),
        ) else {
            return Err(RouterError::UnknownShard { index });
        };
        let connect_error = |detail: String| RouterError::Connect {
            shard: shard.name.clone(),
            url: shard.url.clone(),
            detail,
        };
        let since = tokio::time::Instant::now();
        tokio::select! {
            got = pool.get() => match got {
                Ok(client) => Ok(client),
                Err(RunError::User(e)) => Err(connect_error(describe(&e))),
                Err(RunError::TimedOut) => Err(connect_error(format!(
                    "no connection within {:?} (last failure: {failures})",
                    shard.pool.connect_timeout
                ))),
            },
            detail = failures.after(since) => Err(connect_error(detail)),
        }
    }

    /// A query error on shard `index`, naming the shard and its redacted URL.
    pub fn query_error(&self, index: usize, source: tokio_postgres::Error) -> RouterError {
        let Some(shard) = self.map.shards().get(index) else {
            return RouterError::UnknownShard { index };
        };
        RouterError::Query {
            shard: shard.name.clone(),
            url: shard.url.clone(),
            detail: describe(&source),
            source,
        }
    }

    /// Runs a statement on the owner of `key`; returns the rows affected.
    pub async fn execute(
        &self,
        key: i64,
        sql: &str,
        params: Params<'_>,
    ) -> Result<u64, RouterError> {
        let index = self.route(key);
        let client = self.client_of(index).await?;
        client
            .execute(sql, params)
            .await
            .map_err(|e| self.query_error(index, e))
    }

    /// Runs a query on the owner of `key`.
    pub async fn query(
        &self,
        key: i64,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Vec<Row>, RouterError> {
        self.query_on(self.route(key), sql, params).await
    }

    /// Runs a query that returns exactly one row on the owner of `key`.
    pub async fn query_one(
        &self,
        key: i64,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Row, RouterError> {
        let index = self.route(key);
        let client = self.client_of(index).await?;
        client
            .query_one(sql, params)
            .await
            .map_err(|e| self.query_error(index, e))
    }

    /// Runs a query that returns at most one row on the owner of `key`.
    pub async fn query_opt(
        &self,
        key: i64,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Option<Row>, RouterError> {
        let index = self.route(key);
        let client = self.client_of(index).await?;
        client
            .query_opt(sql, params)
            .await
            .map_err(|e| self.query_error(index, e))
    }

    async fn query_on(
        &self,
        index: usize,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Vec<Row>, RouterError> {
        let client = self.client_of(index).await?;
        client
            .query(sql, params)
            .await
            .map_err(|e| self.query_error(index, e))
    }

    /// Runs a query on every shard concurrently; one entry per shard, in map
    /// order, each with its rows or its own error.
    pub async fn fan_out(&self, sql: &str, params: Params<'_>) -> Vec<ShardRows> {
        join_all((0..self.pools.len()).map(|shard| async move {
            ShardRows {
                shard,
                rows: self.query_on(shard, sql, params).await,
            }
        }))
        .await
    }
}
