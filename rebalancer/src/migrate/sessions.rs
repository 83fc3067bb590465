//! The shard connections of one migration run, kept open between steps.
//!
//! Every step used to open its own connections; under the fence that cost
//! a connection setup (a server process started, TLS and authentication)
//! per query group while writes to the range waited. Each connection a run
//! opens stays in [`Sessions`]; a [`Session`] is the exclusive use of one,
//! ended by dropping it, and the next [`Sessions::get`] for that shard takes
//! a free one that is still open before it connects anew.
//!
//! A session is only ever given up between statements: every setting the
//! mover makes is `SET LOCAL` (transaction-scoped), and a transaction or a
//! COPY dropped half-way is ended by the driver (ROLLBACK, CopyFail) before
//! anything sent later on the same connection, so a reused session starts
//! clean. Not a bb8 pool: a failed connect must surface the driver's own
//! error (which decides whether a step is retried), and a run needs no
//! pool sizing, health checks or reaping.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use postshard_router::{connect, ConnUrl, ConnectError};
use tokio::sync::{Mutex as InUse, OwnedMutexGuard};
use tokio_postgres::Client;

/// The exclusive use of one connection of [`Sessions`] (derefs to the
/// client); dropping it frees the connection for the next `get`.
pub(super) type Session = OwnedMutexGuard<Client>;

/// Every connection a run opened, per shard name.
#[derive(Default)]
pub(super) struct Sessions {
    open: Mutex<HashMap<String, Vec<Arc<InUse<Client>>>>>,
}

impl Sessions {
    /// A connection to shard `name` at `url`: a free one that is still
    /// open, or a new one (within `timeout`). Closed ones (a server
    /// restarted) are forgotten on the way.
    ///
    /// Errors: [`ConnectError`] from [`postshard_router::connect`].
    pub(super) async fn get(
        &self,
        name: &str,
        url: &ConnUrl,
        timeout: Duration,
    ) -> Result<Session, ConnectError> {
        {
            let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
            let list = open.entry(name.to_string()).or_default();
            list.retain(|c| c.try_lock().map_or(true, |c| !c.is_closed()));
            if let Some(free) = list
                .iter()
                .find_map(|c| Arc::clone(c).try_lock_owned().ok())
            {
                return Ok(free);
            }
        }
        let cell = Arc::new(InUse::new(connect(url, timeout).await?));
        let session = Arc::clone(&cell).lock_owned().await;
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name.to_string())
            .or_default()
            .push(cell);
        Ok(session)
    }
}
