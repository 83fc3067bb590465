//! Writes a [`ShardMap`] in the documented YAML format.

use std::fmt::Write;

use super::validate::{DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_POOL_SIZE};
use super::{ShardMap, HASH_FUNCTION};

/// A string as a YAML scalar that reads back as the same string anywhere,
/// flow mappings included: plain when made of letters, digits and `-_./@`
/// only and not read as another type (`true`, `1.5`, `null`), else
/// double-quoted with every character YAML could misread escaped.
pub fn yaml_scalar(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./@".contains(c);
    let reads_back = || {
        serde_yaml::from_str::<serde_yaml::Value>(s).ok()
            == Some(serde_yaml::Value::String(s.to_string()))
    };
    if !s.is_empty() && s.chars().all(safe) && reads_back() {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            // Controls, DEL, C1 controls (NEL among them), the line and
            // paragraph separators, the byte order mark and non-characters.
            c if c.is_control()
                || matches!(
                    c,
                    '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}'
                ) =>
            {
                // Writing to a String cannot fail.
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub(super) fn to_yaml(map: &ShardMap) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_yaml(map, &mut out);
    out
}

fn write_yaml(map: &ShardMap, out: &mut String) -> std::fmt::Result {
    writeln!(out, "version: {}", map.version)?;
    writeln!(out, "hash:")?;
    writeln!(out, "  function: {HASH_FUNCTION}")?;
    writeln!(out, "  seed: {}", map.seed)?;
    if let Some(control) = &map.control {
        writeln!(out, "control: {}", yaml_scalar(control.template()))?;
    }
    writeln!(out, "tables:")?;
    for t in &map.tables {
        writeln!(out, "  - {{ name: {}, key: {} }}", t.name, t.key)?;
    }
    writeln!(out, "shards:")?;
    for s in &map.shards {
        writeln!(out, "  - name: {}", yaml_scalar(&s.name))?;
        writeln!(out, "    url: {}", yaml_scalar(s.url.template()))?;
        if s.weight != 1 {
            writeln!(out, "    weight: {}", s.weight)?;
        }
        let timeout_ms = s.pool.connect_timeout.as_millis();
        if s.pool.max_size != DEFAULT_POOL_SIZE
            || timeout_ms != u128::from(DEFAULT_CONNECT_TIMEOUT_MS)
        {
            writeln!(
                out,
                "    pool: {{ max_size: {}, connect_timeout_ms: {timeout_ms} }}",
                s.pool.max_size
            )?;
        }
    }
    writeln!(out, "ring:")?;
    for arc in map.ring.arcs() {
        let name = map.shards.get(arc.shard).map_or("?", |s| s.name.as_str());
        writeln!(
            out,
            "  - {{ from: {}, shard: {} }}",
            arc.from,
            yaml_scalar(name)
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn scalars_read_back_in_block_and_flow_context(s in "\\PC*|[ -~]*|[a-z0-9 ,:#{}\\[\\]'\"!&*|>%@./_-]{0,6}|[\\x00-\\x7f\\u{80}-\\u{a0}\\u{2028}\\u{feff}]*") {
            for yaml in [format!("k: {}", yaml_scalar(&s)), format!("- {{ k: {}, l: 1 }}", yaml_scalar(&s))] {
                let value: serde_yaml::Value = serde_yaml::from_str(&yaml).map_err(|e| {
                    proptest::test_runner::TestCaseError::fail(format!("{yaml}: {e}"))
                })?;
                let got = value.get("k").or_else(|| value.get(0).and_then(|v| v.get("k")));
                proptest::prop_assert_eq!(got.and_then(|v| v.as_str()), Some(s.as_str()), "{}", yaml);
            }
        }
    }
}
