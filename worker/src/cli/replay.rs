//! `taxi-worker replay`: the producer. Streams files of trips into a Kinesis stream, paced by
//! event time, with watermark events to every open shard and a progress line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use taxi_core::duration;
use taxi_core::time::format_timestamp;

use super::CommandError;
use super::common::{KinesisArgs, runtime};
use super::inputs::{S3InputArgs, resolve_inputs};
use super::local::zone_centroids;
use crate::replay::{ReplayOptions, ReplayProgress};

/// Flags of `taxi-worker replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Inputs, read in order as one input (repeat the flag or list several): local files,
    /// s3://bucket/key, every object under s3://bucket/prefix/, or the objects whose keys match a
    /// pattern such as s3://bucket/prefix/*.parquet (`*`, `?` and `[...]`, within one folder); a
    /// prefix's or pattern's objects in key order. Each is JSON lines, NYC TLC trip CSV (plain,
    /// gzip or zstd) or Parquet.
    #[arg(long, value_name = "INPUT", num_args = 1.., required = true)]
    pub input: Vec<String>,
    /// How to reach S3 inputs (the region is --region's).
    #[command(flatten)]
    pub s3: S3InputArgs,
    /// Place the trips of CSV and Parquet inputs that name taxi zones (PULocationID,
    /// DOLocationID) at the zones' centroids, read from this CSV file: a header line, then one
    /// LocationID,lat,lon line per zone.
    #[arg(long, value_name = "FILE")]
    pub zone_centroids: Option<PathBuf>,
    /// The stream to write to.
    #[command(flatten)]
    pub kinesis: KinesisArgs,
    /// Event time runs this many times faster than wall time (6480: a day in ~13 s); 0 = as fast
    /// as possible.
    #[arg(long, default_value_t = 6480.0)]
    pub speedup: f64,
    /// Pack records into KPL aggregates (one per shard).
    #[arg(long)]
    pub aggregate: bool,
    /// Time between watermark events sent to every open shard.
    #[arg(long, default_value = "5s", value_parser = duration::parse)]
    pub watermark_interval: Duration,
    /// Most PutRecords calls in flight.
    #[arg(long, default_value_t = 8)]
    pub max_in_flight: usize,
    /// Create the stream with this many shards when it does not exist.
    #[arg(long)]
    pub create_stream: Option<u32>,
    /// Print the progress line even when stderr is not a terminal.
    #[arg(long)]
    pub progress: bool,
    /// Write the replay summary here as JSON.
    #[arg(long)]
    pub summary: Option<PathBuf>,
}

/// `taxi-worker replay`: streams the input into Kinesis and prints the summary.
pub fn replay(args: &ReplayArgs) -> Result<ExitCode, CommandError> {
    // Before the input: S3 objects are read through it.
    let runtime = runtime(true)?;
    let objects = resolve_inputs(&args.input, args.s3.settings(args.kinesis.region.clone()), &runtime)?;
    let mut options = ReplayOptions::over(objects, &args.kinesis.stream);
    options.zone_centroids = zone_centroids(args.zone_centroids.as_deref())?;
    options.speedup = args.speedup;
    options.aggregate = args.aggregate;
    options.watermark_interval = args.watermark_interval;
    options.max_in_flight = args.max_in_flight;
    options.create_stream = args.create_stream;
    options.validate().map_err(|e| e.to_string())?;
    let interactive = std::io::stderr().is_terminal();
    let summary = runtime.block_on(async {
        let kinesis = Arc::new(args.kinesis.connect().await);
        let progress = Arc::new(ReplayProgress::new());
        let ticker = (args.progress || interactive).then(|| {
            let progress = progress.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let mut tick = tokio::time::interval(Duration::from_millis(500));
                loop {
                    tick.tick().await;
                    let p = progress.snapshot();
                    let rate = p.acknowledged as f64 / started.elapsed().as_secs_f64().max(0.001);
                    let at = p.event_time.map_or_else(|| "-".to_owned(), format_timestamp);
                    let line = format!(
                        "{} sent  {} stored  {rate:>8.0}/s  event time {at}  retried {}  throttled {}",
                        p.sent, p.acknowledged, p.retried, p.throttled
                    );
                    if interactive { eprint!("\r\x1b[2K{line}") } else { eprintln!("{line}") }
                }
            })
        });
        let summary = crate::replay::replay(kinesis, &options, &progress).await;
        if let Some(t) = ticker {
            t.abort();
            if interactive {
                eprint!("\r\x1b[2K");
            }
        }
        summary.map_err(|e| e.to_string())
    })?;
    println!(
        "replayed {} trips ({} invalid lines, {} watermarks) into {} in {:.1} s — {:.0} records/s; retried {}, throttled calls {}",
        summary.trips,
        summary.invalid,
        summary.watermarks_sent,
        args.kinesis.stream,
        summary.elapsed.as_secs_f64(),
        summary.records_sent as f64 / summary.elapsed.as_secs_f64().max(0.001),
        summary.retried_entries,
        summary.throttled_calls
    );
    if let Some(path) = &args.summary {
        let json = serde_json::to_vec_pretty(&summary).map_err(|e| e.to_string())?;
        std::fs::write(path, json).map_err(|e| format!("failed to write summary to {}: {e}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
