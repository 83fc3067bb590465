//! The token ring: sorted arc starts and their owners, with a lookup index
//! sized to the ring that makes a lookup constant time and allocation-free.

use crate::hash::Token;

/// Number of tokens in the whole ring (2^64).
pub const TOKEN_SPACE: u128 = 1 << 64;

/// log2 of [`BUCKETS`].
pub const BUCKET_BITS: u32 = 10;
/// The ring is cut into this many equal token buckets to count load (and to
/// report it); bucket `b` holds tokens from `i64::MIN + b * 2^54`. The lookup
/// index is finer and sized to the ring (see [`Ring`]); it does not change
/// these buckets.
pub const BUCKETS: usize = 1 << BUCKET_BITS;

/// Fewest lookup buckets (as many as the counting [`BUCKETS`], so that each
/// lookup bucket lies inside one counting bucket).
const MIN_INDEX_BITS: u32 = BUCKET_BITS;
/// Most lookup buckets: 2^20 entries of 4 bytes (4 MiB), reached at 262,144
/// arcs. Bigger rings still look up correctly, with more arcs per bucket.
const MAX_INDEX_BITS: u32 = 20;
/// Lookup buckets per arc, at least (rounded up to a power of two). With 4, a
/// lookup bucket holds an arc start about 1 time in 4, so the search inside
/// it almost never sees more than the four arcs it handles without a branch.
const INDEX_PER_ARC: usize = 4;

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
/// Lookup: the token space is cut into 2^k equal *lookup buckets*, 2^k the
/// next power of two ≥ 4 × arcs, from 1,024 to 2^20; `index[b]` is the arc
/// holding the first token of lookup bucket `b`. The arc holding a token is
/// then one of `index[b] ..= index[b + 1]`: almost always one or two arcs,
/// resolved by counting starts, with no branch on the token. Memory:
/// 16 bytes per arc (start and owner side by side) plus 4 bytes per lookup
/// bucket (about 410 KiB at 10,000 arcs; the index is 4 MiB at most).
///
/// Counting: for each of the [`BUCKETS`] equal counting buckets, the ring
/// keeps the first and last arc that overlap it. The part of one arc inside
/// one counting bucket is a *segment*; segments are numbered in token order,
/// so there are at most arcs + [`BUCKETS`] of them whatever the lookup index
/// size, and load counters keep one counter per segment and still report
/// exact loads both per shard and per bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ring {
    /// Arc starts with their owners, side by side so that the owner of the
    /// arc a lookup finds is in the cache lines it just read; then `PAD`
    /// entries starting at `i64::MAX`, so that a lookup can always read four.
    arcs: Box<[ArcEntry]>,
    /// Number of arcs (`arcs` without the padding).
    len: usize,
    /// Lookup index: `lookup_buckets + 1` arc numbers (the last one is the
    /// last arc).
    index: Box<[u32]>,
    /// `64 - log2(lookup buckets)`: a token's lookup bucket is its offset
    /// from `i64::MIN` shifted right by this.
    index_shift: u32,
    /// Per counting bucket: first and last arc overlapping it, and its first
    /// segment.
    buckets: Box<[BucketArcs]>,
    /// Number of segments.
    segment_count: usize,
}

/// The arcs overlapping one counting bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct BucketArcs {
    first_arc: u32,
    last_arc: u32,
    first_segment: u32,
}

/// Entries after the last arc, so that a lookup reads four.
const PAD: usize = 3;

/// One arc's start and owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ArcEntry {
    start: Token,
    owner: u32,
}

/// A token's offset from `i64::MIN`, as an unsigned number.
#[inline(always)]
fn offset(token: Token) -> u64 {
    token as u64 ^ (1 << 63)
}

impl Ring {
    /// Builds a ring from arcs already checked to be valid: sorted, strictly
    /// increasing, starting at `i64::MIN`, fewer than 2^31 of them.
    pub(crate) fn from_checked(arcs: &[(Token, u32)]) -> Ring {
        let starts: Vec<Token> = arcs.iter().map(|a| a.0).collect();
        let index_bits = arcs
            .len()
            .saturating_mul(INDEX_PER_ARC)
            .next_power_of_two()
            .trailing_zeros()
            .clamp(MIN_INDEX_BITS, MAX_INDEX_BITS);
        let index_shift = 64 - index_bits;
        Ring {
            index: arc_at_bucket_starts(&starts, index_bits),
            index_shift,
            buckets: bucket_arcs(&starts),
            segment_count: 0,
            arcs: arcs
                .iter()
                .map(|a| ArcEntry {
                    start: a.0,
                    owner: a.1,
                })
                .chain(
                    [ArcEntry {
                        start: Token::MAX,
                        owner: 0,
                    }; PAD],
                )
                .collect(),
            len: arcs.len(),
        }
        .with_segment_count()
    }

    fn with_segment_count(mut self) -> Ring {
        self.segment_count = self.buckets.last().map_or(0, |b| {
            (b.first_segment + b.last_arc - b.first_arc + 1) as usize
        });
        self
    }

    /// Index of the shard owning `token`: the owner of the arc with the
    /// greatest start ≤ `token`.
    #[inline]
    pub fn owner(&self, token: Token) -> usize {
        self.owner_of_arc(self.arc_index(token))
    }

    #[inline(always)]
    fn owner_of_arc(&self, arc: usize) -> usize {
        // Always in bounds: `arc` comes from `arc_index`.
        self.arcs.get(arc).map_or(0, |a| a.owner) as usize
    }

    /// The owning shard and the segment of `token` (see [`Ring`]).
    #[inline]
    pub fn owner_and_segment(&self, token: Token) -> (usize, usize) {
        let arc = self.arc_index(token);
        let bucket = self
            .buckets
            .get(bucket_of(token))
            .copied()
            .unwrap_or_default();
        // `arc` overlaps the token's counting bucket, so first_arc <= arc <= last_arc.
        let segment = (bucket.first_segment as usize + arc).wrapping_sub(bucket.first_arc as usize);
        (self.owner_of_arc(arc), segment)
    }

    /// Number of segments (see [`Ring`]).
    pub fn segment_count(&self) -> usize {
        self.segment_count
    }

    /// For each segment in order: its counting bucket and owning shard.
    pub fn segments(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.buckets.iter().enumerate().flat_map(move |(b, index)| {
            (index.first_arc..=index.last_arc).map(move |arc| (b, self.owner_of_arc(arc as usize)))
        })
    }

    /// Number of lookup buckets (see [`Ring`]).
    pub fn lookup_buckets(&self) -> usize {
        1 << (64 - self.index_shift)
    }

    /// Index of the arc holding `token`: the lookup index narrows the search
    /// to the arcs overlapping the token's lookup bucket, then a branch-free
    /// count picks among up to four of them; more than four arcs in one
    /// lookup bucket (tiny arcs clustered together) take a binary search
    /// instead.
    #[inline]
    pub fn arc_index(&self, token: Token) -> usize {
        let b = (offset(token) >> self.index_shift) as usize;
        // Both in bounds: the index has 2^(64 - shift) + 1 entries.
        let lo = self.index.get(b).copied().unwrap_or(0) as usize;
        let hi = self.index.get(b + 1).copied().unwrap_or(0) as usize;
        if hi.saturating_sub(lo) > 3 {
            return self.arc_in_many(token, lo, hi);
        }
        // The answer is in lo..=hi (at most four arcs) and starts[lo] <=
        // token, so it is lo plus the number of starts[lo + 1 ..= lo + 3]
        // not above the token, clamped to hi. Starts past hi are above the
        // token (they begin after its bucket), and so are the `PAD` entries
        // after the last arc unless the token is i64::MAX, whose arc is the
        // last, hi. Counting compiles to compares and adds: no branch on
        // the token, which random keys would make a coin toss.
        let Some(&[_, a, b, c]) = self.arcs.get(lo..lo + 4) else {
            return self.arc_in_many(token, lo, hi);
        };
        let above = usize::from(a.start <= token)
            + usize::from(b.start <= token)
            + usize::from(c.start <= token);
        (lo + above).min(hi)
    }

    /// The arc holding `token` among arcs `lo..=hi` (`starts[lo] <= token`).
    #[cold]
    #[inline(never)]
    fn arc_in_many(&self, token: Token, lo: usize, hi: usize) -> usize {
        let candidates = self.arcs.get(lo..=hi).unwrap_or(&[]);
        lo + candidates
            .partition_point(|a| a.start <= token)
            .saturating_sub(1)
    }

    /// Number of arcs.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a validated ring has at least one arc.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The arcs in token order.
    pub fn arcs(&self) -> impl ExactSizeIterator<Item = Arc> + '_ {
        let arcs = self.arcs.get(..self.len).unwrap_or(&[]);
        arcs.iter().enumerate().map(move |(i, a)| Arc {
            from: a.start,
            last: arcs.get(i + 1).map_or(Token::MAX, |next| next.start - 1),
            shard: a.owner as usize,
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

/// For each of the 2^`bits` equal lookup buckets, the arc holding its first
/// token, then the last arc.
fn arc_at_bucket_starts(starts: &[Token], bits: u32) -> Box<[u32]> {
    let buckets = 1usize << bits;
    let mut index = Vec::with_capacity(buckets + 1);
    let mut arc = 0usize;
    for b in 0..buckets {
        let first = (i128::from(Token::MIN) + ((b as i128) << (64 - bits))) as Token;
        while starts.get(arc + 1).is_some_and(|s| *s <= first) {
            arc += 1;
        }
        index.push(arc as u32);
    }
    index.push(starts.len().saturating_sub(1) as u32);
    index.into_boxed_slice()
}

/// For each counting bucket, the arcs overlapping it and its first segment.
fn bucket_arcs(starts: &[Token]) -> Box<[BucketArcs]> {
    let mut buckets = Vec::with_capacity(BUCKETS);
    let (mut arc, mut segments) = (0usize, 0u32);
    for b in 0..BUCKETS {
        let first = arc;
        let last_token = bucket_start(b).saturating_add((1 << (64 - BUCKET_BITS)) - 1);
        while starts.get(arc + 1).is_some_and(|s| *s <= last_token) {
            arc += 1;
        }
        buckets.push(BucketArcs {
            first_arc: first as u32,
            last_arc: arc as u32,
            first_segment: segments,
        });
        segments += (arc - first + 1) as u32;
        // The next bucket starts in `arc` unless the next arc starts exactly there.
        if starts
            .get(arc + 1)
            .is_some_and(|s| *s == last_token.wrapping_add(1))
        {
            arc += 1;
        }
    }
    buckets.into_boxed_slice()
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

    #[test]
    fn the_lookup_index_grows_with_the_ring() {
        let sized = |n: u64| {
            let step = u64::MAX / n;
            let arcs: Vec<(Token, u32)> = (0..n)
                .map(|i| ((i * step) as i64 ^ i64::MIN, (i % 7) as u32))
                .collect();
            ring(&arcs)
        };
        assert_eq!(sized(1).lookup_buckets(), 1024);
        assert_eq!(sized(256).lookup_buckets(), 1024);
        assert_eq!(sized(257).lookup_buckets(), 2048);
        assert_eq!(sized(10_000).lookup_buckets(), 65_536);
        assert_eq!(sized(20_000).lookup_buckets(), 131_072);
        assert_eq!(sized(300_000).lookup_buckets(), 1 << 20);
        // Counting buckets do not follow: segments stay under arcs + BUCKETS.
        let big = sized(20_000);
        assert!(big.segment_count() <= 20_000 + BUCKETS);
        assert_eq!(big.segments().count(), big.segment_count());
    }

    /// The arc holding `t` by a linear scan.
    fn linear(arcs: &[(Token, u32)], t: Token) -> usize {
        arcs.iter().rposition(|a| a.0 <= t).unwrap()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn lookups_on_big_rings_match_a_linear_scan(
            mut starts in proptest::collection::btree_set(proptest::num::i64::ANY, 300..3000),
            // Tiny arcs packed into one lookup bucket take the slow path.
            packed in proptest::collection::btree_set(1i64 << 40..(1i64 << 40) + 64, 0..20),
            tokens in proptest::collection::vec(proptest::num::i64::ANY, 200),
        ) {
            starts.insert(i64::MIN);
            starts.extend(packed);
            let arcs: Vec<(Token, u32)> = starts.iter().enumerate().map(|(i, s)| (*s, i as u32)).collect();
            let r = ring(&arcs);
            proptest::prop_assert!(r.lookup_buckets() >= 4 * arcs.len());
            let segments: Vec<(usize, usize)> = r.segments().collect();
            let edges = starts.iter().flat_map(|s| [*s, s.saturating_sub(1), s.saturating_add(1)]);
            for t in tokens.into_iter().chain(edges).chain([i64::MAX]) {
                let want = linear(&arcs, t);
                proptest::prop_assert_eq!(r.arc_index(t), want, "token {}", t);
                let (owner, segment) = r.owner_and_segment(t);
                proptest::prop_assert_eq!(owner, want);
                proptest::prop_assert_eq!(segments[segment], (bucket_of(t), want));
            }
        }
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
                let linear = linear(&arcs, t);
                proptest::prop_assert_eq!(r.arc_index(t), linear);
                let (owner, segment) = r.owner_and_segment(t);
                proptest::prop_assert_eq!(owner, linear);
                proptest::prop_assert_eq!(segments[segment], (bucket_of(t), linear));
            }
        }
    }
}
