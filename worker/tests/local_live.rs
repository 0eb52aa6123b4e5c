//! The live figures a local run publishes while it runs (the progress line and the dashboard read
//! them) end up equal to the run's own summary and results.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use taxi_core::config::EngineConfig;
use taxi_core::generate::GeneratorConfig;
use taxi_worker::dashboard::group_windows;
use taxi_worker::local::{LocalInput, LocalOptions, Progress, run_local};

#[test]
fn live_figures_and_kept_results_match_the_summary() {
    // Invalid lines, trips outside NYC (the generator makes some) and late trips (disorder beyond
    // the bound) so that every live counter has something to count.
    let input = LocalInput::Generate(GeneratorConfig {
        trips: 30_000,
        seed: 7,
        invalid_ratio: 0.01,
        max_disorder_ms: 15 * 60_000,
        ..GeneratorConfig::default()
    });
    let options = LocalOptions {
        input,
        shards: 4,
        engine: EngineConfig::default(),
        checkpoint: None,
        stop_after_records: None,
        parse_threads: 2,
        speedup: None,
    };
    let progress = Arc::new(Progress::keeping_results());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let run =
        runtime.block_on(run_local(options, Arc::new(AtomicBool::new(false)), progress.clone())).expect("local run");

    let s = &run.summary;
    assert!(s.invalid > 0 && s.outside_region > 0 && s.late > 0, "the fixture exercises every counter: {s:?}");
    let live = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    assert_eq!(live(&progress.records), s.records);
    assert_eq!(live(&progress.trips), s.trips);
    assert_eq!(live(&progress.invalid), s.invalid);
    assert_eq!(live(&progress.outside_region), s.outside_region);
    assert_eq!(live(&progress.late), s.late);

    let mut kept = progress.results_after(None);
    kept.sort_by(taxi_core::analysis::MergedResult::output_order);
    assert_eq!(kept, run.results, "every final result is kept once, as it became final");
    let windows = group_windows(&kept);
    let hot_spots: usize = windows.iter().map(|w| w.hot_spots.len()).sum();
    assert_eq!(hot_spots as u64, s.hot_spots);
    let counts = progress.kept_counts();
    assert_eq!(
        (counts.windows, counts.hot_spots, counts.airport_trips),
        (windows.len() as u64, s.hot_spots, s.airport_trips)
    );
    let first = windows.first().expect("windows").start_s * 1000;
    assert!(progress.results_after(Some(first)).iter().all(|r| r.window_start() > first));
}
