//! `taxi-worker generate`: synthetic NYC taxi trips as JSON lines, reproducible from a seed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use taxi_core::config::to_millis;
use taxi_core::duration;
use taxi_core::generate::{GeneratorConfig, write_json_lines};
use taxi_core::time::parse_timestamp;

use super::CommandError;

/// Flags of `taxi-worker generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Output file (`-` for stdout).
    #[arg(long, short, default_value = "trips.jsonl")]
    pub output: PathBuf,
    /// Number of trips.
    #[arg(long, default_value_t = GeneratorConfig::default().trips)]
    pub trips: u64,
    /// Random seed: the same seed gives the same file.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Start of the generated day (ISO-8601).
    #[arg(long, default_value = "2016-01-01T00:00:00Z", value_parser = parse_start)]
    pub start: i64,
    /// Maximum disorder of dropoff times (keep it below the engine's --max-out-of-orderness).
    #[arg(long, default_value = "30s", value_parser = duration::parse)]
    pub max_disorder: Duration,
    /// Also write a watermark event every this many trips.
    #[arg(long)]
    pub watermark_every: Option<u64>,
    /// Fraction of invalid lines mixed in (0–1), to exercise error handling.
    #[arg(long, default_value_t = 0.0)]
    pub invalid_ratio: f64,
}

fn parse_start(s: &str) -> Result<i64, String> {
    parse_timestamp(s.as_bytes())
        .ok_or_else(|| format!("invalid timestamp {s:?}: expected ISO-8601 like 2016-01-01T00:00:00Z"))
}

/// `taxi-worker generate`: writes the synthetic trips and says what it wrote.
pub fn generate(args: &GenerateArgs) -> Result<ExitCode, CommandError> {
    if !(0.0..=1.0).contains(&args.invalid_ratio) {
        return Err(format!("--invalid-ratio must be between 0 and 1, got {}", args.invalid_ratio));
    }
    let config = GeneratorConfig {
        trips: args.trips,
        seed: args.seed,
        start: args.start,
        max_disorder_ms: to_millis(args.max_disorder),
        watermark_every: args.watermark_every,
        invalid_ratio: args.invalid_ratio,
    };
    let started = Instant::now();
    let stats = if args.output == Path::new("-") {
        write_json_lines(&config, std::io::stdout().lock())
    } else {
        let file = std::fs::File::create(&args.output)
            .map_err(|e| format!("failed to create {}: {e}", args.output.display()))?;
        write_json_lines(&config, file)
    }
    .map_err(|e| format!("failed to write generated trips: {e}"))?;
    if args.output != Path::new("-") {
        eprintln!(
            "wrote {} trips, {} watermarks, {} invalid lines ({:.1} MB) to {} in {:.1} s",
            stats.trips,
            stats.watermarks,
            stats.invalid,
            stats.bytes as f64 / 1e6,
            args.output.display(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}
