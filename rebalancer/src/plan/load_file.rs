//! The JSON load file read by `postshard plan balance --load FILE`:
//!
//! ```json
//! {"version": 1, "unit": "requests", "map_version": 7, "buckets": 1024,
//!  "shards": {"s0": 512, "s1": 488}, "bucket_loads": [3, 0, 7, ...],
//!  "hot_tokens": [{"token": -42, "load": 90}]}
//! ```
//!
//! `unit` is what the loads count: `requests`, `rows` or `bytes`. Bucket `b`
//! of `buckets` equal buckets covers tokens from
//! `i64::MIN + b * 2^64 / buckets` up to the next bucket's start. `shards`
//! holds every shard's total when the report was taken (0 when idle),
//! `map_version` the map the load was measured under. `hot_tokens` is
//! optional; hot tokens' loads are included in their buckets' loads. This is
//! the router's [`LoadReport`], which `postshard skew --save-load` writes too.
//! Unknown fields are refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use postshard_router::map::yaml;
use postshard_router::{LoadReport, LoadUnit, ShardMap};

use super::histogram::{HistogramError, TokenHistogram};
use super::without_location;

/// The only supported `version`.
pub const LOAD_FILE_VERSION: u32 = 1;

/// Most buckets a load file may hold.
pub const MAX_BUCKETS: usize = 1 << 20;

/// Why a load file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadFileError {
    /// The file could not be read.
    #[error("cannot read load file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The JSON is malformed or has unknown or missing fields.
    #[error("{origin}:{line}:{column}: {message}")]
    Parse {
        /// The file path, or a label for text from memory.
        origin: String,
        /// Line, from 1.
        line: usize,
        /// Column, from 1.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// An unsupported `version`.
    #[error("{origin}: version {version} is not supported (expected {LOAD_FILE_VERSION})")]
    Version {
        /// The file path or label.
        origin: String,
        /// The version found.
        version: u32,
    },
    /// `buckets` disagrees with the length of `bucket_loads`, or is out of range.
    #[error(
        "{origin}: `buckets` is {declared} but `bucket_loads` holds {actual} loads \
         (1 to {MAX_BUCKETS} are supported)"
    )]
    BucketCount {
        /// The file path or label.
        origin: String,
        /// `buckets`.
        declared: usize,
        /// Length of `bucket_loads`.
        actual: usize,
    },
    /// The hot tokens are inconsistent.
    #[error("{origin}: {error}")]
    Histogram {
        /// The file path or label.
        origin: String,
        /// What is wrong.
        error: HistogramError,
    },
    /// The loads count something other than what is to be balanced.
    #[error("{origin} counts {}, not {}", unit_name(*found), unit_name(*wanted))]
    Unit {
        /// The file path or label.
        origin: String,
        /// The file's unit.
        found: LoadUnit,
        /// The unit needed.
        wanted: LoadUnit,
    },
    /// Shards of the map have no figures: the file may read them as idle.
    #[error(
        "{origin} has no figures for shard(s) {} of the map; a load report lists every \
         shard, 0 when idle (was it taken under another map, or with a shard unreachable?)",
        shards.join(", ")
    )]
    MissingShards {
        /// The file path or label.
        origin: String,
        /// The map's shards the file does not list.
        shards: Vec<String>,
    },
}

/// A [`LoadUnit`] as load files spell it.
pub fn unit_name(unit: LoadUnit) -> &'static str {
    match unit {
        LoadUnit::Requests => "requests",
        LoadUnit::Rows => "rows",
        LoadUnit::Bytes => "bytes",
    }
}

/// A load file: per-shard totals and the load over the ring.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadFile {
    /// What the loads count.
    pub unit: LoadUnit,
    /// Version of the map the load was measured under.
    pub map_version: u64,
    /// Each shard's total load when the report was taken, by name.
    pub shards: BTreeMap<String, u64>,
    /// Load per token bucket and hot token.
    pub histogram: TokenHistogram,
}

impl LoadFile {
    /// Reads the load file at `path` (UTF-8, or UTF-16 with a byte-order
    /// mark, as PowerShell 5 writes).
    pub fn from_path(path: impl AsRef<Path>) -> Result<LoadFile, LoadFileError> {
        let path = path.as_ref();
        let origin = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| LoadFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let text = yaml::decode(&bytes).map_err(|e| LoadFileError::Parse {
            origin: origin.clone(),
            line: e.location.map_or(1, |l| l.line),
            column: e.location.map_or(1, |l| l.column),
            message: e.message,
        })?;
        LoadFile::from_json_str(&text, &origin)
    }

    /// Parses a load file held in memory, naming `origin` in errors. A
    /// leading UTF-8 byte-order mark is ignored (JSON parsers refuse it).
    pub fn from_json_str(text: &str, origin: &str) -> Result<LoadFile, LoadFileError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let raw: LoadReport = serde_json::from_str(text).map_err(|e| LoadFileError::Parse {
            origin: origin.to_string(),
            line: e.line(),
            column: e.column(),
            message: without_location(&e.to_string()).to_string(),
        })?;
        LoadFile::from_report(raw, origin)
    }

    /// Checks a load report held in memory, naming `origin` in errors.
    pub fn from_report(raw: LoadReport, origin: &str) -> Result<LoadFile, LoadFileError> {
        if raw.version != LOAD_FILE_VERSION {
            return Err(LoadFileError::Version {
                origin: origin.to_string(),
                version: raw.version,
            });
        }
        if raw.buckets != raw.bucket_loads.len() || !(1..=MAX_BUCKETS).contains(&raw.buckets) {
            return Err(LoadFileError::BucketCount {
                origin: origin.to_string(),
                declared: raw.buckets,
                actual: raw.bucket_loads.len(),
            });
        }
        let histogram =
            TokenHistogram::equal_buckets(&raw.bucket_loads, &raw.hot_tokens).map_err(|error| {
                LoadFileError::Histogram {
                    origin: origin.to_string(),
                    error,
                }
            })?;
        Ok(LoadFile {
            unit: raw.unit,
            map_version: raw.map_version,
            shards: raw.shards,
            histogram,
        })
    }

    /// Checks that the file counts `unit` and has figures for every shard of
    /// `map`, naming `origin` in errors.
    pub fn check_fits(
        &self,
        map: &ShardMap,
        unit: LoadUnit,
        origin: &str,
    ) -> Result<(), LoadFileError> {
        if self.unit != unit {
            return Err(LoadFileError::Unit {
                origin: origin.to_string(),
                found: self.unit,
                wanted: unit,
            });
        }
        let missing: Vec<String> = map
            .shards()
            .iter()
            .filter(|s| !self.shards.contains_key(&s.name))
            .map(|s| s.name.clone())
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(LoadFileError::MissingShards {
                origin: origin.to_string(),
                shards: missing,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use postshard_router::map::raw::{RawMap, RawShard, RawTable};

    use super::*;

    fn report(body: &str) -> Result<LoadFile, LoadFileError> {
        LoadFile::from_json_str(body, "load.json")
    }

    #[test]
    fn reads_a_report_with_and_without_hot_tokens() {
        let plain = report(
            r#"{"version": 1, "unit": "rows", "map_version": 3, "buckets": 4,
                "shards": {"s0": 10, "s1": 0}, "bucket_loads": [1, 2, 3, 4]}"#,
        )
        .unwrap();
        assert_eq!(plain.unit, LoadUnit::Rows);
        assert_eq!(plain.map_version, 3);
        assert_eq!(plain.shards["s0"], 10);
        assert_eq!(plain.histogram.total(), 10.0);
        assert!(plain.histogram.hot_tokens().is_empty());
        let hot = report(
            r#"{"version": 1, "unit": "bytes", "map_version": 1, "buckets": 2, "shards": {},
                "bucket_loads": [5, 9], "hot_tokens": [{"token": 7, "load": 4}]}"#,
        )
        .unwrap();
        assert_eq!(hot.unit, LoadUnit::Bytes);
        assert_eq!(
            hot.histogram.hot_tokens(),
            [postshard_router::HotToken { token: 7, load: 4 }]
        );
        assert!((hot.histogram.load_between(0, 1 << 63) - 9.0).abs() < 1e-9);
    }

    #[test]
    fn a_byte_order_mark_and_crlf_are_accepted() {
        let body = "{\"version\": 1, \"unit\": \"rows\", \"map_version\": 3, \"buckets\": 2,\r\n \
                    \"shards\": {\"s0\": 3}, \"bucket_loads\": [1, 2]}\r\n";
        let plain = report(body).unwrap();
        assert_eq!(report(&format!("\u{feff}{body}")).unwrap(), plain);
        assert_eq!(plain.histogram.total(), 3.0);
    }

    #[test]
    fn reads_the_routers_load_report() {
        let routed = postshard_router::LoadReport {
            version: 1,
            unit: LoadUnit::Requests,
            map_version: 12,
            buckets: 4,
            shards: [("a".to_string(), 6)].into_iter().collect(),
            bucket_loads: vec![1, 2, 3, 0],
            hot_tokens: Vec::new(),
        };
        let text = serde_json::to_string(&routed).unwrap();
        assert!(text.contains(r#""unit":"requests""#), "{text}");
        let file = report(&text).unwrap();
        assert_eq!(file.unit, LoadUnit::Requests);
        assert_eq!((file.map_version, file.histogram.total()), (12, 6.0));
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let head = "{\"version\": 1, \"unit\": \"rows\", \"map_version\": 1";
        let cases = [
            (
                format!("{head},\n \"buckets\": 1, \"shards\": {{}},\n \"bucket_loads\": [1], \"extra\": 0}}"),
                "load.json:3:",
            ),
            (
                format!("{head}, \"version\": 2, \"buckets\": 1, \"shards\": {{}}, \"bucket_loads\": [1]}}")
                    .replacen("\"version\": 1, ", "", 1),
                "version 2",
            ),
            (
                format!("{head}, \"buckets\": 1024, \"shards\": {{}}, \"bucket_loads\": [1]}}"),
                "`buckets` is 1024 but `bucket_loads` holds 1",
            ),
            (
                format!(
                    "{head}, \"buckets\": 1, \"shards\": {{}}, \"bucket_loads\": [3],\n \
                     \"hot_tokens\": [{{\"token\": 1, \"load\": 1}}, {{\"token\": 1, \"load\": 2}}]}}"
                ),
                "load.json: hot token 1 is listed twice",
            ),
            (
                format!(
                    "{head}, \"buckets\": 2, \"shards\": {{}}, \"bucket_loads\": [0, 3],\n \
                     \"hot_tokens\": [{{\"token\": 1, \"load\": 4}}]}}"
                ),
                "load.json: hot token 1 has load 4, but its bucket 1 (from token 0) holds only 3",
            ),
            (
                format!("{head}, \"buckets\": 1, \"shards\": {{}}, \"bucket_loads\": [-1]}}"),
                "load.json:1:",
            ),
            (
                "{\"version\": 1, \"unit\": \"rows\", \"buckets\": 1, \"shards\": {}, \"bucket_loads\": [1]}"
                    .to_string(),
                "load.json:1:",
            ),
            (
                "{\"version\": 1, \"map_version\": 1, \"buckets\": 1, \"shards\": {}, \"bucket_loads\": [1]}"
                    .to_string(),
                "missing field `unit`",
            ),
            (
                format!("{head}, \"buckets\": 1, \"shards\": {{}}, \"bucket_loads\": [1]}}")
                    .replace("\"rows\"", "\"clicks\""),
                "unknown variant `clicks`",
            ),
        ];
        for (body, want) in cases {
            let e = report(&body).unwrap_err().to_string();
            assert!(e.contains(want), "{body}: {e}");
            assert!(e.starts_with("load.json"), "{e}");
            assert!(!e.contains(" at line "), "{e}");
        }
        let e = report("{\"version\": 1, \"unit\": \"rows\", \"buckets\": 1, \"shards\": {}, \"bucket_loads\": [1]}")
            .unwrap_err()
            .to_string();
        assert!(e.ends_with(": missing field `map_version`"), "{e}");
    }

    #[test]
    fn a_file_must_count_the_unit_and_cover_every_shard() {
        let shards = ["s0", "s1", "s2"]
            .iter()
            .map(|n| RawShard::new(n, &format!("postgres://db-{n}/forum")))
            .collect();
        let raw = RawMap::new(
            1,
            0,
            vec![RawTable::new("posts", "id")],
            shards,
            &[(i64::MIN, 0), (0, 1), (1 << 62, 2)],
        );
        let map = ShardMap::from_raw(raw, "test", &|_| None).unwrap();
        let file = |shards: &str| {
            report(&format!(
                "{{\"version\": 1, \"unit\": \"rows\", \"map_version\": 1, \"buckets\": 1, \
                 \"shards\": {{{shards}}}, \"bucket_loads\": [1]}}"
            ))
            .unwrap()
        };
        let full = file("\"s0\": 1, \"s1\": 0, \"s2\": 0, \"old\": 5");
        assert!(full.check_fits(&map, LoadUnit::Rows, "f.json").is_ok());
        let e = full
            .check_fits(&map, LoadUnit::Requests, "f.json")
            .unwrap_err();
        assert_eq!(e.to_string(), "f.json counts rows, not requests");
        let e = file("\"s1\": 1")
            .check_fits(&map, LoadUnit::Rows, "f.json")
            .unwrap_err();
        assert!(
            matches!(&e, LoadFileError::MissingShards { shards, .. } if shards == &["s0", "s2"]),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .starts_with("f.json has no figures for shard(s) s0, s2 of the map"),
            "{e}"
        );
    }
}
