//! The randomized fault-injection suite: `bash .ci/chaos --seeds N [--jobs J] [--seed S] [--input FILE]`.
//!
//! Each seed draws a scenario — 1–3 shards, 1–3 workers following a shard assignment, and a
//! timeline of faults: `kill -9`, SIGSTOP past the takeover timeout then SIGCONT, SIGTERM,
//! OpenSearch down (60 s) and S3 down (30 s), a split, a merge or an UpdateShardCount mid-stream,
//! reassignments, duplicated PutRecords — and runs it against kinesis-mock, moto and osmem-server
//! through fault-injecting proxies that add latency, 5xx and throttling answers, resets before and
//! after forwarding, and answers held back. Then one worker reads everything to the end, and the
//! invariants are checked:
//! - the merged OpenSearch results equal the batch oracle;
//! - every stored document is at the highest version ever written for it (no write replaced a
//!   document with older content);
//! - the final checkpoints count every record put exactly once;
//! - no shard was left unread;
//! - every parent shard was durably finished before its child started.
//!
//! The same seed draws the same scenario, so a failing seed is replayed with `--seed S` (the
//! processes' timing still varies from run to run).

mod proxy;
mod scenario;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use futures::StreamExt;

use scenario::{Options, run_seed};
use taxi_testkit::services::Services;

struct Args {
    seeds: Vec<u64>,
    /// Seeds run at once: a seed spends most of its time waiting out outages and timeouts.
    jobs: usize,
    options: Options,
}

fn usage() -> String {
    "usage: chaos --seeds N [--first S] [--jobs J] | --seed S  [--input FILE] [--trips N] [--outage-scale X]".to_owned()
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let (mut count, mut first, mut single, mut jobs) = (None, 1_u64, None, 1);
    let mut options = Options {
        worker_bin: std::env::var_os("TAXI_WORKER_BIN").map(PathBuf::from).ok_or("TAXI_WORKER_BIN is not set")?,
        trips: 600,
        input: None,
        outage_scale: 1.0,
    };
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value\n{}", usage()));
        let number = |v: String| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--seeds" => count = Some(number(value()?)?),
            "--first" => first = number(value()?)?,
            "--jobs" => jobs = usize::try_from(number(value()?)?.max(1)).map_err(|e| format!("--jobs: {e}"))?,
            "--seed" => single = Some(number(value()?)?),
            "--input" => options.input = Some(PathBuf::from(value()?)),
            "--trips" => options.trips = number(value()?)?,
            "--outage-scale" => {
                options.outage_scale = value()?.parse().map_err(|e| format!("--outage-scale: {e}"))?;
            }
            _ => return Err(usage()),
        }
    }
    let seeds = match (single, count) {
        (Some(seed), _) => vec![seed],
        (None, Some(n)) => (first..first + n).collect(),
        (None, None) => return Err(usage()),
    };
    Ok(Args { seeds, jobs, options })
}

fn main() -> ExitCode {
    let (args, services) = match parse_args().and_then(|args| Ok((args, Services::from_env()?))) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("chaos: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut violations = 0;
    let reports = futures::stream::iter(args.seeds.iter().copied())
        .map(|seed| {
            let (services, options) = (&services, &args.options);
            async move {
                let started = std::time::Instant::now();
                (seed, started, run_seed(seed, services, options).await)
            }
        })
        .buffer_unordered(args.jobs);
    let mut reports = std::pin::pin!(reports);
    while let Some((seed, started, report)) = runtime.block_on(reports.next()) {
        for (name, n) in &report.faults {
            *faults.entry(name).or_default() += n;
        }
        let verdict = if report.violations.is_empty() { "ok".to_owned() } else { "VIOLATED".to_owned() };
        println!("seed {seed}: {verdict} in {:.0} s — {}", started.elapsed().as_secs_f64(), report.summary);
        for violation in &report.violations {
            println!("  violation: {violation}");
        }
        if let Some(kept) = &report.kept {
            println!("  kept: {kept}");
        }
        if !report.violations.is_empty() {
            println!("  replay: bash .ci/chaos --seed {seed}");
        }
        violations += report.violations.len();
    }
    let total: u64 = faults.values().sum();
    let by_kind: Vec<String> = faults.iter().filter(|(_, n)| **n > 0).map(|(k, n)| format!("{k}={n}")).collect();
    println!("chaos: {} seeds, {total} faults ({}), {violations} violations", args.seeds.len(), by_kind.join(", "));
    if violations == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
