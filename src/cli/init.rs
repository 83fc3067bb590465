//! `postshard init`: control store and shards made ready for moves.

use std::path::PathBuf;

use postshard_rebalancer::control::Seeded;
use postshard_rebalancer::init::{init, InitError, InitOptions};
use postshard_router::map::env_var;
use postshard_router::ShardMap;

use super::map_source::runtime;
use super::Failure;

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
        eprintln!("warning: {warning}");
    }
    match report.seeded {
        Seeded::Created => println!("control store: live map seeded at epoch {}", map.version()),
        Seeded::AlreadyLive => println!(
            "control store: live map at epoch {} (unchanged)",
            map.version()
        ),
    }
    for (shard, tables, from) in &report.copied {
        match from {
            Some(from) => println!(
                "shard {shard}: fence ready; created {} from shard {from}",
                tables.join(", ")
            ),
            None => println!("shard {shard}: fence ready"),
        }
    }
    Ok(())
}
