//! The token ring: sorted arc starts and their owners, with a bucket index
//! that makes a lookup O(1) and allocation-free.

use crate::hash::Token;

/// Number of tokens in the whole ring (2^64).
pub const TOKEN_SPACE: u128 = 1 << 64;

/// log2 of [`BUCKETS`].
pub const BUCKET_BITS: u32 = 10;
/// The ring is cut into this many equal token buckets, both to index the
/// lookup and to count load; bucket `b` holds tokens from
/// `i64::MIN + b * 2^54`.
pub const BUCKETS: usize = 1 << BUCKET_BITS;

/// The bucket holding `token`.
#[inline]
pub fn bucket_of(token: Token) -> usize {
    ((token as u64 ^ (1 << 63)) >> (64 - BUCKET_BITS)) as usize
}

/// The first token of bucket `b` (`b < BUCKETS`).
pub fn bucket_start(b: usize) -> Token {
    (i128::from(Token::MIN) + ((b as i128) << (64 - BUCKET_BITS))) as Token
}

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
///
/// Besides the arcs it keeps, for each of the [`BUCKETS`] equal token buckets,
/// the first and last arc that overlap the bucket. The part of one arc inside
/// one bucket is a *segment*; segments are numbered in token order, which lets
/// load counters keep one counter per segment and still report exact loads
/// both per shard and per bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ring {
    starts: Box<[Token]>,
    owners: Box<[u32]>,
    /// Per bucket: first and last arc overlapping it, and its first segment.
    buckets: Box<[BucketIndex]>,
    /// Number of segments.
    segment_count: usize,
}

/// What a lookup needs to know about one bucket, in one cache access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct BucketIndex {
    first_arc: u32,
    last_arc: u32,
    first_segment: u32,
}

impl Ring {
    /// Builds a ring from arcs already checked to be valid: sorted, strictly
    /// increasing, starting at `i64::MIN`, fewer than 2^31 of them.
    pub(crate) fn from_checked(arcs: &[(Token, u32)]) -> Ring {
        let starts: Box<[Token]> = arcs.iter().map(|a| a.0).collect();
        let mut buckets = Vec::with_capacity(BUCKETS);
        let (mut arc, mut segments) = (0usize, 0u32);
        for b in 0..BUCKETS {
            let first = arc;
            let last_token = bucket_start(b).saturating_add((1 << (64 - BUCKET_BITS)) - 1);
            while arc + 1 < starts.len() && starts[arc + 1] <= last_token {
                arc += 1;
            }
            buckets.push(BucketIndex {
                first_arc: first as u32,
                last_arc: arc as u32,
                first_segment: segments,
            });
            segments += (arc - first + 1) as u32;
            // The next bucket starts in `arc` unless the next arc starts exactly there.
            if arc + 1 < starts.len() && starts[arc + 1] == last_token.wrapping_add(1) {
                arc += 1;
            }
        }
        Ring {
            starts,
            owners: arcs.iter().map(|a| a.1).collect(),
            buckets: buckets.into_boxed_slice(),
            segment_count: segments as usize,
        }
    }

    /// Index of the shard owning `token`: the owner of the arc with the
    /// greatest start ≤ `token`.
    #[inline]
    pub fn owner(&self, token: Token) -> usize {
        self.owners[self.arc_index(token)] as usize
    }

    /// The owning shard and the segment of `token` (see [`Ring`]).
    #[inline]
    pub fn owner_and_segment(&self, token: Token) -> (usize, usize) {
        let index = self.bucket_index(bucket_of(token));
        let arc = self.arc_in_bucket(token, index);
        let segment = (index.first_segment + arc as u32 - index.first_arc) as usize;
        (self.owners[arc] as usize, segment)
    }

    /// Number of segments (see [`Ring`]).
    pub fn segment_count(&self) -> usize {
        self.segment_count
    }

    /// For each segment in order: its bucket and owning shard.
    pub fn segments(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.buckets.iter().enumerate().flat_map(move |(b, index)| {
            (index.first_arc..=index.last_arc)
                .map(move |arc| (b, self.owners[arc as usize] as usize))
        })
    }

    /// Index of the arc holding `token`: the bucket index narrows the search
    /// to the arcs overlapping the token's bucket (usually one), then a
    /// branchless binary search runs over those.
    #[inline]
    pub fn arc_index(&self, token: Token) -> usize {
        self.arc_in_bucket(token, self.bucket_index(bucket_of(token)))
    }

    #[inline]
    fn bucket_index(&self, bucket: usize) -> BucketIndex {
        self.buckets.get(bucket).copied().unwrap_or_default()
    }

    #[inline]
    fn arc_in_bucket(&self, token: Token, index: BucketIndex) -> usize {
        let lo = index.first_arc as usize;
        let starts = self.starts.get(lo..=index.last_arc as usize).unwrap_or(&[]);
        let mut base = 0usize;
        let mut len = starts.len();
        while len > 1 {
            let half = len / 2;
            // `starts[base + half]` is in bounds: base + half < base + len <= starts.len().
            let probe = starts.get(base + half).copied().unwrap_or(Token::MAX);
            base = if probe <= token { base + half } else { base };
            len -= half;
        }
        lo + base
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
    fn buckets_split_the_space_evenly() {
        assert_eq!(bucket_of(i64::MIN), 0);
        assert_eq!(bucket_of(-1), BUCKETS / 2 - 1);
        assert_eq!(bucket_of(0), BUCKETS / 2);
        assert_eq!(bucket_of(i64::MAX), BUCKETS - 1);
        for b in [0, 1, 511, 512, 1023] {
            assert_eq!(bucket_of(bucket_start(b)), b);
            assert_eq!(
                bucket_of(bucket_start(b) - i64::from(b > 0)),
                b.saturating_sub(1)
            );
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
            clustered in proptest::collection::btree_set(-5000i64..5000, 0..50),
            tokens in proptest::collection::vec(proptest::num::i64::ANY, 1..50),
        ) {
            starts.insert(i64::MIN);
            starts.extend(clustered);
            let arcs: Vec<(Token, u32)> = starts.iter().enumerate().map(|(i, s)| (*s, i as u32)).collect();
            let r = ring(&arcs);
            let segments: Vec<(usize, usize)> = r.segments().collect();
            proptest::prop_assert_eq!(segments.len(), r.segment_count());
            for t in tokens.into_iter().chain(starts.iter().copied()) {
                let linear = arcs.iter().rposition(|a| a.0 <= t).unwrap();
                proptest::prop_assert_eq!(r.arc_index(t), linear);
                let (owner, segment) = r.owner_and_segment(t);
                proptest::prop_assert_eq!(owner, linear);
                proptest::prop_assert_eq!(segments[segment], (bucket_of(t), linear));
            }
        }
    }
}
