//! `postshard route`: tokens and owners of post IDs, from arguments or stdin.

use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;

use postshard_router::ShardMap;

use super::Failure;

/// Arguments of `postshard route`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shard map.
    #[arg(long, default_value = "shardmap.yaml")]
    map: PathBuf,
    /// One JSON object per line instead of `ID<TAB>TOKEN<TAB>SHARD`.
    #[arg(long)]
    json: bool,
    /// Post IDs; when none are given, one per line is read from stdin.
    #[arg(allow_negative_numbers = true)]
    ids: Vec<String>,
}

/// Routes every ID, streaming stdin when no IDs are given.
pub fn run(args: Args) -> Result<(), Failure> {
    match route(args) {
        // A reader that stopped early (`| head`) is not a failure.
        Err(Failure::Runtime(e))
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        other => other,
    }
}

fn route(args: Args) -> Result<(), Failure> {
    let map = super::map_source::load(&args.map)?;
    let stdout = std::io::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
    if args.ids.is_empty() {
        let stdin = std::io::stdin();
        let mut input = stdin.lock();
        let mut line = Vec::new();
        let mut number = 0u64;
        loop {
            line.clear();
            if input.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            number += 1;
            let id = std::str::from_utf8(&line)
                .map_err(|_| "not valid UTF-8".to_string())
                .and_then(|text| parse_id(text.trim_end_matches(['\n', '\r'])))
                .map_err(|e| Failure::invalid(format!("stdin:{number}: {e}")))?;
            write_route(&mut out, &map, id, args.json)?;
        }
    } else {
        let ids = args
            .ids
            .iter()
            .enumerate()
            .map(|(i, s)| {
                parse_id(s).map_err(|e| Failure::invalid(format!("argument {}: {e}", i + 1)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        for id in ids {
            write_route(&mut out, &map, id, args.json)?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Longest input shown back in an error.
const SHOWN: usize = 40;

fn parse_id(text: &str) -> Result<i64, String> {
    text.trim().parse().map_err(|_| {
        let shown: String = text.chars().take(SHOWN).collect();
        let more = if text.chars().count() > SHOWN {
            "…"
        } else {
            ""
        };
        format!("`{shown}{more}` is not a 64-bit signed integer")
    })
}

fn write_route(out: &mut impl Write, map: &ShardMap, id: i64, json: bool) -> std::io::Result<()> {
    let token = map.token(id);
    let shard = &map.shards()[map.ring().owner(token)].name;
    if json {
        // Shard names are letters, digits, `_` and `-`: no JSON escaping needed.
        writeln!(
            out,
            "{{\"id\": {id}, \"token\": {token}, \"shard\": \"{shard}\"}}"
        )
    } else {
        writeln!(out, "{id}\t{token}\t{shard}")
    }
}
