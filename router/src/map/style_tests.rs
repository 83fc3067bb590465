//! Compiled only under #[cfg(test)], from `map/mod.rs`.
//! Maps written in many styles (BOM, CRLF, tabs, comments, flow and block,
//! quoting, anchors and aliases), each with one fault: every problem must
//! carry a location, and the text there must be the offending value.

use std::collections::HashMap;

use proptest::prelude::*;

use super::ShardMap;

/// How one map is written.
#[derive(Debug, Clone)]
struct Style {
    bom: bool,
    crlf: bool,
    /// Separator after `key:`: a space, a tab, or both.
    sep: &'static str,
    /// Comment lines at the top, and comments after values.
    comments: bool,
    /// Flow (`{ a: 1 }`) rather than block style, per section.
    flow_tables: bool,
    flow_shards: bool,
    flow_ring: bool,
    /// Quote strings: 0 plain, 1 single, 2 double.
    quote: usize,
    /// Write shard 1's pool as an alias of shard 0's.
    alias_pool: bool,
}

/// One injected fault: the path it is reported at and the value written there.
#[derive(Debug, Clone, Copy)]
struct Fault {
    path: &'static str,
    value: &'static str,
}

const BIG: &str = "99999999999999999999999999999999999999999999";

const FAULTS: &[Fault] = &[
    Fault {
        path: "version",
        value: "-1",
    },
    Fault {
        path: "version",
        value: BIG,
    },
    Fault {
        path: "version",
        value: "x1",
    },
    Fault {
        path: "hash.function",
        value: "md5",
    },
    Fault {
        path: "hash.seed",
        value: "1.5",
    },
    Fault {
        path: "hash.seed",
        value: BIG,
    },
    Fault {
        path: "tables[0].name",
        value: "Posts",
    },
    Fault {
        path: "tables[1].key",
        value: "Post_Id",
    },
    Fault {
        path: "shards[1].name",
        value: "s0",
    },
    Fault {
        path: "shards[1].weight",
        value: "0",
    },
    Fault {
        path: "shards[1].weight",
        value: "1e3",
    },
    Fault {
        path: "shards[1].weight",
        value: "99999999999999999999",
    },
    Fault {
        path: "shards[0].pool.max_size",
        value: "0",
    },
    Fault {
        path: "shards[0].pool.connect_timeout_ms",
        value: BIG,
    },
    Fault {
        path: "ring[1].from",
        value: BIG,
    },
    Fault {
        path: "ring[1].from",
        value: "-9223372036854775808",
    },
    Fault {
        path: "ring[0].from",
        value: "-5",
    },
    Fault {
        path: "ring[1].shard",
        value: "s9",
    },
];

/// The map's values by path, with `fault` applied.
fn values(fault: Option<Fault>) -> Vec<(&'static str, &'static str)> {
    let mut v = vec![
        ("version", "3"),
        ("hash.function", "pg_hashint8extended"),
        ("hash.seed", "7"),
        ("tables[0].name", "posts"),
        ("tables[0].key", "id"),
        ("tables[1].name", "comments"),
        ("tables[1].key", "post_id"),
        ("shards[0].name", "s0"),
        ("shards[0].url", "postgres://app@127.0.0.1:5433/forum"),
        ("shards[0].pool.max_size", "4"),
        ("shards[0].pool.connect_timeout_ms", "900"),
        ("shards[1].name", "s1"),
        ("shards[1].url", "postgres://app@127.0.0.1:5434/forum"),
        ("shards[1].weight", "2"),
        ("ring[0].from", "-9223372036854775808"),
        ("ring[0].shard", "s0"),
        ("ring[1].from", "0"),
        ("ring[1].shard", "s1"),
    ];
    if let Some(f) = fault {
        for (path, value) in &mut v {
            if *path == f.path {
                *value = f.value;
            }
        }
    }
    v
}

/// Paths holding strings (quoted by the style); the others hold numbers.
fn is_string(path: &str) -> bool {
    ["function", "name", "key", "url", "shard"]
        .iter()
        .any(|k| path.ends_with(&format!(".{k}")))
}

/// The map as text, and the text written at each value's path.
fn render(style: &Style, fault: Option<Fault>) -> (String, HashMap<&'static str, String>) {
    let vals = values(fault);
    let mut written = HashMap::new();
    let mut w = |path: &'static str| -> String {
        let raw = vals
            .iter()
            .find(|(p, _)| *p == path)
            .map_or("", |(_, v)| *v);
        let text = match (is_string(path), style.quote) {
            (true, 1) => format!("'{raw}'"),
            (true, 2) => format!("\"{raw}\""),
            _ => raw.to_string(),
        };
        written.insert(path, text.clone());
        text
    };
    let s = style.sep;
    let c = |note: &str| {
        if style.comments {
            format!("  # {note}")
        } else {
            String::new()
        }
    };
    let mut lines: Vec<String> = Vec::new();
    if style.comments {
        lines.push("# the forum's shard map".to_string());
        lines.push("#".to_string());
    }
    lines.push(format!("version:{s}{}{}", w("version"), c("epoch")));
    lines.push(format!("hash:{}", c("how keys become tokens")));
    lines.push(format!("  function:{s}{}", w("hash.function")));
    lines.push(format!("  seed:{s}{}", w("hash.seed")));
    lines.push("tables:".to_string());
    for i in 0..2 {
        let (name, key) = if i == 0 {
            (w("tables[0].name"), w("tables[0].key"))
        } else {
            (w("tables[1].name"), w("tables[1].key"))
        };
        if style.flow_tables {
            lines.push(format!("  - {{ name:{s}{name}, key:{s}{key} }}{}", c("t")));
        } else {
            lines.push(format!("  - name:{s}{name}"));
            lines.push(format!("    key:{s}{key}{}", c("t")));
        }
    }
    lines.push("shards:".to_string());
    let pool0 = format!(
        "{}{{ max_size:{s}{}, connect_timeout_ms:{s}{} }}",
        if style.alias_pool { "&pool " } else { "" },
        w("shards[0].pool.max_size"),
        w("shards[0].pool.connect_timeout_ms")
    );
    let (n0, u0) = (w("shards[0].name"), w("shards[0].url"));
    let (n1, u1, w1) = (
        w("shards[1].name"),
        w("shards[1].url"),
        w("shards[1].weight"),
    );
    let pool1 = if style.alias_pool {
        ", pool: *pool"
    } else {
        ""
    };
    if style.flow_shards {
        lines.push(format!(
            "  - {{ name:{s}{n0}, url:{s}{u0}, pool:{s}{pool0} }}"
        ));
        lines.push(format!(
            "  - {{ name:{s}{n1}, url:{s}{u1}, weight:{s}{w1}{pool1} }}{}",
            c("s1")
        ));
    } else {
        lines.push(format!("  - name:{s}{n0}{}", c("first")));
        lines.push(format!("    url:{s}{u0}"));
        lines.push(format!("    pool:{s}{pool0}"));
        lines.push(format!("  - name:{s}{n1}"));
        lines.push(format!("    url:{s}{u1}"));
        lines.push(format!("    weight:{s}{w1}{}", c("twice the capacity")));
        if style.alias_pool {
            lines.push("    pool: *pool".to_string());
        }
    }
    lines.push("ring:".to_string());
    for i in 0..2 {
        let (from, shard) = if i == 0 {
            (w("ring[0].from"), w("ring[0].shard"))
        } else {
            (w("ring[1].from"), w("ring[1].shard"))
        };
        if style.flow_ring {
            lines.push(format!("  - {{ from:{s}{from}, shard:{s}{shard} }}"));
        } else {
            lines.push(format!("  - from:{s}{from}"));
            lines.push(format!("    shard:{s}{shard}{}", c("owner")));
        }
    }
    let eol = if style.crlf { "\r\n" } else { "\n" };
    let mut text = if style.bom {
        "\u{feff}".to_string()
    } else {
        String::new()
    };
    for line in lines {
        text.push_str(&line);
        text.push_str(eol);
    }
    (text, written)
}

/// The text from 1-based `line` and `column` (in characters) to the end of
/// that line, as an editor shows it (no BOM, no CR).
fn text_at(text: &str, line: usize, column: usize) -> String {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let l = text.split('\n').nth(line - 1).unwrap_or("");
    l.trim_end_matches('\r').chars().skip(column - 1).collect()
}

fn style() -> impl Strategy<Value = Style> {
    (
        any::<[bool; 7]>(),
        prop::sample::select(vec![" ", "\t", " \t"]),
        0..3usize,
    )
        .prop_map(|(b, sep, quote)| Style {
            bom: b[0],
            crlf: b[1],
            sep,
            comments: b[2],
            flow_tables: b[3],
            flow_shards: b[4],
            flow_ring: b[5],
            quote,
            alias_pool: b[6],
        })
}

fn env(_: &str) -> Option<String> {
    None
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_problem_is_located_at_its_value(style in style(), fault in 0..FAULTS.len()) {
        let (clean, _) = render(&style, None);
        prop_assert!(ShardMap::parse(&clean, "m.yaml", &env).is_ok(), "{}", clean);
        let fault = FAULTS[fault];
        let (text, written) = render(&style, Some(fault));
        let e = ShardMap::parse(&text, "m.yaml", &env).unwrap_err();
        let problems = e.problems();
        prop_assert!(problems.iter().any(|p| p.path == fault.path), "{fault:?}: {e}\n{text}");
        for p in problems {
            let loc = p.location;
            prop_assert!(loc.is_some(), "{fault:?}: no location: {e}\n{text}");
            let loc = loc.unwrap();
            let at = text_at(&text, loc.line, loc.column);
            // A value reached through the alias is located at the alias.
            let want = match written.get(p.path.as_str()) {
                Some(want) => want.clone(),
                None if style.alias_pool && p.path.starts_with("shards[1].pool.") => "*pool".to_string(),
                None => return Err(TestCaseError::fail(format!("{fault:?}: unexpected path {}: {e}", p.path))),
            };
            prop_assert!(
                at.starts_with(want.as_str()),
                "{fault:?}: {}:{} shows {at:?}, want {want:?}: {e}\n{text}", loc.line, loc.column
            );
        }
        if fault.value == BIG {
            prop_assert!(e.to_string().contains(&format!("`{BIG}` is out of")), "{e}");
        }
    }

    #[test]
    fn structural_faults_are_located_at_their_key(style in style(), dup in any::<bool>()) {
        let (clean, _) = render(&style, None);
        let eol = if style.crlf { "\r\n" } else { "\n" };
        let extra = if dup { "version: 4" } else { "colour: red" };
        let text = format!("{clean}{extra}{eol}");
        let e = ShardMap::parse(&text, "m.yaml", &env).unwrap_err();
        let p = &e.problems()[0];
        let loc = p.location.unwrap();
        let at = text_at(&text, loc.line, loc.column);
        prop_assert!(at.starts_with(extra.split(':').next().unwrap()), "{e}: {at:?}");
        let want = if dup { "duplicate key `version`" } else { "unknown field `colour`" };
        prop_assert!(e.to_string().contains(want), "{e}");
    }
}
