//! Connection failures a pool's background connects report, so that a caller
//! waiting for a connection to a dead shard learns why at once instead of
//! waiting out the pool's timeout.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;
use tokio::time::Instant;

/// The latest failure of one shard's pool, shared with its bb8 error sink.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConnectFailures {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    latest: Mutex<Option<(Instant, String)>>,
    notify: Notify,
}

impl ConnectFailures {
    /// Waits for a failure recorded at or after `since` and returns its description.
    pub(crate) async fn after(&self, since: Instant) -> String {
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            // Register before looking, so a failure between the two is not missed.
            notified.as_mut().enable();
            if let Some((at, detail)) = &*self.latest() {
                if *at >= since {
                    return detail.clone();
                }
            }
            notified.await;
        }
    }

    fn latest(&self) -> std::sync::MutexGuard<'_, Option<(Instant, String)>> {
        self.inner
            .latest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl bb8::ErrorSink<tokio_postgres::Error> for ConnectFailures {
    fn sink(&self, error: tokio_postgres::Error) {
        *self.latest() = Some((Instant::now(), crate::router::describe(&error)));
        self.inner.notify.notify_waiters();
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<tokio_postgres::Error>> {
        Box::new(self.clone())
    }
}

impl fmt::Display for ConnectFailures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.latest() {
            Some((_, detail)) => f.write_str(detail),
            None => f.write_str("no failure recorded"),
        }
    }
}
