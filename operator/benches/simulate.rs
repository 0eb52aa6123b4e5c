//! How long `taxi-operator simulate` takes for one day (the diurnal trace, 30 s policy interval)
//! under each autoscaling policy: cheap enough to compare policies interactively and in tests.
//! Run with `cargo bench -p taxi-operator --bench simulate`.

#![expect(missing_docs, reason = "criterion_group! generates an undocumented function")]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use taxi_operator::simulate::{PolicyKind, SimConfig, Trace, run};

fn a_simulated_day(c: &mut Criterion) {
    let mut group = c.benchmark_group("simulate_diurnal_day");
    for policy in PolicyKind::ALL {
        let config = SimConfig { policy, trace: Trace::Diurnal, ..SimConfig::default() };
        group.bench_function(policy.to_string(), |b| {
            b.iter(|| run(black_box(&config)).expect("the default settings are valid"));
        });
    }
    group.finish();
}

criterion_group!(benches, a_simulated_day);
criterion_main!(benches);
