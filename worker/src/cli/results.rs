//! `taxi-worker results`: the merged view of a pipeline's partial documents, read from a file
//! sink or from OpenSearch.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use clap::Args;
use taxi_core::document::merge_documents;
use taxi_io::sink::file::read_documents;

use super::CommandError;
use super::common::{EngineArgs, OpenSearchArgs, runtime};

/// Flags of `taxi-worker results`.
#[derive(Debug, Args)]
pub struct ResultsArgs {
    /// Partial documents written by `run --sink file://…`.
    #[arg(long, required_unless_present = "opensearch_url", conflicts_with = "opensearch_url")]
    pub sink: Option<String>,
    /// Read the partial documents from this OpenSearch cluster instead.
    #[arg(long = "opensearch", value_name = "URL")]
    pub opensearch_url: Option<String>,
    /// Only this pipeline's documents (required with --opensearch): `<namespace>/<name>` for a
    /// pipeline of the operator, its name otherwise.
    #[arg(long)]
    pub pipeline: Option<String>,
    /// How to reach OpenSearch, with --opensearch.
    #[command(flatten)]
    pub opensearch: OpenSearchArgs,
    /// The analyses the documents were computed with (the merge applies their thresholds).
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// `taxi-worker results`: prints the merged results as JSON lines on stdout.
pub fn results(args: &ResultsArgs) -> Result<ExitCode, CommandError> {
    let engine = args.engine.config();
    let merged = match (&args.sink, &args.opensearch_url) {
        (_, Some(url)) => {
            let pipeline = args.pipeline.as_deref().ok_or("--opensearch needs --pipeline")?;
            let settings = args.opensearch.settings(url)?;
            let runtime = runtime(false)?;
            runtime
                .block_on(taxi_io::sink::opensearch::merged_results(&settings, pipeline, &engine))
                .map_err(|e| e.to_string())?
        }
        (Some(sink), None) => {
            let path = sink.strip_prefix("file://").unwrap_or(sink);
            let docs = read_documents(Path::new(path)).map_err(|e| e.to_string())?;
            let docs = docs.into_iter().filter(|d| args.pipeline.as_ref().is_none_or(|p| &d.pipeline == p));
            merge_documents(&engine, docs)
        }
        (None, None) => return Err("give --sink file://… or --opensearch URL".to_owned()),
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for r in &merged {
        serde_json::to_writer(&mut out, r).map_err(|e| e.to_string())?;
        out.write_all(b"\n").map_err(|e| e.to_string())?;
    }
    out.flush().map_err(|e| e.to_string())?;
    Ok(ExitCode::SUCCESS)
}
