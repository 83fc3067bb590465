//! Command-line parsing and dispatch; each subcommand lives in its own module.

mod abort;
mod apply;
mod check;
mod demo;
mod failure;
mod init;
mod map_export;
mod map_init;
mod map_source;
mod output;
mod plan;
mod progress;
mod resume;
mod route;
mod sandbox;
mod skew_live;
mod skew_simulate;
mod status;
mod verify;

use clap::{Parser, Subcommand};

pub use failure::Failure;
pub use output::eprint;

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
    /// Create the control store and ready every shard (fence, missing tables); idempotent.
    Init(init::Args),
    /// Print the token and owning shard of post IDs.
    Route(route::Args),
    /// Write shard maps.
    #[command(subcommand)]
    Map(MapCommand),
    /// Write a rebalance plan: add, remove or reweight a shard, or even out load.
    #[command(subcommand)]
    Plan(plan::Command),
    /// Measure how evenly rows and load are spread over the live shards
    /// (`skew simulate` compares strategies on synthetic keys instead).
    Skew(SkewArgs),
    /// Check that every row is on the shard owning its token, with row
    /// counts and checksums per arc.
    Verify(verify::Args),
    /// Move a plan's ranges on the live cluster (online by default: writes continue), journaled step by step.
    Apply(apply::Args),
    /// Continue the unfinished migration from its last journaled step.
    Resume(resume::Args),
    /// Undo a migration that has not flipped ownership yet.
    Abort(abort::Args),
    /// Show the live epoch, shards, routers and migrations.
    Status(status::Args),
    /// See it work: a local sandbox, a forum under load, a shard added
    /// online, skew, latency, a row-by-row check and an HTML report.
    Demo(demo::Args),
    /// Local PostgreSQL servers with a forum schema and a ready map, kept until `down`.
    #[command(subcommand)]
    Sandbox(sandbox::Command),
}

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct SkewArgs {
    #[command(subcommand)]
    command: Option<SkewCommand>,
    #[command(flatten)]
    live: skew_live::Args,
}

#[derive(Debug, Subcommand)]
enum SkewCommand {
    /// Simulate how sharding strategies spread synthetic keys and requests.
    Simulate(skew_simulate::Args),
}

#[derive(Debug, Subcommand)]
enum MapCommand {
    /// Print a balanced shardmap.yaml for the given shards.
    Init(map_init::Args),
    /// Print the live map from the control store.
    Export(map_export::Args),
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Check(args) => check::run(args),
        Command::Init(args) => init::run(args),
        Command::Route(args) => route::run(args),
        Command::Map(MapCommand::Init(args)) => map_init::run(args),
        Command::Map(MapCommand::Export(args)) => map_export::run(args),
        Command::Plan(command) => plan::run(command),
        Command::Skew(SkewArgs {
            command: Some(SkewCommand::Simulate(args)),
            ..
        }) => skew_simulate::run(args),
        Command::Skew(SkewArgs {
            command: None,
            live,
        }) => skew_live::run(live),
        Command::Verify(args) => verify::run(args),
        Command::Apply(args) => apply::run(args),
        Command::Resume(args) => resume::run(args),
        Command::Abort(args) => abort::run(args),
        Command::Status(args) => status::run(args),
        Command::Sandbox(command) => sandbox::run(command),
        Command::Demo(args) => demo::run(args),
    }
}
