//! A router that follows the control store: it registers with a lease,
//! loads the live map, swaps in every newer one and renews its lease.
//!
//! Two background tasks run per router (on the tokio runtime that built it,
//! aborted when the router is dropped):
//!
//! - *watch*: a dedicated connection `LISTEN`s on
//!   [`crate::live_map::EPOCH_CHANNEL`]; each notification, and every
//!   [`LiveOptions::poll`] without one, reloads. When that connection drops
//!   it reconnects after [`LiveOptions::reconnect_after`], `LISTEN`s again
//!   and reloads (catching flips it missed).
//! - *heartbeat*: every [`LiveOptions::renew_every`] it renews the lease,
//!   reporting the epoch of the map swapped in. Its local deadline is the
//!   time *before* it sent the renewal plus the lease, so it lapses no later
//!   than the control store's `lease_until`. When the control store says the
//!   lease lapsed, it registers again (epoch 0), reloads, then renews.
//!
//! While the local deadline is past, statements fail with
//! [`RouterError::LeaseLapsed`]: a router cut off from the control store
//! long enough for a mover to stop waiting for it routes nothing.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures_util::StreamExt;
use tokio::task::AbortHandle;
use tokio_postgres::AsyncMessage;

use crate::connect::{connect, pg_config, tls_connector};
use crate::live_map::{self, LiveMapError, EPOCH_CHANNEL};
use crate::map::env_var;
use crate::router::{describe, Routing};
use crate::url::ConnUrl;
use crate::RouterError;

/// How a router follows the control store.
#[derive(Debug, Clone, Copy)]
pub struct LiveOptions {
    /// Lease length; the mover waits at most this long (plus its margin)
    /// for a router that stopped answering. Default 10 s.
    pub lease: Duration,
    /// How often the lease is renewed. Default 3 s.
    pub renew_every: Duration,
    /// Whether to LISTEN for epoch flips (and poll). Off, the router learns
    /// a new epoch only from a `PS001` or a lapsed lease. Default on.
    pub watch: bool,
    /// Slow poll of the live epoch, in case a notification is lost. Default 5 s.
    pub poll: Duration,
    /// Pause before reconnecting a dropped listening connection. Default 500 ms.
    pub reconnect_after: Duration,
    /// How long a statement refused with `PS001` waits for a newer epoch
    /// before failing with [`RouterError::Moved`]. Default 30 s (a blocking
    /// move holds writes to its range while it copies).
    pub moved_wait: Duration,
    /// How often the control store is asked for a newer epoch meanwhile.
    /// Default 50 ms.
    pub moved_poll: Duration,
    /// Timeout of each connection and query to the control store. Default 5 s.
    pub control_timeout: Duration,
}

impl Default for LiveOptions {
    fn default() -> LiveOptions {
        LiveOptions {
            lease: Duration::from_secs(10),
            renew_every: Duration::from_secs(3),
            watch: true,
            poll: Duration::from_secs(5),
            reconnect_after: Duration::from_millis(500),
            moved_wait: Duration::from_secs(30),
            moved_poll: Duration::from_millis(50),
            control_timeout: Duration::from_secs(5),
        }
    }
}

/// A control-store failure as a router error.
fn control_error(e: impl std::fmt::Display) -> RouterError {
    RouterError::Control {
        detail: e.to_string(),
    }
}

/// The state a live router shares with its background tasks.
pub(crate) struct Live {
    control: ConnUrl,
    options: LiveOptions,
    id: String,
    routing: Arc<ArcSwap<Routing>>,
    base: Instant,
    /// Milliseconds after `base` at which the lease lapses locally.
    lease_until_ms: AtomicU64,
    /// The control connection for reloads and renewals (one at a time).
    client: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
    tasks: Mutex<Vec<AbortHandle>>,
    /// Woken whenever a newer map is swapped in, so a statement waiting
    /// out a move (PS001) retries as soon as the watch sees the flip
    /// rather than at its next poll.
    swapped: tokio::sync::Notify,
}

impl Live {
    /// Registers, loads the live map and starts the background tasks.
    pub(crate) async fn start(
        control: &ConnUrl,
        options: LiveOptions,
    ) -> Result<(Arc<ArcSwap<Routing>>, Arc<Live>), RouterError> {
        if options.renew_every >= options.lease {
            return Err(control_error(format!(
                "renew_every ({:?}) must be shorter than the lease ({:?})",
                options.renew_every, options.lease
            )));
        }
        let client = tokio::time::timeout(
            options.control_timeout,
            connect(control, options.control_timeout),
        )
        .await
        .map_err(|_| {
            control_error(format!(
                "{control}: no connection within {:?}",
                options.control_timeout
            ))
        })?
        .map_err(control_error)?;
        let id = router_id();
        let registered_at = Instant::now();
        live_map::register(&client, &id, options.lease)
            .await
            .map_err(control_error)?;
        let map = live_map::load_live(&client, &env_var)
            .await
            .map_err(control_error)?;
        let epoch = map.version();
        let routing = Arc::new(ArcSwap::from_pointee(Routing::new(map, None)?));
        let live = Arc::new(Live {
            control: control.clone(),
            options,
            id,
            routing: Arc::clone(&routing),
            base: registered_at,
            lease_until_ms: AtomicU64::new(0),
            client: tokio::sync::Mutex::new(None),
            tasks: Mutex::new(Vec::new()),
            swapped: tokio::sync::Notify::new(),
        });
        let sent = Instant::now();
        if !live_map::renew(&client, &live.id, epoch, options.lease)
            .await
            .map_err(control_error)?
        {
            return Err(control_error("the lease lapsed while the router started"));
        }
        live.extend_lease(sent);
        *live.client.lock().await = Some(client);
        let mut tasks = Vec::with_capacity(2);
        let heartbeat = Arc::clone(&live);
        tasks.push(tokio::spawn(async move { heartbeat.heartbeat_loop().await }).abort_handle());
        if options.watch {
            let watch = Arc::clone(&live);
            tasks.push(tokio::spawn(async move { watch.watch_loop().await }).abort_handle());
        }
        *live.tasks.lock().unwrap_or_else(PoisonError::into_inner) = tasks;
        Ok((routing, live))
    }

    /// Stops the background tasks.
    pub(crate) fn stop(&self) {
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            task.abort();
        }
    }

    /// Stops the tasks and removes the registration.
    pub(crate) async fn deregister(&self) {
        self.stop();
        let guard = self.client.lock().await;
        if let Some(client) = guard.as_ref() {
            let _ = tokio::time::timeout(
                self.options.control_timeout,
                live_map::deregister(client, &self.id),
            )
            .await;
        }
    }

    /// `Err(LeaseLapsed)` once the local lease deadline has passed.
    #[inline]
    pub(crate) fn check_lease(&self) -> Result<(), RouterError> {
        let now = millis(self.base.elapsed());
        let until = self.lease_until_ms.load(Ordering::Acquire);
        if now <= until {
            Ok(())
        } else {
            Err(RouterError::LeaseLapsed {
                lapsed_for: Duration::from_millis(now - until),
            })
        }
    }

    /// Extends the local lease to `sent + lease`, `sent` being a moment
    /// before the renewal reached the control store.
    fn extend_lease(&self, sent: Instant) {
        let until = millis(sent.saturating_duration_since(self.base) + self.options.lease);
        self.lease_until_ms.fetch_max(until, Ordering::AcqRel);
    }

    fn epoch(&self) -> u64 {
        self.routing.load().map().version()
    }

    /// Waits until the router routes by an epoch newer than `epoch`: woken
    /// by the watch's swap, and asking the control store every
    /// [`LiveOptions::moved_poll`] as well; false when none came within
    /// [`LiveOptions::moved_wait`].
    pub(crate) async fn wait_for_epoch_after(&self, epoch: u64) -> bool {
        let deadline = tokio::time::Instant::now() + self.options.moved_wait;
        loop {
            let swapped = self.swapped.notified();
            tokio::pin!(swapped);
            // Registered before looking, so a swap between the two wakes us.
            swapped.as_mut().enable();
            if self.epoch() > epoch {
                return true;
            }
            let _ = self.reload().await;
            if self.epoch() > epoch {
                return true;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return false;
            }
            tokio::select! {
                () = tokio::time::sleep(self.options.moved_poll.min(deadline - now)) => {}
                () = &mut swapped => {}
            }
        }
    }

    /// Swaps in the live map if it is newer; returns the epoch routed by.
    pub(crate) async fn reload(&self) -> Result<u64, RouterError> {
        let mut guard = self.client.lock().await;
        let result = self.reload_with(&mut guard).await;
        if result.is_err() {
            *guard = None;
        }
        result
    }

    /// The control connection in `slot`, (re)connected when needed.
    async fn control_client<'a>(
        &self,
        slot: &'a mut Option<tokio_postgres::Client>,
    ) -> Result<&'a tokio_postgres::Client, RouterError> {
        if slot.as_ref().is_none_or(|c| c.is_closed()) {
            *slot = None;
            let client = self
                .timed(async {
                    connect(&self.control, self.options.control_timeout)
                        .await
                        .map_err(control_error)
                })
                .await?;
            *slot = Some(client);
        }
        slot.as_ref()
            .ok_or_else(|| control_error("no control connection"))
    }

    async fn reload_with(
        &self,
        slot: &mut Option<tokio_postgres::Client>,
    ) -> Result<u64, RouterError> {
        let client = self.control_client(slot).await?;
        let current = self.epoch();
        let live = self
            .timed(async { live_map::live_epoch(client).await.map_err(control_error) })
            .await?
            .ok_or_else(|| control_error(LiveMapError::NotSeeded))?;
        if live <= current {
            return Ok(current);
        }
        let map = self
            .timed(async {
                live_map::load_live(client, &env_var)
                    .await
                    .map_err(control_error)
            })
            .await?;
        if map.version() > self.epoch() {
            let next = Routing::new(map, Some(&self.routing.load()))?;
            self.routing.store(Arc::new(next));
            self.swapped.notify_waiters();
        }
        Ok(self.epoch())
    }

    /// Runs a control-store call with [`LiveOptions::control_timeout`].
    async fn timed<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, RouterError>>,
    ) -> Result<T, RouterError> {
        tokio::time::timeout(self.options.control_timeout, call)
            .await
            .unwrap_or_else(|_| {
                Err(control_error(format!(
                    "no answer within {:?}",
                    self.options.control_timeout
                )))
            })
    }

    /// Renews the lease; when it had lapsed, registers again, reloads and
    /// then renews (see the module docs).
    async fn heartbeat(&self) -> Result<(), RouterError> {
        let mut guard = self.client.lock().await;
        let result = self.heartbeat_with(&mut guard).await;
        if result.is_err() {
            *guard = None;
        }
        result
    }

    async fn heartbeat_with(
        &self,
        slot: &mut Option<tokio_postgres::Client>,
    ) -> Result<(), RouterError> {
        let lease = self.options.lease;
        let client = self.control_client(slot).await?;
        let sent = Instant::now();
        let epoch = self.epoch();
        let renewed = self
            .timed(async {
                live_map::renew(client, &self.id, epoch, lease)
                    .await
                    .map_err(control_error)
            })
            .await?;
        if renewed {
            self.extend_lease(sent);
            return Ok(());
        }
        let sent = Instant::now();
        self.timed(async {
            live_map::register(client, &self.id, lease)
                .await
                .map_err(control_error)
        })
        .await?;
        self.reload_with(slot).await?;
        let client = self.control_client(slot).await?;
        let epoch = self.epoch();
        let renewed = self
            .timed(async {
                live_map::renew(client, &self.id, epoch, lease)
                    .await
                    .map_err(control_error)
            })
            .await?;
        if renewed {
            self.extend_lease(sent);
        }
        Ok(())
    }

    async fn heartbeat_loop(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.options.renew_every).await;
            // A failure only lets the lease run down; the next beat retries.
            let _ = self.heartbeat().await;
        }
    }

    async fn watch_loop(self: Arc<Self>) {
        loop {
            // Returns when the listening connection drops or fails.
            let _ = self.listen().await;
            tokio::time::sleep(self.options.reconnect_after).await;
        }
    }

    /// One listening connection's life: LISTEN, reload, then reload on
    /// every notification and every poll interval until it drops.
    async fn listen(&self) -> Result<(), RouterError> {
        // The listening connection needs the driver's notification stream,
        // which `crate::connect` does not expose; it uses the same settings
        // and the same TLS verification.
        let config =
            pg_config(&self.control, self.options.control_timeout).map_err(control_error)?;
        let tls = tls_connector(&self.control).map_err(control_error)?;
        let (client, mut connection) = self
            .timed(async {
                config
                    .connect(tls)
                    .await
                    .map_err(|e| control_error(describe(&e)))
            })
            .await?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let driver = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(Ok(message)) = messages.next().await {
                if let AsyncMessage::Notification(_) = message {
                    if tx.send(()).is_err() {
                        break;
                    }
                }
            }
        });
        let result = async {
            self.timed(async {
                client
                    .batch_execute(&format!("LISTEN {EPOCH_CHANNEL}"))
                    .await
                    .map_err(|e| control_error(describe(&e)))
            })
            .await?;
            let _ = self.reload().await;
            loop {
                tokio::select! {
                    got = rx.recv() => match got {
                        Some(()) => { let _ = self.reload().await; }
                        None => return Ok(()),
                    },
                    () = tokio::time::sleep(self.options.poll) => { let _ = self.reload().await; }
                }
            }
        }
        .await;
        driver.abort();
        result
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A router id unique across hosts and restarts: process id, start time and
/// a per-process random value.
fn router_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(nanos);
    format!("router-{}-{:016x}", std::process::id(), hasher.finish())
}
