//! Writes a [`ShardMap`] in the documented YAML format.

use std::fmt::Write;

use super::validate::{DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_POOL_SIZE};
use super::yaml::scalar;
use super::{ShardMap, HASH_FUNCTION};

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
        writeln!(out, "control: {}", scalar(control.template()))?;
    }
    writeln!(out, "tables:")?;
    for t in &map.tables {
        writeln!(
            out,
            "  - {{ name: {}, key: {} }}",
            scalar(&t.name),
            scalar(&t.key)
        )?;
    }
    writeln!(out, "shards:")?;
    for s in &map.shards {
        writeln!(out, "  - name: {}", scalar(&s.name))?;
        writeln!(out, "    url: {}", scalar(s.url.template()))?;
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
        writeln!(out, "  - {{ from: {}, shard: {} }}", arc.from, scalar(name))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::map::raw::{RawMap, RawShard, RawTable};
    use crate::ShardMap;

    #[test]
    fn names_yaml_readers_could_misread_are_quoted_and_read_back() {
        let names = [
            "no",
            "on",
            "y",
            "null",
            "0x10",
            "1_000",
            "2001-12-14",
            "-1",
            "s0",
        ];
        let shards = names
            .iter()
            .enumerate()
            .map(|(i, n)| RawShard::new(n, &format!("postgres://app@db{i}/forum")))
            .collect();
        let arcs: Vec<(i64, usize)> = (0..names.len())
            .map(|i| (i64::MIN + (i as i64) * (1 << 59), i))
            .collect();
        let tables = vec![RawTable::new("no", "on"), RawTable::new("null", "y")];
        let raw = RawMap::new(2, -7, tables, shards, &arcs);
        let map = ShardMap::from_raw(raw, "test", &|_| None).unwrap();
        let yaml = map.to_yaml();
        for quoted in [
            "name: \"no\"",
            "{ name: \"no\", key: \"on\" }",
            "shard: \"null\" }",
            "name: \"0x10\"",
            "name: \"2001-12-14\"",
            "name: s0",
        ] {
            assert!(yaml.contains(quoted), "{quoted}: {yaml}");
        }
        assert_eq!(ShardMap::parse(&yaml, "back", &|_| None).unwrap(), map);
    }
}
