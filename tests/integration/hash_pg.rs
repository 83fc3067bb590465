//! The Rust port of `hashint8extended` agrees with a real PostgreSQL server.

use postshard_router::hashint8extended;
use postshard_sandbox::Cluster;

use crate::common::{connect, runtime, Rng};

/// Edge values, sequential, random and snowflake-shaped IDs: over 10,000.
fn sample_keys() -> Vec<i64> {
    let mut keys = vec![
        0,
        1,
        -1,
        2,
        -2,
        i64::MIN,
        i64::MAX,
        i64::MIN + 1,
        i64::MAX - 1,
    ];
    for base in [1i64 << 31, 1 << 32, 1 << 53, 1 << 62] {
        for d in -2..=2 {
            keys.extend([base + d, -base + d]);
        }
    }
    keys.extend(1..=3_000);
    keys.extend(-1_000..0);
    let mut rng = Rng::new(0x5eed);
    keys.extend((0..4_000).map(|_| rng.next_u64() as i64));
    // Snowflake: 41-bit ms timestamp, 10-bit worker, 12-bit sequence.
    let epoch_ms = 1_700_000_000_000i64 - 1_288_834_974_657;
    for i in 0..2_500i64 {
        let ts = epoch_ms + i * 37;
        keys.push((ts << 22) | ((i % 1024) << 12) | (i % 4096));
    }
    keys
}

#[test]
fn hash_matches_postgresql_bit_for_bit() {
    let cluster = Cluster::start(1).expect("start PostgreSQL");
    let keys = sample_keys();
    assert!(keys.len() >= 10_000, "{} keys", keys.len());
    let seeds = [0i64, 0x5eed_1234_abcd, -42];
    runtime().block_on(async {
        let client = connect(&cluster.servers()[0].url()).await;
        for seed in seeds {
            let rows = client
                .query(
                    "SELECT k, hashint8extended(k, $2) FROM unnest($1::int8[]) WITH ORDINALITY AS t(k, n) ORDER BY n",
                    &[&keys, &seed],
                )
                .await
                .expect("hash query");
            assert_eq!(rows.len(), keys.len());
            let mismatches: Vec<(i64, i64, i64)> = rows
                .iter()
                .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1)))
                .map(|(k, pg)| (k, pg, hashint8extended(k, seed)))
                .filter(|(_, pg, ours)| pg != ours)
                .collect();
            assert!(
                mismatches.is_empty(),
                "seed {seed}: {} of {} keys differ, first: {:?}",
                mismatches.len(),
                keys.len(),
                &mismatches[..mismatches.len().min(5)]
            );
        }
    });
}
