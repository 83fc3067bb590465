//! Command-line parsing and dispatch; each subcommand lives in its own module.

mod check;
mod failure;
mod map_init;
mod route;

use clap::{Parser, Subcommand};

pub use failure::Failure;

/// Shard PostgreSQL for big community sites.
#[derive(Debug, Parser)]
#[command(name = "postshard", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a shard map and show each shard's share of the token space.
    Check(check::Args),
    /// Print the token and owning shard of post IDs.
    Route(route::Args),
    /// Write shard maps.
    #[command(subcommand)]
    Map(MapCommand),
}

#[derive(Debug, Subcommand)]
enum MapCommand {
    /// Print a balanced shardmap.yaml for the given shards.
    Init(map_init::Args),
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Check(args) => check::run(args),
        Command::Route(args) => route::run(args),
        Command::Map(MapCommand::Init(args)) => map_init::run(args),
    }
}
