//! `postshard apply PLAN [--mode online|blocking]`: move the plan's ranges
//! on the live cluster, journaled step by step in the control store. Ctrl-C
//! stops at a resumable point.

use std::path::{Path, PathBuf};

use postshard_rebalancer::migrate::{self, Event, MigrateError, MoveOptions};
use postshard_rebalancer::plan::Plan;
use postshard_router::map::env_var;
use postshard_router::ShardMap;

use super::map_source::runtime;
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
    /// One JSON event per line instead of text.
    #[arg(long)]
    json: bool,
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
    if e.is_invalid_input() {
        Failure::Invalid(e.into())
    } else {
        Failure::Runtime(e.into())
    }
}

/// Prints one event, as text or a JSON line.
pub fn print_event(json: bool, event: &Event) {
    if json {
        if let Ok(line) = serde_json::to_string(event) {
            // A closed stdout must not stop a migration midway.
            let _ = super::output::print(format!("{line}\n"));
        }
        return;
    }
    let what = match event.move_index {
        Some(i) => format!("move {i}: {}", event.event),
        None => event.event.clone(),
    };
    let detail = match &event.detail {
        serde_json::Value::Object(o) if o.is_empty() => String::new(),
        serde_json::Value::Null => String::new(),
        d => format!(" {d}"),
    };
    let _ = super::output::print(format!("migration {}: {what}{detail}\n", event.migration));
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
    let options = MoveOptions {
        cancel: cancelled,
        ..MoveOptions::default()
    };
    let json = args.json;
    let id = runtime()?
        .block_on(async {
            stop_on_ctrl_c(cancel);
            migrate::apply(&map, &plan, &args.mode, &env_var, &options, &mut |e| {
                print_event(json, e)
            })
            .await
        })
        .map_err(failure)?;
    if !json {
        super::output::print(format!("migration {id}: done\n"))?;
    }
    Ok(())
}
