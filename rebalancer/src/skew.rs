//! Skew metrics over per-shard loads (rows, bytes, requests).

/// How unevenly a load is spread over shards.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Skew {
    /// Highest load over the mean load (1.0 is perfectly even).
    pub peak_to_mean: f64,
    /// Standard deviation over the mean (population form; 0.0 is even).
    pub cv: f64,
    /// Gini coefficient, 0.0 (even) to (n-1)/n (all on one shard).
    pub gini: f64,
    /// Index of the most loaded shard (the first one on a tie).
    pub hottest: usize,
    /// The hottest shard's share of the total load, 0.0 to 1.0.
    pub hottest_share: f64,
}

impl Skew {
    /// Skew of `loads`. With `weights`, each load is first divided by its
    /// shard's weight, so a shard twice as big may carry twice the load.
    /// `None` when there are no shards, the total is zero, or a weight is not
    /// positive.
    pub fn of(loads: &[f64], weights: Option<&[f64]>) -> Option<Skew> {
        if loads.is_empty() {
            return None;
        }
        let normalized: Vec<f64> = match weights {
            Some(w) if w.len() != loads.len() || w.iter().any(|w| *w <= 0.0) => return None,
            Some(w) => loads.iter().zip(w).map(|(l, w)| l / w).collect(),
            None => loads.to_vec(),
        };
        let n = normalized.len() as f64;
        let total: f64 = normalized.iter().sum();
        if total <= 0.0 || !total.is_finite() {
            return None;
        }
        let mean = total / n;
        let (hottest, peak) =
            normalized
                .iter()
                .copied()
                .enumerate()
                .fold(
                    (0, f64::MIN),
                    |best, (i, l)| if l > best.1 { (i, l) } else { best },
                );
        let variance = normalized.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / n;
        // Gini from sorted values: sum_i (2i - n - 1) x_i / (n * total), i from 1.
        let mut sorted = normalized.clone();
        sorted.sort_by(f64::total_cmp);
        let weighted: f64 = sorted
            .iter()
            .enumerate()
            .map(|(i, x)| (2.0 * (i as f64 + 1.0) - n - 1.0) * x)
            .sum();
        let raw_total: f64 = loads.iter().sum();
        Some(Skew {
            peak_to_mean: peak / mean,
            cv: variance.sqrt() / mean,
            gini: weighted / (n * total),
            hottest,
            hottest_share: if raw_total > 0.0 {
                loads.get(hottest).copied().unwrap_or(0.0) / raw_total
            } else {
                0.0
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    /// loads, weights, peak_to_mean, cv, gini, hottest, hottest_share
    type Case<'a> = (&'a [f64], Option<&'a [f64]>, f64, f64, f64, usize, f64);

    #[test]
    fn metrics_table() {
        let cases: &[Case] = &[
            (&[5.0, 5.0, 5.0, 5.0], None, 1.0, 0.0, 0.0, 0, 0.25),
            (&[0.0, 0.0, 0.0, 8.0], None, 4.0, 3f64.sqrt(), 0.75, 3, 1.0),
            (&[1.0, 3.0], None, 1.5, 0.5, 0.25, 1, 0.75),
            (&[2.0, 6.0], Some(&[1.0, 3.0]), 1.0, 0.0, 0.0, 0, 0.25),
            (
                &[1.0, 2.0, 3.0, 4.0],
                None,
                1.6,
                0.4472135954999579,
                0.25,
                3,
                0.4,
            ),
        ];
        for (loads, weights, ptm, cv, gini, hottest, share) in cases {
            let s = Skew::of(loads, *weights).unwrap();
            assert!(close(s.peak_to_mean, *ptm), "{loads:?}: {s:?}");
            assert!(close(s.cv, *cv), "{loads:?}: {s:?}");
            assert!(close(s.gini, *gini), "{loads:?}: {s:?}");
            assert_eq!(s.hottest, *hottest, "{loads:?}");
            assert!(close(s.hottest_share, *share), "{loads:?}: {s:?}");
        }
    }

    #[test]
    fn degenerate_inputs_have_no_skew() {
        assert_eq!(Skew::of(&[], None), None);
        assert_eq!(Skew::of(&[0.0, 0.0], None), None);
        assert_eq!(Skew::of(&[1.0, 1.0], Some(&[1.0])), None);
        assert_eq!(Skew::of(&[1.0, 1.0], Some(&[1.0, 0.0])), None);
    }
}
