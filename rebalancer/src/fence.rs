//! Fences in storage: each shard refuses writes to tokens it does not own.
//!
//! Every shard has a schema [`SHARD_SCHEMA`] with one table, `fence`, holding
//! one row: the epoch, the seed, the token ranges the shard `owned` at that
//! epoch and the ranges `fenced` for an in-flight blocking move (both
//! `int8multirange`). Every sharded table has `BEFORE INSERT`, `UPDATE` and
//! `DELETE … FOR EACH ROW` triggers ([`TRIGGER`]) that judge the row's key by
//! that state (compiled into SQL functions, see [`schema_sql`]) and raises
//! SQLSTATE [`SQLSTATE_MOVED`] when its token is fenced or not owned, naming
//! the token, key, table and epoch. For an UPDATE it checks the old key and,
//! when it changed, the new one.
//!
//! The trigger is an ordinary (`ENABLE`, origin) trigger: the mover's
//! sessions run with `session_replication_role = replica` and bypass it,
//! while every application write, routed or not, is checked.
//!
//! # Writers that passed the fence before it was raised
//!
//! [`raise`] and [`set_owned`] commit the new fence row, then wait until
//! every transaction of this database that was running at that moment has
//! ended ([`wait_for_older_transactions`]): the set of virtual transaction
//! ids held by client backends is read from `pg_locks` after the commit and
//! polled until none is left, as `CREATE INDEX CONCURRENTLY` waits for older
//! snapshots. Why this is enough: a transaction whose writes could have
//! passed the old fence took its snapshot (in READ COMMITTED, the snapshot
//! of the statement that wrote; in REPEATABLE READ, its first one) before
//! the fence committed, so it had started before the commit and holds a
//! virtual xid lock that the later `pg_locks` read lists. Every transaction
//! started after that read takes all its snapshots after the commit and
//! sees the new fence. Taking `SHARE ROW EXCLUSIVE` locks instead would only
//! flush transactions that had already written; a REPEATABLE READ
//! transaction that writes later, with a snapshot from before the fence,
//! would still read the old fence row.

use std::fmt::Write as _;
use std::time::Duration;

use postshard_router::map::Table;
use postshard_router::{describe_db_error, ShardMap};
use tokio_postgres::Client;

pub use crate::token_range::TokenRange;
use crate::token_range::{multirange_literal, union, RING_END};

/// Schema of postshard's objects on every shard.
pub const SHARD_SCHEMA: &str = "postshard";
/// Name of the fence trigger on every sharded table (for INSERT; `_u` and
/// `_d` follow it for UPDATE and DELETE). It sorts after most names, so
/// among `BEFORE` triggers it fires last and checks the key as it will be
/// stored.
pub const TRIGGER: &str = "zz_postshard_fence";
/// SQLSTATE a shard raises for a write to a token it does not own.
pub const SQLSTATE_MOVED: &str = "PS001";

/// A failure managing a shard's fence.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// A statement failed.
    #[error("fence: {what}: {detail}")]
    Query {
        /// What was being done.
        what: &'static str,
        /// The server's or driver's message.
        detail: String,
    },
    /// Older transactions did not end in time; the fence stays raised.
    #[error("fence: transactions of backends {pids:?} started before the fence and are still running after {waited:?}")]
    OlderTransactions {
        /// Their backends' process ids.
        pids: Vec<i32>,
        /// How long we waited.
        waited: Duration,
    },
    /// The shard has no fence state (`postshard init` has not run on it).
    #[error("fence: the shard has no fence state; run `postshard init`")]
    NotInstalled,
}

fn query_error(what: &'static str) -> impl Fn(tokio_postgres::Error) -> FenceError {
    move |e| FenceError::Query {
        what,
        detail: describe_db_error(&e),
    }
}

/// The token ranges shard `shard` owns in `map`, adjacent arcs merged.
pub fn owned_ranges(map: &ShardMap, shard: usize) -> Vec<TokenRange> {
    union(
        map.ring()
            .arcs()
            .filter(|a| a.shard == shard)
            .filter_map(|a| TokenRange::inclusive(a.from, a.last).ok()),
    )
}

/// A shard's fence row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceState {
    /// The epoch ownership was last set for.
    pub epoch: u64,
    /// The seed tokens are computed with.
    pub seed: i64,
    /// Ranges the shard accepts writes to (unless fenced).
    pub owned: Vec<TokenRange>,
    /// Ranges fenced for an in-flight move.
    pub fenced: Vec<TokenRange>,
}

/// The name of the fence trigger functions of `table` (for INSERT; `_u` and
/// `_d` follow it): readable, unique per table name (a hash of the full
/// name), within PostgreSQL's 63 bytes with the suffix.
pub fn trigger_function(table: &Table) -> String {
    // FNV-1a: stable across runs and versions, unlike std's hasher.
    let hash = table.name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let readable: String = table.name.replace('.', "__").chars().take(40).collect();
    format!("fence_{readable}_{:08x}", hash as u32)
}

/// The check of one key (`OLD` or `NEW`) in a trigger function: one call
/// of the generated `refusal(key)` (see [`schema_sql`]), which PL/pgSQL
/// inlines into a simple expression over constants; the message is built
/// only for a refusal. `extra` narrows the condition (for an UPDATE's new
/// key: only when it changed).
fn key_check(row: &str, table: &Table, extra: &str) -> String {
    let key = format!("{row}.{}", table.sql_key());
    let name = table.name.replace('\'', "''");
    format!(
        "IF {extra}{SHARD_SCHEMA}.{REFUSAL}({key}) IS NOT NULL THEN
            RAISE EXCEPTION USING ERRCODE = '{SQLSTATE_MOVED}',
                MESSAGE = format('postshard: token %s (key %s of {name}) %s', \
                    {SHARD_SCHEMA}.{TOKEN}({key}), {key}, {SHARD_SCHEMA}.{REFUSAL}({key})),
                HINT = 'Reload the shard map from the control store and retry at the new owner.';
        END IF;"
    )
}

/// The three fence triggers of a table: name suffix, event, and the body
/// of its function (one per event, so each write evaluates as few PL/pgSQL
/// expressions as possible: PL/pgSQL sets each up again per transaction).
fn fence_triggers(table: &Table) -> [(&'static str, &'static str, String); 3] {
    let key = table.sql_key();
    [
        (
            "",
            "INSERT",
            format!("{}\nRETURN NEW;", key_check("NEW", table, "")),
        ),
        (
            "_u",
            "UPDATE",
            format!(
                "{}\n{}\nRETURN NEW;",
                key_check("OLD", table, ""),
                key_check(
                    "NEW",
                    table,
                    &format!("NEW.{key} IS DISTINCT FROM OLD.{key} AND ")
                )
            ),
        ),
        (
            "_d",
            "DELETE",
            format!("{}\nRETURN OLD;", key_check("OLD", table, "")),
        ),
    ]
}

/// The generated function judging a key: NULL when the shard accepts it,
/// else the reason (`is fenced for a move at epoch E`, `is not owned by
/// this shard at epoch E`).
const REFUSAL: &str = "refusal";
/// The generated function giving a key's token under the fence's seed.
const TOKEN: &str = "token";

/// DDL creating (or replacing) the fence schema, table and functions, and
/// the trigger function of every table; idempotent. Triggers come apart,
/// in [`triggers_sql`], so that tables copied to a new shard can be
/// created in between.
///
/// The fence row is the truth; every change to it (an `ALWAYS` trigger, so
/// even a replica-role session) regenerates `refusal(key)` and `token(key)`
/// as SQL functions with the seed and ranges as constants. The table
/// triggers call them as simple expressions that PL/pgSQL inlines and
/// plans once per session: a write costs a hash and two binary searches,
/// with no query, snapshot or lock on the fence table. Replacing a
/// function invalidates every session's cached plans; a transaction that
/// started after the change commits reads the new definition, and older
/// ones are waited for (see [`wait_for_older_transactions`]).
pub fn schema_sql(map: &ShardMap) -> String {
    let s = SHARD_SCHEMA;
    let mut sql = format!(
        "CREATE SCHEMA IF NOT EXISTS {s};
        CREATE TABLE IF NOT EXISTS {s}.fence (
            singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
            epoch bigint NOT NULL CHECK (epoch >= 0),
            seed bigint NOT NULL,
            owned int8multirange NOT NULL,
            fenced int8multirange NOT NULL DEFAULT '{{}}',
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE OR REPLACE FUNCTION {s}.refresh_fence() RETURNS trigger
        LANGUAGE plpgsql AS $postshard$
        BEGIN
            EXECUTE format(
                'CREATE OR REPLACE FUNCTION {s}.{TOKEN}(k bigint) RETURNS bigint '
                'LANGUAGE sql IMMUTABLE PARALLEL SAFE AS %L',
                format('SELECT hashint8extended(k, %s)', NEW.seed));
            EXECUTE format(
                'CREATE OR REPLACE FUNCTION {s}.{REFUSAL}(k bigint) RETURNS text '
                'LANGUAGE sql STABLE PARALLEL SAFE AS %L',
                format('SELECT CASE WHEN hashint8extended(k, %s) <@ %L::int8multirange THEN %L '
                       'WHEN NOT hashint8extended(k, %s) <@ %L::int8multirange THEN %L END',
                       NEW.seed, NEW.fenced, format('is fenced for a move at epoch %s', NEW.epoch),
                       NEW.seed, NEW.owned, format('is not owned by this shard at epoch %s', NEW.epoch)));
            RETURN NULL;
        END
        $postshard$;
        CREATE OR REPLACE TRIGGER refresh_fence AFTER INSERT OR UPDATE ON {s}.fence
            FOR EACH ROW EXECUTE FUNCTION {s}.refresh_fence();
        ALTER TABLE {s}.fence ENABLE ALWAYS TRIGGER refresh_fence;
        -- Until the fence row exists, every key is accepted.
        DO $postshard$ BEGIN
            IF to_regprocedure('{s}.{REFUSAL}(bigint)') IS NULL THEN
                CREATE FUNCTION {s}.{REFUSAL}(k bigint) RETURNS text
                    LANGUAGE sql STABLE PARALLEL SAFE AS 'SELECT NULL::text';
                CREATE FUNCTION {s}.{TOKEN}(k bigint) RETURNS bigint
                    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS 'SELECT hashint8extended(k, 0)';
            END IF;
        END $postshard$;\n"
    );
    for table in map.tables() {
        for (suffix, _, body) in fence_triggers(table) {
            // Writing to a String cannot fail.
            let _ = write!(
                sql,
                "CREATE OR REPLACE FUNCTION {s}.{func}{suffix}() RETURNS trigger
                LANGUAGE plpgsql AS $postshard$
                BEGIN
                    {body}
                END
                $postshard$;\n",
                func = trigger_function(table),
            );
        }
    }
    sql
}

/// DDL installing (or replacing) the fence triggers on every sharded
/// table: [`TRIGGER`] for INSERT, with `_u` for UPDATE and `_d` for DELETE.
pub fn triggers_sql(map: &ShardMap) -> String {
    let mut sql = String::new();
    for table in map.tables() {
        for (suffix, event, _) in fence_triggers(table) {
            // Writing to a String cannot fail.
            let _ = writeln!(
                sql,
                "CREATE OR REPLACE TRIGGER {TRIGGER}{suffix} BEFORE {event} ON {} \
                 FOR EACH ROW EXECUTE FUNCTION {SHARD_SCHEMA}.{}{suffix}();",
                table.sql_name(),
                trigger_function(table)
            );
        }
    }
    sql
}

/// SQL seeding the fence row with `owned` at `epoch` (tokens under `seed`)
/// when there is none.
pub fn seed_sql(epoch: u64, seed: i64, owned: &[TokenRange]) -> String {
    format!(
        "INSERT INTO {SHARD_SCHEMA}.fence (epoch, seed, owned) VALUES ({epoch}, {seed}, '{}') \
         ON CONFLICT (singleton) DO NOTHING;",
        multirange_literal(owned)
    )
}

/// The shard's fence row.
///
/// Errors: [`FenceError::NotInstalled`] when there is none.
pub async fn read(client: &Client) -> Result<FenceState, FenceError> {
    let row = client
        .query_opt(
            &format!(
                "SELECT epoch, seed, \
                 ARRAY(SELECT lower(r) FROM unnest(owned) r ORDER BY 1), \
                 ARRAY(SELECT upper(r) FROM unnest(owned) r ORDER BY lower(r)), \
                 ARRAY(SELECT lower(r) FROM unnest(fenced) r ORDER BY 1), \
                 ARRAY(SELECT upper(r) FROM unnest(fenced) r ORDER BY lower(r)) \
                 FROM {SHARD_SCHEMA}.fence"
            ),
            &[],
        )
        .await
        .map_err(query_error("reading the fence"))?
        .ok_or(FenceError::NotInstalled)?;
    let ranges = |lower: Vec<Option<i64>>, upper: Vec<Option<i64>>| -> Vec<TokenRange> {
        lower
            .into_iter()
            .zip(upper)
            // A multirange holds no empty ranges; NULL bounds are the ring's ends.
            .filter_map(|(l, u)| {
                let from = l.map_or(i128::from(i64::MIN), i128::from);
                TokenRange::new(from, u.map_or(RING_END, i128::from)).ok()
            })
            .collect()
    };
    Ok(FenceState {
        epoch: u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
        seed: row.get(1),
        owned: ranges(row.get(2), row.get(3)),
        fenced: ranges(row.get(4), row.get(5)),
    })
}

/// Fences `ranges` (adds them to the fenced set), then waits for every
/// transaction that might have written to them under the old fence (see
/// the module docs). On return, no write to `ranges` can commit on this
/// shard except the mover's (`session_replication_role = replica`).
///
/// Errors: [`FenceError::OlderTransactions`] after `wait` (the fence stays
/// raised: lower it or retry); [`FenceError::NotInstalled`].
pub async fn raise(
    client: &Client,
    ranges: &[TokenRange],
    wait: Duration,
) -> Result<(), FenceError> {
    update(
        client,
        "raising the fence",
        "fenced = fenced + $1::text::int8multirange",
        &multirange_literal(ranges),
    )
    .await?;
    wait_for_older_transactions(client, wait).await
}

/// Removes `ranges` from the fenced set (writes to owned tokens among them
/// are accepted again). Lowering needs no wait.
pub async fn lower(client: &Client, ranges: &[TokenRange]) -> Result<(), FenceError> {
    update(
        client,
        "lowering the fence",
        "fenced = fenced - $1::text::int8multirange",
        &multirange_literal(ranges),
    )
    .await
}

/// Sets the ranges the shard owns at `epoch` (after a flip: the source loses
/// ranges, the target gains them, before the flip), then waits for older
/// transactions as [`raise`] does, since ownership may have shrunk. The wait
/// does not depend on what the update found: a redo after a first attempt
/// committed the shrink (and died waiting) must wait again.
pub async fn set_owned(
    client: &Client,
    epoch: u64,
    owned: &[TokenRange],
    wait: Duration,
) -> Result<(), FenceError> {
    write_owned(client, epoch, owned).await?;
    wait_for_older_transactions(client, wait).await
}

/// Sets the ranges the shard owns at `epoch` without waiting: only for a
/// grant, `owned` containing every range the shard may own now (a write
/// checked against a smaller set stays allowed under a larger one; what a
/// grant changes is that writes to the added ranges are no longer refused).
/// The caller vouches for the containment; a shrink goes through
/// [`set_owned`].
pub async fn grant(client: &Client, epoch: u64, owned: &[TokenRange]) -> Result<(), FenceError> {
    write_owned(client, epoch, owned).await
}

async fn write_owned(client: &Client, epoch: u64, owned: &[TokenRange]) -> Result<(), FenceError> {
    let changed = client
        .execute(
            &format!(
                "UPDATE {SHARD_SCHEMA}.fence SET epoch = $1, owned = $2::text::int8multirange, \
                 updated_at = now()"
            ),
            &[
                &i64::try_from(epoch).unwrap_or(i64::MAX),
                &multirange_literal(owned),
            ],
        )
        .await
        .map_err(query_error("setting owned ranges"))?;
    if changed == 0 {
        return Err(FenceError::NotInstalled);
    }
    Ok(())
}

async fn update(
    client: &Client,
    what: &'static str,
    set: &str,
    ranges: &str,
) -> Result<(), FenceError> {
    let changed = client
        .execute(
            &format!("UPDATE {SHARD_SCHEMA}.fence SET {set}, updated_at = now()"),
            &[&ranges],
        )
        .await
        .map_err(query_error(what))?;
    if changed == 0 {
        return Err(FenceError::NotInstalled);
    }
    Ok(())
}

/// Waits until every transaction of another client backend in this database
/// that is running now has ended. Call it outside a transaction, after
/// committing the change whose older readers must be gone.
///
/// Errors: [`FenceError::OlderTransactions`] after `wait`.
pub async fn wait_for_older_transactions(
    client: &Client,
    wait: Duration,
) -> Result<(), FenceError> {
    let rows = client
        .query(
            "SELECT l.virtualxid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'virtualxid' AND l.granted \
             AND l.virtualxid = l.virtualtransaction \
             AND a.backend_type = 'client backend' AND a.datname = current_database() \
             AND l.pid <> pg_backend_pid()",
            &[],
        )
        .await
        .map_err(query_error("listing running transactions"))?;
    let older: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    if older.is_empty() {
        return Ok(());
    }
    let start = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        let rows = client
            .query(
                "SELECT pid FROM pg_locks WHERE locktype = 'virtualxid' AND granted \
                 AND virtualxid = ANY($1) AND virtualxid = virtualtransaction",
                &[&older],
            )
            .await
            .map_err(query_error("waiting for older transactions"))?;
        if rows.is_empty() {
            return Ok(());
        }
        if start.elapsed() >= wait {
            return Err(FenceError::OlderTransactions {
                pids: rows.iter().map(|r| r.get(0)).collect(),
                waited: start.elapsed(),
            });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postshard_router::map::raw::{RawMap, RawShard, RawTable};
    use postshard_router::Token;

    fn map(ring: &[(Token, usize)]) -> ShardMap {
        let raw = RawMap::new(
            3,
            0,
            vec![RawTable::new("forum.posts", "id")],
            vec![
                RawShard::new("a", "postgres://h/a"),
                RawShard::new("b", "postgres://h/b"),
            ],
            ring,
        );
        ShardMap::from_raw(raw, "test", &|_| None).unwrap()
    }

    #[test]
    fn owned_ranges_merge_adjacent_arcs_and_reach_the_ends() {
        let m = map(&[(i64::MIN, 0), (-5, 0), (0, 1), (10, 0)]);
        let r = |from, last| TokenRange::inclusive(from, last).unwrap();
        assert_eq!(owned_ranges(&m, 0), vec![r(i64::MIN, -1), r(10, i64::MAX)]);
        assert_eq!(owned_ranges(&m, 1), vec![r(0, 9)]);
        assert_eq!(
            multirange_literal(&owned_ranges(&m, 0)),
            "{[-9223372036854775808,0),[10,)}"
        );
    }

    #[test]
    fn trigger_function_names_are_distinct_and_short() {
        let long = "a".repeat(63);
        let names: Vec<String> = [
            Table {
                name: "posts".into(),
                key: "id".into(),
            },
            Table {
                name: "forum.posts".into(),
                key: "id".into(),
            },
            Table {
                name: format!("{long}.{long}"),
                key: "id".into(),
            },
            Table {
                name: format!("{long}.{long}b"),
                key: "id".into(),
            },
        ]
        .iter()
        .map(trigger_function)
        .collect();
        for (i, n) in names.iter().enumerate() {
            assert!(n.len() + 2 <= 63, "{n}");
            assert!(!names[..i].contains(n), "{n} repeats");
        }
    }
}
