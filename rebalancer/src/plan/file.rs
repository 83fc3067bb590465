//! The plan file: a [`Plan`] in YAML, written by hand for one-line moves
//! (every string through [`yaml_scalar`], so YAML 1.1 readers read it back
//! the same) and read through [`yaml::from_str`], unknown fields denied.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use postshard_router::map::yaml::{self, scalar as yaml_scalar};
use postshard_router::{LoadUnit, Token};
use serde::Deserialize;

use super::histogram::TokenHistogram;
use super::moves::tokens_between;

/// A rebalance plan: the shards after it and the token ranges that change
/// owner, made for one version of the map.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Version of the map the plan applies to; the result has version + 1.
    pub base_version: u64,
    /// What the plan does, for people.
    pub intent: String,
    /// The map's shards before the plan, in map order (to check the base map
    /// and to reverse the plan).
    pub base_shards: Vec<PlanShard>,
    /// The shards after the plan, in map order.
    pub shards: Vec<PlanShard>,
    /// Token ranges changing owner, in token order.
    pub moves: Vec<PlannedMove>,
}

/// A shard as a plan records it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanShard {
    /// Unique name.
    pub name: String,
    /// Connection URL template, `${VAR}` references intact (never expanded).
    pub url: String,
    /// Relative capacity.
    pub weight: u32,
}

/// A token range [from, to) changing owner, shards named.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannedMove {
    /// First token moved.
    pub from: Token,
    /// One past the last token moved; 2^63 for the end of the ring.
    pub to: i128,
    /// Shard giving the range away.
    pub source: String,
    /// Shard receiving it.
    pub target: String,
    /// Estimated rows moved, when known.
    #[serde(default)]
    pub rows: Option<u64>,
    /// Estimated bytes moved, when known.
    #[serde(default)]
    pub bytes: Option<u64>,
}

/// Why a plan file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum PlanFileError {
    /// The file could not be read.
    #[error("cannot read plan {}", path.display())]
    Read {
        /// The plan file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The YAML is malformed or has unknown, missing or mistyped fields.
    #[error("{origin}:{} {message}", location.map_or(String::new(), |(l, c)| format!("{l}:{c}:")))]
    Parse {
        /// The file path, or `<string>` for text from memory.
        origin: String,
        /// Line and column, from 1, when known.
        location: Option<(usize, usize)>,
        /// What is wrong, with the YAML path of the offending node.
        message: String,
    },
}

impl Plan {
    /// Reads the plan file at `path` (UTF-8, or UTF-16 with a byte-order
    /// mark).
    pub fn from_path(path: impl AsRef<Path>) -> Result<Plan, PlanFileError> {
        let path = path.as_ref();
        let origin = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| PlanFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let text = yaml::decode(&bytes).map_err(|e| PlanFileError::Parse {
            origin: origin.clone(),
            location: e.location.map(|l| (l.line, l.column)),
            message: e.message,
        })?;
        Plan::parse(&text, &origin)
    }

    /// Parses a plan held in memory; errors name `<string>`.
    pub fn from_yaml_str(text: &str) -> Result<Plan, PlanFileError> {
        Plan::parse(text, "<string>")
    }

    fn parse(text: &str, origin: &str) -> Result<Plan, PlanFileError> {
        yaml::from_str(text).map_err(|e| PlanFileError::Parse {
            origin: origin.to_string(),
            location: e.location.map(|l| (l.line, l.column)),
            message: match e.path.as_str() {
                "" => e.message,
                path => format!("{path}: {}", e.message),
            },
        })
    }

    /// The plan as YAML: one line per move.
    pub fn to_yaml(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_yaml(&mut out);
        out
    }

    fn write_yaml(&self, out: &mut String) -> std::fmt::Result {
        writeln!(out, "base_version: {}", self.base_version)?;
        writeln!(out, "intent: {}", yaml_scalar(&self.intent))?;
        for (key, shards) in [("base_shards", &self.base_shards), ("shards", &self.shards)] {
            writeln!(out, "{key}:")?;
            for s in shards {
                writeln!(out, "  - name: {}", yaml_scalar(&s.name))?;
                writeln!(out, "    url: {}", yaml_scalar(&s.url))?;
                writeln!(out, "    weight: {}", s.weight)?;
            }
        }
        if self.moves.is_empty() {
            return writeln!(out, "moves: []");
        }
        writeln!(out, "moves:")?;
        for m in &self.moves {
            write!(
                out,
                "  - {{ from: {}, to: {}, source: {}, target: {}",
                m.from,
                m.to,
                yaml_scalar(&m.source),
                yaml_scalar(&m.target)
            )?;
            if let Some(rows) = m.rows {
                write!(out, ", rows: {rows}")?;
            }
            if let Some(bytes) = m.bytes {
                write!(out, ", bytes: {bytes}")?;
            }
            writeln!(out, " }}")?;
        }
        Ok(())
    }

    /// Total number of tokens the plan moves.
    pub fn moved_tokens(&self) -> u128 {
        self.moves.iter().map(PlannedMove::tokens).sum()
    }

    /// Records on each move the rows or bytes `histogram` (counting `unit`)
    /// predicts it moves; requests are not recorded.
    pub fn estimate(&mut self, histogram: &TokenHistogram, unit: LoadUnit) {
        for m in &mut self.moves {
            let amount = Some(histogram.load_between(i128::from(m.from), m.to).round() as u64);
            match unit {
                LoadUnit::Rows => m.rows = amount,
                LoadUnit::Bytes => m.bytes = amount,
                LoadUnit::Requests => {}
            }
        }
    }
}

impl PlannedMove {
    /// Number of tokens moved (0 for an empty or reversed range).
    pub fn tokens(&self) -> u128 {
        tokens_between(self.from, self.to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Plan {
        let shard = |name: &str, url: &str, weight| PlanShard {
            name: name.to_string(),
            url: url.to_string(),
            weight,
        };
        Plan {
            base_version: 7,
            intent: "add shard s2 (weight 2): yes, really".to_string(),
            base_shards: vec![
                shard("s0", "postgres://app:${PGPASSWORD}@db0/posts", 1),
                shard("yes", "postgres://db1/posts?options={x}", 1),
            ],
            shards: vec![
                shard("s0", "postgres://app:${PGPASSWORD}@db0/posts", 1),
                shard("yes", "postgres://db1/posts?options={x}", 1),
                shard("s2", "host=db2 dbname=posts", 2),
            ],
            moves: vec![
                PlannedMove {
                    from: i64::MIN,
                    to: -5,
                    source: "s0".to_string(),
                    target: "s2".to_string(),
                    rows: Some(12),
                    bytes: None,
                },
                PlannedMove {
                    from: 100,
                    to: 1 << 63,
                    source: "yes".to_string(),
                    target: "s2".to_string(),
                    rows: None,
                    bytes: Some(4096),
                },
            ],
        }
    }

    #[test]
    fn round_trips_through_yaml() {
        let plan = sample();
        let yaml = plan.to_yaml();
        assert!(yaml.contains("to: 9223372036854775808"), "{yaml}");
        assert!(yaml.contains("${PGPASSWORD}"), "{yaml}");
        assert_eq!(Plan::from_yaml_str(&yaml).unwrap(), plan);
        let empty = Plan {
            moves: Vec::new(),
            ..plan
        };
        assert_eq!(Plan::from_yaml_str(&empty.to_yaml()).unwrap(), empty);
    }

    #[test]
    fn parse_errors_name_origin_line_and_field() {
        let yaml = sample()
            .to_yaml()
            .replace("weight: 2", "weight: 2\n    colour: red");
        let e = Plan::from_yaml_str(&yaml).unwrap_err().to_string();
        assert!(e.starts_with("<string>:"), "{e}");
        assert!(e.contains("unknown field `colour`"), "{e}");
        let line = yaml.lines().position(|l| l.contains("colour")).unwrap() + 1;
        assert!(e.contains(&format!(":{line}:")), "{e}");
        assert!(e.contains("shards[2]"), "{e}");
    }

    #[test]
    fn errors_name_the_origin_with_or_without_a_location() {
        let yaml = format!("{}---\nmore: 1\n", sample().to_yaml());
        let e = Plan::from_yaml_str(&yaml).unwrap_err();
        let line = yaml.lines().count();
        assert_eq!(
            e.to_string(),
            format!("<string>:{line}:1: more than one document; a file holds one")
        );
        let e = PlanFileError::Parse {
            origin: "p.yaml".to_string(),
            location: None,
            message: "bad".to_string(),
        };
        assert_eq!(e.to_string(), "p.yaml: bad");
        let e = Plan::from_yaml_str("base_version: 1\n").unwrap_err();
        assert_eq!(e.to_string(), "<string>:1:1: missing field `intent`");
    }

    #[test]
    fn plan_files_saved_as_utf16_or_with_a_bom_are_read() {
        let plan = sample();
        let yaml = plan.to_yaml().replace('\n', "\r\n");
        let mut utf16 = vec![0xFF, 0xFE];
        for unit in yaml.encode_utf16() {
            utf16.extend(unit.to_le_bytes());
        }
        let dir = std::env::temp_dir().join(format!("postshard-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = [
            ("utf16.yaml", utf16),
            ("bom.yaml", format!("\u{feff}{yaml}").into_bytes()),
        ];
        for (name, bytes) in files {
            let path = dir.join(name);
            std::fs::write(&path, bytes).unwrap();
            assert_eq!(Plan::from_path(&path).unwrap(), plan, "{name}");
        }
        let path = dir.join("latin1.yaml");
        std::fs::write(&path, b"base_version: 1\nintent: \xe9\n").unwrap();
        let e = Plan::from_path(&path).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            e.ends_with("latin1.yaml:2:9: the file is not valid UTF-8 text here; save it as UTF-8"),
            "{e}"
        );
    }

    #[test]
    fn odd_names_and_intents_round_trip() {
        let mut plan = sample();
        for (i, name) in [
            "a,b", "}{", "x: y", "#c", "true", "1.5", "", "-", "@at", "q\"'\\",
        ]
        .iter()
        .enumerate()
        {
            plan.shards[0].name = name.to_string();
            plan.moves[0].source = name.to_string();
            plan.moves[1].target = format!("{name}\n\u{85}\u{2028}\t{i}");
            plan.intent = format!("{name} # not a comment");
            let yaml = plan.to_yaml();
            assert_eq!(Plan::from_yaml_str(&yaml).unwrap(), plan, "{yaml}");
        }
    }

    #[test]
    fn counts_moved_tokens_and_estimates_rows() {
        let mut plan = sample();
        assert_eq!(
            plan.moved_tokens(),
            ((1u128 << 63) - 5) + ((1u128 << 63) - 100)
        );
        let histogram = TokenHistogram::equal_buckets(&[10, 30], &[]).unwrap();
        plan.estimate(&histogram, LoadUnit::Bytes);
        assert_eq!(plan.moves[0].bytes, Some(10));
        assert_eq!(plan.moves[1].bytes, Some(30));
        assert_eq!(plan.moves[0].rows, Some(12));
    }
}
