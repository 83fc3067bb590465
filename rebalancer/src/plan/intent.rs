//! Plans that change the shard list or weights: add, remove and reweight a
//! shard. Each re-divides the token space by weight with the fewest moves.

use postshard_router::map::raw::RawShard;
use postshard_router::map::{Problem, MAX_WEIGHT};
use postshard_router::url::{has_literal_password, redact};
use postshard_router::{MapError, ShardMap, Token};

use super::apply::{offline_env, raw_map, ApplyError};
use super::file::{Plan, PlanShard, PlannedMove};
use super::moves::{arcs_of, moves_to_targets, Move};
use crate::layout::target_tokens;

/// Why an intent cannot be planned.
#[derive(Debug, thiserror::Error)]
pub enum IntentError {
    /// The named shard is not in the map.
    #[error("no shard `{name}` in the map (shards: {known})")]
    UnknownShard {
        /// The name given.
        name: String,
        /// The map's shards, comma-separated.
        known: String,
    },
    /// A shard of that name already exists.
    #[error("shard `{name}` is already in the map")]
    DuplicateShard {
        /// The name given.
        name: String,
    },
    /// The weight is out of range.
    #[error("weight {weight} for shard `{name}` must be from 1 to {MAX_WEIGHT}")]
    BadWeight {
        /// The shard.
        name: String,
        /// The weight given.
        weight: u32,
    },
    /// The URL holds a password written out, which would end up in the plan and map.
    #[error(
        "the URL of shard `{name}` (`{url}`) holds a literal password, which would end up \
         in the plan and the map; write it as ${{VAR}} (e.g. postgres://user:${{PGPASSWORD}}@host/db)"
    )]
    LiteralPassword {
        /// The shard.
        name: String,
        /// The URL, password redacted.
        url: String,
    },
    /// The map's only shard cannot be removed.
    #[error("cannot remove shard `{name}`: it is the only shard")]
    LastShard {
        /// The shard.
        name: String,
    },
    /// The new shard's name or URL is invalid.
    #[error("shard `{name}` is invalid")]
    BadShard {
        /// The shard.
        name: String,
        /// What is wrong.
        source: MapError,
    },
    /// The map after the plan would be invalid (two shards on one database, say).
    #[error("cannot {intent}")]
    Rejected {
        /// The intent, as the plan records it.
        intent: String,
        /// Why the plan does not apply.
        source: ApplyError,
    },
}

/// A plan adding shard `name` at `url` (a template: `${VAR}` for secrets)
/// with `weight`; it takes its weight's share of the ring from the others.
/// The new shard comes last in the shard list.
pub fn add_shard(map: &ShardMap, name: &str, url: &str, weight: u32) -> Result<Plan, IntentError> {
    check_weight(name, weight)?;
    if map.shard_index(name).is_some() {
        return Err(IntentError::DuplicateShard {
            name: name.to_string(),
        });
    }
    if has_literal_password(url) {
        return Err(IntentError::LiteralPassword {
            name: name.to_string(),
            url: redact(url),
        });
    }
    check_alone(map, name, url)?;
    let mut shards = base_shards(map);
    shards.push(PlanShard {
        name: name.to_string(),
        url: url.to_string(),
        weight,
    });
    let weights: Vec<u32> = shards.iter().map(|s| s.weight).collect();
    let intent = format!("add shard {name} (weight {weight})");
    by_weight(map, intent, &shards, &weights, shards.clone())
}

/// A plan removing shard `name`: its tokens go to the others by weight, and
/// it leaves the shard list once it owns nothing.
pub fn remove_shard(map: &ShardMap, name: &str) -> Result<Plan, IntentError> {
    let i = index(map, name)?;
    if map.shards().len() == 1 {
        return Err(IntentError::LastShard {
            name: name.to_string(),
        });
    }
    let union = base_shards(map);
    let weights: Vec<u32> = union
        .iter()
        .enumerate()
        .map(|(j, s)| if j == i { 0 } else { s.weight })
        .collect();
    let mut after = union.clone();
    after.remove(i);
    by_weight(map, format!("remove shard {name}"), &union, &weights, after)
}

/// A plan giving shard `name` a new `weight`, re-dividing the ring by weight.
pub fn reweight(map: &ShardMap, name: &str, weight: u32) -> Result<Plan, IntentError> {
    let i = index(map, name)?;
    check_weight(name, weight)?;
    let mut shards = base_shards(map);
    let Some(shard) = shards.get_mut(i) else {
        return Err(IntentError::UnknownShard {
            name: name.to_string(),
            known: String::new(),
        });
    };
    let old = std::mem::replace(&mut shard.weight, weight);
    let weights: Vec<u32> = shards.iter().map(|s| s.weight).collect();
    let intent = format!("reweight shard {name} from {old} to {weight}");
    by_weight(map, intent, &shards, &weights, shards.clone())
}

/// The map's shards as a plan records them.
pub(super) fn base_shards(map: &ShardMap) -> Vec<PlanShard> {
    map.shards()
        .iter()
        .map(|s| PlanShard {
            name: s.name.clone(),
            url: s.url.template().to_string(),
            weight: s.weight,
        })
        .collect()
}

/// A plan of `moves`, whose indexes are positions in `union`.
pub(super) fn plan_of(
    map: &ShardMap,
    intent: String,
    union: &[PlanShard],
    shards: Vec<PlanShard>,
    moves: &[Move],
) -> Plan {
    let name = |i: usize| union.get(i).map_or_else(String::new, |s| s.name.clone());
    Plan {
        base_version: map.version(),
        intent,
        base_shards: base_shards(map),
        shards,
        moves: moves
            .iter()
            .map(|m| PlannedMove {
                from: m.from,
                to: m.to,
                source: name(m.source),
                target: name(m.target),
                rows: None,
                bytes: None,
            })
            .collect(),
    }
}

/// The plan moving tokens so each shard of `union` owns its `weights` share,
/// checked by applying it (with [`offline_env`]: no secrets needed).
fn by_weight(
    map: &ShardMap,
    intent: String,
    union: &[PlanShard],
    weights: &[u32],
    after: Vec<PlanShard>,
) -> Result<Plan, IntentError> {
    let moves = moves_to_targets(&arcs_of(map.ring()), &target_tokens(weights));
    let plan = plan_of(map, intent, union, after, &moves);
    match plan.apply_with_env(map, &offline_env) {
        Ok(_) => Ok(plan),
        Err(source) => Err(IntentError::Rejected {
            intent: plan.intent,
            source,
        }),
    }
}

/// Validates a new shard in a map of its own, so that a bad name or URL is
/// reported once, without the follow-on problems of a whole ring.
fn check_alone(map: &ShardMap, name: &str, url: &str) -> Result<(), IntentError> {
    let shard = RawShard {
        name: name.to_string(),
        url: url.to_string(),
        weight: None,
        pool: None,
    };
    let raw = raw_map(map, 1, vec![shard], vec![(Token::MIN, name.to_string())]);
    match ShardMap::from_raw(raw, "NAME=URL", &offline_env) {
        Ok(_) => Ok(()),
        Err(MapError::Invalid { origin, problems }) => Err(IntentError::BadShard {
            name: name.to_string(),
            source: MapError::Invalid {
                origin,
                // The ring is ours, and the shard's place in that map means nothing.
                problems: problems
                    .into_iter()
                    .filter(|p| p.path.starts_with("shards"))
                    .map(|p| Problem {
                        path: String::new(),
                        ..p
                    })
                    .collect(),
            },
        }),
        Err(source) => Err(IntentError::BadShard {
            name: name.to_string(),
            source,
        }),
    }
}

fn check_weight(name: &str, weight: u32) -> Result<(), IntentError> {
    if weight == 0 || u64::from(weight) > MAX_WEIGHT {
        return Err(IntentError::BadWeight {
            name: name.to_string(),
            weight,
        });
    }
    Ok(())
}

fn index(map: &ShardMap, name: &str) -> Result<usize, IntentError> {
    map.shard_index(name)
        .ok_or_else(|| IntentError::UnknownShard {
            name: name.to_string(),
            known: map
                .shards()
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
}
