//! `postshard verify`: every row of every sharded table is on the shard
//! owning its token; row counts and checksums per arc.

use std::path::PathBuf;

use postshard_rebalancer::range::verify::ArcSums;
use postshard_rebalancer::range::{verify, VerifyOptions, VerifyReport};
use postshard_router::{Router, ShardMap};
use serde_json::{json, Value};

use super::{output, Failure};

/// Arguments of `postshard verify`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shard map.
    #[arg(long, default_value = "shardmap.yaml")]
    map: PathBuf,
    /// Most misplaced, duplicated or NULL-key rows to list (all are counted).
    #[arg(long, default_value_t = 20,
          value_parser = clap::value_parser!(u16).range(1..=10_000))]
    max_problems: u16,
    /// One JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

/// Verifies the cluster; exit 0 when clean, 1 listing the first problems.
pub fn run(args: Args) -> Result<(), Failure> {
    // With `control:`, the live map.
    let map = super::map_source::load(&args.map)?;
    let options = VerifyOptions {
        max_problems: usize::from(args.max_problems),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(e.into()))?;
    let report = runtime.block_on(async {
        let router = Router::connect(map.clone())
            .await
            .map_err(|e| Failure::Runtime(e.into()))?;
        Ok::<_, Failure>(verify(&router, options).await)
    })?;
    let json = report_json(&map, &report);
    if args.json {
        output::print(format!("{json}\n"))?;
    } else {
        output::print(report_text(&map, &report))?;
    }
    if report.is_clean() {
        return Ok(());
    }
    let mut what = Vec::new();
    if report.misplaced_rows > 0 {
        what.push(format!(
            "{} row(s) on a shard that does not own their token",
            report.misplaced_rows
        ));
    }
    if report.null_key_rows > 0 {
        what.push(format!("{} row(s) with a NULL key", report.null_key_rows));
    }
    for e in &report.errors {
        what.push(format!("not verified: {e}"));
    }
    Err(Failure::Runtime(anyhow::anyhow!(
        "verify failed: {}",
        what.join("; ")
    )))
}

fn arc_json(arc: &ArcSums) -> Value {
    json!({
        "from": arc.from,
        "last": arc.last,
        "owner": arc.owner,
        "verified": arc.verified,
        "tables": arc.tables.iter().map(|t| json!({
            "table": t.table,
            "rows": t.rows,
            // An i128 as a string: JSON readers lose precision past 2^53.
            "checksum": t.sum.to_string(),
        })).collect::<Vec<_>>(),
    })
}

fn report_json(map: &ShardMap, report: &VerifyReport) -> Value {
    json!({
        "map_version": map.version(),
        "clean": report.is_clean(),
        "rows": report.rows(),
        "misplaced_rows": report.misplaced_rows,
        "null_key_rows": report.null_key_rows,
        "arcs": report.arcs.iter().map(arc_json).collect::<Vec<_>>(),
        "problems": report.problems,
        "errors": report.errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
    })
}

fn report_text(map: &ShardMap, report: &VerifyReport) -> String {
    let mut out = format!(
        "{:<22} {:<22} {:<10} {:<12} {:>10} {:>22}\n",
        "arc from", "arc last", "owner", "table", "rows", "checksum"
    );
    for arc in &report.arcs {
        for t in &arc.tables {
            let (rows, sum) = if arc.verified {
                (t.rows.to_string(), t.sum.to_string())
            } else {
                ("-".to_string(), "not verified".to_string())
            };
            out.push_str(&format!(
                "{:<22} {:<22} {:<10} {:<12} {:>10} {:>22}\n",
                arc.from, arc.last, arc.owner, t.table, rows, sum
            ));
        }
    }
    if !report.problems.is_empty() {
        out.push_str("problems:\n");
        for p in &report.problems {
            let kind = p.kind.name();
            match p.key {
                Some(key) => out.push_str(&format!(
                    "  {kind}: shard {} table {} key {key} (token {}, owner {}): {} row(s)\n",
                    p.shard,
                    p.table,
                    p.token.map_or("-".to_string(), |t| t.to_string()),
                    p.owner.as_deref().unwrap_or("-"),
                    p.rows
                )),
                None => out.push_str(&format!(
                    "  {kind}: shard {} table {}: {} row(s) with a NULL key\n",
                    p.shard, p.table, p.rows
                )),
            }
        }
    }
    for e in &report.errors {
        out.push_str(&format!("not verified: {e}\n"));
    }
    out.push_str(&format!(
        "map version {}: {} row(s) on their owners over {} arc(s), {} misplaced, {} with a NULL key: {}\n",
        map.version(),
        report.rows(),
        report.arcs.len(),
        report.misplaced_rows,
        report.null_key_rows,
        if report.is_clean() { "clean" } else { "NOT clean" }
    ));
    out
}
