//! Simulator throughput per strategy: one million sequential IDs on 16
//! shards, alone and with one shard added (each key is then placed twice).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use postshard_rebalancer::simulate::{simulate, Change, Distribution, Strategy, Workload};

const KEYS: u64 = 1_000_000;

fn strategies(c: &mut Criterion) {
    let workload = Workload::new(Distribution::Sequential, KEYS, 1, 0).expect("workload");
    for (name, change) in [("place", None), ("place+add1", Some(Change::Add(1)))] {
        let mut group = c.benchmark_group(format!("skew/{name}"));
        group.throughput(Throughput::Elements(KEYS));
        group.sample_size(10);
        for strategy in Strategy::ALL {
            group.bench_function(strategy.to_string(), |b| {
                b.iter(|| simulate(&workload, strategy, 16, change).expect("simulate"))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, strategies);
criterion_main!(benches);
