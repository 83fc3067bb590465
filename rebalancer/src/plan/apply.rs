//! Applying a plan to the map it was made for, and reversing a plan.

use std::collections::{HashMap, HashSet};

use postshard_router::map::env_var;
use postshard_router::map::raw::{RawArc, RawHash, RawMap, RawPool, RawShard, RawTable, RawValue};
use postshard_router::map::HASH_FUNCTION;
use postshard_router::{MapError, ShardMap, Token};

use super::file::{Plan, PlannedMove};
use super::moves::{apply_moves, arcs_of, owner_at, span_at, spans, Move, RING_END};

/// Why a plan cannot be applied to a map.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The plan was made for another version of the map.
    #[error("the plan was made for map version {plan}, but the map is at version {map}")]
    VersionMismatch {
        /// `base_version` of the plan.
        plan: u64,
        /// Version of the map.
        map: u64,
    },
    /// The map's shards are not the plan's `base_shards`.
    #[error("the plan was made for shards [{plan}], but the map has [{map}]")]
    ShardsMismatch {
        /// The plan's base shard names.
        plan: String,
        /// The map's shard names.
        map: String,
    },
    /// A shard is listed twice in the plan's `shards`.
    #[error("shard `{name}` is listed twice in the plan's shards")]
    DuplicateShard {
        /// The shard.
        name: String,
    },
    /// A move names a shard in neither the map nor the plan.
    #[error("moves[{index}]: unknown shard `{name}`")]
    UnknownShard {
        /// Position of the move.
        index: usize,
        /// The shard.
        name: String,
    },
    /// A move gives tokens to a shard the plan removes.
    #[error("moves[{index}]: target `{name}` is a shard the plan removes")]
    RemovedTarget {
        /// Position of the move.
        index: usize,
        /// The shard.
        name: String,
    },
    /// A move's source and target are the same shard.
    #[error("moves[{index}]: source and target are both `{name}`")]
    SameShard {
        /// Position of the move.
        index: usize,
        /// The shard.
        name: String,
    },
    /// A move's range is empty, outside the ring, or not after the previous move's.
    #[error(
        "moves[{index}]: range [{from}, {to}) must be non-empty, end by 2^63 and start \
         at or after the previous move's end"
    )]
    BadRange {
        /// Position of the move.
        index: usize,
        /// First token.
        from: Token,
        /// One past the last token.
        to: i128,
    },
    /// A move's source does not own its whole range in the map.
    #[error(
        "moves[{index}]: `{expected}` does not own all of [{from}, {to}): the map gives \
         token {at} to `{owner}`"
    )]
    NotOwned {
        /// Position of the move.
        index: usize,
        /// First token.
        from: Token,
        /// One past the last token.
        to: i128,
        /// The move's source.
        expected: String,
        /// The first token of the range the source does not own.
        at: i128,
        /// The owner of that token in the map.
        owner: String,
    },
    /// A shard the plan removes would still own tokens.
    #[error("shard `{name}` is removed by the plan but would still own tokens")]
    StillOwns {
        /// The shard.
        name: String,
    },
    /// The resulting map fails validation.
    #[error("the map after the plan is invalid")]
    Invalid {
        /// The validation problems.
        source: MapError,
    },
}

/// A raw map with `map`'s hash and tables and the given version, shards
/// and ring (arc starts and owner names).
pub(super) fn raw_map(
    map: &ShardMap,
    version: i128,
    shards: Vec<RawShard>,
    ring: Vec<(Token, String)>,
) -> RawMap {
    RawMap {
        version: RawValue::Int(version),
        hash: RawHash {
            function: HASH_FUNCTION.to_string(),
            seed: RawValue::from(map.seed()),
        },
        tables: map
            .tables()
            .iter()
            .map(|t| RawTable {
                name: t.name.clone(),
                key: t.key.clone(),
            })
            .collect(),
        shards,
        ring: ring
            .into_iter()
            .map(|(from, shard)| RawArc {
                from: RawValue::from(from),
                shard,
            })
            .collect(),
        control: map.control().map(|c| c.template().to_string()),
    }
}

/// Resolves `${VAR}` from the process environment, standing in `unset-VAR`
/// for a variable that is not set: planning needs the map's shape, not its
/// secrets.
pub fn offline_env(name: &str) -> Option<String> {
    Some(std::env::var(name).unwrap_or_else(|_| format!("unset-{name}")))
}

impl Plan {
    /// The map after the plan: version + 1, the plan's shards in its order
    /// (a shard that is kept keeps its pool settings), and the moved ranges
    /// with their new owners. Checks that the plan was made for this map
    /// (version, shards, and each move's source owning its range), that
    /// removed shards end up owning nothing, and validates the result,
    /// resolving `${VAR}` from the process environment.
    pub fn apply(&self, map: &ShardMap) -> Result<ShardMap, ApplyError> {
        self.apply_with_env(map, &env_var)
    }

    /// [`Plan::apply`], resolving `${VAR}` with `env` (e.g. [`offline_env`]).
    pub fn apply_with_env(
        &self,
        map: &ShardMap,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ShardMap, ApplyError> {
        if self.base_version != map.version() {
            return Err(ApplyError::VersionMismatch {
                plan: self.base_version,
                map: map.version(),
            });
        }
        let map_names: Vec<&str> = map.shards().iter().map(|s| s.name.as_str()).collect();
        let base_names: Vec<&str> = self.base_shards.iter().map(|s| s.name.as_str()).collect();
        if map_names != base_names {
            return Err(ApplyError::ShardsMismatch {
                plan: base_names.join(", "),
                map: map_names.join(", "),
            });
        }
        // The union list: the map's shards, then the shards the plan adds.
        let mut index: HashMap<&str, usize> =
            map_names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let mut union = map_names;
        let mut kept = HashSet::new();
        for s in &self.shards {
            if !kept.insert(s.name.as_str()) {
                return Err(ApplyError::DuplicateShard {
                    name: s.name.clone(),
                });
            }
            if !index.contains_key(s.name.as_str()) {
                index.insert(&s.name, union.len());
                union.push(&s.name);
            }
        }
        let arcs = arcs_of(map.ring());
        let moves = self.indexed_moves(&arcs, &union, &index, &kept)?;
        let after = apply_moves(&arcs, &moves);
        if let Some(name) = after
            .iter()
            .filter_map(|(_, owner)| union.get(*owner))
            .find(|name| !kept.contains(*name))
        {
            return Err(ApplyError::StillOwns {
                name: name.to_string(),
            });
        }
        let shards = self
            .shards
            .iter()
            .map(|s| RawShard {
                name: s.name.clone(),
                url: s.url.clone(),
                weight: Some(RawValue::from(s.weight)),
                pool: index.get(s.name.as_str()).and_then(|i| {
                    let pool = map.shards().get(*i)?.pool;
                    Some(RawPool {
                        max_size: Some(RawValue::from(pool.max_size)),
                        connect_timeout_ms: Some(RawValue::Int(
                            i128::try_from(pool.connect_timeout.as_millis()).unwrap_or(i128::MAX),
                        )),
                    })
                }),
            })
            .collect();
        let ring = after
            .iter()
            .filter_map(|(from, owner)| Some((*from, union.get(*owner)?.to_string())))
            .collect();
        let raw = raw_map(map, i128::from(map.version()) + 1, shards, ring);
        ShardMap::from_raw(raw, "resulting map", env)
            .map_err(|source| ApplyError::Invalid { source })
    }

    /// The moves as union-list indexes, each checked against `arcs`.
    fn indexed_moves(
        &self,
        arcs: &[(Token, usize)],
        union: &[&str],
        index: &HashMap<&str, usize>,
        kept: &HashSet<&str>,
    ) -> Result<Vec<Move>, ApplyError> {
        let spans = spans(arcs);
        let mut previous_end = i128::MIN;
        let mut moves = Vec::with_capacity(self.moves.len());
        for (i, m) in self.moves.iter().enumerate() {
            let shard = |name: &str| {
                index
                    .get(name)
                    .copied()
                    .ok_or_else(|| ApplyError::UnknownShard {
                        index: i,
                        name: name.to_string(),
                    })
            };
            let (source, target) = (shard(&m.source)?, shard(&m.target)?);
            if !kept.contains(m.target.as_str()) {
                return Err(ApplyError::RemovedTarget {
                    index: i,
                    name: m.target.clone(),
                });
            }
            if source == target {
                return Err(ApplyError::SameShard {
                    index: i,
                    name: m.source.clone(),
                });
            }
            let from = i128::from(m.from);
            if from >= m.to || m.to > RING_END || from < previous_end {
                return Err(ApplyError::BadRange {
                    index: i,
                    from: m.from,
                    to: m.to,
                });
            }
            previous_end = m.to;
            // Adjacent spans have different owners: one span must hold the range.
            let at = match span_at(&spans, from) {
                Some(s) if s.owner != source => Some((from, s.owner)),
                Some(s) if s.to < m.to => owner_at(&spans, s.to).map(|o| (s.to, o)),
                _ => None,
            };
            if let Some((at, owner)) = at {
                return Err(ApplyError::NotOwned {
                    index: i,
                    from: m.from,
                    to: m.to,
                    expected: m.source.clone(),
                    at,
                    owner: union.get(owner).map_or_else(String::new, |n| n.to_string()),
                });
            }
            moves.push(Move {
                from: m.from,
                to: m.to,
                source,
                target,
            });
        }
        Ok(moves)
    }

    /// A plan that undoes this one: made for the map this plan produces
    /// (version + 1), it gives every moved range back and restores the
    /// original shard list, so applying both restores the original ownership.
    pub fn reverse(&self) -> Plan {
        Plan {
            base_version: self.base_version.saturating_add(1),
            intent: format!("undo: {}", self.intent),
            base_shards: self.shards.clone(),
            shards: self.base_shards.clone(),
            moves: self
                .moves
                .iter()
                .map(|m| PlannedMove {
                    source: m.target.clone(),
                    target: m.source.clone(),
                    ..m.clone()
                })
                .collect(),
        }
    }
}
