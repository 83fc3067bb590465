//! `postshard init`: control store and shards made ready for moves.

use std::path::PathBuf;

use postshard_rebalancer::control::Seeded;
use postshard_rebalancer::init::{init, InitError, InitOptions};
use postshard_router::map::env_var;
use postshard_router::ShardMap;

use super::map_source::runtime;
use super::{output, Failure};

/// Arguments of `postshard init`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shard map; it must name the control store (`control:`).
    #[arg(long, default_value = "shardmap.yaml")]
    map: PathBuf,
}

/// Runs init and prints what it did; idempotent.
pub fn run(args: Args) -> Result<(), Failure> {
    let map = ShardMap::from_path(&args.map)?;
    let report = runtime()?
        .block_on(init(&map, &env_var, &InitOptions::default()))
        .map_err(|e| match e {
            InitError::NoControl | InitError::Refused { .. } => Failure::Invalid(e.into()),
            InitError::Control(
                postshard_rebalancer::control::ControlError::OtherEpoch { .. }
                | postshard_rebalancer::control::ControlError::Differs { .. },
            ) => Failure::Invalid(e.into()),
            other => Failure::Runtime(other.into()),
        })?;
    for warning in &report.warnings {
        output::eprint(format!("warning: {warning}\n"));
    }
    let mut text = match report.seeded {
        Seeded::Created => format!(
            "control store: live map seeded at epoch {}\n",
            map.version()
        ),
        Seeded::AlreadyLive => format!(
            "control store: live map at epoch {} (unchanged)\n",
            map.version()
        ),
    };
    for (shard, tables, from) in &report.copied {
        text.push_str(&match from {
            Some(from) => format!(
                "shard {shard}: fence ready; created {} from shard {from}\n",
                tables.join(", ")
            ),
            None => format!("shard {shard}: fence ready\n"),
        });
    }
    output::print(text)?;
    Ok(())
}
