//! The `taxi-worker` command line: one module per command, each with its flags and what it does.
//! `main.rs` parses and dispatches; the work itself lives in the library modules these call.
//!
//! - [`local`]: the whole pipeline in this process, with the live dashboard;
//! - [`generate`]: synthetic trips as JSON lines;
//! - [`run`]: the pod command, reading a stream's shards;
//! - [`results`]: the merged view of a pipeline's documents;
//! - [`replay`]: the producer;
//! - [`dead_letter`]: inspecting and purging refused documents;
//! - [`common`]: the flag groups several commands share (Kinesis, OpenSearch, the engine);
//! - [`inputs`]: the `--input` files and S3 objects of `local` and `replay`.

use clap::{Parser, Subcommand};

pub mod common;
pub mod dead_letter;
pub mod generate;
pub mod inputs;
pub mod local;
pub mod replay;
pub mod results;
pub mod run;

/// What a command reports when it fails: one line for a person, printed as `taxi-worker: …`.
pub type CommandError = String;

/// Command line of the worker binary.
#[derive(Debug, Parser)]
#[command(name = "taxi-worker", version, about = "TaxiPipeline worker: event-time NYC taxi analytics")]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands of `taxi-worker`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole pipeline in this process: read (or generate) trips, partition them over
    /// in-memory shards, compute the windowed analyses and merge the results.
    ///
    /// With no arguments it generates a realistic synthetic day of NYC trips and runs on it.
    Local(local::LocalArgs),
    /// Write synthetic NYC taxi trips as JSON lines (the event format `replay` and `local` read).
    Generate(generate::GenerateArgs),
    /// Read the shards of a Kinesis stream (the pod command; also runs outside Kubernetes).
    Run(Box<run::RunArgs>),
    /// Print the merged results of a pipeline's partial documents (the local --output format).
    Results(results::ResultsArgs),
    /// Replay trips into a Kinesis stream (the producer), paced by event time.
    Replay(replay::ReplayArgs),
    /// Inspect or purge the documents the sink refused, kept under the checkpoint location until
    /// the worker re-delivers them.
    DeadLetter(dead_letter::DeadLetterArgs),
}

/// Logs go to stderr, at `warn` unless `RUST_LOG` says otherwise.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}
