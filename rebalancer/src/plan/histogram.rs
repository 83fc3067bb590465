//! Load spread over the token ring, for planning moves by load or data size.

use postshard_router::ring::TOKEN_SPACE;
use postshard_router::Token;

use super::moves::{spans, RING_END};

pub use postshard_router::HotToken;

/// Why a histogram cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistogramError {
    /// No buckets at all.
    #[error("a token histogram needs at least one bucket")]
    Empty,
    /// The first bucket does not start at the start of the ring.
    #[error("the first bucket starts at {start}, not at -9223372036854775808")]
    NotFromRingStart {
        /// Where it starts.
        start: Token,
    },
    /// Bucket starts are not strictly increasing.
    #[error("bucket {index} starts at {start}, not after the previous bucket's {previous}")]
    Unsorted {
        /// The bucket's position.
        index: usize,
        /// Its start.
        start: Token,
        /// The previous bucket's start.
        previous: Token,
    },
    /// The same hot token is listed twice.
    #[error("hot token {token} is listed twice")]
    DuplicateHotToken {
        /// The token.
        token: Token,
    },
    /// A hot token's load exceeds what its bucket holds (bucket loads
    /// include their hot tokens' loads).
    #[error(
        "hot token {token} has load {load}, but its bucket {bucket} (from token {start}) \
         holds only {available} besides the hot tokens before it"
    )]
    HotTokenExceedsBucket {
        /// The token.
        token: Token,
        /// Its load.
        load: u64,
        /// The bucket's position.
        bucket: usize,
        /// The bucket's first token.
        start: Token,
        /// The bucket's load less the loads of earlier hot tokens in it.
        available: u64,
    },
}

/// Load per token bucket over the whole ring, assumed uniform within a
/// bucket, plus hot tokens whose load sits on one token.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenHistogram {
    /// Bucket starts, the first at `i64::MIN`, strictly increasing.
    starts: Vec<i128>,
    /// Load spread over each bucket, hot tokens excluded.
    spread: Vec<f64>,
    /// `cumulative[k]`: spread load of the buckets before bucket `k`.
    cumulative: Vec<f64>,
    /// Hot tokens, sorted by token.
    hot: Vec<HotToken>,
}

impl TokenHistogram {
    /// A histogram of `buckets` as `(start, load)` sorted by start, the first
    /// at `i64::MIN`, each running to the next start. A bucket's load
    /// includes the load of the `hot` tokens in it (as a router counts every
    /// request in its bucket); that part is taken out of the bucket and kept
    /// on its token.
    pub fn new(
        buckets: &[(Token, u64)],
        hot: &[HotToken],
    ) -> Result<TokenHistogram, HistogramError> {
        let first = buckets.first().ok_or(HistogramError::Empty)?;
        if first.0 != Token::MIN {
            return Err(HistogramError::NotFromRingStart { start: first.0 });
        }
        for (index, pair) in buckets.windows(2).enumerate() {
            if let [previous, this] = pair {
                if this.0 <= previous.0 {
                    return Err(HistogramError::Unsorted {
                        index: index + 1,
                        start: this.0,
                        previous: previous.0,
                    });
                }
            }
        }
        let mut hot = hot.to_vec();
        hot.sort_by_key(|h| h.token);
        if let Some(token) = hot.windows(2).find_map(|pair| match pair {
            [a, b] if a.token == b.token => Some(a.token),
            _ => None,
        }) {
            return Err(HistogramError::DuplicateHotToken { token });
        }
        let mut left: Vec<u64> = buckets.iter().map(|b| b.1).collect();
        for h in &hot {
            // The first bucket starts at i64::MIN, so every token has one.
            let k = buckets
                .partition_point(|b| b.0 <= h.token)
                .saturating_sub(1);
            if let (Some(available), Some(bucket)) = (left.get_mut(k), buckets.get(k)) {
                let Some(rest) = available.checked_sub(h.load) else {
                    return Err(HistogramError::HotTokenExceedsBucket {
                        token: h.token,
                        load: h.load,
                        bucket: k,
                        start: bucket.0,
                        available: *available,
                    });
                };
                *available = rest;
            }
        }
        let starts: Vec<i128> = buckets.iter().map(|b| i128::from(b.0)).collect();
        let spread: Vec<f64> = left.iter().map(|load| *load as f64).collect();
        let mut cumulative = Vec::with_capacity(spread.len() + 1);
        let mut sum = 0.0;
        cumulative.push(sum);
        for load in &spread {
            sum += load;
            cumulative.push(sum);
        }
        Ok(TokenHistogram {
            starts,
            spread,
            cumulative,
            hot,
        })
    }

    /// A histogram of `loads.len()` equal buckets: bucket `b` starts at
    /// `i64::MIN + floor(b * 2^64 / loads.len())`. See [`TokenHistogram::new`]
    /// for hot tokens.
    pub fn equal_buckets(
        loads: &[u64],
        hot: &[HotToken],
    ) -> Result<TokenHistogram, HistogramError> {
        let n = loads.len() as u128;
        let buckets: Vec<(Token, u64)> = loads
            .iter()
            .enumerate()
            .map(|(b, load)| {
                let offset = (TOKEN_SPACE * b as u128 / n) as i128;
                ((i128::from(Token::MIN) + offset) as Token, *load)
            })
            .collect();
        TokenHistogram::new(&buckets, hot)
    }

    /// The hot tokens, sorted by token.
    pub fn hot_tokens(&self) -> &[HotToken] {
        &self.hot
    }

    /// Total load.
    pub fn total(&self) -> f64 {
        self.cumulative.last().copied().unwrap_or(0.0)
            + self.hot.iter().map(|h| h.load as f64).sum::<f64>()
    }

    /// Predicted load of tokens [from, to), interpolated within buckets.
    pub fn load_between(&self, from: i128, to: i128) -> f64 {
        if from >= to {
            return 0.0;
        }
        let hot: f64 = self.hot_in(from, to).iter().map(|h| h.load as f64).sum();
        (self.spread_before(to) - self.spread_before(from)).max(0.0) + hot
    }

    /// Predicted load of each of `shards` owners of `arcs` (sorted, starting
    /// at `i64::MIN`, as in [`moves_to_targets`](super::moves_to_targets)).
    pub fn loads_by_owner(&self, arcs: &[(Token, usize)], shards: usize) -> Vec<f64> {
        let mut loads = vec![0.0; shards];
        for s in spans(arcs) {
            if let Some(load) = loads.get_mut(s.owner) {
                *load += self.load_between(s.from, s.to);
            }
        }
        loads
    }

    /// The hot tokens in [from, to), sorted.
    pub(super) fn hot_in(&self, from: i128, to: i128) -> &[HotToken] {
        let start = self.hot.partition_point(|h| i128::from(h.token) < from);
        let end = self.hot.partition_point(|h| i128::from(h.token) < to);
        self.hot.get(start..end.max(start)).unwrap_or(&[])
    }

    /// Spread (non-hot) load of the tokens before `token`.
    fn spread_before(&self, token: i128) -> f64 {
        let token = token.clamp(i128::from(Token::MIN), RING_END);
        let Some(k) = self.starts.partition_point(|s| *s <= token).checked_sub(1) else {
            return 0.0;
        };
        let (Some(&start), Some(&cumulative), Some(&spread)) = (
            self.starts.get(k),
            self.cumulative.get(k),
            self.spread.get(k),
        ) else {
            return 0.0;
        };
        let end = self.starts.get(k + 1).copied().unwrap_or(RING_END);
        let within = if end > start {
            (token - start) as f64 / (end - start) as f64
        } else {
            0.0
        };
        cumulative + spread * within.min(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_interpolate_within_buckets_and_keep_hot_tokens_whole() {
        let hot = [HotToken {
            token: 10,
            load: 30,
        }];
        let h = TokenHistogram::equal_buckets(&[100, 100], &hot).unwrap();
        assert_eq!(h.total(), 200.0);
        let quarter = -(1i128 << 62);
        assert!((h.load_between(i128::from(i64::MIN), quarter) - 50.0).abs() < 1e-9);
        // Bucket 1 spreads 70 and holds the hot token's 30 on token 10.
        assert!((h.load_between(0, 10) - 70.0 * 10.0 / 2f64.powi(63)).abs() < 1e-9);
        assert!((h.load_between(10, 11) - 30.0).abs() < 1e-9);
        let loads = h.loads_by_owner(&[(i64::MIN, 0), (0, 1), (11, 0)], 2);
        assert!((loads[0] + loads[1] - 200.0).abs() < 1e-9);
        assert!((loads[1] - 30.0).abs() < 1e-6);
    }

    #[test]
    fn malformed_histograms_are_refused() {
        let hot = |token| HotToken { token, load: 1 };
        assert_eq!(TokenHistogram::new(&[], &[]), Err(HistogramError::Empty));
        assert_eq!(
            TokenHistogram::new(&[(0, 1)], &[]),
            Err(HistogramError::NotFromRingStart { start: 0 })
        );
        assert_eq!(
            TokenHistogram::new(&[(i64::MIN, 1), (5, 1), (5, 1)], &[]),
            Err(HistogramError::Unsorted {
                index: 2,
                start: 5,
                previous: 5
            })
        );
        assert_eq!(
            TokenHistogram::new(&[(i64::MIN, 1)], &[hot(3), hot(3)]),
            Err(HistogramError::DuplicateHotToken { token: 3 })
        );
    }

    #[test]
    fn hot_tokens_heavier_than_their_bucket_are_refused() {
        let hot = |token, load| HotToken { token, load };
        // Bucket 1 (from token 0) holds 10: 4 + 6 fit exactly, 4 + 7 do not.
        let buckets = [(i64::MIN, 100), (0, 10)];
        let fits = TokenHistogram::new(&buckets, &[hot(5, 4), hot(9, 6)]).unwrap();
        assert_eq!(fits.total(), 110.0);
        assert!((fits.load_between(0, 1 << 63) - 10.0).abs() < 1e-9);
        assert_eq!(
            TokenHistogram::new(&buckets, &[hot(9, 7), hot(5, 4)]),
            Err(HistogramError::HotTokenExceedsBucket {
                token: 9,
                load: 7,
                bucket: 1,
                start: 0,
                available: 6
            })
        );
        let e = TokenHistogram::new(&buckets, &[hot(-3, 101)]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "hot token -3 has load 101, but its bucket 0 (from token -9223372036854775808) \
             holds only 100 besides the hot tokens before it"
        );
    }
}
