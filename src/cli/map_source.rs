//! Where commands get the map: the file, or — when the file names a control
//! store (`control:`) — the live map stored there. The file then supplies
//! only the control URL; `${VAR}` in the live map resolve like the file's.

use std::path::Path;
use std::time::Duration;

use postshard_router::map::env_var;
use postshard_router::{connect, live_map, ConnUrl, MapError, ShardMap};

use super::Failure;

/// How long to wait for the control store.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// The map at `path`, or the live map of the control store it names;
/// `${VAR}` resolved from the environment.
pub fn load(path: &Path) -> Result<ShardMap, Failure> {
    load_with(path, &env_var)
}

/// [`load`] with `${VAR}` of the map resolved by `env` (the control URL
/// itself always from the environment: it must connect).
pub fn load_with(
    path: &Path,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Result<ShardMap, Failure> {
    let text = std::fs::read_to_string(path).map_err(|source| MapError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let origin = path.display().to_string();
    let file = ShardMap::parse(&text, &origin, env)?;
    // Only the control URL needs the real environment (`plan` resolves the
    // shards' `${VAR}` with placeholders: it needs no secrets).
    let Some(template) = file.control().map(|c| c.template().to_string()) else {
        return Ok(file);
    };
    let control = ConnUrl::expand(&template, env_var).map_err(|problems| {
        Failure::invalid(format!("{origin}: control: {}", problems.join("; ")))
    })?;
    runtime()?.block_on(async {
        let client = connect(&control, CONTROL_TIMEOUT)
            .await
            .map_err(|e| Failure::Runtime(anyhow::anyhow!("control store: {e}")))?;
        live_map::load_live(&client, env)
            .await
            .map_err(|e| match e {
                live_map::LiveMapError::Invalid { source, .. } => Failure::from(source),
                other => Failure::Runtime(other.into()),
            })
    })
}

/// A single-threaded runtime for a command's database work.
pub fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(e.into()))
}
