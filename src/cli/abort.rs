//! `postshard abort ID`: undo a migration that has not flipped.

use std::path::PathBuf;

use postshard_rebalancer::migrate::{self, MoveOptions};
use postshard_router::map::env_var;

use super::apply::{control_map, failure, with_progress, OutputArgs};
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
    #[command(flatten)]
    output: OutputArgs,
}

/// Aborts; exit 0 once nothing of the migration is left.
pub fn run(args: Args) -> Result<(), Failure> {
    let map = control_map(&args.map)?;
    let runtime = runtime()?;
    let id = args.id;
    with_progress(
        args.output.progress(),
        |on_event| {
            runtime
                .block_on(migrate::abort(
                    &map,
                    id,
                    &env_var,
                    &MoveOptions::default(),
                    on_event,
                ))
                .map_err(failure)
        },
        |()| format!("migration {id}: aborted"),
    )
}
