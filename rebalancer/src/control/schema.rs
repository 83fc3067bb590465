//! DDL of the control store, idempotent (`postshard init` runs it every time).

use postshard_router::live_map::CONTROL_SCHEMA;
use tokio_postgres::Client;

use super::{query_error, ControlError};

/// Advisory lock key serializing concurrent installs (one multi-statement
/// query runs as one transaction, so the lock spans all the DDL).
const INSTALL_LOCK: i64 = 0x7073_6863_746c; // "pshctl"

/// Creates the control schema and its tables if they do not exist; safe to
/// run again and concurrently with routers reading it.
pub async fn install(client: &Client) -> Result<(), ControlError> {
    let s = CONTROL_SCHEMA;
    client
        .batch_execute(&format!(
            "
            SELECT pg_advisory_xact_lock({INSTALL_LOCK});
            CREATE SCHEMA IF NOT EXISTS {s};
            CREATE TABLE IF NOT EXISTS {s}.epochs (
                epoch bigint PRIMARY KEY CHECK (epoch >= 0),
                map text NOT NULL,
                created_at timestamptz NOT NULL DEFAULT now()
            );
            CREATE TABLE IF NOT EXISTS {s}.live (
                singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
                epoch bigint NOT NULL REFERENCES {s}.epochs (epoch),
                updated_at timestamptz NOT NULL DEFAULT now()
            );
            CREATE TABLE IF NOT EXISTS {s}.routers (
                id text PRIMARY KEY,
                host text,
                pid integer NOT NULL,
                epoch bigint NOT NULL CHECK (epoch >= 0),
                lease_until timestamptz NOT NULL,
                registered_at timestamptz NOT NULL DEFAULT now(),
                renewed_at timestamptz NOT NULL DEFAULT now()
            );
            CREATE TABLE IF NOT EXISTS {s}.migrations (
                id bigserial PRIMARY KEY,
                base_epoch bigint NOT NULL CHECK (base_epoch >= 0),
                mode text NOT NULL,
                plan text NOT NULL,
                state text NOT NULL DEFAULT 'active'
                    CHECK (state IN ('active', 'done', 'aborted')),
                started_at timestamptz NOT NULL DEFAULT now(),
                finished_at timestamptz
            );
            CREATE UNIQUE INDEX IF NOT EXISTS migrations_one_active
                ON {s}.migrations ((true)) WHERE state = 'active';
            CREATE TABLE IF NOT EXISTS {s}.journal (
                migration_id bigint NOT NULL REFERENCES {s}.migrations (id),
                seq integer NOT NULL CHECK (seq >= 1),
                move_index integer CHECK (move_index >= 0),
                phase text NOT NULL,
                detail jsonb NOT NULL DEFAULT '{{}}',
                at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (migration_id, seq)
            );
            CREATE TABLE IF NOT EXISTS {s}.progress (
                migration_id bigint NOT NULL REFERENCES {s}.migrations (id),
                move_index integer NOT NULL CHECK (move_index >= 0),
                detail jsonb NOT NULL,
                at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (migration_id, move_index)
            );
            "
        ))
        .await
        .map_err(query_error("creating the control schema"))
}
