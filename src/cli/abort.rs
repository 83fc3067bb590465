//! `postshard abort ID`: undo a migration that has not flipped.

use std::path::PathBuf;

use postshard_rebalancer::migrate::{self, MoveOptions};
use postshard_router::map::env_var;

use super::apply::{control_map, failure, print_event};
use super::map_source::runtime;
use super::Failure;

/// Arguments of `postshard abort`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The migration to undo (`postshard status` lists them).
    #[arg(value_name = "ID")]
    id: i64,
    /// A shard map naming the control store (`control:`).
    #[arg(long, default_value = "shardmap.yaml")]
    map: PathBuf,
    /// One JSON event per line instead of text.
    #[arg(long)]
    json: bool,
}

/// Aborts; exit 0 once nothing of the migration is left.
pub fn run(args: Args) -> Result<(), Failure> {
    let map = control_map(&args.map)?;
    let json = args.json;
    runtime()?
        .block_on(migrate::abort(
            &map,
            args.id,
            &env_var,
            &MoveOptions::default(),
            &mut |e| print_event(json, e),
        ))
        .map_err(failure)?;
    if !json {
        super::output::print(format!("migration {}: aborted\n", args.id))?;
    }
    Ok(())
}
