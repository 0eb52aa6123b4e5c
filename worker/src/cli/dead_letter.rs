//! `taxi-worker dead-letter`: lists or purges the documents the sink refused, which wait under
//! the checkpoint location until the worker re-delivers them.

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::CommandError;
use super::common::runtime;

/// Flags of `taxi-worker dead-letter`.
#[derive(Debug, Args)]
pub struct DeadLetterArgs {
    /// List or purge.
    #[command(subcommand)]
    pub action: DeadLetterAction,
    /// The pipeline whose dead letters these are: `<namespace>/<name>` for a pipeline of the
    /// operator, its name otherwise.
    #[arg(long, global = true, env = "TAXI_PIPELINE", default_value = "taxi")]
    pub pipeline: String,
    /// Checkpoint store: s3://bucket/prefix, file:///dir or a directory.
    #[arg(long, global = true, env = "TAXI_CHECKPOINT")]
    pub checkpoint: Option<String>,
    /// S3 endpoint for S3-compatible servers (default: AWS).
    #[arg(long, global = true, env = "TAXI_S3_ENDPOINT_URL")]
    pub s3_endpoint_url: Option<String>,
    /// Path-style S3 addressing (http://host/bucket/key), as most S3-compatible servers need.
    #[arg(long, global = true, env = "TAXI_S3_FORCE_PATH_STYLE")]
    pub s3_force_path_style: bool,
}

/// What `dead-letter` does.
#[derive(Debug, Subcommand)]
pub enum DeadLetterAction {
    /// Print every dead letter as a JSON line: status, error type, reason and the document.
    List,
    /// Delete every dead letter (they are lost for good); needs --yes.
    Purge {
        /// Confirm that the refused documents are to be discarded.
        #[arg(long)]
        yes: bool,
    },
}

/// `taxi-worker dead-letter list|purge`.
pub fn dead_letter(args: &DeadLetterArgs) -> Result<ExitCode, CommandError> {
    let uri = args.checkpoint.as_deref().ok_or("give the pipeline's checkpoint store: --checkpoint URI")?;
    if let DeadLetterAction::Purge { yes: false } = args.action {
        return Err("purge discards the refused documents for good: confirm with --yes".to_owned());
    }
    let s3 = taxi_io::store::S3Settings {
        endpoint_url: args.s3_endpoint_url.clone(),
        force_path_style: args.s3_force_path_style,
        region: None,
    };
    let runtime = runtime(false)?;
    runtime.block_on(async {
        let store = taxi_io::store::CheckpointStore::from_uri(uri, &s3, 0).await.map_err(|e| e.to_string())?;
        let gauge =
            prometheus::IntGauge::new("taxi_sink_dead_letters", "Dead letters listed").map_err(|e| e.to_string())?;
        let letters = taxi_io::sink::dead_letter::DeadLetterStore::new(store, &args.pipeline, gauge);
        let keys = letters.list().await.map_err(|e| e.to_string())?;
        let mut documents = 0;
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        for key in &keys {
            let stored = letters.read(key).await.map_err(|e| e.to_string())?;
            documents += stored.len();
            match args.action {
                DeadLetterAction::List => {
                    for letter in &stored {
                        serde_json::to_writer(&mut out, letter).map_err(|e| e.to_string())?;
                        out.write_all(b"\n").map_err(|e| e.to_string())?;
                    }
                }
                DeadLetterAction::Purge { .. } => letters.delete(key).await.map_err(|e| e.to_string())?,
            }
        }
        out.flush().map_err(|e| e.to_string())?;
        let verb = if matches!(args.action, DeadLetterAction::List) { "listed" } else { "purged" };
        eprintln!("{verb} {documents} dead letters in {} objects", keys.len());
        Ok(ExitCode::SUCCESS)
    })
}
