//! The ideal division of the token space by shard weight.

use postshard_router::ring::TOKEN_SPACE;
use postshard_router::Token;

/// Tokens each shard should own: proportional to its weight, each within one
/// token of exact, summing to exactly 2^64. Empty when `weights` is empty or
/// sums to zero.
pub fn target_tokens(weights: &[u32]) -> Vec<u128> {
    let total: u128 = weights.iter().map(|w| u128::from(*w)).sum();
    if total == 0 {
        return Vec::new();
    }
    // floor(2^64 * cum / total) at each boundary; 2^64 * (4096 * 10^6) fits in u128.
    let mut cum = 0u128;
    let mut previous = 0u128;
    weights
        .iter()
        .map(|w| {
            cum += u128::from(*w);
            let boundary = TOKEN_SPACE * cum / total;
            let share = boundary - previous;
            previous = boundary;
            share
        })
        .collect()
}

/// A ring of one arc per shard, in shard order, each arc's length from
/// [`target_tokens`]: the layout `postshard map init` writes.
pub fn balanced_arcs(weights: &[u32]) -> Vec<(Token, usize)> {
    let mut start = i128::from(Token::MIN);
    target_tokens(weights)
        .into_iter()
        .enumerate()
        .map(|(shard, len)| {
            let from = start as Token;
            start += len as i128;
            (from, shard)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_weights_split_the_space_exactly() {
        let arcs = balanced_arcs(&[1, 1, 1, 1]);
        let starts: Vec<Token> = arcs.iter().map(|a| a.0).collect();
        assert_eq!(
            starts,
            [i64::MIN, -4611686018427387904, 0, 4611686018427387904]
        );
    }

    proptest::proptest! {
        #[test]
        fn targets_are_exact_to_one_token(weights in proptest::collection::vec(1u32..1000, 1..64)) {
            let targets = target_tokens(&weights);
            proptest::prop_assert_eq!(targets.iter().sum::<u128>(), TOKEN_SPACE);
            let total: u128 = weights.iter().map(|w| u128::from(*w)).sum();
            for (w, t) in weights.iter().zip(&targets) {
                // |t - 2^64 * w / total| < 1  <=>  |t * total - 2^64 * w| < total
                let exact = TOKEN_SPACE * u128::from(*w);
                let diff = (t * total).abs_diff(exact);
                proptest::prop_assert!(diff < total, "weight {} got {} tokens", w, t);
            }
        }
    }
}
