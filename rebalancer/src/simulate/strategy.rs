//! The placement strategies a simulation compares, by name.

use std::fmt;
use std::str::FromStr;

use super::SimulateError;

/// Most virtual nodes per shard for `hashring:V`.
pub const MAX_VNODES: u32 = 4096;

/// How keys are placed on shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// postshard's own: `hashint8extended` tokens on a ring of one balanced
    /// arc per shard (`map init`), changed with the planner's minimal moves.
    Ring,
    /// The classic consistent hash ring (the `hashring` crate, SipHash of the
    /// key) with this many virtual nodes per shard.
    HashRing {
        /// Virtual nodes per shard.
        vnodes: u32,
    },
    /// Jump consistent hash of the token. Only the last bucket can go, so
    /// removing another shard hands its bucket to the last shard.
    Jump,
    /// The token, as unsigned, modulo the shard count (the remaining shards
    /// in order after a removal).
    Modulo,
    /// Equal ranges of IDs in shard order, the last one open-ended, so new
    /// posts all land on the last shard; re-split evenly on a change.
    Range,
}

impl Strategy {
    /// Every strategy, with 256 virtual nodes for the hash ring: what
    /// `--strategy all` compares.
    pub const ALL: [Strategy; 5] = [
        Strategy::Ring,
        Strategy::HashRing { vnodes: 256 },
        Strategy::Jump,
        Strategy::Modulo,
        Strategy::Range,
    ];
}

impl FromStr for Strategy {
    type Err = SimulateError;

    /// Parses `ring`, `hashring:V` (1 ≤ V ≤ 4096), `jump`, `modulo` or `range`.
    fn from_str(spec: &str) -> Result<Strategy, SimulateError> {
        match spec.split_once(':') {
            None => match spec {
                "ring" => Ok(Strategy::Ring),
                "jump" => Ok(Strategy::Jump),
                "modulo" => Ok(Strategy::Modulo),
                "range" => Ok(Strategy::Range),
                "hashring" => Err(SimulateError::Parameter {
                    spec: spec.to_string(),
                    reason: "expected hashring:V with V virtual nodes per shard".to_string(),
                }),
                _ => Err(SimulateError::UnknownStrategy(spec.to_string())),
            },
            Some(("hashring", v)) => v
                .parse()
                .ok()
                .filter(|v| (1..=MAX_VNODES).contains(v))
                .map(|vnodes| Strategy::HashRing { vnodes })
                .ok_or_else(|| SimulateError::Parameter {
                    spec: spec.to_string(),
                    reason: format!("`{v}` is not a virtual node count from 1 to {MAX_VNODES}"),
                }),
            Some(_) => Err(SimulateError::UnknownStrategy(spec.to_string())),
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Strategy::Ring => f.write_str("ring"),
            Strategy::HashRing { vnodes } => write!(f, "hashring:{vnodes}"),
            Strategy::Jump => f.write_str("jump"),
            Strategy::Modulo => f.write_str("modulo"),
            Strategy::Range => f.write_str("range"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in Strategy::ALL {
            assert_eq!(s.to_string().parse::<Strategy>().unwrap(), s);
        }
        assert_eq!(
            "hashring:1".parse::<Strategy>().unwrap(),
            Strategy::HashRing { vnodes: 1 }
        );
    }

    #[test]
    fn bad_names_are_rejected_with_the_reason() {
        for (spec, says) in [
            ("hashring", "expected hashring:V"),
            ("hashring:0", "not a virtual node count"),
            ("hashring:x", "not a virtual node count"),
            ("hashring:5000", "not a virtual node count"),
            ("ring:2", "unknown strategy"),
            ("rendezvous", "unknown strategy"),
        ] {
            let e = spec.parse::<Strategy>().unwrap_err().to_string();
            assert!(e.contains(says), "{spec}: {e}");
        }
    }
}
