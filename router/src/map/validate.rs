//! One pass from [`RawMap`] to [`ShardMap`] that collects every problem.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use super::error::Problem;
use super::locate::Locator;
use super::raw::{RawMap, RawValue};
use super::{PoolSettings, Shard, ShardMap, Table, HASH_FUNCTION};
use crate::ring::Ring;
use crate::url::{has_literal_password, redact, ConnUrl};

/// Most shards a map may hold.
pub const MAX_SHARDS: usize = 4096;
/// Largest accepted shard weight.
pub const MAX_WEIGHT: u64 = 1_000_000;
pub(crate) const DEFAULT_POOL_SIZE: u32 = 16;
pub(crate) const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;

/// Collects problems, locating each by its YAML path.
struct Checker<'a> {
    locator: &'a Locator,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn report(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let path = path.into();
        self.problems.push(Problem {
            location: self.locator.find(&path),
            path,
            message: message.into(),
        });
    }

    /// An integer in `min..=max`, or a problem naming the value.
    fn integer(&mut self, path: &str, value: &RawValue, min: i128, max: i128) -> Option<i128> {
        match value {
            RawValue::Int(n) if (min..=max).contains(n) => Some(*n),
            RawValue::Int(n) => {
                self.report(path, format!("`{n}` is out of range {min}..={max}"));
                None
            }
            RawValue::Float(x) if x.fract() == 0.0 => {
                self.report(
                    path,
                    format!("`{x}` is written as a floating-point number; write a plain integer"),
                );
                None
            }
            other => {
                self.report(path, format!("{other} is not an integer"));
                None
            }
        }
    }
}

/// Lower-case SQL identifier, optionally schema-qualified: safe to paste into SQL.
fn is_sql_identifier(s: &str) -> bool {
    let part = |p: &str| {
        let mut chars = p.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && p.len() <= 63
    };
    match s.split_once('.') {
        Some((schema, table)) => part(schema) && part(table),
        None => part(s),
    }
}

fn is_shard_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Validates `raw`, reporting every problem; `env` resolves `${VAR}`.
pub(crate) fn validate(
    raw: RawMap,
    locator: &Locator,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ShardMap, Vec<Problem>> {
    let mut ck = Checker {
        locator,
        problems: Vec::new(),
    };

    let version = ck.integer("version", &raw.version, 0, i128::from(i64::MAX));
    if raw.hash.function != HASH_FUNCTION {
        ck.report(
            "hash.function",
            format!(
                "unknown hash function `{}` (supported: {HASH_FUNCTION})",
                raw.hash.function
            ),
        );
    }
    let seed = ck.integer(
        "hash.seed",
        &raw.hash.seed,
        i128::from(i64::MIN),
        i128::from(i64::MAX),
    );

    let mut tables = Vec::new();
    let mut table_names = HashSet::new();
    if raw.tables.is_empty() {
        ck.report("tables", "no tables: list at least one sharded table");
    }
    for (i, t) in raw.tables.into_iter().enumerate() {
        if !is_sql_identifier(&t.name) {
            ck.report(
                format!("tables[{i}].name"),
                format!("table name `{}` is not a lower-case SQL identifier", t.name),
            );
        } else if !table_names.insert(t.name.clone()) {
            ck.report(
                format!("tables[{i}].name"),
                format!("duplicate table `{}`", t.name),
            );
        }
        if !is_sql_identifier(&t.key) || t.key.contains('.') {
            ck.report(
                format!("tables[{i}].key"),
                format!("key column `{}` is not a lower-case SQL identifier", t.key),
            );
        }
        tables.push(Table {
            name: t.name,
            key: t.key,
        });
    }

    let mut shards = Vec::new();
    let mut index_of = HashMap::new();
    let mut endpoints: HashMap<String, String> = HashMap::new();
    if raw.shards.is_empty() {
        ck.report("shards", "no shards: list at least one shard");
    } else if raw.shards.len() > MAX_SHARDS {
        ck.report(
            "shards",
            format!(
                "{} shards; at most {MAX_SHARDS} are supported",
                raw.shards.len()
            ),
        );
    }
    for (i, s) in raw.shards.into_iter().enumerate() {
        let at = |field: &str| format!("shards[{i}].{field}");
        if !is_shard_name(&s.name) {
            ck.report(
                at("name"),
                format!(
                    "shard name `{}` must be 1-63 letters, digits, `_` or `-`",
                    s.name
                ),
            );
        } else if index_of.insert(s.name.clone(), i).is_some() {
            ck.report(at("name"), format!("duplicate shard name `{}`", s.name));
        }
        if has_literal_password(&s.url) {
            ck.report(
                at("url"),
                format!(
                    "the URL `{}` holds a literal password; write it as ${{VAR}} (e.g. \
                     postgres://user:${{PGPASSWORD}}@host/db) so that no secret sits in the map \
                     or in plans made from it",
                    redact(&s.url)
                ),
            );
        }
        let url = match ConnUrl::expand(&s.url, env) {
            Ok(url) => check_url(&mut ck, &at("url"), &s.name, url, &mut endpoints),
            Err(problems) => {
                for p in problems {
                    ck.report(at("url"), p);
                }
                None
            }
        };
        let weight = match &s.weight {
            None => Some(1),
            Some(RawValue::Int(n)) if *n <= 0 => {
                ck.report(at("weight"), format!("weight `{n}` must be greater than 0"));
                None
            }
            Some(RawValue::Float(x)) if *x <= 0.0 => {
                ck.report(at("weight"), format!("weight `{x}` must be greater than 0"));
                None
            }
            Some(w) => ck.integer(&at("weight"), w, 1, i128::from(MAX_WEIGHT)),
        };
        let pool = s.pool.as_ref();
        let max_size = match pool.and_then(|p| p.max_size.as_ref()) {
            None => Some(i128::from(DEFAULT_POOL_SIZE)),
            Some(v) => ck.integer(&at("pool.max_size"), v, 1, 10_000),
        };
        let timeout = match pool.and_then(|p| p.connect_timeout_ms.as_ref()) {
            None => Some(i128::from(DEFAULT_CONNECT_TIMEOUT_MS)),
            Some(v) => ck.integer(&at("pool.connect_timeout_ms"), v, 1, 3_600_000),
        };
        if let (Some(url), Some(weight), Some(max_size), Some(timeout)) =
            (url, weight, max_size, timeout)
        {
            shards.push(Shard {
                name: s.name,
                url,
                weight: weight as u32,
                pool: PoolSettings {
                    max_size: max_size as u32,
                    connect_timeout: Duration::from_millis(timeout as u64),
                },
            });
        }
    }

    let control = raw
        .control
        .as_deref()
        .and_then(|template| check_control(&mut ck, template, env));

    let mut arcs = Vec::with_capacity(raw.ring.len());
    let mut previous: Option<i128> = None;
    if raw.ring.is_empty() {
        ck.report("ring", "empty ring: it must start at -9223372036854775808");
    }
    for (i, arc) in raw.ring.iter().enumerate() {
        let from = ck.integer(
            &format!("ring[{i}].from"),
            &arc.from,
            i128::from(i64::MIN),
            i128::from(i64::MAX),
        );
        if let Some(from) = from {
            if i == 0 && from != i128::from(i64::MIN) {
                ck.report(
                    "ring[0].from",
                    format!("the ring must start at -9223372036854775808, not {from}"),
                );
            }
            if let Some(prev) = previous.filter(|p| from <= *p) {
                ck.report(
                    format!("ring[{i}].from"),
                    format!("`from` {from} must be greater than the previous arc's {prev}"),
                );
            }
            previous = Some(from);
        }
        let owner = index_of.get(&arc.shard).copied();
        if owner.is_none() {
            ck.report(
                format!("ring[{i}].shard"),
                format!("unknown shard `{}`", arc.shard),
            );
        }
        if let (Some(from), Some(owner)) = (from, owner) {
            arcs.push((from as i64, owner as u32));
        }
    }

    match (version, seed) {
        (Some(version), Some(seed)) if ck.problems.is_empty() => Ok(ShardMap {
            version: version as u64,
            seed: seed as i64,
            tables,
            shards,
            ring: Ring::from_checked(&arcs),
            control,
        }),
        _ => {
            ck.problems
                .sort_by_key(|p| p.location.map(|l| (l.line, l.column)));
            Err(ck.problems)
        }
    }
}

/// The control store's URL: no literal password, every `${VAR}` set, and a
/// valid connection string naming a host. It may share a server (even a
/// database) with a shard.
fn check_control(
    ck: &mut Checker<'_>,
    template: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<ConnUrl> {
    if has_literal_password(template) {
        ck.report(
            "control",
            format!(
                "the URL `{}` holds a literal password; write it as ${{VAR}}",
                redact(template)
            ),
        );
        return None;
    }
    let url = match ConnUrl::expand(template, env) {
        Ok(url) => url,
        Err(problems) => {
            for p in problems {
                ck.report("control", p);
            }
            return None;
        }
    };
    match tokio_postgres::Config::from_str(url.expose()) {
        Ok(config) if !config.get_hosts().is_empty() => Some(url),
        Ok(_) => {
            ck.report("control", format!("connection URL `{url}` names no host"));
            None
        }
        Err(e) => {
            ck.report("control", format!("invalid connection URL `{url}`: {e}"));
            None
        }
    }
}

/// Parses an expanded URL and checks that no other shard points at the same
/// server and database.
fn check_url(
    ck: &mut Checker<'_>,
    path: &str,
    shard: &str,
    url: ConnUrl,
    endpoints: &mut HashMap<String, String>,
) -> Option<ConnUrl> {
    let config = match tokio_postgres::Config::from_str(url.expose()) {
        Ok(config) => config,
        Err(e) => {
            ck.report(path, format!("invalid connection URL `{url}`: {e}"));
            return None;
        }
    };
    if config.get_hosts().is_empty() {
        ck.report(path, format!("connection URL `{url}` names no host"));
        return None;
    }
    let ports = match config.get_ports() {
        [] => &[5432][..],
        ports => ports,
    };
    let endpoint = format!(
        "{:?} {ports:?} {:?}",
        config.get_hosts(),
        config.get_dbname().or(config.get_user())
    );
    if let Some(other) = endpoints.insert(endpoint, shard.to_string()) {
        ck.report(
            path,
            format!("shard `{shard}` has the same server and database as shard `{other}`: `{url}`"),
        );
    }
    Some(url)
}
