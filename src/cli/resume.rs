//! `postshard resume`: continue the unfinished migration from its last
//! journaled step.

use std::path::PathBuf;

use postshard_rebalancer::migrate;
use postshard_router::map::env_var;

use super::apply::{control_map, failure, stop_on_ctrl_c, with_progress, OutputArgs, PaceArgs};
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
    #[command(flatten)]
    output: OutputArgs,
    #[command(flatten)]
    pace: PaceArgs,
}

/// Resumes; exit 0 once the migration is done (or its abort finished).
pub fn run(args: Args) -> Result<(), Failure> {
    let map = control_map(&args.map)?;
    let (cancel, cancelled) = tokio::sync::watch::channel(false);
    let options = args.pace.options(cancelled);
    let runtime = runtime()?;
    with_progress(
        args.output.progress(),
        |on_event| {
            runtime
                .block_on(async {
                    stop_on_ctrl_c(cancel);
                    migrate::resume(&map, args.id, &env_var, &options, on_event).await
                })
                .map_err(failure)
        },
        |id| format!("migration {id}: finished"),
    )?;
    Ok(())
}
