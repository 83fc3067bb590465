//! `postshard skew`: how evenly rows, bytes and activity are spread over the
//! live shards.

use std::path::PathBuf;
use std::time::Duration;

use postshard_rebalancer::live::{self, Metric, ShardMeasure};
use postshard_router::ring::BUCKETS;
use postshard_router::{Router, RouterError, ShardMap};
use serde_json::{json, Value};

use super::Failure;

/// Arguments of live `postshard skew`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shard map.
    #[arg(long, default_value = "shardmap.yaml")]
    map: PathBuf,
    /// What to compare shards by.
    #[arg(long, value_enum, default_value_t = By::Rows)]
    by: By,
    /// Seconds between the two samples of the activity counters (needed by
    /// `--by writes|reads`; default 5 for those).
    #[arg(long, value_name = "SECS")]
    window: Option<f64>,
    /// Keys with the most rows to list per shard.
    #[arg(long, default_value_t = 5)]
    hot_keys: usize,
    /// One JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Save rows per token bucket as a load file for
    /// `postshard plan balance --by rows --load FILE`.
    #[arg(long, value_name = "FILE")]
    save_load: Option<PathBuf>,
}

/// `--by` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum By {
    Rows,
    Bytes,
    Writes,
    Reads,
}

impl From<By> for Metric {
    fn from(by: By) -> Metric {
        match by {
            By::Rows => Metric::Rows,
            By::Bytes => Metric::Bytes,
            By::Writes => Metric::Writes,
            By::Reads => Metric::Reads,
        }
    }
}

/// Measures every shard and prints the report; exit 1 if a shard was unreachable.
pub fn run(args: Args) -> Result<(), Failure> {
    let map = ShardMap::from_path(&args.map)?;
    let metric = Metric::from(args.by);
    let window = match (args.window, metric) {
        (Some(secs), _) if !(secs.is_finite() && (0.0..=3600.0).contains(&secs)) => {
            return Err(Failure::invalid(format!(
                "--window {secs}: expected seconds from 0 to 3600"
            )))
        }
        (Some(secs), _) => Some(Duration::from_secs_f64(secs)),
        (None, Metric::Writes | Metric::Reads) => Some(Duration::from_secs(5)),
        (None, _) => None,
    };
    let options = live::Options {
        window,
        hot_keys: args.hot_keys,
    };
    let measures = measure(&map, options)?;
    let report = report_json(&map, &measures, metric, window);
    if args.json {
        println!("{report}");
    } else {
        print!("{}", report_text(&report));
    }
    if let Some(path) = &args.save_load {
        let load = live::load_report(&map, &measures, Metric::Rows)
            .ok_or_else(|| Failure::Runtime(anyhow::anyhow!("no rows measured")))?;
        let text = serde_json::to_string(&load).map_err(|e| Failure::Runtime(e.into()))?;
        std::fs::write(path, text).map_err(|e| {
            Failure::Runtime(anyhow::Error::new(e).context(format!("writing {}", path.display())))
        })?;
    }
    let unreachable: Vec<&str> = measures
        .iter()
        .filter(|m| m.stats.is_err())
        .map(|m| m.shard.as_str())
        .collect();
    if unreachable.is_empty() {
        Ok(())
    } else {
        Err(Failure::Runtime(anyhow::anyhow!(
            "could not measure shard(s) {}; the figures above leave them out",
            unreachable.join(", ")
        )))
    }
}

/// Measures every shard of `map` now (see [`live::measure`]).
pub(super) fn measure(
    map: &ShardMap,
    options: live::Options,
) -> Result<Vec<ShardMeasure>, Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(e.into()))?;
    runtime.block_on(async {
        let router = Router::connect(map.clone())
            .await
            .map_err(|e| Failure::Runtime(e.into()))?;
        Ok(live::measure(&router, options).await)
    })
}

fn report_json(
    map: &ShardMap,
    measures: &[ShardMeasure],
    metric: Metric,
    window: Option<Duration>,
) -> Value {
    let total_of = |m: Metric| -> Option<u64> {
        measures
            .iter()
            .filter_map(|s| s.stats.as_ref().ok())
            .map(|s| s.total(m))
            .sum()
    };
    let grand = total_of(metric).unwrap_or(0);
    let shards: Vec<Value> = measures
        .iter()
        .map(|m| match &m.stats {
            Ok(stats) => json!({
                "name": m.shard,
                "weight": m.weight,
                "status": "ok",
                "rows": stats.total(Metric::Rows),
                "bytes": stats.total(Metric::Bytes),
                "writes": stats.total(Metric::Writes),
                "reads": stats.total(Metric::Reads),
                "share": stats.total(metric).filter(|_| grand > 0).map(|v| v as f64 / grand as f64),
                "tables": stats.tables,
                "hot_keys": stats.hot_keys,
            }),
            Err(e) => json!({
                "name": m.shard,
                "weight": m.weight,
                "status": if matches!(e, RouterError::Connect { .. }) { "unreachable" } else { "failed" },
                "error": e.to_string(),
            }),
        })
        .collect();
    let skew = live::skew_of(measures, metric).map(|s| {
        json!({
            "peak_to_mean": s.peak_to_mean,
            "cv": s.cv,
            "gini": s.gini,
            "hottest": measures.iter().filter(|m| m.stats.is_ok()).nth(s.hottest).map(|m| &m.shard),
            "hottest_share": s.hottest_share,
        })
    });
    json!({
        "by": metric,
        "map_version": map.version(),
        "window_secs": window.map(|w| w.as_secs_f64()),
        "shards": shards,
        "total": {
            "rows": total_of(Metric::Rows),
            "bytes": total_of(Metric::Bytes),
            "writes": total_of(Metric::Writes),
            "reads": total_of(Metric::Reads),
        },
        "skew": skew,
        "not_measured": measures.iter().filter(|m| m.stats.is_err()).map(|m| &m.shard).collect::<Vec<_>>(),
        "histogram": { "buckets": BUCKETS, "rows": live::bucket_rows(measures) },
    })
}

/// The JSON report as a table.
fn report_text(report: &Value) -> String {
    let num = |v: &Value| v.as_u64().map_or("-".to_string(), |n| n.to_string());
    let mut out = format!(
        "{:<12} {:>12} {:>14} {:>10} {:>10} {:>8}\n",
        "shard", "rows", "bytes", "writes", "reads", "share"
    );
    for s in report["shards"].as_array().into_iter().flatten() {
        let name = s["name"].as_str().unwrap_or("?");
        if s["status"] == "ok" {
            out.push_str(&format!(
                "{:<12} {:>12} {:>14} {:>10} {:>10} {:>7.2}%\n",
                name,
                num(&s["rows"]),
                num(&s["bytes"]),
                num(&s["writes"]),
                num(&s["reads"]),
                s["share"].as_f64().unwrap_or(0.0) * 100.0
            ));
        } else {
            out.push_str(&format!(
                "{name:<12} {}: {}\n",
                s["status"].as_str().unwrap_or("failed"),
                s["error"].as_str().unwrap_or("?")
            ));
        }
    }
    let t = &report["total"];
    out.push_str(&format!(
        "{:<12} {:>12} {:>14} {:>10} {:>10}\n",
        "total",
        num(&t["rows"]),
        num(&t["bytes"]),
        num(&t["writes"]),
        num(&t["reads"])
    ));
    let by = report["by"].as_str().unwrap_or("?");
    match report["skew"].as_object() {
        Some(s) => out.push_str(&format!(
            "skew by {by} (per unit of weight): peak-to-mean {:.3}, cv {:.3}, gini {:.3}, hottest {} ({:.1}%)\n",
            s["peak_to_mean"].as_f64().unwrap_or(0.0),
            s["cv"].as_f64().unwrap_or(0.0),
            s["gini"].as_f64().unwrap_or(0.0),
            s["hottest"].as_str().unwrap_or("?"),
            s["hottest_share"].as_f64().unwrap_or(0.0) * 100.0
        )),
        None => out.push_str(&format!("skew by {by}: nothing to compare\n")),
    }
    let mut hot: Vec<&Value> = report["shards"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["hot_keys"].as_array().into_iter().flatten())
        .collect();
    hot.sort_by_key(|k| std::cmp::Reverse(k["rows"].as_u64()));
    if !hot.is_empty() {
        out.push_str("hot keys:\n");
        for k in hot.iter().take(5) {
            out.push_str(&format!(
                "  key {} (token {}): {} rows\n",
                k["key"], k["token"], k["rows"]
            ));
        }
    }
    out
}
