//! The shard connections of one migration run, kept open between steps.
//!
//! Every step used to open its own connections; under the fence that cost
//! a connection setup (a server process started, TLS and authentication)
//! per query group while writes to the range waited. Each connection a run
//! opens stays in [`Sessions`]; a [`Session`] is the exclusive use of one,
//! ended by dropping it, and the next [`Sessions::get`] for that shard takes
//! a free one that is still open before it connects anew.
//!
//! A session given up after success is clean: every setting the mover makes
//! is `SET LOCAL` (transaction-scoped) and every transaction has ended. One
//! given up half-way (an error, a dropped future) may still be running what
//! was abandoned — a COPY OUT streaming a whole range, a checksum — inside
//! an open transaction, which a reuse would queue behind and which this
//! run's own waits for older transactions would wait on; so after any
//! failed step the run calls [`Sessions::forget_idle`], closing every free
//! connection (the server then aborts what they ran). At most [`IDLE`]
//! free connections per shard are kept. Not a bb8 pool: a failed connect
//! must surface the driver's own error (which decides whether a step is
//! retried), and a run needs no pool sizing, health checks or reaping.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use postshard_router::{connect, ConnUrl, ConnectError};
use tokio::sync::{Mutex as InUse, OwnedMutexGuard};
use tokio_postgres::Client;

/// Free connections kept per shard (concurrent work may open more; the
/// extra ones are closed on the next `get`).
const IDLE: usize = 4;

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
            let mut free = 0;
            list.retain(|c| match c.try_lock() {
                Err(_) => true,
                Ok(c) if c.is_closed() => false,
                Ok(_) => {
                    free += 1;
                    free <= IDLE
                }
            });
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

    /// Closes every connection not in use (see the module docs: after a
    /// failure, one may still be running abandoned work).
    pub(super) fn forget_idle(&self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        for list in open.values_mut() {
            list.retain(|c| c.try_lock().is_err());
        }
    }
}
