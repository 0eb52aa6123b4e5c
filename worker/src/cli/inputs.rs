//! The `--input` arguments of `local` and `replay`: local files and S3 objects (`s3://bucket/key`,
//! every object under `s3://bucket/prefix/`, or the keys matching `s3://bucket/prefix/*.parquet`),
//! resolved into the objects read in order, and the flags that say how to reach S3.

use std::sync::Arc;

use clap::Args;
use taxi_core::input::InputObject;
use taxi_io::input::{InputLocation, InputResolver};
use taxi_io::store::S3Settings;

use super::CommandError;

/// How to reach the S3 objects of `--input s3://…` (the flags of `run`'s checkpoint store).
#[derive(Debug, Args)]
pub struct S3InputArgs {
    /// S3 endpoint for S3-compatible servers (default: AWS).
    #[arg(long, env = "TAXI_S3_ENDPOINT_URL")]
    pub s3_endpoint_url: Option<String>,
    /// Path-style S3 addressing (http://host/bucket/key), as most S3-compatible servers need.
    #[arg(long, env = "TAXI_S3_FORCE_PATH_STYLE")]
    pub s3_force_path_style: bool,
}

impl S3InputArgs {
    /// The S3 settings of these flags; `region` signs the requests (`None`: the AWS chain's).
    pub fn settings(&self, region: Option<String>) -> S3Settings {
        S3Settings { endpoint_url: self.s3_endpoint_url.clone(), force_path_style: self.s3_force_path_style, region }
    }
}

/// The objects `inputs` name, in order: a local file must exist; an S3 URI is listed or looked up
/// now. The S3 objects read through `runtime`, which must be a multi-thread runtime that outlives
/// their reads.
pub fn resolve_inputs(
    inputs: &[String],
    s3: S3Settings,
    runtime: &tokio::runtime::Runtime,
) -> Result<Vec<Arc<dyn InputObject>>, CommandError> {
    for input in inputs {
        if let Ok(InputLocation::Local(path)) = InputLocation::parse(input)
            && !path.exists()
        {
            return Err(format!("input file {} does not exist", path.display()));
        }
    }
    let resolver = InputResolver::new(s3, runtime.handle().clone());
    runtime.block_on(resolver.resolve_all(inputs)).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_files_resolve_without_s3_and_must_exist() {
        let runtime = super::super::common::runtime(true).expect("runtime");
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("trips.jsonl");
        std::fs::write(&file, "{}\n").expect("write");
        let inputs = [file.display().to_string(), file.display().to_string()];
        let objects = resolve_inputs(&inputs, S3Settings::default(), &runtime).expect("resolve");
        assert_eq!(objects.len(), 2);
        assert_eq!(objects[0].origin(), format!("input file {}", file.display()));
        let missing = [dir.path().join("absent.jsonl").display().to_string()];
        let error = resolve_inputs(&missing, S3Settings::default(), &runtime).expect_err("a missing file");
        assert!(error.contains("absent.jsonl") && error.contains("does not exist"), "{error}");
        let bad = ["gs://bucket/key".to_owned()];
        let error = resolve_inputs(&bad, S3Settings::default(), &runtime).expect_err("an unknown scheme");
        assert!(error.contains("unknown scheme"), "{error}");
    }
}
