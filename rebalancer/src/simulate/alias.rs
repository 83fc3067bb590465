//! Walker's alias method (Vose's construction): O(n) to build, O(1) and one
//! table read per sample.

use super::rng::SplitMix64;

/// One column of the table: keep the column's own index with probability
/// `threshold / 2^32`, else take `alias`.
#[derive(Debug, Clone, Copy)]
struct Column {
    threshold: u32,
    alias: u32,
}

/// Samples indexes `0..n` with probability proportional to their weights.
#[derive(Debug, Clone)]
pub(crate) struct AliasTable {
    columns: Box<[Column]>,
}

impl AliasTable {
    /// A table for `weights`. `None` when there are no weights, more than
    /// 2^32, or their sum is not a positive finite number; a negative or NaN
    /// weight counts as 0.
    // `prob` and `columns` have `n` entries and every index is drawn from
    // `0..n` (Vose's worklists hold only such indexes).
    #[allow(clippy::indexing_slicing)]
    pub(crate) fn new(weights: &[f64]) -> Option<AliasTable> {
        let n = weights.len();
        if n == 0 || u32::try_from(n).is_err() {
            return None;
        }
        let clean = |w: f64| if w > 0.0 { w } else { 0.0 };
        let total: f64 = weights.iter().copied().map(clean).sum();
        if !(total > 0.0 && total.is_finite()) {
            return None;
        }
        // Scaled so that the mean column holds exactly 1.
        let scale = n as f64 / total;
        let mut prob: Vec<f64> = weights.iter().map(|w| clean(*w) * scale).collect();
        let mut columns: Vec<Column> = (0..n as u32)
            .map(|i| Column {
                threshold: u32::MAX,
                alias: i,
            })
            .collect();
        let (mut small, mut large): (Vec<u32>, Vec<u32>) =
            (0..n as u32).partition(|i| prob[*i as usize] < 1.0);
        while let (Some(&s), Some(&l)) = (small.last(), large.last()) {
            small.pop();
            let (si, li) = (s as usize, l as usize);
            columns[si] = Column {
                threshold: (prob[si] * 4_294_967_296.0) as u32,
                alias: l,
            };
            prob[li] -= 1.0 - prob[si];
            if prob[li] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        // Columns left in either list hold 1 up to rounding: they keep their
        // own index (threshold u32::MAX, alias itself), as initialised.
        Some(AliasTable {
            columns: columns.into_boxed_slice(),
        })
    }

    /// A random index, drawn with one 64-bit random number: its product with
    /// n picks the column (high half) and a uniform fraction (low half).
    #[inline]
    pub(crate) fn sample(&self, rng: &mut SplitMix64) -> usize {
        let product = u128::from(rng.next_u64()) * self.columns.len() as u128;
        let index = (product >> 64) as usize;
        let fraction = (product as u64 >> 32) as u32;
        match self.columns.get(index) {
            Some(c) if fraction >= c.threshold => c.alias as usize,
            _ => index,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frequencies_follow_the_weights() {
        let weights = [1.0, 2.0, 0.0, 4.0, 1.0];
        let table = AliasTable::new(&weights).unwrap();
        let mut rng = SplitMix64::new(3);
        let mut counts = [0u64; 5];
        let draws = 800_000;
        for _ in 0..draws {
            counts[table.sample(&mut rng)] += 1;
        }
        assert_eq!(counts[2], 0, "a zero weight is never drawn");
        for (w, c) in weights.iter().zip(counts) {
            let expected = w / 8.0 * draws as f64;
            assert!(
                (c as f64 - expected).abs() < 0.01 * draws as f64,
                "weight {w}: {c} draws, expected {expected}"
            );
        }
    }

    #[test]
    fn rejects_empty_and_zero_weights() {
        assert!(AliasTable::new(&[]).is_none());
        assert!(AliasTable::new(&[0.0, -1.0, f64::NAN]).is_none());
        assert!(AliasTable::new(&[f64::INFINITY]).is_none());
        let single = AliasTable::new(&[0.5]).unwrap();
        assert_eq!(single.sample(&mut SplitMix64::new(1)), 0);
    }
}
