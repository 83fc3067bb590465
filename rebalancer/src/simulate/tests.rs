//! Acceptance tests of the simulator: each strategy's skew and movement.

use super::*;

fn workload(dist: &str, keys: u64, posts: u64) -> Workload {
    Workload::new(dist.parse().unwrap(), keys, posts, 0).unwrap()
}

fn run(w: &Workload, strategy: &str, shards: usize, change: Option<Change>) -> Outcome {
    simulate(w, strategy.parse().unwrap(), shards, change).unwrap()
}

fn rebalance(outcome: &Outcome) -> &Rebalance {
    outcome.rebalance.as_ref().unwrap()
}

#[test]
fn ring_is_even_and_moves_the_optimum_when_growing() {
    let w = workload("sequential", 1_000_000, 1);
    let o = run(&w, "ring", 16, Some(Change::Add(1)));
    assert!(o.before.skew.peak_to_mean <= 1.02, "{:?}", o.before.skew);
    let r = rebalance(&o);
    assert!(r.after.skew.peak_to_mean <= 1.02, "{:?}", r.after.skew);
    assert_eq!(r.optimal_moved_fraction, 1.0 / 17.0);
    // Only keys for the new shard move, and it holds exactly 1/17 of the
    // tokens; hashint8extended puts 0.974 of the ideal share of IDs 1..10^6
    // there (consecutive integers hash lumpier than random ones).
    assert_eq!(r.after.shards.len(), 17);
    assert_eq!(r.after.shards[16].keys, r.moved);
    let ratio = r.moved_fraction * 17.0;
    assert!((0.96..1.04).contains(&ratio), "moved {ratio} of optimal");
}

#[test]
fn ring_moves_the_optimum_on_random_ids() {
    let w = workload("uniform", 1_000_000, 1);
    let r = rebalance(&run(&w, "ring", 16, Some(Change::Add(1)))).clone();
    let ratio = r.moved_fraction / r.optimal_moved_fraction;
    assert!((ratio - 1.0).abs() < 0.01, "moved {ratio} of optimal");
}

#[test]
fn ring_removal_moves_only_the_removed_shards_keys() {
    let w = workload("sequential", 200_000, 1);
    let o = run(&w, "ring", 8, Some(Change::Remove(3)));
    let r = rebalance(&o);
    assert_eq!(r.moved_fraction, r.optimal_moved_fraction);
    assert!(r.after.shards.iter().all(|s| s.shard != 3));
    assert!(r.after.skew.peak_to_mean < 1.03, "{:?}", r.after.skew);
}

#[test]
fn hashring_shows_its_imbalance_but_moves_the_optimum() {
    let w = workload("sequential", 200_000, 1);
    let o = run(&w, "hashring:256", 16, Some(Change::Add(1)));
    assert!(o.before.skew.peak_to_mean > 1.03, "{:?}", o.before.skew);
    let r = rebalance(&o);
    // Only keys for the new shard move: about its share of the ring.
    assert!(
        (r.moved_fraction - 1.0 / 17.0).abs() < 0.03,
        "{}",
        r.moved_fraction
    );
    let o = run(&w, "hashring:256", 16, Some(Change::Remove(5)));
    let r = rebalance(&o);
    assert_eq!(r.moved_fraction, r.optimal_moved_fraction);
}

#[test]
fn modulo_moves_almost_everything() {
    let w = workload("sequential", 100_000, 1);
    let o = run(&w, "modulo", 16, Some(Change::Add(1)));
    assert!(o.before.skew.peak_to_mean < 1.05);
    assert!(
        rebalance(&o).moved_fraction > 0.9,
        "{}",
        rebalance(&o).moved_fraction
    );
}

#[test]
fn jump_is_monotone_when_growing_and_doubles_a_middle_removal() {
    let w = workload("uniform", 100_000, 1);
    let grow = Placement::changed(Strategy::Jump, 16, Change::Add(1), &w).unwrap();
    let before = Placement::new(Strategy::Jump, 16, &w).unwrap();
    for key in w.keys() {
        let (from, to) = (before.shard_of(key), grow.shard_of(key));
        assert!(from == to || to == 16, "key {key}: s{from} -> s{to}");
    }
    let o = run(&w, "jump", 16, Some(Change::Add(1)));
    assert!((rebalance(&o).moved_fraction - 1.0 / 17.0).abs() < 0.005);
    // Dropping the last bucket is optimal; a middle shard costs about twice.
    let last = run(&w, "jump", 16, Some(Change::Remove(15)));
    assert_eq!(
        rebalance(&last).moved_fraction,
        rebalance(&last).optimal_moved_fraction
    );
    let middle = rebalance(&run(&w, "jump", 16, Some(Change::Remove(4)))).clone();
    let ratio = middle.moved_fraction / middle.optimal_moved_fraction;
    assert!((1.8..2.1).contains(&ratio), "{ratio}");
}

#[test]
fn hashring_growth_only_moves_keys_to_the_new_shard() {
    let w = workload("sequential", 20_000, 1);
    let before = Placement::new(Strategy::HashRing { vnodes: 64 }, 8, &w).unwrap();
    let after =
        Placement::changed(Strategy::HashRing { vnodes: 64 }, 8, Change::Add(2), &w).unwrap();
    for key in w.keys() {
        let (from, to) = (before.shard_of(key), after.shard_of(key));
        assert!(from == to || to >= 8, "key {key}: s{from} -> s{to}");
    }
}

#[test]
fn range_sends_recent_posts_to_the_last_shard() {
    let w = workload("recent:100", 20_000, 100_000);
    let o = run(&w, "range", 16, None);
    assert_eq!(o.before.hottest(), 15);
    assert!(o.before.skew.hottest_share > 0.5, "{:?}", o.before.skew);
    // Hashing the same requests spreads them.
    assert!(run(&w, "ring", 16, None).before.skew.hottest_share < 0.2);
}

#[test]
fn range_splits_rows_evenly_but_growing_moves_half() {
    let w = workload("sequential", 160_000, 1);
    let o = run(&w, "range", 16, Some(Change::Add(1)));
    assert!(o.before.skew.peak_to_mean < 1.001, "{:?}", o.before.skew);
    let moved = rebalance(&o).moved_fraction;
    assert!((moved - 0.5).abs() < 0.01, "{moved}");
}

#[test]
fn range_over_snowflake_ids_piles_onto_the_last_shard() {
    // Ranges from 0 to the largest ID: time-ordered IDs all sit near the top.
    let w = workload("snowflake", 10_000, 1);
    let o = run(&w, "range", 4, None);
    assert_eq!(o.before.hottest(), 3);
    assert_eq!(o.before.skew.hottest_share, 1.0);
}

#[test]
fn changes_are_checked() {
    let w = workload("sequential", 10, 1);
    let cases: [(usize, Option<Change>, &str); 6] = [
        (0, None, "0 shards"),
        (4097, None, "4097 shards"),
        (4096, Some(Change::Add(1)), "4097 shards"),
        (4, Some(Change::Add(0)), "adding 0 shards"),
        (
            4,
            Some(Change::Remove(4)),
            "no shard s4: the shards are s0 to s3",
        ),
        (1, Some(Change::Remove(0)), "cannot remove the only shard"),
    ];
    for (shards, change, says) in cases {
        let e = simulate(&w, Strategy::Modulo, shards, change)
            .unwrap_err()
            .to_string();
        assert!(e.contains(says), "{shards} {change:?}: {e}");
    }
}

#[test]
fn every_strategy_places_every_key_once() {
    let w = workload("zipf:1.1", 5_000, 1_000);
    for strategy in Strategy::ALL {
        for change in [None, Some(Change::Add(3)), Some(Change::Remove(0))] {
            let o = simulate(&w, strategy, 5, change).unwrap();
            let total: u64 = o.before.shards.iter().map(|s| s.keys).sum();
            assert_eq!(total, 5_000, "{strategy}");
            if let Some(r) = &o.rebalance {
                let after: u64 = r.after.shards.iter().map(|s| s.keys).sum();
                assert_eq!(after, 5_000, "{strategy} {change:?}");
                if let Change::Remove(_) = r.change {
                    // Every key of the removed shard must move.
                    assert!(r.moved_fraction >= r.optimal_moved_fraction, "{strategy}");
                }
            }
        }
    }
}

#[test]
fn shard_names_and_indexes() {
    assert_eq!(shard_name(12), "s12");
    assert_eq!(shard_index("s12", 13), Some(12));
    for bad in ["s13", "s01", "s+1", "x1", "s", "12"] {
        assert_eq!(shard_index(bad, 13), None, "{bad}");
    }
}
