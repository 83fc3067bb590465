//! Jump consistent hash (Lamping and Veach, "A Fast, Minimal Memory,
//! Consistent Hash Algorithm", 2014).

/// The bucket in `0..buckets` for `key`, exactly as the paper's C++ reference
/// `JumpConsistentHash` computes it. Going from n to n + 1 buckets moves only
/// keys into the new bucket, about 1/(n + 1) of them. 0 when `buckets` is 0.
#[inline]
pub fn jump_consistent_hash(mut key: u64, buckets: u32) -> u32 {
    let (mut b, mut j) = (-1i64, 0i64);
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b.max(0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_papers_reference_implementation() {
        // (key, buckets, bucket), computed with the paper's C++ code built by
        // g++; (256, 1024) → 520 is also the example in the README of the
        // `jump-consistent-hash` Python package.
        let cases: &[(u64, u32, u32)] = &[
            (256, 1024, 520),
            (0, 1, 0),
            (0, 65536, 0),
            (1, 2, 0),
            (1, 10, 6),
            (1, 100, 55),
            (1, 1000, 549),
            (1, 65536, 21134),
            (2, 16, 15),
            (2, 17, 15),
            (2, 1000, 338),
            (42, 2, 1),
            (42, 10, 2),
            (42, 100, 43),
            (42, 65536, 5747),
            (0xdead_beef, 16, 5),
            (0xdead_beef, 17, 16),
            (0xdead_beef, 65536, 64244),
            (1_000_000_007, 16, 10),
            (1_000_000_007, 17, 16),
            (u64::MAX, 10, 9),
            (u64::MAX, 100, 92),
            (u64::MAX, 65536, 18311),
            (1 << 63, 16, 12),
            (1 << 63, 1000, 453),
            (12_345_678_901_234_567_890, 100, 49),
            (12_345_678_901_234_567_890, 65536, 46485),
        ];
        for &(key, buckets, want) in cases {
            assert_eq!(
                jump_consistent_hash(key, buckets),
                want,
                "key {key}, {buckets} buckets"
            );
        }
    }

    #[test]
    fn no_buckets_gives_zero() {
        assert_eq!(jump_consistent_hash(42, 0), 0);
    }

    proptest::proptest! {
        #[test]
        fn growing_only_moves_keys_to_the_new_bucket(key: u64, n in 1u32..2000) {
            let before = jump_consistent_hash(key, n);
            let after = jump_consistent_hash(key, n + 1);
            proptest::prop_assert!(before < n && after <= n);
            proptest::prop_assert!(after == before || after == n, "{} -> {}", before, after);
        }
    }

    #[test]
    fn growing_moves_about_one_in_n_plus_one() {
        let n = 16;
        let moved = (0..100_000u64)
            .map(|k| k.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .filter(|k| jump_consistent_hash(*k, n) != jump_consistent_hash(*k, n + 1))
            .count();
        let fraction = moved as f64 / 100_000.0;
        assert!((fraction - 1.0 / 17.0).abs() < 0.003, "{fraction}");
    }
}
