//! `postshard status`: live epoch, shards, routers and migrations.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use postshard_rebalancer::migrate::{self, Status};
use postshard_router::map::env_var;

use super::apply::{control_map, failure};
use super::map_source::runtime;
use super::output::percent;
use super::Failure;

/// Arguments of `postshard status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A shard map naming the control store (`control:`).
    #[arg(long, default_value = "shardmap.yaml")]
    map: PathBuf,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Prints the status.
pub fn run(args: Args) -> Result<(), Failure> {
    let map = control_map(&args.map)?;
    let status = runtime()?
        .block_on(migrate::status(&map, &env_var, Duration::from_secs(10)))
        .map_err(failure)?;
    if args.json {
        let text = serde_json::to_string_pretty(&status).map_err(|e| Failure::Runtime(e.into()))?;
        return super::output::print(format!("{text}\n"));
    }
    super::output::print(text(&status))
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
        let _ = writeln!(
            out,
            "  migration {} ({}, {}, from epoch {}): {}",
            m.id,
            m.state,
            m.mode,
            m.base_epoch,
            m.phase.as_deref().unwrap_or("-")
        );
        for mv in &m.moves {
            let _ = writeln!(
                out,
                "    move {} [{}, {}) {} -> {}: {} {}",
                mv.index,
                mv.from,
                mv.to,
                mv.source,
                mv.target,
                mv.phase.as_deref().unwrap_or("-"),
                if mv.copied.is_null() {
                    String::new()
                } else {
                    format!("copied {}", mv.copied)
                }
            );
        }
    }
    out
}
