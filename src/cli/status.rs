//! `postshard status`: live epoch, shards, routers and migrations, with each
//! move's phase and progress; `--watch SECS` refreshes it.
//!
//! Migrations are rendered from their JSON form, key by key, so fields the
//! orchestrator adds later (progress records, lag) show without changes:
//! known keys get their own words, a progress record (`rows`, `estimate`,
//! `lag…`) reads as a progress line, anything else as `key=value`.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use indicatif::HumanCount;
use postshard_rebalancer::migrate::{self, Status};
use postshard_router::map::env_var;
use serde_json::Value;

use super::apply::{control_map, failure};
use super::map_source::runtime;
use super::output::percent;
use super::progress::{detail_text, reading_summary, rfc3339, Reading};
use super::Failure;

/// Arguments of `postshard status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A shard map naming the control store (`control:`).
    #[arg(long, default_value = "shardmap.yaml")]
    map: PathBuf,
    /// One JSON object instead of text (one line per refresh with --watch).
    #[arg(long)]
    json: bool,
    /// Refresh every SECS seconds until interrupted.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    watch: Option<u64>,
}

/// How long to wait for the control store.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// Prints the status (again every `--watch` seconds).
pub fn run(args: Args) -> Result<(), Failure> {
    let map = control_map(&args.map)?;
    let runtime = runtime()?;
    let read = || {
        runtime
            .block_on(migrate::status(&map, &env_var, CONTROL_TIMEOUT))
            .map_err(failure)
    };
    let Some(every) = args.watch else {
        let status = read()?;
        if args.json {
            let text =
                serde_json::to_string_pretty(&status).map_err(|e| Failure::Runtime(e.into()))?;
            return super::output::print(format!("{text}\n"));
        }
        return super::output::print(text(&status));
    };
    let clear = !args.json && std::io::stdout().is_terminal();
    loop {
        let now = rfc3339(SystemTime::now());
        match read() {
            Ok(status) if args.json => {
                let mut value =
                    serde_json::to_value(&status).map_err(|e| Failure::Runtime(e.into()))?;
                if let Value::Object(o) = &mut value {
                    o.insert("time".into(), Value::String(now));
                }
                super::output::print(format!("{value}\n"))?;
            }
            Ok(status) => {
                let home = if clear { "\x1b[H\x1b[2J" } else { "" };
                super::output::print(format!(
                    "{home}{now} (every {every} s)\n{}\n",
                    text(&status)
                ))?;
            }
            // The control store may be restarting: say so and keep watching.
            Err(e) => {
                if let Some(message) = e.message() {
                    super::output::eprint(format!("{now} {message}\n"));
                }
            }
        }
        std::thread::sleep(Duration::from_secs(every));
    }
}

fn text(status: &Status) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(out, "live epoch {}", status.epoch);
    for s in &status.shards {
        let _ = writeln!(out, "  shard {:<12} {:>9}", s.name, percent(s.share, 2));
    }
    let _ = writeln!(out, "routers: {}", status.routers.len());
    for r in &status.routers {
        let lease = if r.lease_left_ms >= 0 {
            format!("lease {} ms left", r.lease_left_ms)
        } else {
            format!("lease lapsed {} ms ago", -r.lease_left_ms)
        };
        let _ = writeln!(
            out,
            "  {} pid {} at {}: epoch {}, {lease}",
            r.id,
            r.pid,
            r.host.as_deref().unwrap_or("local"),
            r.epoch
        );
    }
    let _ = writeln!(out, "migrations: {}", status.migrations.len());
    for m in &status.migrations {
        match serde_json::to_value(m) {
            Ok(m) => migration_text(&mut out, &m),
            Err(e) => {
                let _ = writeln!(out, "  migration {}: not shown: {e}", m.id);
            }
        }
    }
    out
}

/// `  migration 3 (active, blocking, from epoch 1): flipped` and its moves;
/// a migration that ended shows no step (its last migration-wide step,
/// `routers_acked` or `aborted`, would read as where it stopped).
fn migration_text(out: &mut String, m: &Value) {
    let field = |k: &str| m.get(k).map(plain).unwrap_or_else(|| "-".into());
    let _ = write!(
        out,
        "  migration {} ({}, {}, from epoch {})",
        field("id"),
        field("state"),
        field("mode"),
        field("base_epoch"),
    );
    if m.get("state").and_then(Value::as_str) == Some("active") {
        let phase = m.get("phase").filter(|p| !p.is_null());
        let _ = write!(out, ": {}", phase.map(plain).unwrap_or_else(|| "-".into()));
    }
    const SHOWN: [&str; 6] = ["id", "state", "mode", "base_epoch", "phase", "moves"];
    extras(out, m, &SHOWN);
    out.push('\n');
    for mv in m
        .get("moves")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        move_text(out, mv);
    }
}

/// `    move 0 [from, to) s0 -> s2: copied, 1,234 rows copied (…)`.
fn move_text(out: &mut String, mv: &Value) {
    let field = |k: &str| mv.get(k).map(plain).unwrap_or_else(|| "-".into());
    let _ = write!(
        out,
        "    move {} [{}, {}) {} -> {}: {}",
        field("index"),
        field("from"),
        field("to"),
        field("source"),
        field("target"),
        mv.get("phase")
            .filter(|p| !p.is_null())
            .map(plain)
            .unwrap_or_else(|| "-".into())
    );
    if let Some(copied) = mv.get("copied").and_then(copied_text) {
        let _ = write!(out, ", {copied}");
    }
    const SHOWN: [&str; 7] = ["index", "from", "to", "source", "target", "phase", "copied"];
    extras(out, mv, &SHOWN);
    out.push('\n');
}

/// `1,234 rows copied (comments 1,000, posts 234)` from per-table counts.
fn copied_text(copied: &Value) -> Option<String> {
    let tables = copied.as_object()?;
    let counts: Vec<(&String, u64)> = tables
        .iter()
        .filter_map(|(t, n)| Some((t, n.as_u64()?)))
        .collect();
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    let each: Vec<String> = counts
        .iter()
        .map(|(t, n)| format!("{t} {}", HumanCount(*n)))
        .collect();
    Some(format!(
        "{} rows copied ({})",
        HumanCount(total),
        each.join(", ")
    ))
}

/// Fields not in `shown`: progress records as progress, the rest as
/// `key=value`; nulls left out.
fn extras(out: &mut String, object: &Value, shown: &[&str]) {
    let Some(o) = object.as_object() else {
        return;
    };
    for (k, v) in o {
        if shown.contains(&k.as_str()) || v.is_null() {
            continue;
        }
        let reading = Reading::of(v);
        if reading.is_progress() {
            let phase = reading
                .phase
                .as_deref()
                .map(|p| format!("{p} "))
                .unwrap_or_default();
            let _ = write!(out, ", {k}: {phase}{}", reading_summary(&reading));
        } else if v.is_object() {
            let _ = write!(out, ", {k}: {}", detail_text(v));
        } else {
            let _ = write!(out, ", {k}={}", plain(v));
        }
    }
}

/// A JSON value as text: strings without quotes.
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn moves_show_phase_copied_rows_and_unknown_progress_records() {
        let m = json!({
            "id": 4, "state": "active", "mode": "online", "base_epoch": 2,
            "phase": "prepared", "started": "2026-11-30T01:00:00Z",
            "moves": [
                {"index": 0, "from": -5, "to": "0", "source": "s0", "target": "s2",
                 "phase": "verified", "copied": {"posts": 1000, "comments": 3000}},
                {"index": 1, "from": 0, "to": "9223372036854775808", "source": "s1",
                 "target": "s2", "phase": "backfill", "copied": null,
                 "progress": {"rows": 250, "estimate": 1000, "lag_rows": 12}},
                {"index": 2, "from": 1, "to": "2", "source": "s1", "target": "s2",
                 "phase": null, "copied": null},
                {"index": 3, "from": 2, "to": "3", "source": "s0", "target": "s2",
                 "phase": "copied", "copied": null,
                 "progress": {"rows": 300, "estimate": 1100, "rows_per_sec": 100.0,
                              "eta_s": 8.0, "backlog": 7, "age_ms": 1200}}
            ]
        });
        let mut out = String::new();
        migration_text(&mut out, &m);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            [
                "  migration 4 (active, online, from epoch 2): prepared, started=2026-11-30T01:00:00Z",
                "    move 0 [-5, 0) s0 -> s2: verified, 4,000 rows copied (comments 3,000, posts 1,000)",
                "    move 1 [0, 9223372036854775808) s1 -> s2: backfill, progress: 250 of ~1,000 rows (25%), lag 12 rows",
                "    move 2 [1, 2) s1 -> s2: -",
                "    move 3 [2, 3) s0 -> s2: copied, progress: 300 of ~1,100 rows (27%), 100 rows/s, ETA 8 seconds, lag 7 changes (1.2 s ago)",
            ]
        );
    }

    #[test]
    fn a_migration_that_ended_shows_its_state_not_its_last_step() {
        for (state, phase) in [("done", "routers_acked"), ("aborted", "aborted")] {
            let m = json!({
                "id": 5, "state": state, "mode": "online", "base_epoch": 3,
                "phase": phase, "moves": []
            });
            let mut out = String::new();
            migration_text(&mut out, &m);
            assert_eq!(
                out,
                format!("  migration 5 ({state}, online, from epoch 3)\n")
            );
        }
    }
}
