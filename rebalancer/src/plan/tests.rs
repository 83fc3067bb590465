//! Tests of planning against whole shard maps.

use postshard_router::map::raw::{RawMap, RawShard, RawTable};
use postshard_router::ring::TOKEN_SPACE;
use postshard_router::{ShardMap, Token};
use proptest::prelude::*;

use super::*;
use crate::layout::{balanced_arcs, target_tokens};
use crate::skew::Skew;

/// A map of shards `s0..` with `weights`, owning `arcs`, at `version`.
fn map_of(weights: &[u32], arcs: &[(Token, usize)], version: u64) -> ShardMap {
    let shards = weights
        .iter()
        .enumerate()
        .map(|(i, w)| {
            RawShard::new(
                &format!("s{i}"),
                &format!("postgres://app:${{PGPASSWORD}}@db{i}/posts"),
            )
            .with_weight(*w)
        })
        .collect();
    let raw = RawMap::new(version, 0, vec![RawTable::new("posts", "id")], shards, arcs);
    ShardMap::from_raw(raw, "test", &|_| Some("secret".to_string())).unwrap()
}

fn balanced(weights: &[u32]) -> ShardMap {
    map_of(weights, &balanced_arcs(weights), 1)
}

/// Random maps: 1-40 shards, weights 1..100 (all equal one time in four),
/// fragmented rings of up to 80 arcs.
fn random_map() -> impl Strategy<Value = ShardMap> {
    (1usize..=40)
        .prop_flat_map(|n| {
            (
                prop_oneof![
                    3 => proptest::collection::vec(1u32..100, n),
                    1 => (1u32..100).prop_map(move |w| vec![w; n]),
                ],
                proptest::collection::btree_set(any::<i64>(), 0..80),
                proptest::collection::vec(0..n, 81),
                0u64..1000,
            )
        })
        .prop_map(|(weights, mut starts, owners, version)| {
            starts.insert(i64::MIN);
            let arcs: Vec<(Token, usize)> = starts.into_iter().zip(owners).collect();
            map_of(&weights, &arcs, version)
        })
}

/// Owner names at every arc start of either map.
fn owners_at_boundaries(a: &ShardMap, b: &ShardMap) -> Vec<(Token, String, String)> {
    let mut tokens: Vec<Token> = a
        .ring()
        .arcs()
        .chain(b.ring().arcs())
        .map(|arc| arc.from)
        .collect();
    tokens.sort_unstable();
    tokens.dedup();
    let name = |m: &ShardMap, t: Token| m.shards()[m.ring().owner(t)].name.clone();
    tokens
        .into_iter()
        .map(|t| (t, name(a, t), name(b, t)))
        .collect()
}

/// Sum over the union list of tokens owned beyond the target.
fn surplus(map: &ShardMap, weights: &[u32]) -> u128 {
    let targets = target_tokens(weights);
    let mut owned = map.ring().owned_tokens(map.shards().len());
    owned.resize(targets.len(), 0);
    owned
        .iter()
        .zip(&targets)
        .map(|(o, t)| o.saturating_sub(*t))
        .sum()
}

/// Checks what every weight plan must satisfy; returns the map after it.
fn check_weight_plan(
    map: &ShardMap,
    plan: &Plan,
    union_weights: &[u32],
) -> Result<ShardMap, TestCaseError> {
    let after = plan
        .apply_with_env(map, &offline_env)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(after.version(), map.version() + 1);
    prop_assert_eq!(plan.moved_tokens(), surplus(map, union_weights));
    prop_assert!(plan.moves.iter().all(|m| m.source != m.target));
    // Each shard owns its weight's share, exact to the token.
    let weights: Vec<u32> = after.shards().iter().map(|s| s.weight).collect();
    let total: u128 = weights.iter().map(|w| u128::from(*w)).sum();
    let owned = after.ring().owned_tokens(weights.len());
    prop_assert_eq!(owned.iter().sum::<u128>(), TOKEN_SPACE);
    prop_assert_eq!(&owned, &target_tokens(&weights));
    for (o, w) in owned.iter().zip(&weights) {
        prop_assert!((o * total).abs_diff(TOKEN_SPACE * u128::from(*w)) < total);
    }
    // Applying the reverse restores the original ownership and shard list.
    let back = plan
        .reverse()
        .apply_with_env(&after, &offline_env)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(back.version(), map.version() + 2);
    prop_assert_eq!(shape(&back), shape(map));
    for (t, want, got) in owners_at_boundaries(map, &back) {
        prop_assert_eq!(want, got, "token {}", t);
    }
    Ok(after)
}

/// Each shard's name, URL template, weight and pool.
fn shape(map: &ShardMap) -> Vec<(String, String, u32, String)> {
    map.shards()
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                s.url.template().to_string(),
                s.weight,
                format!("{:?}", s.pool),
            )
        })
        .collect()
}

fn weights_of(map: &ShardMap) -> Vec<u32> {
    map.shards().iter().map(|s| s.weight).collect()
}

proptest! {
    #[test]
    fn adding_a_shard_moves_exactly_the_surplus(map in random_map(), weight in 1u32..100) {
        let plan = add_shard(&map, "new", "postgres://new/posts", weight).unwrap();
        prop_assert_eq!(&plan, &add_shard(&map, "new", "postgres://new/posts", weight).unwrap());
        let mut union = weights_of(&map);
        union.push(weight);
        let after = check_weight_plan(&map, &plan, &union)?;
        prop_assert_eq!(after.shards().last().map(|s| s.name.as_str()), Some("new"));
    }

    #[test]
    fn removing_a_shard_moves_exactly_the_surplus(map in random_map(), pick in any::<prop::sample::Index>()) {
        prop_assume!(map.shards().len() > 1);
        let i = pick.index(map.shards().len());
        let name = map.shards()[i].name.clone();
        let plan = remove_shard(&map, &name).unwrap();
        prop_assert_eq!(&plan, &remove_shard(&map, &name).unwrap());
        let mut union = weights_of(&map);
        union[i] = 0;
        let after = check_weight_plan(&map, &plan, &union)?;
        prop_assert!(after.shard_index(&name).is_none());
        prop_assert_eq!(after.shards().len(), map.shards().len() - 1);
    }

    #[test]
    fn reweighting_moves_exactly_the_surplus(
        map in random_map(),
        pick in any::<prop::sample::Index>(),
        weight in 1u32..100,
    ) {
        let i = pick.index(map.shards().len());
        let name = map.shards()[i].name.clone();
        let plan = reweight(&map, &name, weight).unwrap();
        prop_assert_eq!(&plan, &reweight(&map, &name, weight).unwrap());
        let mut union = weights_of(&map);
        union[i] = weight;
        let after = check_weight_plan(&map, &plan, &union)?;
        prop_assert_eq!(after.shards()[i].weight, weight);
    }

    #[test]
    fn from_a_balanced_map_moves_are_near_the_optimum(
        weights in proptest::collection::vec(1u32..100, 1..40),
        added in 1u32..100,
        pick in any::<prop::sample::Index>(),
        reweighted in 1u32..100,
    ) {
        let map = balanced(&weights);
        let n = weights.len();
        let total: u128 = weights.iter().map(|w| u128::from(*w)).sum();
        let near = |moved: u128, optimum: u128| moved <= optimum + optimum / 1000 + n as u128 + 1;
        // Adding: the new shard must receive its whole share, and no more moves.
        let plan = add_shard(&map, "new", "postgres://new/posts", added).unwrap();
        let optimum = TOKEN_SPACE * u128::from(added) / (total + u128::from(added));
        prop_assert!(near(plan.moved_tokens(), optimum), "{} vs {}", plan.moved_tokens(), optimum);
        // Removing: the removed shard's tokens, and no more.
        let i = pick.index(n);
        if n > 1 {
            let plan = remove_shard(&map, &format!("s{i}")).unwrap();
            let optimum = map.ring().owned_tokens(n)[i];
            prop_assert!(near(plan.moved_tokens(), optimum));
        }
        // Reweighting: the change of the reweighted shard's share.
        let plan = reweight(&map, &format!("s{i}"), reweighted).unwrap();
        let mut new = weights.clone();
        new[i] = reweighted;
        let optimum = target_tokens(&new)[i].abs_diff(map.ring().owned_tokens(n)[i]);
        prop_assert!(near(plan.moved_tokens(), optimum));
    }
}

#[test]
fn weight_plans_on_4_and_16_shards() {
    // shards, intent, moved fraction of the ring, number of moves
    type Intent = fn(&ShardMap) -> Plan;
    let cases: &[(usize, Intent, f64, usize)] = &[
        (
            4,
            |m| add_shard(m, "new", "postgres://new/posts", 1).unwrap(),
            1.0 / 5.0,
            4,
        ),
        (
            16,
            |m| add_shard(m, "new", "postgres://new/posts", 1).unwrap(),
            1.0 / 17.0,
            16,
        ),
        (
            4,
            |m| add_shard(m, "new", "postgres://new/posts", 4).unwrap(),
            4.0 / 8.0,
            4,
        ),
        (4, |m| remove_shard(m, "s3").unwrap(), 1.0 / 4.0, 3),
        (4, |m| remove_shard(m, "s1").unwrap(), 1.0 / 4.0, 3),
        (16, |m| remove_shard(m, "s7").unwrap(), 1.0 / 16.0, 15),
        (
            4,
            |m| reweight(m, "s0", 2).unwrap(),
            2.0 / 5.0 - 1.0 / 4.0,
            3,
        ),
        (4, |m| reweight(m, "s2", 1).unwrap(), 0.0, 0),
        (
            16,
            |m| reweight(m, "s0", 3).unwrap(),
            3.0 / 18.0 - 1.0 / 16.0,
            15,
        ),
    ];
    for (i, (shards, intent, fraction, count)) in cases.iter().enumerate() {
        let map = balanced(&vec![1; *shards]);
        let plan = intent(&map);
        let moved = plan.moved_tokens() as f64 / TOKEN_SPACE as f64;
        assert!(
            (moved - fraction).abs() < 1e-12,
            "case {i}: moved {moved}, want {fraction}"
        );
        assert_eq!(plan.moves.len(), *count, "case {i}: {:#?}", plan.moves);
    }
}

#[test]
fn a_removed_shard_keeps_its_index_until_it_owns_nothing() {
    let map = balanced(&[1, 1, 1, 1]);
    let plan = remove_shard(&map, "s1").unwrap();
    assert!(plan.moves.iter().all(|m| m.source == "s1"));
    let names: Vec<&str> = plan.shards.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["s0", "s2", "s3"]);
    let after = plan.apply_with_env(&map, &offline_env).unwrap();
    assert_eq!(after.shards().len(), 3);
    assert_eq!(after.ring().owned_tokens(3), target_tokens(&[1, 1, 1]));
}

#[test]
fn intents_refuse_bad_input() {
    let map = balanced(&[1, 1]);
    let cases: Vec<(IntentError, &str)> = vec![
        (
            add_shard(&map, "s1", "postgres://x/p", 1).unwrap_err(),
            "already in the map",
        ),
        (
            add_shard(&map, "n", "postgres://x/p", 0).unwrap_err(),
            "must be from 1 to",
        ),
        (
            add_shard(&map, "n", "postgres://u:hunter2@x/p", 1).unwrap_err(),
            "literal password",
        ),
        (
            add_shard(&map, "bad name", "postgres://x/p", 1).unwrap_err(),
            "shard name `bad name`",
        ),
        (
            add_shard(&map, "n", "postgres://app:${PGPASSWORD}@db0/posts", 1).unwrap_err(),
            "same server and database",
        ),
        (
            remove_shard(&map, "nope").unwrap_err(),
            "no shard `nope` in the map (shards: s0, s1)",
        ),
        (
            reweight(&map, "s0", 2_000_000).unwrap_err(),
            "must be from 1 to 1000000",
        ),
        (
            remove_shard(&balanced(&[3]), "s0").unwrap_err(),
            "only shard",
        ),
    ];
    for (e, want) in cases {
        let text = chain(&e);
        assert!(text.contains(want), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }
}

/// An error and its sources, joined.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

#[test]
fn apply_refuses_a_plan_for_another_map() {
    let map = balanced(&[1, 1, 1]);
    let plan = add_shard(&map, "new", "postgres://new/posts", 1).unwrap();
    let after = plan.apply_with_env(&map, &offline_env).unwrap();
    let again = plan
        .apply_with_env(&after, &offline_env)
        .unwrap_err()
        .to_string();
    assert!(
        again.contains("made for map version 1, but the map is at version 2"),
        "{again}"
    );
    let other = map_of(&[1, 1, 1, 1], &balanced_arcs(&[1, 1, 1, 1]), 1);
    assert!(plan
        .apply_with_env(&other, &offline_env)
        .unwrap_err()
        .to_string()
        .contains("made for shards [s0, s1, s2]"));
    let mut stolen = plan.clone();
    stolen.moves[0].source = "s1".to_string();
    let e = stolen
        .apply_with_env(&map, &offline_env)
        .unwrap_err()
        .to_string();
    assert!(e.contains("moves[0]: `s1` does not own all of"), "{e}");
    let mut keep = remove_shard(&map, "s2").unwrap();
    keep.moves.pop();
    let e = keep
        .apply_with_env(&map, &offline_env)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("shard `s2` is removed by the plan but would still own tokens"),
        "{e}"
    );
    let mut overlapping = plan.clone();
    overlapping.moves[1].from = overlapping.moves[0].from;
    assert!(overlapping
        .apply_with_env(&map, &offline_env)
        .unwrap_err()
        .to_string()
        .contains("moves[1]: range"));
}

#[test]
fn a_real_plan_round_trips_through_its_file() {
    let map = map_of(
        &[1, 2, 3],
        &[(i64::MIN, 0), (-5, 2), (1 << 40, 1), (1 << 50, 0)],
        9,
    );
    let mut plan = add_shard(&map, "new", "host=db9 dbname=posts password=${PW}", 2).unwrap();
    plan.estimate(
        &TokenHistogram::equal_buckets(&[5; 16], &[]).unwrap(),
        postshard_router::LoadUnit::Rows,
    );
    let yaml = plan.to_yaml();
    assert_eq!(Plan::from_yaml_str(&yaml).unwrap(), plan);
    let twice = plan.reverse().reverse();
    assert_eq!(
        (twice.base_version, &twice.shards, &twice.moves),
        (11, &plan.shards, &plan.moves)
    );
    let dir = std::env::temp_dir().join(format!("postshard-plan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("plan.yaml");
    std::fs::write(&path, yaml.replace("base_version:", "base_versoin:")).unwrap();
    let e = Plan::from_path(&path).unwrap_err().to_string();
    assert!(e.starts_with(&format!("{}:1:", path.display())), "{e}");
    assert!(e.contains("unknown field `base_versoin`"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Peak-to-mean per weight of `map` under `histogram`.
fn predicted(map: &ShardMap, histogram: &TokenHistogram) -> f64 {
    let weights: Vec<f64> = map.shards().iter().map(|s| f64::from(s.weight)).collect();
    let loads = histogram.loads_by_owner(&arcs_of(map.ring()), weights.len());
    Skew::of(&loads, Some(&weights)).unwrap().peak_to_mean
}

/// `predicted` is under `target`, forgiving rounding as `balance` does.
fn within(predicted: f64, target: f64) -> bool {
    predicted <= target * (1.0 + 1e-6)
}

fn moved_load(plan: &Plan, histogram: &TokenHistogram) -> f64 {
    plan.moves
        .iter()
        .map(|m| histogram.load_between(i128::from(m.from), m.to))
        .sum()
}

#[test]
fn a_hot_bucket_is_split_at_an_interpolated_token() {
    let map = balanced(&[1, 1, 1, 1]);
    // s3 owns buckets 6 and 7; bucket 7 carries 9 of its 10.
    let histogram = TokenHistogram::equal_buckets(&[1, 1, 1, 1, 1, 1, 1, 9], &[]).unwrap();
    assert!((predicted(&map, &histogram) - 2.5).abs() < 1e-9);
    let plan = balance(&map, &histogram, 1.05).unwrap();
    let after = plan.apply_with_env(&map, &offline_env).unwrap();
    assert!(within(predicted(&after, &histogram), 1.05));
    // The least load moves: s3 sheds down to 1.05 x its fair share of 4.
    assert!((moved_load(&plan, &histogram) - (10.0 - 4.2)).abs() < 1e-6);
    assert!(plan.moves.iter().all(|m| m.source == "s3"));
    let bucket7 = (3i128 << 61, 1i128 << 63);
    let cuts: Vec<i128> = plan
        .moves
        .iter()
        .flat_map(|m| [i128::from(m.from), m.to])
        .collect();
    assert!(
        cuts.iter().any(|c| bucket7.0 < *c && *c < bucket7.1),
        "some cut falls inside the hot bucket: {cuts:?}"
    );
    // s2 next door takes the first piece and its arc grows.
    assert_eq!(plan.moves[0].target, "s2");
    assert_eq!(plan.moves[0].from, 1 << 62);
}

#[test]
fn a_hot_token_too_big_for_any_shard_is_named() {
    let map = balanced(&[1, 1, 1, 1]);
    let hot = [HotToken {
        token: 1234567,
        load: 30,
    }];
    let histogram = TokenHistogram::equal_buckets(&[10, 10, 40, 10], &hot).unwrap();
    let e = balance(&map, &histogram, 1.05).unwrap_err();
    assert!(
        matches!(
            e,
            BalanceError::HotToken {
                token: 1234567,
                load: 30,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("hot token 1234567"), "{e}");
    // A lower target than the token allows cannot be met either; a higher one can.
    let plan = balance(&map, &histogram, 2.0).unwrap();
    assert!(within(
        predicted(
            &plan.apply_with_env(&map, &offline_env).unwrap(),
            &histogram
        ),
        2.0
    ));
}

#[test]
fn a_hot_token_too_heavy_for_a_small_shard_moves_to_a_big_one() {
    // s0 (weight 1) holds a hot token of 40 out of 100: 1.6 times its fair share.
    let map = balanced(&[1, 3]);
    let token = i64::MIN + 77;
    let hot = [HotToken { token, load: 40 }];
    let histogram = TokenHistogram::equal_buckets(&[45, 5, 25, 25], &hot).unwrap();
    let plan = balance(&map, &histogram, 1.05).unwrap();
    let after = plan.apply_with_env(&map, &offline_env).unwrap();
    assert_eq!(after.shards()[after.ring().owner(token)].name, "s1");
    assert!(within(predicted(&after, &histogram), 1.05));
    let hot_move = plan.moves.iter().find(|m| m.from == token).unwrap();
    assert_eq!(
        (hot_move.to, hot_move.source.as_str()),
        (i128::from(token) + 1, "s0")
    );
    assert!(plan
        .moves
        .iter()
        .any(|m| m.source == "s1" && m.target == "s0"));
}

#[test]
fn balance_edge_cases() {
    let map = balanced(&[1, 1]);
    let even = TokenHistogram::equal_buckets(&[5, 5], &[]).unwrap();
    let plan = balance(&map, &even, DEFAULT_TARGET).unwrap();
    assert!(plan.moves.is_empty());
    assert!(plan.intent.contains("already within"), "{}", plan.intent);
    for bad in [0.99, f64::NAN, f64::INFINITY] {
        assert!(matches!(
            balance(&map, &even, bad),
            Err(BalanceError::BadTarget { .. })
        ));
    }
    let empty = TokenHistogram::equal_buckets(&[0, 0], &[]).unwrap();
    assert_eq!(balance(&map, &empty, 1.05), Err(BalanceError::NoLoad));
    // Three hot tokens of 3 on two shards can be no better than 6:3.
    let hot = [
        HotToken { token: -9, load: 3 },
        HotToken { token: -8, load: 3 },
        HotToken { token: 9, load: 3 },
    ];
    let lumpy = TokenHistogram::equal_buckets(&[6, 3], &hot).unwrap();
    let e = balance(&map, &lumpy, 1.1).unwrap_err();
    assert!(
        matches!(&e, BalanceError::Unreachable { hot: Some(_), .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("holding hot token"), "{e}");
}

proptest! {
    #[test]
    fn balance_reaches_the_target_with_a_valid_ring(
        map in random_map(),
        mut loads in proptest::collection::vec(0u64..1000, 1..64),
        hot in proptest::collection::vec((any::<i64>(), 1u64..300), 0..3),
        target in 1.0f64..1.5,
    ) {
        let hot: Vec<HotToken> = hot.into_iter().map(|(token, load)| HotToken { token, load }).collect();
        let mut hot_sorted = hot.clone();
        hot_sorted.sort_by_key(|h| h.token);
        hot_sorted.dedup_by_key(|h| h.token);
        // A bucket's load includes its hot tokens' loads.
        let n = loads.len() as u128;
        let starts: Vec<i128> = (0..n).map(|b| i128::from(i64::MIN) + (TOKEN_SPACE * b / n) as i128).collect();
        for h in &hot_sorted {
            loads[starts.partition_point(|s| *s <= i128::from(h.token)) - 1] += h.load;
        }
        let histogram = TokenHistogram::equal_buckets(&loads, &hot_sorted).unwrap();
        match balance(&map, &histogram, target) {
            Ok(plan) => {
                prop_assert_eq!(&plan, &balance(&map, &histogram, target).unwrap());
                prop_assert!(plan.moves.iter().all(|m| m.source != m.target));
                let after = plan.apply_with_env(&map, &offline_env).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(shape(&after), shape(&map));
                prop_assert!(within(predicted(&after, &histogram), target));
                let back = plan.reverse().apply_with_env(&after, &offline_env).map_err(|e| TestCaseError::fail(e.to_string()))?;
                for (t, want, got) in owners_at_boundaries(&map, &back) {
                    prop_assert_eq!(want, got, "token {}", t);
                }
                // With equal weights and no hot tokens, exactly the excess over the target moves.
                let equal = map.shards().iter().all(|s| s.weight == map.shards()[0].weight);
                if equal && hot_sorted.is_empty() && !plan.moves.is_empty() {
                    let weights = vec![1.0; map.shards().len()];
                    let before = histogram.loads_by_owner(&arcs_of(map.ring()), weights.len());
                    let fair = histogram.total() / weights.len() as f64;
                    let excess: f64 = before.iter().map(|l| (l - target * fair).max(0.0)).sum();
                    prop_assert!((moved_load(&plan, &histogram) - excess).abs() <= 1e-6 * histogram.total());
                }
            }
            Err(BalanceError::NoLoad) => prop_assert_eq!(histogram.total(), 0.0),
            Err(BalanceError::HotToken { .. } | BalanceError::Unreachable { .. }) => {
                prop_assert!(!hot_sorted.is_empty(), "only hot tokens make a target unreachable");
            }
            Err(e) => prop_assert!(false, "{}", e),
        }
    }
}

#[test]
fn a_shard_sheds_from_both_sides_of_a_hot_token_it_keeps() {
    // s1 holds 150 on each side of a hot token of 400 in the middle of its
    // arc and must shed 210 to reach 1.05: more than either side holds.
    let map = balanced(&[1, 1, 1]);
    let hot = [HotToken {
        token: 0,
        load: 400,
    }];
    let histogram = TokenHistogram::equal_buckets(&[300, 300, 150, 550, 50, 50], &hot).unwrap();
    let plan = balance(&map, &histogram, 1.05).unwrap();
    let after = plan.apply_with_env(&map, &offline_env).unwrap();
    assert!(
        within(predicted(&after, &histogram), 1.05),
        "{}",
        plan.intent
    );
    assert_eq!(after.ring().owner(0), 1, "the hot token stays");
}

#[test]
fn growing_with_add_shard_plans_keeps_arcs_few() {
    // `plan add-shard` from 4 to 64 shards, one at a time; the planner core
    // test grows on to 200. Carving one separate piece per giver left 2,014.
    let mut map = balanced(&[1; 4]);
    for n in 4..64 {
        let plan = add_shard(
            &map,
            &format!("s{n}"),
            &format!("postgres://db{n}/posts"),
            1,
        )
        .unwrap();
        let after = plan.apply_with_env(&map, &offline_env).unwrap();
        assert_eq!(plan.moved_tokens(), target_tokens(&vec![1; n + 1])[n]);
        assert_eq!(
            after.ring().owned_tokens(n + 1),
            target_tokens(&vec![1; n + 1])
        );
        map = after;
    }
    assert!(map.ring().len() <= 1_050, "{} arcs", map.ring().len());
}
