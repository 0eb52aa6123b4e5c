//! `taxi-worker local`: the whole pipeline embedded in this process, on files or on generated
//! trips, with the live dashboard, a progress line and a report at the end.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use taxi_core::analysis::MergedResult;
use taxi_core::duration;
use taxi_core::generate::GeneratorConfig;
use taxi_core::input::ZoneCentroids;
use taxi_core::settings::DEFAULT_CHECKPOINT_INTERVAL;
use taxi_core::time::format_timestamp;

use super::CommandError;
use super::common::{EngineArgs, runtime};
use super::inputs::{S3InputArgs, resolve_inputs};
use crate::dashboard::{Dashboard, RunState};
use crate::local::{CheckpointOptions, LocalInput, LocalOptions, LocalRun, Outcome, Progress, run_local};

/// Flags of `taxi-worker local`.
#[derive(Debug, Args)]
pub struct LocalArgs {
    /// Inputs, read in order as one input (repeat the flag or list several): local files,
    /// s3://bucket/key, every object under s3://bucket/prefix/, or the objects whose keys match a
    /// pattern such as s3://bucket/prefix/*.parquet (`*`, `?` and `[...]`, within one folder); a
    /// prefix's or pattern's objects in key order. Each is JSON lines, NYC TLC trip CSV (plain,
    /// gzip or zstd) or Parquet.
    #[arg(long, value_name = "INPUT", num_args = 1.., conflicts_with = "generate")]
    pub input: Vec<String>,
    /// How to reach S3 inputs.
    #[command(flatten)]
    pub s3: S3InputArgs,
    /// Place the trips of CSV and Parquet inputs that name taxi zones (PULocationID,
    /// DOLocationID) at the zones' centroids, read from this CSV file: a header line, then one
    /// LocationID,lat,lon line per zone.
    #[arg(long, value_name = "FILE", requires = "input")]
    pub zone_centroids: Option<PathBuf>,
    /// Generate this many synthetic trips instead of reading a file (default: a day, ~400 000).
    #[arg(long)]
    pub generate: Option<u64>,
    /// Seed of the generated trips.
    #[arg(long, default_value_t = 42, requires = "generate")]
    pub seed: u64,
    /// Number of in-memory shards, partitioned by MD5 of trip_id as Kinesis does.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub shards: u32,
    /// Write the merged, final results here as JSON lines.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Write the run summary here as one JSON object.
    #[arg(long)]
    pub summary: Option<PathBuf>,
    /// Keep checkpoints in this directory (every --checkpoint-interval and on Ctrl-C).
    #[arg(long)]
    pub checkpoint_dir: Option<PathBuf>,
    /// Time between checkpoints.
    #[arg(long, default_value = duration::format(DEFAULT_CHECKPOINT_INTERVAL), value_parser = duration::parse)]
    pub checkpoint_interval: Duration,
    /// Continue from the latest checkpoint in --checkpoint-dir.
    #[arg(long, requires = "checkpoint_dir")]
    pub resume: bool,
    /// Stop after this many input records (with a checkpoint when --checkpoint-dir is set).
    #[arg(long)]
    pub stop_after: Option<u64>,
    /// Threads parsing input (default: the number of CPUs).
    #[arg(long)]
    pub parse_threads: Option<usize>,
    /// Print the progress line even when stderr is not a terminal.
    #[arg(long)]
    pub progress: bool,
    /// Serve the live dashboard at this address (port 0 picks a free one). Default: 127.0.0.1:8080
    /// when run from a terminal without --output or --summary.
    #[arg(long, value_name = "ADDR", conflicts_with = "no_dashboard")]
    pub dashboard: Option<SocketAddr>,
    /// Do not serve the dashboard.
    #[arg(long)]
    pub no_dashboard: bool,
    /// Replay event time at this many times wall-clock speed (6480: a day in ~13 s; 0: as fast as
    /// possible). Default: 6480 with the dashboard, as fast as possible without.
    #[arg(long, value_parser = parse_speedup)]
    pub speedup: Option<f64>,
    /// The analyses and event time.
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// The pace of a run with the dashboard: the reference architecture's, a day of trips in about 13 s.
const DASHBOARD_SPEEDUP: f64 = 6480.0;
/// Where the dashboard listens when it is on by default.
const DEFAULT_DASHBOARD_ADDR: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8080);

fn parse_speedup(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err(format!("invalid speedup {s:?}: expected a number ≥ 0 (0 runs as fast as possible)")),
    }
}

/// `taxi-worker local`: the whole pipeline in this process, then the report (and the dashboard
/// stays up after a completed run until Ctrl-C).
pub fn local(args: LocalArgs) -> Result<ExitCode, CommandError> {
    // Before the input: S3 objects are read through it.
    let runtime = runtime(true)?;
    let input = match (&args.input[..], args.generate) {
        ([], trips) => LocalInput::Generate(GeneratorConfig {
            trips: trips.unwrap_or(GeneratorConfig::default().trips),
            seed: args.seed,
            ..GeneratorConfig::default()
        }),
        (inputs, _) => LocalInput::Objects {
            objects: resolve_inputs(inputs, args.s3.settings(None), &runtime)?,
            zone_centroids: zone_centroids(args.zone_centroids.as_deref())?,
        },
    };
    let interactive = std::io::stderr().is_terminal();
    let show_progress = args.progress || interactive;
    // (address, whether the user chose it)
    let dashboard_addr = match (args.dashboard, args.no_dashboard) {
        (Some(addr), _) => Some((addr, true)),
        (None, true) => None,
        (None, false) => {
            (interactive && args.output.is_none() && args.summary.is_none()).then_some((DEFAULT_DASHBOARD_ADDR, false))
        }
    };
    let speedup = match args.speedup {
        Some(s) => Some(s).filter(|s| *s > 0.0),
        None => dashboard_addr.map(|_| DASHBOARD_SPEEDUP),
    };
    let options = LocalOptions {
        input,
        shards: args.shards,
        engine: args.engine.config(),
        checkpoint: args.checkpoint_dir.as_ref().map(|dir| CheckpointOptions {
            dir: dir.clone(),
            interval: args.checkpoint_interval,
            resume: args.resume,
        }),
        stop_after_records: args.stop_after,
        parse_threads: args
            .parse_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
        speedup,
    };
    options.engine.validate().map_err(|e| format!("invalid configuration: {e}"))?;

    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(if dashboard_addr.is_some() { Progress::keeping_results() } else { Progress::default() });
    // The dashboard and its URL, serving from here on.
    let dashboard = match dashboard_addr {
        Some((addr, chosen)) => {
            let dashboard = Arc::new(Dashboard::new(&options.engine, options.shards, speedup, progress.clone()));
            let url = runtime.block_on(start_dashboard(addr, chosen, dashboard.clone()))?;
            Some((dashboard, url))
        }
        None => None,
    };
    let run = runtime.block_on(async {
        let ctrl_c = {
            let stop = stop.clone();
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    eprintln!("\ninterrupted: stopping at the next record boundary");
                    stop.store(true, Ordering::Relaxed);
                }
            })
        };
        let ticker = show_progress.then(|| tokio::spawn(print_progress(progress.clone(), interactive)));
        let run = run_local(options, stop.clone(), progress.clone()).await;
        ctrl_c.abort();
        if let Some(t) = ticker {
            t.abort();
            if interactive {
                eprint!("\r\x1b[2K");
            }
        }
        run
    });
    // A failed run ends the process, and its dashboard with it.
    let run = run.map_err(|e| e.to_string())?;
    if let Some((d, _)) = &dashboard {
        d.set_state(match run.outcome {
            Outcome::Completed => RunState::Finished(run.summary.clone()),
            Outcome::Stopped { .. } => RunState::Stopped(run.summary.clone()),
        });
    }

    // A stopped run's results are incomplete: they are written by the run that completes.
    if let (Some(path), Outcome::Completed) = (&args.output, run.outcome) {
        write_results(path, &run.results).map_err(|e| format!("failed to write results to {}: {e}", path.display()))?;
    }
    if let Some(path) = &args.summary {
        let json = serde_json::to_vec_pretty(&run.summary).map_err(|e| e.to_string())?;
        std::fs::write(path, json).map_err(|e| format!("failed to write summary to {}: {e}", path.display()))?;
    }
    print_report(&run, &args);
    // A finished run's dashboard stays up to be explored; an interrupted run just ends.
    if let (Some((_, url)), Outcome::Completed) = (&dashboard, run.outcome) {
        eprintln!("\nthe run is complete; the dashboard stays up at {url} — Ctrl-C to quit");
        runtime.block_on(async {
            let _ = tokio::signal::ctrl_c().await;
        });
    }
    Ok(ExitCode::SUCCESS)
}

/// The zone centroid table of `--zone-centroids`, if given.
pub(super) fn zone_centroids(path: Option<&Path>) -> Result<Option<Arc<ZoneCentroids>>, CommandError> {
    path.map(|path| ZoneCentroids::load(path).map(Arc::new).map_err(|e| e.to_string())).transpose()
}

/// Binds the dashboard and serves it in the background; returns its URL. When the default port
/// is taken, any free port will do (the URL is printed); a chosen address must be honoured.
async fn start_dashboard(addr: SocketAddr, chosen: bool, dashboard: Arc<Dashboard>) -> Result<String, String> {
    let bound = match crate::dashboard::serve(addr, dashboard.clone()).await {
        Err(e) if !chosen && e.kind() == std::io::ErrorKind::AddrInUse => {
            let any_port = SocketAddr::new(addr.ip(), 0);
            eprintln!("{addr} is in use; serving the dashboard on another port (choose one with --dashboard ADDR)");
            crate::dashboard::serve(any_port, dashboard).await
        }
        other => other,
    };
    let (local, serve) = bound.map_err(|e| {
        format!(
            "failed to serve the dashboard on {addr}: {e} (choose another with --dashboard ADDR, or --no-dashboard)"
        )
    })?;
    tokio::spawn(serve);
    let url = format!("http://{local}/");
    eprintln!("dashboard: {url}");
    Ok(url)
}

fn write_results(path: &Path, results: &[MergedResult]) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for r in results {
        serde_json::to_writer(&mut out, r)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

async fn print_progress(progress: Arc<Progress>, interactive: bool) {
    let mut last = (Instant::now(), progress.records.load(Ordering::Relaxed));
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.tick().await;
    loop {
        tick.tick().await;
        let records = progress.records.load(Ordering::Relaxed);
        let rate = (records - last.1.min(records)) as f64 / last.0.elapsed().as_secs_f64();
        last = (Instant::now(), records);
        let watermark = progress.watermark.load(Ordering::Relaxed);
        let watermark = if watermark == i64::MIN { "-".to_owned() } else { format_timestamp(watermark) };
        let line = format!("{records} records  {rate:>10.0} records/s  watermark {watermark}");
        if interactive {
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
    }
}

/// What a person sees at the end of a run.
fn print_report(run: &LocalRun, args: &LocalArgs) {
    let s = &run.summary;
    let mut out = std::io::stdout().lock();
    let duplicates = if s.duplicates > 0 { format!(", {} duplicates", s.duplicates) } else { String::new() };
    let _ = writeln!(
        out,
        "{} records ({} trips, {} watermarks, {} invalid, {} outside NYC, {} late{duplicates}) in {:.2} s — {:.0} records/s",
        s.records, s.trips, s.watermarks, s.invalid, s.outside_region, s.late, s.elapsed_s, s.events_per_s
    );
    if let Outcome::Stopped { records } = run.outcome {
        let hint = if args.checkpoint_dir.is_some() { " — continue with the same flags and --resume" } else { "" };
        let _ = writeln!(out, "stopped after record {records}{hint}");
        return;
    }
    let _ = writeln!(out, "{} hot spots and {} airport results", s.hot_spots, s.airport_trips);
    let mut hot: Vec<&MergedResult> = run.results.iter().filter(|r| r.kind() == "hot_spot").collect();
    hot.sort_by_key(|r| match r {
        MergedResult::HotSpot { pickup_count, .. } => std::cmp::Reverse(*pickup_count),
        MergedResult::AirportTrip { .. } => std::cmp::Reverse(0),
    });
    if !hot.is_empty() {
        let _ = writeln!(out, "\nbusiest pickup cells (window, geohash, pickups):");
        for r in hot.iter().take(5) {
            if let MergedResult::HotSpot { window_start, geohash, pickup_count, .. } = r {
                let _ = writeln!(out, "  {}  {geohash}  {pickup_count}", format_timestamp(*window_start));
            }
        }
    }
    let mut by_airport: std::collections::BTreeMap<&str, (u64, f64)> = std::collections::BTreeMap::new();
    for r in &run.results {
        if let MergedResult::AirportTrip { airport, trip_count, sum_duration_min, .. } = r {
            let e = by_airport.entry(airport.as_str()).or_default();
            e.0 += trip_count;
            e.1 += sum_duration_min;
        }
    }
    if !by_airport.is_empty() {
        let _ = writeln!(out, "\naverage trip duration to the airports (over reported cells):");
        for (airport, (trips, minutes)) in by_airport {
            let _ = writeln!(out, "  {airport}: {:.1} min over {trips} trips", minutes / trips.max(1) as f64);
        }
    }
    if args.output.is_none() {
        let _ = writeln!(out, "\nwrite every result with --output results.jsonl (see --help for all flags)");
    }
}
