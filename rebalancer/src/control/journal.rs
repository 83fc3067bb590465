//! The migration journal: one row per step, appended before the step runs.
//!
//! A migration has an id, the epoch its plan was made for, a mode and the
//! plan text. Each step is `(seq, move_index, phase, detail)`: `move_index`
//! names the plan's move (none for migration-wide steps such as a flip per
//! plan), `phase` says what is about to be done, `detail` holds what resume
//! needs (e.g. the epoch flipped to) as JSON. Resume reads
//! [`Migration::last_phases`] and continues every move from its last phase:
//! each phase's action is idempotent, so redoing the last journaled step
//! after a crash is always safe.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use postshard_router::live_map::CONTROL_SCHEMA;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::{epoch_of, epoch_param, query_error, ControlError};

/// A phase of one move, in the order a move goes through them. Online
/// moves (capture, backfill, catch-up) use the same journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// Recorded with the plan; nothing done yet.
    Planned,
    /// The target is being prepared (tables, fence state).
    Prepared,
    /// Change capture on the source is being switched on (online mode).
    Capturing,
    /// The range is being fenced on the source.
    Fenced,
    /// Rows are being copied to the target.
    Copied,
    /// Captured changes are being replayed (online mode).
    CaughtUp,
    /// Both sides are being compared.
    Verified,
    /// Ownership is being flipped (control store epoch + 1).
    Flipped,
    /// Waiting for routers to acknowledge the new epoch.
    RoutersAcked,
    /// Moved rows and temporary state are being removed from the source.
    Cleaned,
    /// The move is being undone.
    Aborted,
}

impl Phase {
    /// Every phase, in order.
    pub const ALL: [Phase; 11] = [
        Phase::Planned,
        Phase::Prepared,
        Phase::Capturing,
        Phase::Fenced,
        Phase::Copied,
        Phase::CaughtUp,
        Phase::Verified,
        Phase::Flipped,
        Phase::RoutersAcked,
        Phase::Cleaned,
        Phase::Aborted,
    ];

    /// The name stored in the journal.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Planned => "planned",
            Phase::Prepared => "prepared",
            Phase::Capturing => "capturing",
            Phase::Fenced => "fenced",
            Phase::Copied => "copied",
            Phase::CaughtUp => "caught_up",
            Phase::Verified => "verified",
            Phase::Flipped => "flipped",
            Phase::RoutersAcked => "routers_acked",
            Phase::Cleaned => "cleaned",
            Phase::Aborted => "aborted",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Phase {
    type Err = ControlError;
    fn from_str(s: &str) -> Result<Phase, ControlError> {
        Phase::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| ControlError::Corrupt {
                what: format!("unknown journal phase `{s}`"),
            })
    }
}

/// Where a migration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationState {
    /// Running or interrupted: resume or abort it.
    Active,
    /// Completed.
    Done,
    /// Undone.
    Aborted,
}

impl MigrationState {
    fn as_str(self) -> &'static str {
        match self {
            MigrationState::Active => "active",
            MigrationState::Done => "done",
            MigrationState::Aborted => "aborted",
        }
    }

    fn parse(s: &str) -> Result<MigrationState, ControlError> {
        match s {
            "active" => Ok(MigrationState::Active),
            "done" => Ok(MigrationState::Done),
            "aborted" => Ok(MigrationState::Aborted),
            other => Err(ControlError::Corrupt {
                what: format!("unknown migration state `{other}`"),
            }),
        }
    }
}

/// A migration as recorded in the control store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// Its id.
    pub id: i64,
    /// The live epoch the plan was made for.
    pub base_epoch: u64,
    /// `blocking` or `online`.
    pub mode: String,
    /// The plan file's text.
    pub plan: String,
    /// Where it stands.
    pub state: MigrationState,
}

/// One journaled step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Order within the migration, from 1.
    pub seq: i32,
    /// The plan's move it belongs to; none for migration-wide steps.
    pub move_index: Option<u32>,
    /// What was about to be done.
    pub phase: Phase,
    /// What resume needs, as JSON text.
    pub detail: String,
}

impl Migration {
    /// Records a new active migration of `plan` made for `base_epoch`.
    ///
    /// Errors: [`ControlError::MigrationActive`] (nothing recorded) when
    /// another migration is active.
    pub async fn begin(
        client: &Client,
        base_epoch: u64,
        mode: &str,
        plan: &str,
    ) -> Result<Migration, ControlError> {
        let inserted = client
            .query_one(
                &format!(
                    "INSERT INTO {CONTROL_SCHEMA}.migrations (base_epoch, mode, plan) \
                     VALUES ($1, $2, $3) RETURNING id"
                ),
                &[&epoch_param(base_epoch), &mode, &plan],
            )
            .await;
        match inserted {
            Ok(row) => Ok(Migration {
                id: row.get(0),
                base_epoch,
                mode: mode.to_string(),
                plan: plan.to_string(),
                state: MigrationState::Active,
            }),
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                let active = Migration::active(client).await?;
                Err(ControlError::MigrationActive {
                    id: active.map_or(0, |m| m.id),
                })
            }
            Err(e) => Err(query_error("recording the migration")(e)),
        }
    }

    /// The active migration, if any.
    pub async fn active(client: &Client) -> Result<Option<Migration>, ControlError> {
        let rows = Migration::list(client).await?;
        Ok(rows.into_iter().find(|m| m.state == MigrationState::Active))
    }

    /// Migration `id`.
    pub async fn get(client: &Client, id: i64) -> Result<Migration, ControlError> {
        Migration::list(client)
            .await?
            .into_iter()
            .find(|m| m.id == id)
            .ok_or(ControlError::NoMigration { id })
    }

    /// Every migration, oldest first.
    pub async fn list(client: &Client) -> Result<Vec<Migration>, ControlError> {
        let rows = client
            .query(
                &format!(
                    "SELECT id, base_epoch, mode, plan, state FROM {CONTROL_SCHEMA}.migrations \
                     ORDER BY id"
                ),
                &[],
            )
            .await
            .map_err(query_error("listing migrations"))?;
        rows.iter()
            .map(|r| {
                Ok(Migration {
                    id: r.get(0),
                    base_epoch: epoch_of(r.get(1)),
                    mode: r.get(2),
                    plan: r.get(3),
                    state: MigrationState::parse(r.get(4))?,
                })
            })
            .collect()
    }

    /// Appends a step (before doing it); returns its `seq`. `detail` must be
    /// JSON text (`"{}"` when there is nothing to record).
    ///
    /// Errors: [`ControlError::NoMigration`] unless the migration is active.
    pub async fn append(
        &self,
        client: &Client,
        move_index: Option<u32>,
        phase: Phase,
        detail: &str,
    ) -> Result<i32, ControlError> {
        let move_index = move_index.map(|m| i32::try_from(m).unwrap_or(i32::MAX));
        let row = client
            .query_opt(
                &format!(
                    "INSERT INTO {CONTROL_SCHEMA}.journal (migration_id, seq, move_index, phase, detail) \
                     SELECT m.id, coalesce((SELECT max(seq) FROM {CONTROL_SCHEMA}.journal j \
                     WHERE j.migration_id = m.id), 0) + 1, $2, $3, $4::text::jsonb \
                     FROM {CONTROL_SCHEMA}.migrations m WHERE m.id = $1 AND m.state = 'active' \
                     RETURNING seq"
                ),
                &[&self.id, &move_index, &phase.as_str(), &detail],
            )
            .await
            .map_err(query_error("appending a journal step"))?;
        row.map(|r| r.get(0))
            .ok_or(ControlError::NoMigration { id: self.id })
    }

    /// Adds `rows` (JSON text: rows copied per table) to the detail of move
    /// `move_index`'s latest `copied` step, once that copy is done: the
    /// journal's record of what the copy moved (resume does not read it).
    ///
    /// Errors: [`ControlError::Query`].
    pub async fn record_copied(
        &self,
        client: &Client,
        move_index: u32,
        rows: &str,
    ) -> Result<(), ControlError> {
        let move_index = i32::try_from(move_index).unwrap_or(i32::MAX);
        client
            .execute(
                &format!(
                    "UPDATE {CONTROL_SCHEMA}.journal \
                     SET detail = detail || jsonb_build_object('rows', $3::text::jsonb) \
                     WHERE migration_id = $1 AND seq = (SELECT max(seq) FROM {CONTROL_SCHEMA}.journal \
                     WHERE migration_id = $1 AND move_index = $2 AND phase = 'copied')"
                ),
                &[&self.id, &move_index, &rows],
            )
            .await
            .map_err(query_error("recording rows copied"))?;
        Ok(())
    }

    /// Records move `move_index`'s latest progress (`detail`: JSON text),
    /// replacing the one before: what `status` shows of a running move
    /// between journal steps.
    ///
    /// Errors: [`ControlError::Query`] (no `progress` table: a control
    /// store `init` has not updated yet).
    pub async fn record_progress(
        &self,
        client: &Client,
        move_index: u32,
        detail: &str,
    ) -> Result<(), ControlError> {
        let move_index = i32::try_from(move_index).unwrap_or(i32::MAX);
        client
            .execute(
                &format!(
                    "INSERT INTO {CONTROL_SCHEMA}.progress (migration_id, move_index, detail) \
                     VALUES ($1, $2, $3::text::jsonb) ON CONFLICT (migration_id, move_index) \
                     DO UPDATE SET detail = EXCLUDED.detail, at = now()"
                ),
                &[&self.id, &move_index, &detail],
            )
            .await
            .map_err(query_error("recording progress"))?;
        Ok(())
    }

    /// Each move's latest recorded progress: (move, detail as JSON text,
    /// milliseconds since it was recorded); none from a control store
    /// without a `progress` table.
    pub async fn progress(&self, client: &Client) -> Result<Vec<(u32, String, i64)>, ControlError> {
        let rows = client
            .query(
                &format!(
                    "SELECT move_index, detail::text, \
                     (extract(epoch FROM clock_timestamp() - at) * 1000)::int8 \
                     FROM {CONTROL_SCHEMA}.progress WHERE migration_id = $1 ORDER BY move_index"
                ),
                &[&self.id],
            )
            .await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => return Ok(Vec::new()),
            Err(e) => return Err(query_error("reading progress")(e)),
        };
        Ok(rows
            .iter()
            .filter_map(|r| {
                let index = u32::try_from(r.get::<_, i32>(0)).ok()?;
                Some((index, r.get(1), r.get(2)))
            })
            .collect())
    }

    /// Every step, in order.
    pub async fn steps(&self, client: &Client) -> Result<Vec<Step>, ControlError> {
        let rows = client
            .query(
                &format!(
                    "SELECT seq, move_index, phase, detail::text FROM {CONTROL_SCHEMA}.journal \
                     WHERE migration_id = $1 ORDER BY seq"
                ),
                &[&self.id],
            )
            .await
            .map_err(query_error("reading the journal"))?;
        rows.iter()
            .map(|r| {
                Ok(Step {
                    seq: r.get(0),
                    move_index: r
                        .get::<_, Option<i32>>(1)
                        .and_then(|m| u32::try_from(m).ok()),
                    phase: r.get::<_, &str>(2).parse()?,
                    detail: r.get(3),
                })
            })
            .collect()
    }

    /// The last journaled step of each move (key `None`: migration-wide
    /// steps): where resume continues.
    pub async fn last_phases(
        &self,
        client: &Client,
    ) -> Result<BTreeMap<Option<u32>, Step>, ControlError> {
        let mut last = BTreeMap::new();
        for step in self.steps(client).await? {
            last.insert(step.move_index, step);
        }
        Ok(last)
    }

    /// Ends the migration as done or aborted.
    pub async fn finish(
        &mut self,
        client: &Client,
        state: MigrationState,
    ) -> Result<(), ControlError> {
        let updated = client
            .execute(
                &format!(
                    "UPDATE {CONTROL_SCHEMA}.migrations SET state = $2, finished_at = now() \
                     WHERE id = $1 AND state = 'active'"
                ),
                &[&self.id, &state.as_str()],
            )
            .await
            .map_err(query_error("ending the migration"))?;
        if updated == 0 {
            return Err(ControlError::NoMigration { id: self.id });
        }
        self.state = state;
        Ok(())
    }
}
