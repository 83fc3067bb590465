//! Change capture on a source shard for online moves: which keys of the
//! moving ranges changed since the backfill's snapshot, and replaying them.
//!
//! [`on`] installs, on every sharded table, an `AFTER INSERT OR UPDATE OR
//! DELETE … FOR EACH ROW` trigger ([`TRIGGER`]) whose function appends the
//! row's key to `postshard.changelog (seq bigserial, key bigint)` when the
//! key's token lies in the moving ranges (compiled into the function as a
//! constant `int8multirange`, as the fence does): the key, not the row, so
//! a replay copies the key's *current* rows of every table, whatever
//! happened in between. An UPDATE that changes the key records both keys.
//! The trigger is ordinary (origin): the mover's replica-role sessions do
//! not capture their own writes. Writes outside the ranges pay one hash and
//! one range test; writes inside also one insert into the changelog.
//!
//! [`replay_batch`] takes the oldest changelog rows of a range and, in one
//! repeatable-read transaction on the source (so the changelog rows and the
//! data rows come from the same snapshot), copies those keys' rows of every
//! table to the target (one target transaction in replica role that deletes
//! the keys' rows first), then deletes exactly those changelog rows and
//! commits the source last. Replaying a key again is harmless, so a crash
//! anywhere repeats at most one batch. Rows are never tracked by "seq >
//! last": sequence numbers are taken at insert, not commit, so a smaller
//! one can become visible later; deleting the replayed rows leaves those
//! for the next batch.
//!
//! [`off`] drops the triggers, their functions and the changelog.
//! Installing and dropping are DDL that take a short lock on each table
//! (waiting for running writers to it); both run with a `lock_timeout` and
//! retry, so app writes never queue behind them for longer than that.

use std::fmt::Write as _;
use std::time::Duration;

use postshard_router::describe_db_error;
use postshard_router::map::Table;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, GenericClient};

use crate::fence::{self, trigger_function, SHARD_SCHEMA};
use crate::range::copy::copy_keys;
use crate::range::{CopyError, Endpoint, REPLICA_ROLE};
use crate::token_range::{multirange_literal, TokenRange};

/// Name of the capture trigger on every sharded table of a source.
pub const TRIGGER: &str = "zz_postshard_capture";
/// The changelog table (in [`SHARD_SCHEMA`]).
pub const CHANGELOG: &str = "changelog";
/// How long one attempt at the capture DDL waits for a table lock: every
/// write to the table queues behind a waiting attempt, so this bounds the
/// stall capture DDL can cause (it retries instead of waiting longer). A
/// forum's write transactions last a millisecond or two; at 50 ms one
/// timed-out attempt in the move bench showed as a 52 ms write, inside the
/// moving range or not.
const LOCK_TIMEOUT: &str = "10ms";

/// A failure of change capture on a shard.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// A statement failed.
    #[error("shard {shard}: capture: {what}: {detail}")]
    Query {
        /// The shard.
        shard: String,
        /// What was being done.
        what: &'static str,
        /// The server's or driver's message.
        detail: String,
        /// Whether the connection was lost or refused (worth a retry).
        lost: bool,
    },
    /// The tables stayed locked by other transactions for too long.
    #[error("shard {shard}: capture: {what}: the sharded tables stayed locked for {waited:?}")]
    Locked {
        /// The shard.
        shard: String,
        /// Installing or dropping.
        what: &'static str,
        /// How long we tried.
        waited: Duration,
    },
    /// Copying the changed keys failed (the target rolled back).
    #[error(transparent)]
    Copy(#[from] CopyError),
}

impl CaptureError {
    /// Whether the failure is a lost or refused connection (worth a retry).
    pub fn is_connection(&self) -> bool {
        match self {
            CaptureError::Query { lost, .. } => *lost,
            CaptureError::Copy(CopyError::Query { source, .. }) => source.as_db_error().is_none(),
            _ => false,
        }
    }
}

fn query_error(shard: &str, what: &'static str, e: &tokio_postgres::Error) -> CaptureError {
    CaptureError::Query {
        shard: shard.to_string(),
        what,
        detail: describe_db_error(e),
        lost: e.is_closed()
            || e.as_db_error()
                .is_none_or(|d| d.code().code().starts_with("57P")),
    }
}

fn function_name(table: &Table) -> String {
    format!("{SHARD_SCHEMA}.{}_c", trigger_function(table))
}

/// The DDL switching capture on for `ranges` (tokens under `seed`).
fn on_sql(tables: &[Table], seed: i64, ranges: &[TokenRange]) -> String {
    let s = SHARD_SCHEMA;
    let ranges = multirange_literal(ranges);
    let mut sql = format!(
        "CREATE TABLE IF NOT EXISTS {s}.{CHANGELOG} (seq bigserial PRIMARY KEY, key bigint NOT NULL);\n"
    );
    for table in tables {
        let key = table.sql_key();
        let test = |row: &str| {
            format!("hashint8extended({row}.{key}::int8, {seed}) <@ '{ranges}'::int8multirange")
        };
        // Writing to a String cannot fail.
        let _ = write!(
            sql,
            "CREATE OR REPLACE FUNCTION {func}() RETURNS trigger LANGUAGE plpgsql AS $postshard$
            BEGIN
                IF TG_OP <> 'INSERT' AND {old} THEN
                    INSERT INTO {s}.{CHANGELOG} (key) VALUES (OLD.{key});
                END IF;
                IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.{key} IS DISTINCT FROM OLD.{key}) THEN
                    IF {new} THEN
                        INSERT INTO {s}.{CHANGELOG} (key) VALUES (NEW.{key});
                    END IF;
                END IF;
                RETURN NULL;
            END
            $postshard$;
            CREATE OR REPLACE TRIGGER {TRIGGER} AFTER INSERT OR UPDATE OR DELETE ON {name}
                FOR EACH ROW EXECUTE FUNCTION {func}();\n",
            func = function_name(table),
            old = test("OLD"),
            new = test("NEW"),
            name = table.sql_name(),
        );
    }
    sql
}

/// The DDL switching capture off.
fn off_sql(tables: &[Table]) -> String {
    let mut sql = String::new();
    for table in tables {
        // Writing to a String cannot fail.
        let _ = writeln!(
            sql,
            "DROP TRIGGER IF EXISTS {TRIGGER} ON {name}; DROP FUNCTION IF EXISTS {func}();",
            name = table.sql_name(),
            func = function_name(table),
        );
    }
    let _ = writeln!(sql, "DROP TABLE IF EXISTS {SHARD_SCHEMA}.{CHANGELOG};");
    sql
}

/// Runs `sql` in one transaction with a short `lock_timeout`, retrying
/// while a table lock is not granted, for up to `wait`.
async fn ddl(
    client: &Client,
    shard: &str,
    what: &'static str,
    sql: &str,
    wait: Duration,
) -> Result<(), CaptureError> {
    let start = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(20);
    let script = format!("BEGIN; SET LOCAL lock_timeout = '{LOCK_TIMEOUT}';\n{sql}COMMIT;");
    loop {
        match client.batch_execute(&script).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                // The failed transaction must end before the next attempt.
                let _ = client.batch_execute("ROLLBACK").await;
                if e.code() != Some(&SqlState::LOCK_NOT_AVAILABLE) {
                    return Err(query_error(shard, what, &e));
                }
                if start.elapsed() >= wait {
                    return Err(CaptureError::Locked {
                        shard: shard.to_string(),
                        what,
                        waited: start.elapsed(),
                    });
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
        }
    }
}

/// Switches capture on for `ranges` on the source behind `client`
/// (idempotent; `ranges` replaces what an earlier call captured), then waits
/// until every transaction running at that moment has ended, so that every
/// write to `ranges` not captured has committed before this returns: a
/// snapshot taken afterwards sees it.
///
/// Errors: [`CaptureError::Locked`] when the tables stay locked for `wait`;
/// [`CaptureError::Query`] (older transactions still running after `wait`
/// included; capture stays on).
pub async fn on(
    client: &Client,
    shard: &str,
    tables: &[Table],
    seed: i64,
    ranges: &[TokenRange],
    wait: Duration,
) -> Result<(), CaptureError> {
    ddl(
        client,
        shard,
        "switching capture on",
        &on_sql(tables, seed, ranges),
        wait,
    )
    .await?;
    fence::wait_for_older_transactions(client, wait)
        .await
        .map_err(|e| CaptureError::Query {
            shard: shard.to_string(),
            what: "waiting for writers older than capture",
            detail: e.to_string(),
            lost: false,
        })
}

/// Switches capture off: triggers, functions and the changelog are dropped
/// (idempotent).
///
/// Errors: [`CaptureError::Locked`], [`CaptureError::Query`].
pub async fn off(
    client: &Client,
    shard: &str,
    tables: &[Table],
    wait: Duration,
) -> Result<(), CaptureError> {
    ddl(
        client,
        shard,
        "switching capture off",
        &off_sql(tables),
        wait,
    )
    .await
}

fn changelog_filter(seed: i64, range: TokenRange) -> String {
    range.predicate(
        &Table {
            name: format!("{SHARD_SCHEMA}.{CHANGELOG}"),
            key: "key".into(),
        },
        seed,
    )
}

/// Captured changes of `range` not yet replayed (0 when capture is off).
///
/// Errors: [`CaptureError::Query`].
pub async fn backlog(
    client: &Client,
    shard: &str,
    seed: i64,
    range: TokenRange,
) -> Result<u64, CaptureError> {
    let fail = |e: tokio_postgres::Error| query_error(shard, "measuring the backlog", &e);
    let exists: bool = client
        .query_one(
            &format!("SELECT to_regclass('{SHARD_SCHEMA}.{CHANGELOG}') IS NOT NULL"),
            &[],
        )
        .await
        .map_err(fail)?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let n: i64 = client
        .query_one(
            &format!(
                "SELECT count(*) FROM {SHARD_SCHEMA}.{CHANGELOG} WHERE {}",
                changelog_filter(seed, range)
            ),
            &[],
        )
        .await
        .map_err(fail)?
        .get(0);
    Ok(u64::try_from(n).unwrap_or(0))
}

/// What one replayed batch did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Replayed {
    /// Changelog rows consumed.
    pub changes: u64,
    /// Distinct keys copied again.
    pub keys: u64,
    /// Rows written to the target (all tables).
    pub rows: u64,
    /// The keys copied again (sorted, distinct): the online verification
    /// under the fence compares exactly these (and the cut's).
    pub copied: Vec<i64>,
}

/// The distinct keys of `range` with captured changes not yet replayed, as
/// `client` (a transaction, whose snapshot is the cut) sees the changelog.
///
/// Errors: [`CaptureError::Query`] (the changelog missing included).
pub async fn pending_keys(
    client: &impl GenericClient,
    shard: &str,
    seed: i64,
    range: TokenRange,
) -> Result<Vec<i64>, CaptureError> {
    let rows = client
        .query(
            &format!(
                "SELECT DISTINCT key FROM {SHARD_SCHEMA}.{CHANGELOG} WHERE {} ORDER BY key",
                changelog_filter(seed, range)
            ),
            &[],
        )
        .await
        .map_err(|e| query_error(shard, "reading the changelog's keys", &e))?;
    rows.iter()
        .map(|r| r.try_get(0))
        .collect::<Result<Vec<i64>, _>>()
        .map_err(|e| query_error(shard, "reading the changelog's keys", &e))
}

/// Replays the oldest `limit` (at least 1) captured changes of `range`
/// from `source` to `target` (see the module docs); returns what it did
/// (nothing when the backlog is empty).
///
/// Errors: [`CaptureError::Query`], [`CaptureError::Copy`]; nothing is
/// consumed unless the target committed.
pub async fn replay_batch(
    source: Endpoint<'_>,
    target: Endpoint<'_>,
    tables: &[Table],
    seed: i64,
    range: TokenRange,
    limit: u32,
) -> Result<Replayed, CaptureError> {
    let (source_shard, target_shard) = (source.shard, target.shard);
    let on = |shard: &str, what: &'static str| {
        let shard = shard.to_string();
        move |e: tokio_postgres::Error| query_error(&shard, what, &e)
    };
    let read = source
        .client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .start()
        .await
        .map_err(on(source_shard, "starting a replay"))?;
    let rows = read
        .query(
            &format!(
                "SELECT seq, key FROM {SHARD_SCHEMA}.{CHANGELOG} WHERE {} ORDER BY seq LIMIT $1",
                changelog_filter(seed, range)
            ),
            &[&i64::from(limit.max(1))],
        )
        .await
        .map_err(on(source_shard, "reading the changelog"))?;
    if rows.is_empty() {
        read.commit()
            .await
            .map_err(on(source_shard, "ending a replay"))?;
        return Ok(Replayed::default());
    }
    let seqs: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    let mut keys: Vec<i64> = rows.iter().map(|r| r.get(1)).collect();
    keys.sort_unstable();
    keys.dedup();
    let write = target
        .client
        .transaction()
        .await
        .map_err(on(target_shard, "starting a replay"))?;
    write
        .batch_execute(REPLICA_ROLE)
        .await
        .map_err(on(target_shard, "starting a replay"))?;
    let written = copy_keys(&read, &write, (source_shard, target_shard), tables, &keys).await?;
    write
        .commit()
        .await
        .map_err(on(target_shard, "committing a replay"))?;
    read.execute(
        &format!("DELETE FROM {SHARD_SCHEMA}.{CHANGELOG} WHERE seq = ANY($1)"),
        &[&seqs],
    )
    .await
    .map_err(on(source_shard, "consuming the changelog"))?;
    read.commit()
        .await
        .map_err(on(source_shard, "consuming the changelog"))?;
    Ok(Replayed {
        changes: seqs.len() as u64,
        keys: keys.len() as u64,
        rows: written,
        copied: keys,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_ddl_filters_by_compiled_ranges_and_drops_everything() {
        let tables = [Table {
            name: "posts".into(),
            key: "id".into(),
        }];
        let ranges = [TokenRange::inclusive(10, i64::MAX).unwrap()];
        let on = on_sql(&tables, 7, &ranges);
        assert!(on.contains("hashint8extended(OLD.\"id\"::int8, 7) <@ '{[10,)}'::int8multirange"));
        assert!(on.contains(&format!(
            "CREATE OR REPLACE TRIGGER {TRIGGER} AFTER INSERT OR UPDATE OR DELETE ON \"posts\""
        )));
        let off = off_sql(&tables);
        assert!(off.contains(&format!("DROP TRIGGER IF EXISTS {TRIGGER} ON \"posts\"")));
        assert!(off.contains(&function_name(&tables[0])));
        assert!(off.contains("DROP TABLE IF EXISTS postshard.changelog"));
    }
}
