//! `postshard route`: tokens and owners of post IDs, from arguments or stdin.

use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;

use postshard_router::ShardMap;

use super::output::stdout_error;
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
///
/// Stdin is one ID per line; a UTF-8 byte-order mark before the first line
/// (PowerShell writes one) is skipped, and `\n` or `\r\n` ends a line. A bad
/// line stops the command with `stdin:LINE:` and the line as written, its
/// invisible characters escaped (exit 2); lines before it have been routed.
pub fn run(args: Args) -> Result<(), Failure> {
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
            let mut bytes = line.as_slice();
            if number == 1 {
                bytes = bytes.strip_prefix(BOM).unwrap_or(bytes);
            }
            let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
            let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
            let id = std::str::from_utf8(bytes)
                .map_err(|_| format!("not valid UTF-8: `{}`", shown_bytes(bytes)))
                .and_then(parse_id)
                .map_err(|e| Failure::invalid(format!("stdin:{number}: {e}")))?;
            write_route(&mut out, &map, id, args.json).map_err(stdout_error)?;
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
            write_route(&mut out, &map, id, args.json).map_err(stdout_error)?;
        }
    }
    out.flush().map_err(stdout_error)
}

/// The UTF-8 byte-order mark.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Longest input shown back in an error, in characters.
const SHOWN: usize = 40;

/// An integer ID; surrounding whitespace is ignored.
fn parse_id(text: &str) -> Result<i64, String> {
    text.trim().parse().map_err(|_| {
        let shown: String = text.chars().take(SHOWN).collect();
        let more = if text.chars().count() > SHOWN {
            "…"
        } else {
            ""
        };
        // Escaped, so that a no-break space or zero-width character shows.
        format!(
            "`{}{more}` is not a 64-bit signed integer",
            shown.escape_debug()
        )
    })
}

/// The first [`SHOWN`] bytes of a line that is not UTF-8, escaped.
fn shown_bytes(bytes: &[u8]) -> String {
    let shown = bytes.iter().take(SHOWN).copied().collect::<Vec<u8>>();
    let more = if bytes.len() > SHOWN { "…" } else { "" };
    format!("{}{more}", shown.escape_ascii())
}

fn write_route(out: &mut impl Write, map: &ShardMap, id: i64, json: bool) -> std::io::Result<()> {
    let token = map.token(id);
    // A validated map's ring only names its shards.
    let shard = map
        .shards()
        .get(map.ring().owner(token))
        .map_or("?", |s| s.name.as_str());
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
