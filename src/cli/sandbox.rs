//! `postshard sandbox up|status|down`: local PostgreSQL servers with a forum
//! schema, a control store and a ready `shardmap.yaml`, kept running under
//! one directory until `down`.

/// Prints a line on stdout through `output` (a closed stdout is ignored:
/// the command still finishes, and the demo still cleans up).
macro_rules! say {
    ($($arg:tt)*) => {
        drop(crate::cli::output::print(format!("{}\n", format_args!($($arg)*))))
    };
}

use std::path::{Path, PathBuf};

use postshard_rebalancer::init::{init, InitOptions};
use postshard_rebalancer::layout::balanced_arcs;
use postshard_router::map::env_var;
use postshard_router::map::raw::{RawMap, RawShard, RawTable};
use postshard_router::ShardMap;
use postshard_sandbox::{Sandbox, SandboxError, UpOutcome};

use super::map_source::runtime;
use super::Failure;

/// The database holding the forum on every server.
pub const DATABASE: &str = "forum";

/// The control store's database, on the first server.
pub const CONTROL_DATABASE: &str = "postshard_control";

/// The map file written into the sandbox directory.
pub const MAP_FILE: &str = "shardmap.yaml";

/// The forum schema created on every shard. `posts` and `comments` are
/// sharded by post ID (every primary key and unique index includes it, so
/// rows from two shards never collide); `boards` is a small table every
/// shard holds in full.
pub const FORUM_SCHEMA: &str = "\
CREATE TABLE boards (
    id    integer PRIMARY KEY,
    name  text NOT NULL
);
CREATE TABLE posts (
    id         bigint PRIMARY KEY,            -- the shard key
    board_id   integer NOT NULL,
    author_id  bigint NOT NULL,
    title      text NOT NULL,
    body       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    edited_at  timestamptz
);
CREATE INDEX posts_board_recent ON posts (board_id, created_at DESC);
CREATE TABLE comments (
    post_id    bigint NOT NULL REFERENCES posts (id) ON DELETE CASCADE,  -- the shard key
    id         bigint NOT NULL,
    author_id  bigint NOT NULL,
    body       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (post_id, id)
);
CREATE INDEX comments_author ON comments (author_id);
";

/// `postshard sandbox` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Start local PostgreSQL servers with the forum schema, a control store
    /// and DIR/shardmap.yaml, and run `init`; they keep running until `down`.
    Up(UpArgs),
    /// Show the sandbox's servers: port, up or down, size on disk.
    Status(DirArgs),
    /// Stop the sandbox's servers and remove its directory.
    Down(DirArgs),
}

/// Arguments of `sandbox up`.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Number of shards (servers); the first also holds the control store.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=64))]
    shards: u16,
    #[command(flatten)]
    dir: DirArgs,
}

/// The sandbox directory argument.
#[derive(Debug, clap::Args)]
pub struct DirArgs {
    /// The sandbox directory [default: $XDG_DATA_HOME/postshard/sandbox, or
    /// ~/.local/share/postshard/sandbox; as root /tmp/postshard-sandbox, which
    /// the `postgres` user can reach].
    #[arg(long)]
    dir: Option<PathBuf>,
}

impl DirArgs {
    fn resolve(&self) -> PathBuf {
        self.dir.clone().unwrap_or_else(default_dir)
    }
}

/// Runs a `sandbox` subcommand.
pub fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Up(args) => {
            let dir = args.dir.resolve();
            let (sandbox, outcome) = up(&dir, usize::from(args.shards))?;
            let map = sandbox.dir().join(MAP_FILE);
            match outcome {
                UpOutcome::AlreadyUp => say!(
                    "sandbox in {} is already up ({} servers); map: {}",
                    sandbox.dir().display(),
                    sandbox.members().len(),
                    map.display()
                ),
                UpOutcome::Restarted(names) => say!(
                    "sandbox in {} was up but stopped; started {} again; map: {}",
                    sandbox.dir().display(),
                    names.join(", "),
                    map.display()
                ),
                UpOutcome::Started => {
                    print_status(&sandbox);
                    say!(
                        "\nmap: {}   (control store: database {CONTROL_DATABASE} on {})",
                        map.display(),
                        sandbox.members().first().map_or("?", |m| m.name.as_str())
                    );
                    say!("try:  postshard status --map {}", map.display());
                    say!("      postshard skew --map {}", map.display());
                    say!(
                        "      postshard sandbox down --dir {}",
                        sandbox.dir().display()
                    );
                }
            }
            Ok(())
        }
        Command::Status(args) => {
            let sandbox = Sandbox::open(&args.resolve()).map_err(sandbox_failure)?;
            print_status(&sandbox);
            Ok(())
        }
        Command::Down(args) => {
            let dir = args.resolve();
            let sandbox = Sandbox::open(&dir).map_err(sandbox_failure)?;
            let servers = sandbox.members().len();
            sandbox.down().map_err(sandbox_failure)?;
            say!("stopped {servers} servers; removed {}", dir.display());
            Ok(())
        }
    }
}

/// Starts (or finds) the sandbox in `dir` with `shards` shards; a new one
/// gets the forum schema, the control database, `shardmap.yaml` and `init`.
/// A new sandbox that fails half-way is stopped and removed.
pub fn up(dir: &Path, shards: usize) -> Result<(Sandbox, UpOutcome), Failure> {
    let rt = runtime()?;
    rt.block_on(up_async(dir, shards))
}

/// [`up`] inside a runtime (the servers start synchronously).
pub async fn up_async(dir: &Path, shards: usize) -> Result<(Sandbox, UpOutcome), Failure> {
    let names: Vec<String> = (0..shards).map(|i| format!("s{i}")).collect();
    let (sandbox, outcome) = Sandbox::up(dir, &names, DATABASE).map_err(sandbox_failure)?;
    if outcome != UpOutcome::Started {
        return Ok((sandbox, outcome));
    }
    match prepare(&sandbox).await {
        Ok(()) => Ok((sandbox, outcome)),
        Err(e) => {
            let _ = sandbox.down();
            Err(e)
        }
    }
}

/// Schema, control database, map file and `init` for a new sandbox.
async fn prepare(sandbox: &Sandbox) -> Result<(), Failure> {
    let members = sandbox.members();
    let first = members
        .first()
        .ok_or_else(|| Failure::invalid("a sandbox needs at least one shard"))?;
    sandbox
        .psql(
            first,
            "postgres",
            &format!("CREATE DATABASE {CONTROL_DATABASE}"),
        )
        .map_err(sandbox_failure)?;
    for member in members {
        sandbox
            .psql(member, DATABASE, FORUM_SCHEMA)
            .map_err(sandbox_failure)?;
    }
    let shards: Vec<RawShard> = members
        .iter()
        .map(|m| RawShard::new(&m.name, &Sandbox::url(m, DATABASE)))
        .collect();
    let arcs = balanced_arcs(&vec![1; shards.len()]);
    let tables = vec![
        RawTable::new("posts", "id"),
        RawTable::new("comments", "post_id"),
    ];
    let mut raw = RawMap::new(1, 0, tables, shards, &arcs);
    raw.control = Some(Sandbox::url(first, CONTROL_DATABASE));
    let path = sandbox.dir().join(MAP_FILE);
    let map = ShardMap::from_raw(raw, &path.display().to_string(), &env_var)?;
    std::fs::write(&path, map.to_yaml())
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("write {}: {e}", path.display())))?;
    init(&map, &env_var, &InitOptions::default())
        .await
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("init: {e}")))?;
    Ok(())
}

/// Prints one line per server.
fn print_status(sandbox: &Sandbox) {
    say!("sandbox in {}", sandbox.dir().display());
    say!(
        "{:<8} {:>6}  {:<5} {:>10}  url",
        "server",
        "port",
        "state",
        "size"
    );
    for s in sandbox.status() {
        say!(
            "{:<8} {:>6}  {:<5} {:>10}  {}",
            s.member.name,
            s.member.port,
            if s.running { "up" } else { "down" },
            human_bytes(s.bytes),
            Sandbox::url(&s.member, DATABASE)
        );
    }
}

/// `12.3 MB`-style sizes (powers of 1000).
pub fn human_bytes(bytes: u64) -> String {
    let mut value = bytes as f64;
    for unit in ["B", "kB", "MB", "GB"] {
        if value < 1000.0 {
            return format!("{value:.1} {unit}");
        }
        value /= 1000.0;
    }
    format!("{value:.1} TB")
}

/// The default sandbox directory: the user's data directory, or (as root,
/// whose home the `postgres` user cannot reach, or without a home) one in
/// the temp directory.
pub fn default_dir() -> PathBuf {
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    let data_home = std::env::var_os("XDG_DATA_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(|h| PathBuf::from(h).join(".local/share"))
        });
    match data_home {
        Some(data) if !root => data.join("postshard").join("sandbox"),
        _ => std::env::temp_dir().join("postshard-sandbox"),
    }
}

/// Bad directories are invalid input (exit 2); the rest runtime (exit 1).
pub fn sandbox_failure(e: SandboxError) -> Failure {
    match e {
        SandboxError::NotEmpty { .. } | SandboxError::Unreachable { .. } => {
            Failure::Invalid(e.into())
        }
        other => Failure::Runtime(other.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn sizes_read_like_du() {
        assert_eq!(human_bytes(999), "999.0 B");
        assert_eq!(human_bytes(48_200_000), "48.2 MB");
    }
}
