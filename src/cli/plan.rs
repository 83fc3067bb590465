//! `postshard plan`: write a rebalance plan that adds, removes or reweights a
//! shard, or evens out rows, bytes or load.
//!
//! Planning needs the map's shape, not its secrets: `${VAR}`s unset here
//! stand in as placeholders.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use postshard_rebalancer::live::{self, Metric};
use postshard_rebalancer::plan::load_file::unit_name;
use postshard_rebalancer::plan::{
    self, offline_env, BalanceError, LoadFile, LoadFileError, Plan, TokenHistogram, DEFAULT_TARGET,
};
use postshard_rebalancer::skew::Skew;
use postshard_router::ring::TOKEN_SPACE;
use postshard_router::{LoadUnit, ShardMap};

use super::output::{eprint, percent, print, write_files};
use super::Failure;

/// `postshard plan` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Plan adding a shard: it takes its weight's share of the ring from the others.
    AddShard(AddShardArgs),
    /// Plan removing a shard: its tokens go to the others by weight.
    RemoveShard(RemoveShardArgs),
    /// Plan giving a shard a new weight.
    Reweight(ReweightArgs),
    /// Plan moving the least rows, bytes or load so that shards even out.
    Balance(BalanceArgs),
}

/// Arguments every `plan` subcommand takes.
#[derive(Debug, clap::Args)]
pub struct Output {
    /// The shard map.
    #[arg(long, default_value = "shardmap.yaml")]
    map: PathBuf,
    /// Write the plan here instead of stdout (the summary then goes to stdout).
    #[arg(long, value_name = "PLAN.yaml")]
    out: Option<PathBuf>,
    /// Also write the map after the plan (version + 1) here.
    #[arg(long, value_name = "PATH")]
    emit_map: Option<PathBuf>,
}

/// Arguments of `postshard plan add-shard`.
#[derive(Debug, clap::Args)]
pub struct AddShardArgs {
    /// The new shard; write a password as ${VAR} (postgres://app:${PGPASSWORD}@host/db).
    #[arg(value_name = "NAME=URL")]
    shard: String,
    /// Its weight (relative capacity), 1 to 1000000.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    weight: u32,
    #[command(flatten)]
    output: Output,
}

/// Arguments of `postshard plan remove-shard`.
#[derive(Debug, clap::Args)]
pub struct RemoveShardArgs {
    /// The shard to remove.
    name: String,
    #[command(flatten)]
    output: Output,
}

/// Arguments of `postshard plan reweight`.
#[derive(Debug, clap::Args)]
pub struct ReweightArgs {
    /// The shard and its new weight, 1 to 1000000.
    #[arg(value_name = "NAME=W")]
    spec: String,
    #[command(flatten)]
    output: Output,
}

/// Arguments of `postshard plan balance`.
#[derive(Debug, clap::Args)]
pub struct BalanceArgs {
    /// What to even out: rows or bytes per shard, or routed requests (load).
    /// Rows and bytes are counted on the live shards unless --load is given;
    /// load needs --load FILE (a router load report).
    #[arg(long, value_enum)]
    by: By,
    /// Highest acceptable peak-to-mean (per weight) after the plan.
    #[arg(long, default_value_t = DEFAULT_TARGET)]
    target: f64,
    /// A JSON load file: per-bucket loads over 1,024 equal token buckets and
    /// optional hot tokens, counting what --by names (requests: a router load
    /// report; rows or bytes: `postshard skew --by rows|bytes --save-load`),
    /// with figures for every shard of the map.
    #[arg(long, value_name = "FILE")]
    load: Option<PathBuf>,
    #[command(flatten)]
    output: Output,
}

/// Hot keys per shard that live counting reports to the planner.
const LIVE_HOT_KEYS: usize = 10;

/// `--by` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum By {
    Rows,
    Bytes,
    Load,
}

impl By {
    fn name(self) -> &'static str {
        match self {
            By::Rows => "rows",
            By::Bytes => "bytes",
            By::Load => "load",
        }
    }

    /// What a load file must count to balance by this.
    fn unit(self) -> LoadUnit {
        match self {
            By::Rows => LoadUnit::Rows,
            By::Bytes => LoadUnit::Bytes,
            By::Load => LoadUnit::Requests,
        }
    }
}

/// Makes the plan, then writes it and the optional map.
pub fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::AddShard(args) => {
            let (name, url) = split(&args.shard, "NAME=URL")?;
            let map = load_map(&args.output.map)?;
            let plan = plan::add_shard(&map, name, url, args.weight).map_err(invalid)?;
            finish(&map, &plan, &args.output, None)
        }
        Command::RemoveShard(args) => {
            let map = load_map(&args.output.map)?;
            let plan = plan::remove_shard(&map, &args.name).map_err(invalid)?;
            finish(&map, &plan, &args.output, None)
        }
        Command::Reweight(args) => {
            let (name, weight) = split(&args.spec, "NAME=W")?;
            let weight: u32 = weight.parse().map_err(|_| {
                Failure::invalid(format!(
                    "`{}`: weight `{weight}` is not an integer from 1 to 1000000",
                    args.spec
                ))
            })?;
            let map = load_map(&args.output.map)?;
            let plan = plan::reweight(&map, name, weight).map_err(invalid)?;
            finish(&map, &plan, &args.output, None)
        }
        Command::Balance(args) => balance(args),
    }
}

fn balance(args: BalanceArgs) -> Result<(), Failure> {
    let by = args.by.name();
    let map = load_map(&args.output.map)?;
    let (file, origin) = match (&args.load, args.by) {
        (Some(path), _) => {
            let file = LoadFile::from_path(path).map_err(invalid)?;
            (file, path.display().to_string())
        }
        (None, By::Load) => {
            return Err(Failure::invalid(
                "--by load needs --load FILE, a router load report",
            ))
        }
        (None, By::Rows) => (
            measure_live(&args.output.map, Metric::Rows)?,
            "live shards".into(),
        ),
        (None, By::Bytes) => (
            measure_live(&args.output.map, Metric::Bytes)?,
            "live shards".into(),
        ),
    };
    file.check_fits(&map, args.by.unit(), &origin)
        .map_err(|e| match e {
            LoadFileError::Unit { wanted, .. } => Failure::Invalid(anyhow::Error::new(e).context(
                format!("--by {by} needs a load file counting {}", unit_name(wanted)),
            )),
            e => invalid(e),
        })?;
    for warning in load_file_warnings(&map, &file, &origin) {
        eprint(format!("warning: {warning}\n"));
    }
    let mut plan = plan::balance(&map, &file.histogram, args.target).map_err(|e| match e {
        BalanceError::BadTarget { .. } | BalanceError::NoLoad => invalid(e),
        BalanceError::HotToken { .. } | BalanceError::Unreachable { .. } => {
            Failure::Runtime(e.into())
        }
    })?;
    plan.intent = format!("{} (by {by}, from {origin})", plan.intent);
    plan.estimate(&file.histogram, file.unit);
    finish(
        &map,
        &plan,
        &args.output,
        Some((&file.histogram, args.target)),
    )
}

/// Rows or bytes per token bucket, counted now on every shard; every shard
/// must answer, since a plan from partial data would be wrong.
fn measure_live(path: &Path, metric: Metric) -> Result<LoadFile, Failure> {
    // Connecting needs the real secrets, not placeholders.
    let map = super::map_source::load(path)?;
    let options = live::Options {
        window: None,
        hot_keys: LIVE_HOT_KEYS,
    };
    let measures = super::skew_live::measure(&map, options)?;
    if let Some(failed) = measures.iter().find_map(|m| m.stats.as_ref().err()) {
        let e = anyhow::anyhow!("cannot plan from partial counts: {failed}");
        return Err(if failed.is_schema() {
            Failure::Invalid(e)
        } else {
            Failure::Runtime(e)
        });
    }
    for problem in super::skew_live::null_key_problems(&map, &measures) {
        eprint(format!(
            "warning: {problem}; the plan leaves those rows where they are\n"
        ));
    }
    let report =
        live::load_report(&map, &measures, metric).map_err(|e| Failure::Runtime(e.into()))?;
    LoadFile::from_report(report, "live shards").map_err(|e| Failure::Runtime(e.into()))
}

/// What in a load file suggests it was taken with another map.
fn load_file_warnings(map: &ShardMap, file: &LoadFile, origin: &str) -> Vec<String> {
    let mut warnings = Vec::new();
    if file.map_version != map.version() {
        warnings.push(format!(
            "{origin} was measured under map version {}; the map is at version {}",
            file.map_version,
            map.version()
        ));
    }
    let unknown: Vec<&str> = file
        .shards
        .keys()
        .filter(|name| map.shard_index(name).is_none())
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        warnings.push(format!(
            "{origin} names shards not in the map: {}",
            unknown.join(", ")
        ));
    }
    warnings
}

/// `spec` split at its first `=`, or an invalid-input failure naming `form`.
fn split<'a>(spec: &'a str, form: &str) -> Result<(&'a str, &'a str), Failure> {
    spec.split_once('=')
        .ok_or_else(|| Failure::invalid(format!("`{spec}`: expected {form}")))
}

/// The map at `path`, `${VAR}`s resolved with [`offline_env`].
fn load_map(path: &Path) -> Result<ShardMap, Failure> {
    super::map_source::load_with(path, &offline_env)
}

fn invalid(e: impl std::error::Error + Send + Sync + 'static) -> Failure {
    Failure::Invalid(e.into())
}

/// Applies the plan, then writes it, the summary and the optional map.
///
/// A plan that changes nothing (no moves, same shards and weights) is not
/// written: the summary says "nothing to move", no plan or map file is
/// written (an existing one is left as it is) and the map keeps its version.
fn finish(
    map: &ShardMap,
    plan: &Plan,
    output: &Output,
    load: Option<(&TokenHistogram, f64)>,
) -> Result<(), Failure> {
    if plan.moves.is_empty() && plan.shards == plan.base_shards {
        let mut summary = summary(map, map, plan, load);
        let skipped: Vec<String> = [&output.out, &output.emit_map]
            .into_iter()
            .flatten()
            .map(|p| p.display().to_string())
            .collect();
        if !skipped.is_empty() {
            let _ = writeln!(summary, "not written: {}", skipped.join(", "));
        }
        // The summary is the whole answer; stdout carries no plan.
        return match output.out {
            Some(_) => print(summary),
            None => {
                eprint(summary);
                Ok(())
            }
        };
    }
    let after = plan
        .apply_with_env(map, &offline_env)
        .map_err(|e| Failure::Runtime(e.into()))?;
    let summary = summary(map, &after, plan, load);
    let yaml = plan.to_yaml();
    let map_yaml = output.emit_map.as_ref().map(|_| after.to_yaml());
    let mut files: Vec<(&Path, &[u8])> = Vec::new();
    if let Some(path) = &output.out {
        files.push((path.as_path(), yaml.as_bytes()));
    }
    if let (Some(path), Some(text)) = (&output.emit_map, &map_yaml) {
        files.push((path.as_path(), text.as_bytes()));
    }
    write_files(&files)?;
    if output.out.is_some() {
        print(summary)
    } else {
        print(yaml)?;
        eprint(summary);
        Ok(())
    }
}

/// Moved share, and each shard's weight and share of tokens (and load)
/// before and after.
fn summary(
    before: &ShardMap,
    after: &ShardMap,
    plan: &Plan,
    load: Option<(&TokenHistogram, f64)>,
) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_summary(&mut out, before, after, plan, load);
    out
}

fn write_summary(
    out: &mut String,
    before: &ShardMap,
    after: &ShardMap,
    plan: &Plan,
    load: Option<(&TokenHistogram, f64)>,
) -> std::fmt::Result {
    writeln!(out, "plan: {}", plan.intent)?;
    if before.version() == after.version() {
        writeln!(
            out,
            "nothing to move: the map stays at version {}",
            before.version()
        )?;
    } else {
        writeln!(
            out,
            "map version {} -> {}; {} move{}, {} of the token space",
            before.version(),
            after.version(),
            plan.moves.len(),
            if plan.moves.len() == 1 { "" } else { "s" },
            percent(plan.moved_tokens() as f64 / TOKEN_SPACE as f64, 4)
        )?;
    }
    let loads = load.map(|(histogram, target)| {
        let of = |map: &ShardMap| {
            let arcs = plan::arcs_of(map.ring());
            histogram.loads_by_owner(&arcs, map.shards().len())
        };
        (histogram, target, of(before), of(after))
    });
    if let Some((histogram, target, was, now)) = &loads {
        let ptm = |map: &ShardMap, loads: &[f64]| {
            let weights: Vec<f64> = map.shards().iter().map(|s| f64::from(s.weight)).collect();
            Skew::of(loads, Some(&weights)).map_or(f64::NAN, |s| s.peak_to_mean)
        };
        let moved: f64 = plan
            .moves
            .iter()
            .map(|m| histogram.load_between(i128::from(m.from), m.to))
            .sum();
        writeln!(
            out,
            "moved load {}; peak-to-mean {:.4} -> {:.4} (target {target})",
            percent(moved / histogram.total(), 4),
            ptm(before, was),
            ptm(after, now)
        )?;
    }
    write!(
        out,
        "{:<16} {:>15} {:>10} {:>10}",
        "shard", "weight", "tokens", "after"
    )?;
    if loads.is_some() {
        write!(out, " {:>10} {:>10}", "load", "after")?;
    }
    writeln!(out)?;
    let shares = (before.shares(), after.shares());
    let mut names: Vec<&str> = before.shards().iter().map(|s| s.name.as_str()).collect();
    names.extend(
        after
            .shards()
            .iter()
            .map(|s| s.name.as_str())
            .filter(|n| before.shard_index(n).is_none()),
    );
    for name in names {
        let (was, now) = (before.shard_index(name), after.shard_index(name));
        let weight = |map: &ShardMap, i: Option<usize>| {
            i.and_then(|i| map.shards().get(i)).map(|s| s.weight)
        };
        let weight = match (weight(before, was), weight(after, now)) {
            (Some(a), Some(b)) if a != b => format!("{a} -> {b}"),
            (Some(w), _) | (None, Some(w)) => w.to_string(),
            (None, None) => String::new(),
        };
        let share = |shares: &[f64], i: Option<usize>| i.and_then(|i| shares.get(i)).copied();
        let percent = |x: Option<f64>| percent(x.unwrap_or(0.0), 4);
        write!(
            out,
            "{name:<16} {weight:>15} {:>10} {:>10}",
            percent(share(&shares.0, was)),
            percent(share(&shares.1, now))
        )?;
        if let Some((histogram, _, load_was, load_now)) = &loads {
            let total = histogram.total();
            let of = |loads: &[f64], i: Option<usize>| share(loads, i).map(|l| l / total);
            write!(
                out,
                " {:>10} {:>10}",
                percent(of(load_was, was)),
                percent(of(load_now, now))
            )?;
        }
        match (was, now) {
            (None, _) => writeln!(out, "  (new)")?,
            (_, None) => writeln!(out, "  (removed)")?,
            _ => writeln!(out)?,
        }
    }
    Ok(())
}
