//! The token ring: sorted arc starts and their owners, searched without
//! branches or allocation.

use crate::hash::Token;

/// Number of tokens in the whole ring (2^64).
pub const TOKEN_SPACE: u128 = 1 << 64;

/// One arc: tokens `from ..= last` belong to shard index `shard`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arc {
    /// First token of the arc.
    pub from: Token,
    /// Last token of the arc (inclusive).
    pub last: Token,
    /// Index of the owning shard in the map.
    pub shard: usize,
}

impl Arc {
    /// Number of tokens in the arc.
    pub fn len(&self) -> u128 {
        (i128::from(self.last) - i128::from(self.from) + 1) as u128
    }

    /// Always false: an arc holds at least one token.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// A validated ring: `starts[0] == i64::MIN`, strictly increasing, and every
/// owner a valid shard index. Built only by map validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ring {
    starts: Box<[Token]>,
    owners: Box<[u32]>,
}

impl Ring {
    /// Builds a ring from arcs already checked to be valid (see the module doc).
    pub(crate) fn from_checked(arcs: &[(Token, u32)]) -> Ring {
        Ring {
            starts: arcs.iter().map(|a| a.0).collect(),
            owners: arcs.iter().map(|a| a.1).collect(),
        }
    }

    /// Index of the shard owning `token`: the owner of the arc with the
    /// greatest start ≤ `token`.
    #[inline]
    pub fn owner(&self, token: Token) -> usize {
        self.owners[self.arc_index(token)] as usize
    }

    /// Index of the arc holding `token`. Branchless binary search: the loop
    /// runs log2(arcs) times whatever the token.
    #[inline]
    pub fn arc_index(&self, token: Token) -> usize {
        let starts = &self.starts[..];
        let mut base = 0usize;
        let mut len = starts.len();
        while len > 1 {
            let half = len / 2;
            // `starts[base + half]` is in bounds: base + half < base + len <= starts.len().
            let probe = starts.get(base + half).copied().unwrap_or(Token::MAX);
            base = if probe <= token { base + half } else { base };
            len -= half;
        }
        base
    }

    /// Number of arcs.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    /// Always false: a validated ring has at least one arc.
    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// The arcs in token order.
    pub fn arcs(&self) -> impl ExactSizeIterator<Item = Arc> + '_ {
        (0..self.starts.len()).map(move |i| Arc {
            from: self.starts[i],
            last: self.starts.get(i + 1).map_or(Token::MAX, |next| next - 1),
            shard: self.owners[i] as usize,
        })
    }

    /// Tokens owned by each of `shards` shards.
    pub fn owned_tokens(&self, shards: usize) -> Vec<u128> {
        let mut owned = vec![0u128; shards];
        for arc in self.arcs() {
            if let Some(slot) = owned.get_mut(arc.shard) {
                *slot += arc.len();
            }
        }
        owned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(arcs: &[(Token, u32)]) -> Ring {
        Ring::from_checked(arcs)
    }

    #[test]
    fn owner_is_the_arc_with_the_greatest_start_not_above_the_token() {
        let r = ring(&[(i64::MIN, 0), (-10, 1), (0, 2), (10, 0)]);
        let cases = [
            (i64::MIN, 0),
            (-11, 0),
            (-10, 1),
            (-1, 1),
            (0, 2),
            (9, 2),
            (10, 0),
            (i64::MAX, 0),
        ];
        for (token, want) in cases {
            assert_eq!(r.owner(token), want, "token {token}");
        }
    }

    #[test]
    fn arcs_cover_the_whole_token_space() {
        let r = ring(&[(i64::MIN, 0), (0, 1), (5, 0)]);
        assert_eq!(r.owned_tokens(2).iter().sum::<u128>(), TOKEN_SPACE);
        assert_eq!(r.owned_tokens(2)[1], 5);
        let single = ring(&[(i64::MIN, 3)]);
        assert_eq!(single.arcs().next().map(|a| a.len()), Some(TOKEN_SPACE));
    }

    proptest::proptest! {
        #[test]
        fn binary_search_matches_a_linear_scan(
            mut starts in proptest::collection::btree_set(proptest::num::i64::ANY, 0..200),
            tokens in proptest::collection::vec(proptest::num::i64::ANY, 1..50),
        ) {
            starts.insert(i64::MIN);
            let arcs: Vec<(Token, u32)> = starts.iter().enumerate().map(|(i, s)| (*s, i as u32)).collect();
            let r = ring(&arcs);
            for t in tokens.into_iter().chain(starts.iter().copied()) {
                let linear = arcs.iter().rposition(|a| a.0 <= t).unwrap();
                proptest::prop_assert_eq!(r.arc_index(t), linear);
            }
        }
    }
}
