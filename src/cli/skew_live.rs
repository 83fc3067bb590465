//! `postshard skew`: how evenly rows, bytes and activity are spread over the
//! live shards.

use std::path::PathBuf;
use std::time::Duration;

use postshard_rebalancer::live::{self, Metric, ShardMeasure, ShardStats, MAX_HOT_KEYS};
use postshard_router::ring::BUCKETS;
use postshard_router::{Router, ShardMap};
use serde_json::{json, Value};

use super::output::{percent, print, write_file};
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
    /// Keys with the most rows to list per shard, 0 to 1000.
    #[arg(long, default_value_t = 5,
          value_parser = clap::value_parser!(u16).range(0..=MAX_HOT_KEYS as i64))]
    hot_keys: u16,
    /// One JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Save rows (or with `--by bytes`, bytes) per token bucket as a load
    /// file for `postshard plan balance --by rows|bytes --load FILE`; not
    /// written unless every shard was measured.
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

/// Measures every shard and prints the report. Then fails naming every
/// problem: a table or key column missing or a key that is not an integer
/// (exit 2), an unreachable shard or rows with a NULL key (exit 1).
pub fn run(args: Args) -> Result<(), Failure> {
    let map = super::map_source::load(&args.map)?;
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
    if args.save_load.is_some() && metric.load_unit().is_none() {
        return Err(Failure::invalid(format!(
            "--save-load needs --by rows or --by bytes: {metric} have no token histogram"
        )));
    }
    let options = live::Options {
        window,
        hot_keys: usize::from(args.hot_keys),
    };
    let measures = measure(&map, options)?;
    let report = report_json(&map, &measures, metric, window);
    let printed = if args.json {
        print(format!("{report}\n"))
    } else {
        print(report_text(&report))
    };
    // A closed stdout must not hide the problems below: they go to stderr.
    match printed {
        Err(Failure::ClosedStdout) | Ok(()) => {}
        Err(e) => return Err(e),
    }
    let failed = |schema: bool| -> Vec<String> {
        measures
            .iter()
            .filter_map(|m| m.stats.as_ref().err())
            .filter(|e| e.is_schema() == schema)
            .map(ToString::to_string)
            .collect()
    };
    let (mismatched, unmeasured) = (failed(true), failed(false));
    let null_keys = null_key_problems(&map, &measures);
    let mut not_saved = String::new();
    if let Some(path) = &args.save_load {
        match live::load_report(&map, &measures, metric) {
            Ok(load) => {
                let text = serde_json::to_string(&load).map_err(|e| Failure::Runtime(e.into()))?;
                write_file(path, text)?;
            }
            Err(e) if mismatched.is_empty() && unmeasured.is_empty() => {
                return Err(Failure::Runtime(e.into()))
            }
            Err(_) => not_saved = format!("; {} was not written", path.display()),
        }
    }
    // The schema not fitting the map is invalid input (2): a retry will not
    // help. Unreachable shards and rows that cannot be routed are runtime
    // problems (1).
    let mut problems = mismatched.clone();
    problems.extend(unmeasured.iter().cloned());
    problems.extend(null_keys);
    if problems.is_empty() {
        return printed;
    }
    let message = format!(
        "{}\nthe figures above leave out what is named here{not_saved}",
        problems.join("\n")
    );
    Err(if mismatched.is_empty() {
        Failure::Runtime(anyhow::anyhow!(message))
    } else {
        Failure::invalid(message)
    })
}

/// One line per table holding rows whose key is NULL: no token places
/// them, so no shard owns them and no plan moves them.
pub(super) fn null_key_problems(map: &ShardMap, measures: &[ShardMeasure]) -> Vec<String> {
    let mut out = Vec::new();
    for m in measures {
        let Ok(stats) = &m.stats else { continue };
        for (table, n) in stats.null_keys() {
            let key = map
                .tables()
                .iter()
                .find(|t| t.name == table)
                .map_or("key", |t| t.key.as_str());
            out.push(format!(
                "shard {}: table {table}: {n} row{} with a NULL {key} cannot be routed",
                m.shard,
                if n == 1 { "" } else { "s" }
            ));
        }
    }
    out
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
    let measured: Vec<&ShardStats> = measures
        .iter()
        .filter_map(|m| m.stats.as_ref().ok())
        .collect();
    // Nothing measured is no total, not a total of 0.
    let total_of = |m: Metric| -> Option<u64> {
        if measured.is_empty() {
            return None;
        }
        measured.iter().map(|s| s.total(m)).sum()
    };
    let grand = total_of(metric).filter(|t| *t > 0);
    let shards: Vec<Value> = measures
        .iter()
        .map(|m| match &m.stats {
            Ok(stats) => json!({
                "name": m.shard,
                "weight": m.weight,
                "status": "ok",
                "rows": stats.total(Metric::Rows),
                "null_keys": stats.null_keys().map(|(_, n)| n).sum::<u64>(),
                "bytes": stats.total(Metric::Bytes),
                "writes": stats.total(Metric::Writes),
                "reads": stats.total(Metric::Reads),
                "share": stats.total(metric).zip(grand).map(|(v, g)| v as f64 / g as f64),
                "tables": stats.tables,
                "hot_keys": stats.hot_keys,
            }),
            Err(e) => json!({
                "name": m.shard,
                "weight": m.weight,
                "status": if e.is_unreachable() { "unreachable" } else { "failed" },
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
        "null_keys": measures.iter().filter_map(|m| {
            let stats = m.stats.as_ref().ok()?;
            Some(stats.null_keys().map(|(table, rows)| json!({
                "shard": m.shard, "table": table, "rows": rows,
            })).collect::<Vec<_>>())
        }).flatten().collect::<Vec<_>>(),
        "not_measured": measures.iter().filter(|m| m.stats.is_err()).map(|m| &m.shard).collect::<Vec<_>>(),
        "histogram": { "buckets": BUCKETS, "rows": live::bucket_rows(measures) },
    })
}

/// The JSON report as a table.
fn report_text(report: &Value) -> String {
    let num = |v: &Value| v.as_u64().map_or("-".to_string(), |n| n.to_string());
    let share = |v: &Value| v.as_f64().map_or("-".to_string(), |x| percent(x, 2));
    let mut out = format!(
        "{:<12} {:>12} {:>14} {:>10} {:>10} {:>8}\n",
        "shard", "rows", "bytes", "writes", "reads", "share"
    );
    for s in report["shards"].as_array().into_iter().flatten() {
        let name = s["name"].as_str().unwrap_or("?");
        if s["status"] == "ok" {
            out.push_str(&format!(
                "{:<12} {:>12} {:>14} {:>10} {:>10} {:>8}\n",
                name,
                num(&s["rows"]),
                num(&s["bytes"]),
                num(&s["writes"]),
                num(&s["reads"]),
                share(&s["share"])
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
            "skew by {by} (per unit of weight): peak-to-mean {:.3}, cv {:.3}, gini {:.3}, hottest {} ({})\n",
            s["peak_to_mean"].as_f64().unwrap_or(0.0),
            s["cv"].as_f64().unwrap_or(0.0),
            s["gini"].as_f64().unwrap_or(0.0),
            s["hottest"].as_str().unwrap_or("?"),
            percent(s["hottest_share"].as_f64().unwrap_or(0.0), 1)
        )),
        None => out.push_str(&format!("skew by {by}: nothing to compare\n")),
    }
    let nulls: Vec<&Value> = report["null_keys"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    if !nulls.is_empty() {
        out.push_str("rows with a NULL key (no token, not in the figures above):\n");
        for n in nulls {
            out.push_str(&format!(
                "  {} {}: {} rows\n",
                n["shard"].as_str().unwrap_or("?"),
                n["table"].as_str().unwrap_or("?"),
                num(&n["rows"])
            ));
        }
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
