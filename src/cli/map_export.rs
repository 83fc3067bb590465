//! `postshard map export`: the live map from the control store.

use std::path::PathBuf;
use std::time::Duration;

use postshard_router::{connect, live_map, ShardMap};

use super::map_source::runtime;
use super::{output, Failure};

/// Arguments of `postshard map export`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A shard map naming the control store (`control:`).
    #[arg(long, default_value = "shardmap.yaml")]
    map: PathBuf,
}

/// Prints the live map as stored (`${VAR}` references intact).
pub fn run(args: Args) -> Result<(), Failure> {
    let map = ShardMap::from_path(&args.map)?;
    let control = map.control().ok_or_else(|| {
        Failure::invalid(format!(
            "{}: the map names no control store (`control:`)",
            args.map.display()
        ))
    })?;
    let (_, text) = runtime()?.block_on(async {
        let client = connect(control, Duration::from_secs(10))
            .await
            .map_err(|e| Failure::Runtime(anyhow::anyhow!("control store: {e}")))?;
        live_map::live_map_text(&client)
            .await
            .map_err(|e| Failure::Runtime(e.into()))?
            .ok_or_else(|| Failure::Runtime(live_map::LiveMapError::NotSeeded.into()))
    })?;
    output::print(text)?;
    Ok(())
}
