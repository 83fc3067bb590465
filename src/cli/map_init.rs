//! `postshard map init`: a balanced map for a set of shards.

use postshard_rebalancer::layout::balanced_arcs;
use postshard_router::map::raw::{RawMap, RawShard, RawTable};
use postshard_router::ShardMap;

use super::Failure;

/// Arguments of `postshard map init`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A shard as NAME=URL; repeat for each shard, in ring order.
    #[arg(long = "shard", value_name = "NAME=URL", required = true)]
    shards: Vec<String>,
    /// A shard's weight as NAME=W (default 1).
    #[arg(long = "weight", value_name = "NAME=W")]
    weights: Vec<String>,
    /// The hashint8extended seed.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    seed: i64,
    /// A sharded table as NAME:KEY (default posts:id and comments:post_id).
    #[arg(long = "table", value_name = "NAME:KEY")]
    tables: Vec<String>,
}

/// Prints the map.
pub fn run(args: Args) -> Result<(), Failure> {
    super::output::print(build(&args)?.to_yaml())
}

fn build(args: &Args) -> Result<ShardMap, Failure> {
    let mut shards = Vec::new();
    for spec in &args.shards {
        let (name, url) = spec
            .split_once('=')
            .ok_or_else(|| Failure::invalid(format!("--shard `{spec}`: expected NAME=URL")))?;
        shards.push(RawShard::new(name, url));
    }
    let mut weights = vec![1u32; shards.len()];
    for spec in &args.weights {
        let (name, w) = spec
            .split_once('=')
            .ok_or_else(|| Failure::invalid(format!("--weight `{spec}`: expected NAME=W")))?;
        let i = shards
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| Failure::invalid(format!("--weight `{spec}`: no shard `{name}`")))?;
        let w: u32 = w
            .parse()
            .ok()
            .filter(|w| (1..=postshard_router::map::MAX_WEIGHT).contains(&u64::from(*w)))
            .ok_or_else(|| {
                Failure::invalid(format!(
                    "--weight `{spec}`: `{w}` is not an integer from 1 to {}",
                    postshard_router::map::MAX_WEIGHT
                ))
            })?;
        if let (Some(weight), Some(shard)) = (weights.get_mut(i), shards.get_mut(i)) {
            *weight = w;
            *shard = shard.clone().with_weight(w);
        }
    }
    let table_specs = if args.tables.is_empty() {
        vec!["posts:id".to_string(), "comments:post_id".to_string()]
    } else {
        args.tables.clone()
    };
    let mut tables = Vec::new();
    for spec in &table_specs {
        let (name, key) = spec
            .split_once(':')
            .ok_or_else(|| Failure::invalid(format!("--table `{spec}`: expected NAME:KEY")))?;
        tables.push(RawTable::new(name, key));
    }
    let raw = RawMap::new(1, args.seed, tables, shards, &balanced_arcs(&weights));
    // The map may be meant for another machine: `${VAR}`s unset here are not an error.
    let env = |name: &str| Some(std::env::var(name).unwrap_or_else(|_| "unset".to_string()));
    Ok(ShardMap::from_raw(raw, "map init", &env)?)
}
