//! `postshard check`: validate a map and describe it.

use std::fmt::Write;
use std::path::PathBuf;

use postshard_router::ShardMap;

use super::output::percent;
use super::Failure;

/// Arguments of `postshard check`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shard map.
    #[arg(long, default_value = "shardmap.yaml")]
    map: PathBuf,
}

/// Validates the map; prints shares, arcs, tables and notes.
pub fn run(args: Args) -> Result<(), Failure> {
    let map = ShardMap::from_path(&args.map)?;
    super::output::print(describe(&map, &args.map.display().to_string()))
}

fn describe(map: &ShardMap, origin: &str) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_description(map, origin, &mut out);
    out
}

fn write_description(map: &ShardMap, origin: &str, out: &mut String) -> std::fmt::Result {
    let shares = map.shares();
    let total_weight: u64 = map.shards().iter().map(|s| u64::from(s.weight)).sum();
    writeln!(
        out,
        "{origin}: ok: version {}, {} shards, {} arcs, seed {}",
        map.version(),
        map.shards().len(),
        map.ring().len(),
        map.seed()
    )?;
    writeln!(out, "tables:")?;
    for t in map.tables() {
        writeln!(out, "  {} (key {})", t.name, t.key)?;
    }
    writeln!(out, "shards:")?;
    let mut notes = Vec::new();
    if map.control().is_some() {
        notes.push(
            "this map names a control store: the other commands route by its live map, \
             which moves ahead of this file as plans are applied (`postshard map export` \
             prints it)"
                .to_string(),
        );
    }
    for (i, (shard, share)) in map.shards().iter().zip(&shares).enumerate() {
        let arcs: Vec<_> = map.ring().arcs().filter(|a| a.shard == i).collect();
        writeln!(
            out,
            "  {:<12} {:>9}  weight {:<4} {} arc{}  {}",
            shard.name,
            percent(*share, 4),
            shard.weight,
            arcs.len(),
            if arcs.len() == 1 { " " } else { "s" },
            shard.url
        )?;
        for a in &arcs {
            writeln!(out, "      [{}, {}]", a.from, a.last)?;
        }
        if arcs.is_empty() {
            notes.push(format!(
                "shard `{}` owns no arc: it holds no data until a plan moves some to it",
                shard.name
            ));
        } else {
            let fair = f64::from(shard.weight) / total_weight as f64;
            if (share - fair).abs() > 0.01 {
                notes.push(format!(
                    "shard `{}` owns {} of the token space but its weight calls for {}",
                    shard.name,
                    percent(*share, 2),
                    percent(fair, 2)
                ));
            }
        }
    }
    if !notes.is_empty() {
        writeln!(out, "notes:")?;
        for n in notes {
            writeln!(out, "  {n}")?;
        }
    }
    Ok(())
}
