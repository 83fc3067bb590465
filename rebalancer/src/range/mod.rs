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

use tokio_postgres::Client;

pub use checksum::{checksum_range, checksum_range_keys, ChecksumError, Keys, TableChecksum};
pub use copy::{
    copy_range, copy_range_paced, CopyError, CopyProgress, CopySpec, OnProgress, TableCopied,
};
pub use delete::{delete_range, DeleteError, TableDeleted, DEFAULT_BATCH_ROWS};
pub use schema::{read_schema, Column, SchemaError, TableSchema};
pub use verify::{verify, Problem, ProblemKind, VerifyError, VerifyOptions, VerifyReport};

pub use crate::token_range::{BadRange, TokenRange, RING_END};

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

pub(crate) use postshard_router::describe_db_error as describe;

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
    fn identifiers_are_quoted_with_doubled_quotes() {
        assert_eq!(quote_ident("order"), "\"order\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }
}
