//! Direct (unpooled) connections to a shard or the control store.
//!
//! Every connection postshard opens outside a [`crate::Router`] pool goes
//! through [`connect`], and the pools take their settings from
//! [`pg_config`] and [`tls_connector`], so that connection settings and TLS
//! are decided in one place.

mod tls;

pub use tls::TlsConnector;

use std::time::Duration;

use tokio_postgres::Client;

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
        /// The reason.
        detail: String,
    },
    /// TLS cannot be set up as `sslmode` and `sslrootcert` ask (say, the
    /// `sslrootcert` file cannot be read).
    #[error("{url}: {detail}")]
    Tls {
        /// Redacted URL.
        url: ConnUrl,
        /// The reason, naming the `sslrootcert` file.
        detail: String,
    },
    /// The server could not be reached or refused the connection (TLS
    /// handshake and certificate failures included).
    #[error("{url}: cannot connect: {detail}")]
    Connect {
        /// Redacted URL.
        url: ConnUrl,
        /// The driver's reason.
        detail: String,
    },
}

/// The driver configuration for `url`, with the connect timeout the shorter
/// of `timeout` and the URL's `connect_timeout`. Its TLS mode only says
/// whether to ask for TLS: connect with [`tls_connector`]'s connector.
///
/// Errors: none today (the URL was checked when it was expanded); kept as a
/// `Result` for settings that may need checking here.
pub fn pg_config(url: &ConnUrl, timeout: Duration) -> Result<tokio_postgres::Config, ConnectError> {
    let mut config = url.pg_config().clone();
    // As libpq: sslmode does not apply to Unix sockets (PostgreSQL offers
    // no TLS there), so a socket-only connection does not ask for it.
    let sockets_only = config
        .get_hosts()
        .iter()
        .all(|h| !matches!(h, tokio_postgres::config::Host::Tcp(_)));
    if sockets_only {
        config.ssl_mode(tokio_postgres::config::SslMode::Disable);
    }
    let timeout = match config.get_connect_timeout() {
        Some(own) => timeout.min(*own),
        None => timeout,
    };
    config.connect_timeout(timeout);
    Ok(config)
}

/// The rustls connector that verifies the server as `url`'s `sslmode` and
/// `sslrootcert` say (see the `tls` module for the semantics).
///
/// Errors: [`ConnectError::Tls`] naming the `sslrootcert` file when it
/// cannot be read or holds no certificate.
pub fn tls_connector(url: &ConnUrl) -> Result<TlsConnector, ConnectError> {
    tls::connector(url).map_err(|detail| ConnectError::Tls {
        url: url.clone(),
        detail,
    })
}

/// Opens one connection to `url` and drives it on a spawned tokio task
/// (which ends when the returned client is dropped).
///
/// Errors: [`ConnectError::Tls`] when TLS cannot be set up,
/// [`ConnectError::Connect`] when the server cannot be reached within
/// `timeout`, refuses us, or fails TLS verification.
pub async fn connect(url: &ConnUrl, timeout: Duration) -> Result<Client, ConnectError> {
    let config = pg_config(url, timeout)?;
    let tls = tls_connector(url)?;
    let (client, connection) = config
        .connect(tls)
        .await
        .map_err(|e| ConnectError::Connect {
            url: url.clone(),
            detail: describe(&e),
        })?;
    tokio::spawn(connection);
    Ok(client)
}
