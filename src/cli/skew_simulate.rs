//! `postshard skew simulate`: place synthetic keys with one or more
//! strategies and report skew, and the keys moved when shards change.

use std::path::PathBuf;
use std::str::FromStr;

use postshard_rebalancer::simulate::{
    plot, shard_index, shard_name, simulate, Change, Distribution, Loads, Outcome, SimulateError,
    Strategy, Workload, MAX_KEYS, MAX_POSTS,
};
use postshard_router::map::MAX_SHARDS;
use serde_json::{json, Value};

use super::output::{percent, print, write_file};
use super::Failure;

/// Arguments of `postshard skew simulate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Number of shards, named s0 to s{N-1}.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=MAX_SHARDS as u64))]
    shards: u64,
    /// Keys to place: rows for sequential, uniform and snowflake; requests
    /// for zipf and recent.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u64).range(1..=MAX_KEYS))]
    keys: u64,
    /// Key distribution: sequential (IDs 1..K), uniform (random IDs),
    /// snowflake (time-ordered IDs), zipf:S (requests, Zipf popularity with
    /// exponent S) or recent:H (requests, popularity halving every H posts
    /// back from the newest).
    #[arg(long, value_name = "D", default_value = "sequential")]
    dist: Distribution,
    /// Placement strategy: ring, hashring:V (V virtual nodes per shard),
    /// jump, modulo, range, or all; repeat to compare several.
    #[arg(long = "strategy", value_name = "S", default_value = "ring")]
    strategies: Vec<StrategyChoice>,
    /// Add M shards (named after the existing ones) and count the keys that
    /// change shard.
    #[arg(long, value_name = "M", conflicts_with = "remove",
          value_parser = clap::value_parser!(u64).range(1..=MAX_SHARDS as u64))]
    add: Option<u64>,
    /// Remove shard NAME (e.g. s3) and count the keys that change shard.
    #[arg(long, value_name = "NAME")]
    remove: Option<String>,
    /// Seed of the random key streams (uniform, snowflake, zipf, recent).
    #[arg(long, value_name = "X", default_value_t = 0)]
    seed: u64,
    /// Post population of the zipf and recent request streams (posts 1..P).
    #[arg(long, value_name = "P", default_value_t = 1_000_000,
          value_parser = clap::value_parser!(u64).range(1..=MAX_POSTS))]
    posts: u64,
    /// Print JSON: one object, or an array of objects when comparing
    /// strategies.
    #[arg(long)]
    json: bool,
    /// Also write per-shard load bars (before and after a change) as SVG.
    #[arg(long, value_name = "PATH.svg")]
    plot: Option<PathBuf>,
}

/// One `--strategy` value: a strategy, or `all` of them.
#[derive(Debug, Clone, Copy)]
enum StrategyChoice {
    All,
    One(Strategy),
}

impl FromStr for StrategyChoice {
    type Err = String;

    fn from_str(spec: &str) -> Result<StrategyChoice, String> {
        match spec {
            "all" => Ok(StrategyChoice::All),
            _ => spec.parse().map(StrategyChoice::One).map_err(|e| match e {
                SimulateError::UnknownStrategy(s) => format!(
                    "unknown strategy `{s}` (expected ring, hashring:V, jump, modulo, range or all)"
                ),
                e => e.to_string(),
            }),
        }
    }
}

/// Runs the simulations, prints the report and writes the plot.
pub fn run(args: Args) -> Result<(), Failure> {
    let shards = args.shards as usize;
    let change = match (args.add, &args.remove) {
        (Some(m), _) => Some(Change::Add(m as usize)),
        (None, Some(name)) => Some(Change::Remove(shard_index(name, shards).ok_or_else(
            || {
                Failure::invalid(format!(
                    "--remove `{name}`: no such shard (the shards are s0 to s{})",
                    shards - 1
                ))
            },
        )?)),
        (None, None) => None,
    };
    let mut strategies: Vec<Strategy> = Vec::new();
    for choice in &args.strategies {
        let chosen = match choice {
            StrategyChoice::All => Strategy::ALL.to_vec(),
            StrategyChoice::One(s) => vec![*s],
        };
        for s in chosen {
            if !strategies.contains(&s) {
                strategies.push(s);
            }
        }
    }
    let workload = Workload::new(args.dist, args.keys, args.posts, args.seed).map_err(failure)?;
    let outcomes = strategies
        .iter()
        .map(|s| simulate(&workload, *s, shards, change))
        .collect::<Result<Vec<Outcome>, SimulateError>>()
        .map_err(failure)?;
    if let Some(path) = &args.plot {
        write_file(
            path,
            plot::svg(&title(&workload, shards, change), &outcomes),
        )?;
    }
    let report = if args.json {
        let objects: Vec<Value> = outcomes.iter().map(|o| to_json(&workload, o)).collect();
        let value = match <[Value; 1]>::try_from(objects) {
            Ok([one]) => one,
            Err(many) => Value::Array(many),
        };
        format!("{value:#}\n")
    } else if let [one] = &outcomes[..] {
        detail(&workload, shards, one)
    } else {
        comparison(&workload, shards, change, &outcomes)
    };
    print(report)
}

/// A simulator error: invalid input, except a layout the router rejects.
fn failure(e: SimulateError) -> Failure {
    match e {
        SimulateError::Layout(_) => Failure::Runtime(e.into()),
        e => Failure::Invalid(e.into()),
    }
}

/// `16 shards, 1000000 sequential keys, adding 1 shard`; request streams
/// count requests over posts.
fn title(workload: &Workload, shards: usize, change: Option<Change>) -> String {
    let (keys, posts) = if workload.dist().is_requests() {
        ("requests", format!(" over {} posts", workload.posts()))
    } else {
        ("keys", String::new())
    };
    let change = match change {
        None => String::new(),
        Some(Change::Add(m)) => format!(", adding {m} shard{}", if m == 1 { "" } else { "s" }),
        Some(Change::Remove(s)) => format!(", removing {}", shard_name(s)),
    };
    format!(
        "{shards} shards, {} {} {keys}{posts}{change}",
        workload.key_count(),
        workload.dist()
    )
}

/// One strategy: a row per shard, then the skew before and after.
fn detail(workload: &Workload, shards: usize, outcome: &Outcome) -> String {
    let keys = workload.key_count() as f64;
    let change = outcome.rebalance.as_ref().map(|r| r.change);
    let mut out = format!(
        "{}: {}\n\n",
        outcome.strategy,
        title(workload, shards, change)
    );
    let after = outcome.rebalance.as_ref().map(|r| &r.after);
    out.push_str(&format!("{:<8} {:>12} {:>8}", "shard", "keys", "share"));
    if after.is_some() {
        out.push_str(&format!(" {:>12} {:>8}", "after", "share"));
    }
    out.push('\n');
    let slots = after.map_or(shards, |a| {
        a.shards
            .iter()
            .map(|s| s.shard + 1)
            .max()
            .unwrap_or(0)
            .max(shards)
    });
    let cell = |loads: &Loads, shard: usize| match loads.shards.iter().find(|s| s.shard == shard) {
        Some(s) => format!(" {:>12} {:>8}", s.keys, percent(s.keys as f64 / keys, 2)),
        None => format!(" {:>12} {:>8}", "-", "-"),
    };
    for shard in 0..slots {
        out.push_str(&format!("{:<8}", shard_name(shard)));
        out.push_str(&cell(&outcome.before, shard));
        if let Some(after) = after {
            out.push_str(&cell(after, shard));
        }
        out.push('\n');
    }
    out.push_str(&format!(
        "\n{:<8} {:>9} {:>7} {:>7}  hottest\n",
        "", "peak/mean", "cv", "gini"
    ));
    out.push_str(&summary_row("before", &outcome.before));
    if let Some(r) = &outcome.rebalance {
        out.push_str(&summary_row("after", &r.after));
        out.push_str(&format!(
            "\nmoved {} of keys ({}); optimal {} ({:.2}x)\n",
            percent(r.moved_fraction, 2),
            r.moved,
            percent(r.optimal_moved_fraction, 2),
            r.moved_fraction / r.optimal_moved_fraction
        ));
    }
    out
}

/// `before      1.0060  0.0031  0.0017  s3 (6.29%)`.
fn summary_row(label: &str, loads: &Loads) -> String {
    format!(
        "{label:<8} {:>9.4} {:>7.4} {:>7.4}  {}\n",
        loads.skew.peak_to_mean,
        loads.skew.cv,
        loads.skew.gini,
        hottest(loads)
    )
}

/// `s3 (6.29%)`: the hottest shard and its share.
fn hottest(loads: &Loads) -> String {
    format!(
        "{} ({})",
        shard_name(loads.hottest()),
        percent(loads.skew.hottest_share, 2)
    )
}

/// Several strategies: one row each.
fn comparison(
    workload: &Workload,
    shards: usize,
    change: Option<Change>,
    outcomes: &[Outcome],
) -> String {
    let mut out = format!("{}\n\n", title(workload, shards, change));
    out.push_str(&format!(
        "{:<14} {:>9} {:>7} {:>7}  {:<16}",
        "strategy", "peak/mean", "cv", "gini", "hottest"
    ));
    if change.is_some() {
        out.push_str(&format!(
            " {:>11} {:>8} {:>8}",
            "after p/m", "moved", "optimal"
        ));
    }
    out.push('\n');
    for o in outcomes {
        let s = &o.before.skew;
        out.push_str(&format!(
            "{:<14} {:>9.4} {:>7.4} {:>7.4}  {:<16}",
            o.strategy.to_string(),
            s.peak_to_mean,
            s.cv,
            s.gini,
            hottest(&o.before)
        ));
        if let Some(r) = &o.rebalance {
            out.push_str(&format!(
                " {:>11.4} {:>8} {:>8}",
                r.after.skew.peak_to_mean,
                percent(r.moved_fraction, 2),
                percent(r.optimal_moved_fraction, 2)
            ));
        }
        out.push('\n');
    }
    out
}

/// The JSON report of one strategy.
fn to_json(workload: &Workload, outcome: &Outcome) -> Value {
    let mut object = json!({
        "strategy": outcome.strategy.to_string(),
        "dist": workload.dist().to_string(),
        "keys": workload.key_count(),
        "seed": workload.seed(),
    });
    if workload.dist().is_requests() {
        object["posts"] = json!(workload.posts());
    }
    merge(&mut object, loads_json(workload, &outcome.before));
    if let Some(r) = &outcome.rebalance {
        match r.change {
            Change::Add(m) => object["add"] = json!(m),
            Change::Remove(s) => object["remove"] = json!(shard_name(s)),
        }
        object["moved"] = json!(r.moved);
        object["moved_fraction"] = json!(r.moved_fraction);
        object["optimal_moved_fraction"] = json!(r.optimal_moved_fraction);
        object["after"] = loads_json(workload, &r.after);
    }
    object
}

/// Shard count, skew and per-shard loads.
fn loads_json(workload: &Workload, loads: &Loads) -> Value {
    let keys = workload.key_count() as f64;
    json!({
        "shards": loads.shards.len(),
        "peak_to_mean": loads.skew.peak_to_mean,
        "cv": loads.skew.cv,
        "gini": loads.skew.gini,
        "hottest": shard_name(loads.hottest()),
        "hottest_share": loads.skew.hottest_share,
        "loads": loads.shards.iter().map(|s| json!({
            "shard": shard_name(s.shard),
            "keys": s.keys,
            "share": s.keys as f64 / keys,
        })).collect::<Vec<_>>(),
    })
}

/// Copies the fields of `extra` into `object`.
fn merge(object: &mut Value, extra: Value) {
    if let (Value::Object(object), Value::Object(extra)) = (object, extra) {
        object.extend(extra);
    }
}
