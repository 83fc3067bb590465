//! Direct (unpooled) connections to a shard or the control store.
//!
//! Every connection postshard opens outside a [`crate::Router`] pool goes
//! through [`connect`], so that connection settings (and, later, TLS) are
//! decided in one place.

use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use crate::router::describe;
use crate::url::ConnUrl;

/// Why a direct connection could not be opened; names the redacted URL.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL is not a valid connection string.
    #[error("{url}: invalid connection settings: {detail}")]
    Config {
        /// Redacted URL.
        url: ConnUrl,
        /// The driver's reason.
        detail: String,
    },
    /// The server could not be reached or refused the connection.
    #[error("{url}: cannot connect: {detail}")]
    Connect {
        /// Redacted URL.
        url: ConnUrl,
        /// The driver's reason.
        detail: String,
    },
}

/// The driver configuration for `url`, with `timeout` as the connect timeout.
///
/// Errors: [`ConnectError::Config`] when the expanded URL does not parse.
pub fn pg_config(url: &ConnUrl, timeout: Duration) -> Result<tokio_postgres::Config, ConnectError> {
    let mut config: tokio_postgres::Config =
        url.expose().parse().map_err(|e| ConnectError::Config {
            url: url.clone(),
            detail: describe(&e),
        })?;
    config.connect_timeout(timeout);
    Ok(config)
}

/// Opens one connection to `url` and drives it on a spawned tokio task
/// (which ends when the returned client is dropped).
///
/// Errors: [`ConnectError::Config`] for a bad URL, [`ConnectError::Connect`]
/// when the server cannot be reached within `timeout` or refuses us.
pub async fn connect(url: &ConnUrl, timeout: Duration) -> Result<Client, ConnectError> {
    let config = pg_config(url, timeout)?;
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| ConnectError::Connect {
            url: url.clone(),
            detail: describe(&e),
        })?;
    tokio::spawn(connection);
    Ok(client)
}
