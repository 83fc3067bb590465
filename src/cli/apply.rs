//! `postshard apply PLAN [--mode online|blocking]`: move the plan's ranges
//! on the live cluster, journaled step by step in the control store. Ctrl-C
//! stops at a resumable point.

use std::path::{Path, PathBuf};

use postshard_rebalancer::migrate::{self, Event, MigrateError, MoveOptions};
use postshard_rebalancer::plan::Plan;
use postshard_router::map::env_var;
use postshard_router::ShardMap;

use super::map_source::runtime;
use super::progress::{Progress, Style};
use super::Failure;

/// Arguments of `postshard apply`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The plan (from `postshard plan …`), made for the live epoch.
    #[arg(value_name = "PLAN.yaml")]
    plan: PathBuf,
    /// How writes to moving ranges behave: `online` (they continue while
    /// the range is copied; refused only from the final fence to the flip)
    /// or `blocking` (refused while the range is copied).
    #[arg(long, default_value = "online")]
    mode: String,
    /// A shard map naming the control store (`control:`).
    #[arg(long, default_value = "shardmap.yaml")]
    map: PathBuf,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub pace: PaceArgs,
}

/// How fast an online migration goes.
#[derive(Debug, clap::Args)]
pub struct PaceArgs {
    /// Online mode: copy at most N rows per second per table during the
    /// backfill (default: as fast as it goes).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_rows_per_sec: Option<u64>,
    /// Online mode: backfill up to K moves at once.
    #[arg(long, value_name = "K", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=64))]
    pub parallel: u64,
}

impl PaceArgs {
    /// Move options with this pace and `cancel` as the stop signal.
    pub fn options(&self, cancel: tokio::sync::watch::Receiver<bool>) -> MoveOptions {
        MoveOptions {
            cancel,
            max_rows_per_sec: self.max_rows_per_sec,
            parallel: usize::try_from(self.parallel).unwrap_or(1),
            ..MoveOptions::default()
        }
    }
}

/// How a migration is shown: text with progress bars (on a terminal),
/// `--quiet`, or `--json`.
#[derive(Debug, clap::Args)]
pub struct OutputArgs {
    /// One JSON event per line on stdout (phase changes, progress, stall,
    /// done), each with a `time`, for scripts; no text, no bars.
    #[arg(long, conflicts_with = "quiet")]
    pub json: bool,
    /// Print only errors and the final line.
    #[arg(long, short)]
    pub quiet: bool,
}

impl OutputArgs {
    /// A renderer for these flags.
    pub fn progress(&self) -> Progress {
        Progress::new(Style::from_flags(self.quiet, self.json))
    }
}

/// Runs `work` with `progress` receiving its events; ends the output with
/// `last` on success, or clears the bars before the error is printed.
pub fn with_progress<T>(
    mut progress: Progress,
    work: impl FnOnce(&mut dyn FnMut(&Event)) -> Result<T, Failure>,
    last: impl FnOnce(&T) -> String,
) -> Result<T, Failure> {
    match work(&mut |e| progress.event(e)) {
        Ok(value) => {
            progress.finish(&last(&value))?;
            Ok(value)
        }
        Err(e) => {
            progress.abandon();
            Err(e)
        }
    }
}

/// The map file, which must name a control store.
pub fn control_map(path: &Path) -> Result<ShardMap, Failure> {
    let map = ShardMap::from_path(path)?;
    if map.control().is_none() {
        return Err(Failure::invalid(format!(
            "{}: the map names no control store (`control:`); moves need one (see `postshard init`)",
            path.display()
        )));
    }
    Ok(map)
}

/// Exit 2 for refusals of bad input, 1 for the rest.
pub fn failure(e: MigrateError) -> Failure {
    if let MigrateError::Cancelled { .. } = e {
        Failure::Interrupted(e.into())
    } else if e.is_invalid_input() {
        Failure::Invalid(e.into())
    } else {
        Failure::Runtime(e.into())
    }
}

/// Sets `cancel` on the first Ctrl-C (the run stops at its next resumable
/// point and says how to resume).
pub fn stop_on_ctrl_c(cancel: tokio::sync::watch::Sender<bool>) {
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = cancel.send(true);
        }
    });
}

/// Applies the plan; exit 0 once the migration is done.
pub fn run(args: Args) -> Result<(), Failure> {
    let map = control_map(&args.map)?;
    let plan = Plan::from_path(&args.plan).map_err(Failure::invalid)?;
    let (cancel, cancelled) = tokio::sync::watch::channel(false);
    let options = args.pace.options(cancelled);
    let runtime = runtime()?;
    with_progress(
        args.output.progress(),
        |on_event| {
            runtime
                .block_on(async {
                    stop_on_ctrl_c(cancel);
                    migrate::apply(&map, &plan, &args.mode, &env_var, &options, on_event).await
                })
                .map_err(failure)
        },
        |id| format!("migration {id}: done"),
    )?;
    Ok(())
}
