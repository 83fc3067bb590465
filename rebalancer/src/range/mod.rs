//! Moving the rows of a token range between shards: read a table's columns
//! ([`schema`]), stream a range with binary COPY ([`copy`]), compare both
//! sides ([`checksum`]), delete a range in batches ([`delete`]), and check a
//! whole cluster ([`verify`]).
//!
//! Every statement that writes moved rows runs with
//! `session_replication_role = replica`, the way logical replication applies
//! rows: the app's triggers (and foreign-key checks, which are triggers) do
//! not fire for rows that merely change shard. That setting needs a
//! superuser, or `GRANT SET ON PARAMETER session_replication_role` (PG 15).
//! A trigger marked `ENABLE ALWAYS` still fires; the fence trigger must not
//! be one.

pub mod checksum;
pub mod copy;
pub mod delete;
pub mod schema;
mod tuples;
pub mod verify;

use postshard_router::map::Table;
use postshard_router::Token;
use tokio_postgres::Client;

pub use checksum::{checksum_range, ChecksumError, TableChecksum};
pub use copy::{
    copy_range, copy_range_paced, CopyError, CopyProgress, CopySpec, OnProgress, TableCopied,
};
pub use delete::{delete_range, DeleteError, TableDeleted, DEFAULT_BATCH_ROWS};
pub use schema::{read_schema, Column, SchemaError, TableSchema};
pub use verify::{verify, Problem, ProblemKind, VerifyError, VerifyOptions, VerifyReport};

/// One past the last token of the ring (2^63).
pub const RING_END: i128 = 1 << 63;

/// A token range `[from, to)`: `from` is a token, `to` is exclusive and may
/// be 2^63 (the top of the ring), hence `i128`. Ranges do not wrap: the ring
/// starts at `i64::MIN`. Never empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenRange {
    from: Token,
    to: i128,
}

/// A range that is empty, reversed or past the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("token range [{from}, {to}) is not a non-empty part of the ring [-2^63, 2^63)")]
pub struct BadRange {
    /// First token asked for.
    pub from: i128,
    /// End asked for (exclusive).
    pub to: i128,
}

impl TokenRange {
    /// The range `[from, to)`; a planned move's range is
    /// `TokenRange::new(m.from.into(), m.to)` (`Move` and `PlannedMove` alike).
    ///
    /// Errors: [`BadRange`] unless `i64::MIN <= from < to <= 2^63`.
    pub fn new(from: i128, to: i128) -> Result<TokenRange, BadRange> {
        match Token::try_from(from) {
            Ok(start) if from < to && to <= RING_END => Ok(TokenRange { from: start, to }),
            _ => Err(BadRange { from, to }),
        }
    }

    /// The whole ring.
    pub fn ring() -> TokenRange {
        TokenRange {
            from: Token::MIN,
            to: RING_END,
        }
    }

    /// First token.
    pub fn from(&self) -> Token {
        self.from
    }

    /// One past the last token (up to 2^63).
    pub fn to(&self) -> i128 {
        self.to
    }

    /// Whether `token` lies in the range.
    pub fn contains(&self, token: Token) -> bool {
        self.from <= token && i128::from(token) < self.to
    }

    /// SQL that is true for rows of `table` whose key's token lies in the
    /// range (false for NULL keys). Bounds and seed are spelled as typed
    /// literals (COPY takes no parameters), so the comparison stays on
    /// `int8` and can use an expression index on the token.
    pub fn predicate(&self, table: &Table, seed: i64) -> String {
        let token = format!(
            "hashint8extended({}::int8, '{seed}'::int8)",
            table.sql_key()
        );
        let mut sql = format!("{token} >= '{}'::int8", self.from);
        if let Ok(end) = Token::try_from(self.to) {
            sql.push_str(&format!(" AND {token} < '{end}'::int8"));
        }
        sql
    }
}

impl std::fmt::Display for TokenRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}, {})", self.from, self.to)
    }
}

/// One side of a move: a shard's name (for errors) and a connection to it.
/// Pooled connections from `Router::client_of` deref to a [`Client`].
pub struct Endpoint<'a> {
    /// Shard name, as the map spells it.
    pub shard: &'a str,
    /// An open connection to the shard, outside any transaction.
    pub client: &'a mut Client,
}

/// A column name quoted for SQL (`"` doubled), whatever the catalog holds.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A driver error with the server's message and SQLSTATE, which the error's
/// own `Display` leaves out ("db error").
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({}): {}", db.severity(), db.code().code(), db.message()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    }
}

/// The first statement of a transaction that writes moved rows: app triggers
/// and foreign-key checks stay silent until it ends.
pub(crate) const REPLICA_ROLE: &str = "SET LOCAL session_replication_role = replica";

/// Begins a read-only repeatable-read transaction, on `snapshot` (an
/// exported snapshot id, `pg_export_snapshot()`) when given.
pub(crate) async fn begin_snapshot<'c>(
    client: &'c mut Client,
    snapshot: Option<&str>,
) -> Result<tokio_postgres::Transaction<'c>, tokio_postgres::Error> {
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    if let Some(id) = snapshot {
        // A snapshot id is a short token like `00000003-0000001B-1`; quote it
        // as a literal so nothing else can ride along.
        tx.batch_execute(&format!(
            "SET TRANSACTION SNAPSHOT '{}'",
            id.replace('\'', "''")
        ))
        .await?;
    }
    Ok(tx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_must_be_non_empty_parts_of_the_ring() {
        let min = i128::from(i64::MIN);
        for (from, to, ok) in [
            (min, RING_END, true),
            (0, 1, true),
            (min - 1, 0, false),
            (0, 0, false),
            (5, 4, false),
            (0, RING_END + 1, false),
        ] {
            assert_eq!(TokenRange::new(from, to).is_ok(), ok, "[{from}, {to})");
        }
    }

    #[test]
    fn top_of_ring_has_no_upper_bound() {
        let posts = Table {
            name: "posts".into(),
            key: "id".into(),
        };
        let top = TokenRange::new(0, RING_END).unwrap();
        assert_eq!(
            top.predicate(&posts, 7),
            "hashint8extended(\"id\"::int8, '7'::int8) >= '0'::int8"
        );
        let low = TokenRange::new(i128::from(i64::MIN), -5).unwrap();
        assert_eq!(
            low.predicate(&posts, 0),
            "hashint8extended(\"id\"::int8, '0'::int8) >= '-9223372036854775808'::int8 \
             AND hashint8extended(\"id\"::int8, '0'::int8) < '-5'::int8"
        );
        assert!(top.contains(i64::MAX) && !top.contains(-1));
        assert!(low.contains(i64::MIN) && low.contains(-6) && !low.contains(-5));
    }

    #[test]
    fn identifiers_are_quoted_with_doubled_quotes() {
        assert_eq!(quote_ident("order"), "\"order\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }
}
