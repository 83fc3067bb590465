//! `postshard resume`: continue the unfinished migration from its last
//! journaled step.

use std::path::PathBuf;

use postshard_rebalancer::migrate::{self, MoveOptions};
use postshard_router::map::env_var;

use super::apply::{control_map, failure, print_event, stop_on_ctrl_c};
use super::map_source::runtime;
use super::Failure;

/// Arguments of `postshard resume`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The migration to resume (default: the active one).
    #[arg(value_name = "ID")]
    id: Option<i64>,
    /// A shard map naming the control store (`control:`).
    #[arg(long, default_value = "shardmap.yaml")]
    map: PathBuf,
    /// One JSON event per line instead of text.
    #[arg(long)]
    json: bool,
}

/// Resumes; exit 0 once the migration is done (or its abort finished).
pub fn run(args: Args) -> Result<(), Failure> {
    let map = control_map(&args.map)?;
    let json = args.json;
    let (cancel, cancelled) = tokio::sync::watch::channel(false);
    let options = MoveOptions {
        cancel: cancelled,
        ..MoveOptions::default()
    };
    let id = runtime()?
        .block_on(async {
            stop_on_ctrl_c(cancel);
            migrate::resume(&map, args.id, &env_var, &options, &mut |e| {
                print_event(json, e)
            })
            .await
        })
        .map_err(failure)?;
    if !json {
        super::output::print(format!("migration {id}: finished\n"))?;
    }
    Ok(())
}
