//! The physical baseline the copy and move benches measure against: two
//! `psql` processes piping binary COPY between servers.

use std::process::{Command, Stdio};

/// `psql` of the server binaries (`POSTSHARD_PG_BINDIR`, else PostgreSQL 15's).
pub fn psql_path() -> String {
    let dir = std::env::var("POSTSHARD_PG_BINDIR")
        .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".to_string());
    format!("{dir}/psql")
}

/// Pipes `table`'s rows matching `predicate` (columns `cols`) from the
/// database at URL `from` into the one at `to`:
/// `COPY (SELECT …) TO STDOUT (FORMAT binary) | COPY … FROM STDIN (FORMAT binary)`.
pub fn pipe_rows(from: &str, to: &str, table: &str, cols: &str, predicate: &str) {
    let psql = |url: &str, sql: &str| {
        let mut command = Command::new(psql_path());
        command.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql]);
        command
    };
    let mut out = psql(
        from,
        &format!("COPY (SELECT {cols} FROM {table} WHERE {predicate}) TO STDOUT (FORMAT binary)"),
    )
    .stdout(Stdio::piped())
    .spawn()
    .expect("psql COPY TO");
    let pipe = out.stdout.take().expect("pipe");
    let status_in = psql(
        to,
        &format!("COPY {table} ({cols}) FROM STDIN (FORMAT binary)"),
    )
    .stdin(pipe)
    .status()
    .expect("psql COPY FROM");
    let status_out = out.wait().expect("psql COPY TO");
    assert!(
        status_in.success() && status_out.success(),
        "psql copy failed"
    );
}
