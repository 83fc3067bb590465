//! Key distributions: the stream of post IDs (stored rows, or requests for
//! posts) a simulation places on shards, reproducible from a seed.

use std::fmt;
use std::str::FromStr;

use super::alias::AliasTable;
use super::rng::SplitMix64;
use super::SimulateError;

/// Most keys one simulation streams.
pub const MAX_KEYS: u64 = 1_000_000_000_000;
/// Largest post population for request distributions (its table takes 8
/// bytes a post).
pub const MAX_POSTS: u64 = 100_000_000;
/// Snowflake timestamp of the first ID: 2024-01-01T00:00:00Z in milliseconds
/// since the Twitter epoch (2010-11-04T01:42:54.657Z).
const SNOWFLAKE_START_MS: u64 = 1_704_067_200_000 - 1_288_834_974_657;
/// Mixed into the seed for the Zipf rank shuffle, so it draws a different
/// stream than the requests.
const SHUFFLE_STREAM: u64 = 0xa076_1d64_78bd_642f;

/// What the simulated keys are.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Distribution {
    /// Rows with IDs 1, 2, …, K, as a serial column hands them out.
    Sequential,
    /// Rows with random IDs from 1 to 2^63 - 1.
    Uniform,
    /// Rows with time-ordered Snowflake IDs: a 41-bit millisecond timestamp,
    /// a 10-bit worker and a 12-bit sequence; a new post every 0-3 ms.
    Snowflake,
    /// Requests for posts 1..=P whose popularity follows Zipf's law with
    /// this exponent (viral threads); popularity rank is shuffled, so it is
    /// unrelated to a post's age.
    Zipf(f64),
    /// Requests for posts 1..=P where popularity halves every this many
    /// posts back from the newest: post p has weight 2^(-(P - p) / H).
    Recent(f64),
}

impl Distribution {
    /// True for request streams over a post population (`zipf`, `recent`),
    /// false for streams of distinct row IDs.
    pub fn is_requests(&self) -> bool {
        matches!(self, Distribution::Zipf(_) | Distribution::Recent(_))
    }
}

impl FromStr for Distribution {
    type Err = SimulateError;

    /// Parses `sequential`, `uniform`, `snowflake`, `zipf:S` (S ≥ 0) or
    /// `recent:H` (H > 0).
    fn from_str(spec: &str) -> Result<Distribution, SimulateError> {
        let (name, param) = match spec.split_once(':') {
            Some((name, param)) => (name, Some(param)),
            None => (spec, None),
        };
        let number = |check: fn(f64) -> bool, rule: &str| {
            let reason = |what: String| SimulateError::Parameter {
                spec: spec.to_string(),
                reason: what,
            };
            let text = param.ok_or_else(|| reason(format!("expected {name}:{rule}")))?;
            let value: f64 = text
                .parse()
                .map_err(|_| reason(format!("`{text}` is not a number")))?;
            if check(value) {
                Ok(value)
            } else {
                Err(reason(format!("expected {rule}, got {text}")))
            }
        };
        match (name, param) {
            ("sequential", None) => Ok(Distribution::Sequential),
            ("uniform", None) => Ok(Distribution::Uniform),
            ("snowflake", None) => Ok(Distribution::Snowflake),
            ("zipf", _) => {
                number(|s| s.is_finite() && s >= 0.0, "S with S ≥ 0").map(Distribution::Zipf)
            }
            ("recent", _) => {
                number(|h| h.is_finite() && h > 0.0, "H with H > 0").map(Distribution::Recent)
            }
            _ => Err(SimulateError::UnknownDistribution(spec.to_string())),
        }
    }
}

impl fmt::Display for Distribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Distribution::Sequential => f.write_str("sequential"),
            Distribution::Uniform => f.write_str("uniform"),
            Distribution::Snowflake => f.write_str("snowflake"),
            Distribution::Zipf(s) => write!(f, "zipf:{s}"),
            Distribution::Recent(h) => write!(f, "recent:{h}"),
        }
    }
}

/// A distribution fixed to a key count, post population and seed, with its
/// sampling table built once; [`Workload::keys`] replays the same stream
/// every time.
#[derive(Debug, Clone)]
pub struct Workload {
    dist: Distribution,
    keys: u64,
    posts: u64,
    seed: u64,
    popularity: Option<AliasTable>,
}

impl Workload {
    /// `keys` keys drawn from `dist` with `seed`; `posts` is the post
    /// population of request distributions (ignored by the others).
    pub fn new(
        dist: Distribution,
        keys: u64,
        posts: u64,
        seed: u64,
    ) -> Result<Workload, SimulateError> {
        if !(1..=MAX_KEYS).contains(&keys) {
            return Err(SimulateError::Keys(keys));
        }
        if !(1..=MAX_POSTS).contains(&posts) {
            return Err(SimulateError::Posts(posts));
        }
        let weights: Option<Vec<f64>> = match dist {
            Distribution::Zipf(s) => {
                let mut w: Vec<f64> = (1..=posts).map(|rank| (rank as f64).powf(-s)).collect();
                shuffle(&mut w, &mut SplitMix64::new(seed ^ SHUFFLE_STREAM));
                Some(w)
            }
            Distribution::Recent(h) => Some(
                (1..=posts)
                    .map(|p| (-((posts - p) as f64) / h).exp2())
                    .collect(),
            ),
            _ => None,
        };
        let popularity = match weights {
            Some(w) => Some(AliasTable::new(&w).ok_or(SimulateError::Posts(posts))?),
            None => None,
        };
        Ok(Workload {
            dist,
            keys,
            posts,
            seed,
            popularity,
        })
    }

    /// The distribution.
    pub fn dist(&self) -> Distribution {
        self.dist
    }

    /// Number of keys in the stream.
    pub fn key_count(&self) -> u64 {
        self.keys
    }

    /// The post population of request distributions.
    pub fn posts(&self) -> u64 {
        self.posts
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The key stream, from its start.
    pub fn keys(&self) -> Keys<'_> {
        let rng = SplitMix64::new(self.seed);
        let source = match (&self.popularity, self.dist) {
            (Some(table), _) => Source::Posts { rng, table },
            (None, Distribution::Uniform) => Source::Uniform(rng),
            (None, Distribution::Snowflake) => Source::Snowflake(Snowflake {
                rng,
                ms: SNOWFLAKE_START_MS,
                sequence: 0,
            }),
            (None, _) => Source::Sequential(0),
        };
        Keys {
            left: self.keys,
            source,
        }
    }

    /// The highest ID the stream can hold: the post population for request
    /// streams, else the largest key in the stream.
    pub fn max_id(&self) -> i64 {
        match self.dist {
            Distribution::Sequential => self.keys as i64,
            Distribution::Zipf(_) | Distribution::Recent(_) => self.posts as i64,
            Distribution::Uniform | Distribution::Snowflake => self.keys().max().unwrap_or(0),
        }
    }
}

/// Fisher–Yates shuffle.
fn shuffle(values: &mut [f64], rng: &mut SplitMix64) {
    for i in (1..values.len()).rev() {
        values.swap(i, rng.below(i as u64 + 1) as usize);
    }
}

/// The keys of a [`Workload`], generated on the fly without allocating.
#[derive(Debug, Clone)]
pub struct Keys<'a> {
    left: u64,
    source: Source<'a>,
}

#[derive(Debug, Clone)]
enum Source<'a> {
    /// The last ID handed out.
    Sequential(i64),
    Uniform(SplitMix64),
    Snowflake(Snowflake),
    /// Post `i + 1` for each index `i` the table draws.
    Posts {
        rng: SplitMix64,
        table: &'a AliasTable,
    },
}

/// Snowflake ID generator state.
#[derive(Debug, Clone)]
struct Snowflake {
    rng: SplitMix64,
    ms: u64,
    sequence: u64,
}

impl Snowflake {
    /// The next ID: time moves on 0-3 ms (the top two random bits), a
    /// random worker (the next ten) issues it, and the 12-bit sequence counts
    /// IDs within one millisecond so that IDs never repeat.
    #[inline]
    fn next_id(&mut self) -> i64 {
        let r = self.rng.next_u64();
        let gap = r >> 62;
        if gap == 0 && self.sequence < 0xfff {
            self.sequence += 1;
        } else {
            self.ms += gap.max(1);
            self.sequence = 0;
        }
        let worker = (r >> 52) & 0x3ff;
        let ms = self.ms & ((1 << 41) - 1);
        ((ms << 22) | (worker << 12) | self.sequence) as i64
    }
}

impl Iterator for Keys<'_> {
    type Item = i64;

    #[inline]
    fn next(&mut self) -> Option<i64> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        Some(match &mut self.source {
            Source::Sequential(last) => {
                *last += 1;
                *last
            }
            Source::Uniform(rng) => (rng.next_u64() >> 1).max(1) as i64,
            Source::Snowflake(s) => s.next_id(),
            Source::Posts { rng, table } => table.sample(rng) as i64 + 1,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = usize::try_from(self.left).unwrap_or(usize::MAX);
        (left, usize::try_from(self.left).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(dist: &str, keys: u64, posts: u64, seed: u64) -> Workload {
        Workload::new(dist.parse().unwrap(), keys, posts, seed).unwrap()
    }

    #[test]
    fn names_round_trip() {
        for spec in [
            "sequential",
            "uniform",
            "snowflake",
            "zipf:1.1",
            "zipf:0",
            "recent:1000",
        ] {
            let dist: Distribution = spec.parse().unwrap();
            assert_eq!(dist.to_string(), spec);
        }
    }

    #[test]
    fn bad_names_are_rejected_with_the_reason() {
        for (spec, says) in [
            ("zipf:x", "`x` is not a number"),
            ("zipf", "expected zipf:S"),
            ("zipf:-1", "S ≥ 0"),
            ("recent:0", "H > 0"),
            ("recent:inf", "H > 0"),
            ("sequential:3", "unknown distribution"),
            ("gaussian", "unknown distribution"),
        ] {
            let e = spec.parse::<Distribution>().unwrap_err().to_string();
            assert!(e.contains(says), "{spec}: {e}");
        }
    }

    #[test]
    fn counts_are_checked() {
        let d = Distribution::Sequential;
        assert!(matches!(
            Workload::new(d, 0, 1, 0),
            Err(SimulateError::Keys(0))
        ));
        assert!(matches!(
            Workload::new(d, 1, 0, 0),
            Err(SimulateError::Posts(0))
        ));
    }

    #[test]
    fn sequential_counts_from_one() {
        let w = workload("sequential", 5, 1, 9);
        assert_eq!(w.keys().collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        assert_eq!(w.max_id(), 5);
    }

    #[test]
    fn streams_replay_with_the_seed() {
        for dist in ["uniform", "snowflake", "zipf:1.1", "recent:10"] {
            let a: Vec<i64> = workload(dist, 1000, 500, 7).keys().collect();
            let b: Vec<i64> = workload(dist, 1000, 500, 7).keys().collect();
            let c: Vec<i64> = workload(dist, 1000, 500, 8).keys().collect();
            assert_eq!(a, b, "{dist}");
            assert_ne!(a, c, "{dist}");
            assert!(a.iter().all(|k| *k >= 1), "{dist}: IDs are positive");
        }
    }

    #[test]
    fn snowflake_ids_are_unique_time_ordered_and_well_formed() {
        let w = workload("snowflake", 100_000, 1, 1);
        let ids: Vec<i64> = w.keys().collect();
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len(), "no repeated IDs");
        let ms: Vec<i64> = ids.iter().map(|id| id >> 22).collect();
        assert!(
            ms.windows(2).all(|w| w[0] <= w[1]),
            "timestamps never go back"
        );
        assert!((0..=3).contains(&(ms[0] as u64 - SNOWFLAKE_START_MS)));
        // 0-3 ms apart, ~1.5 ms on average.
        let span = (ms[ms.len() - 1] - ms[0]) as f64 / ids.len() as f64;
        assert!((1.3..1.7).contains(&span), "{span} ms per ID");
        assert_eq!(w.max_id(), *ids.iter().max().unwrap());
    }

    #[test]
    fn recent_favours_the_newest_posts_by_half_lives() {
        // Half-life 10 over 1000 posts: posts 991-1000 get half the requests.
        let w = workload("recent:10", 200_000, 1000, 3);
        let newest = w.keys().filter(|p| *p > 990).count() as f64 / 200_000.0;
        assert!((newest - 0.5).abs() < 0.01, "{newest}");
        assert!(w.keys().all(|p| (1..=1000).contains(&p)));
        assert_eq!(w.max_id(), 1000);
    }

    #[test]
    fn zipf_hottest_post_gets_its_share() {
        // s = 1 over 100 posts: the top post draws 1 / H(100) ≈ 19.3 %.
        let w = workload("zipf:1", 200_000, 100, 5);
        let mut counts = [0u64; 101];
        for p in w.keys() {
            counts[p as usize] += 1;
        }
        let top = *counts.iter().max().unwrap() as f64 / 200_000.0;
        assert!((top - 0.193).abs() < 0.01, "{top}");
        // Popularity is shuffled: the hottest post need not be post 1.
        let hottest = counts
            .iter()
            .position(|c| *c == *counts.iter().max().unwrap());
        assert_ne!(hottest, Some(1));
    }
}
