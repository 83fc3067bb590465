//! Each move's latest progress, recorded in the control store so that
//! `postshard status` in another terminal shows what the running `apply`
//! shows: rows copied of the estimate, rows/s, ETA and the catch-up backlog.
//!
//! Best effort by design: the record is a display aid, so a failed write is
//! skipped (the next one replaces it) and never stops a move. Writes go
//! through a task of their own, on a control connection of its own, at most
//! once per move per [`EVERY`], so a move never waits for them.

use std::collections::BTreeMap;
use std::time::Duration;

use postshard_router::{connect, ConnUrl};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_postgres::Client;

use super::Event;
use crate::control::Migration;

/// How often a move's record is rewritten while it changes.
const EVERY: Duration = Duration::from_secs(1);

/// The sending end of the recorder; records nothing when its connection
/// could not be made.
pub(super) struct ProgressLog {
    events: Option<mpsc::UnboundedSender<Event>>,
}

impl ProgressLog {
    /// Starts recording `migration`'s progress through a new connection to
    /// the control store at `url` (within `timeout`); the recorder ends,
    /// after a last write, when this is dropped.
    pub(super) async fn start(url: &ConnUrl, timeout: Duration, migration: &Migration) -> Self {
        let Ok(client) = connect(url, timeout).await else {
            return ProgressLog { events: None };
        };
        let (events, received) = mpsc::unbounded_channel();
        tokio::spawn(record(client, migration.clone(), received));
        ProgressLog {
            events: Some(events),
        }
    }

    /// Passes `e` on when it reports a move's progress (`progress`, `lag`).
    pub(super) fn note(&self, e: &Event) {
        if e.move_index.is_some() && matches!(e.event.as_str(), "progress" | "lag") {
            if let Some(events) = &self.events {
                let _ = events.send(e.clone());
            }
        }
    }
}

/// One move's progress as this process saw it.
#[derive(Debug, Default)]
struct MoveProgress {
    rows: Option<u64>,
    estimate: Option<u64>,
    /// When and at how many rows this process first saw the copy (the
    /// rate's origin; reset when a retried copy starts over).
    first: Option<(Instant, u64)>,
    backlog: Option<u64>,
    changed: bool,
}

impl MoveProgress {
    fn update(&mut self, e: &Event, now: Instant) {
        let number = |k: &str| e.detail.get(k).and_then(Value::as_u64);
        if let Some(rows) = number("rows") {
            if self.rows.is_some_and(|before| rows < before) {
                self.first = None;
            }
            self.first.get_or_insert((now, rows));
            self.rows = Some(rows);
            self.estimate = number("estimate").or(self.estimate);
        }
        if let Some(backlog) = number("backlog") {
            self.backlog = Some(backlog);
        }
        self.changed = true;
    }

    /// `{"rows", "estimate", "rows_per_sec", "eta_s", "backlog"}`, each
    /// when known.
    fn detail(&self, now: Instant) -> Value {
        let mut out = serde_json::Map::new();
        let mut put = |k: &str, v: Value| {
            out.insert(k.to_string(), v);
        };
        if let Some(rows) = self.rows {
            put("rows", json!(rows));
            let rate = self.first.and_then(|(at, from)| {
                let secs = now.duration_since(at).as_secs_f64();
                (secs > 0.0 && rows > from).then(|| (rows - from) as f64 / secs)
            });
            if let Some(rate) = rate {
                put("rows_per_sec", json!(rate.round()));
                if let Some(left) = self.estimate.and_then(|e| e.checked_sub(rows)) {
                    put("eta_s", json!((left as f64 / rate).ceil()));
                }
            }
        }
        if let Some(estimate) = self.estimate {
            put("estimate", json!(estimate));
        }
        if let Some(backlog) = self.backlog {
            put("backlog", json!(backlog));
        }
        Value::Object(out)
    }
}

/// The recorder: folds events into each move's progress and writes the
/// changed ones every [`EVERY`], and once more when the sender is dropped.
async fn record(
    client: Client,
    migration: Migration,
    mut received: mpsc::UnboundedReceiver<Event>,
) {
    let mut moves: BTreeMap<u32, MoveProgress> = BTreeMap::new();
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            e = received.recv() => match e {
                Some(e) => {
                    if let Some(index) = e.move_index {
                        moves.entry(index).or_default().update(&e, Instant::now());
                    }
                }
                None => {
                    write_changed(&client, &migration, &mut moves).await;
                    return;
                }
            },
            _ = tick.tick() => write_changed(&client, &migration, &mut moves).await,
        }
    }
}

async fn write_changed(
    client: &Client,
    migration: &Migration,
    moves: &mut BTreeMap<u32, MoveProgress>,
) {
    let now = Instant::now();
    for (index, progress) in moves.iter_mut().filter(|(_, p)| p.changed) {
        let detail = progress.detail(now).to_string();
        // Best effort (see the module docs): the next write replaces it.
        if migration
            .record_progress(client, *index, &detail)
            .await
            .is_ok()
        {
            progress.changed = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str, detail: Value) -> Event {
        Event {
            migration: 1,
            move_index: Some(0),
            event: name.into(),
            detail,
        }
    }

    #[test]
    fn rate_and_eta_come_from_rows_seen_since_the_first_report() {
        let t0 = Instant::now();
        let mut p = MoveProgress::default();
        p.update(
            &event("progress", json!({"rows": 100, "estimate": 1100})),
            t0,
        );
        p.update(&event("progress", json!({"rows": 300})), t0);
        p.update(&event("lag", json!({"backlog": 7, "fenced": false})), t0);
        let detail = p.detail(t0 + Duration::from_secs(2));
        assert_eq!(
            detail,
            json!({"rows": 300, "estimate": 1100, "rows_per_sec": 100.0, "eta_s": 8.0, "backlog": 7})
        );
    }

    #[test]
    fn a_copy_that_starts_over_restarts_the_rate() {
        let t0 = Instant::now();
        let mut p = MoveProgress::default();
        p.update(&event("progress", json!({"rows": 500})), t0);
        let later = t0 + Duration::from_secs(5);
        p.update(&event("progress", json!({"rows": 0})), later);
        p.update(&event("progress", json!({"rows": 40})), later);
        let detail = p.detail(later + Duration::from_secs(2));
        assert_eq!(detail["rows"], 40);
        assert_eq!(detail["rows_per_sec"], 20.0);
        assert!(detail.get("eta_s").is_none(), "no estimate: {detail}");
    }
}
