//! `spec.archive`: where the workers archive the raw trips they read, as Parquet files in S3, and
//! when a file closes. The CEL rules here and [`ArchiveSpec::problem`] refuse the same values with
//! the same messages: the API server checks new objects, the operator checks again objects created
//! before the rules.

use std::time::Duration;

use kube::KubeSchema;
use serde::{Deserialize, Serialize};
use taxi_core::{duration, settings};

use super::DURATION_PATTERN;

/// The raw-trip archive.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveSpec {
    /// S3 location of the archive, `s3://bucket` or `s3://bucket/prefix`. Required. Every worker
    /// writes the trips of the shards it reads as Parquet files under
    /// `<prefix>/dt=YYYY-MM-DD/hour=HH/`, partitioned by the hour of the trips' event time (dropoff time, UTC),
    /// which Athena, Spark and DuckDB read as Hive partitions. The S3 requests use
    /// `checkpoint.s3EndpointUrl` and `checkpoint.s3ForcePathStyle`. The operator never deletes
    /// archive files, not even with `checkpoint.cleanupOnDelete`, so keep the archive outside
    /// the pipeline's checkpoints (`<checkpoint.uri>/<namespace>/<name>/`).
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new(URI_RULE).message(URI_MESSAGE))]
    pub uri: String,
    /// Size in bytes at which a worker closes an archive file and uploads it, 65536 (64 KiB) to
    /// 1073741824 (1 GiB). Default 67108864 (64 MiB): large enough that query engines read few
    /// files, small enough for a worker to hold the open file in memory.
    #[serde(default = "default_max_file_bytes")]
    #[x_kube(validation = Rule::new(MAX_FILE_BYTES_RULE).message(MAX_FILE_BYTES_MESSAGE))]
    pub max_file_bytes: i64,
    /// Age at which a worker closes an archive file and uploads it even if it is smaller than
    /// `maxFileBytes`, as a Go duration from `1s` to `1h`. Default `5m`: the archive lags the
    /// stream by at most this much, and a quiet stream still gets its files.
    #[serde(default = "default_max_file_age")]
    #[schemars(length(max = 64), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new(MAX_FILE_AGE_RULE).message(MAX_FILE_AGE_MESSAGE))]
    pub max_file_age: String,
}

/// An S3 URI with a bucket name of S3's alphabet and length, like `checkpoint.uri`'s rule.
const URI_RULE: &str = "self.matches('^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$')";
/// Why.
const URI_MESSAGE: &str = "archive.uri must be an S3 URI with a bucket, like s3://bucket/prefix";
/// [`settings::ARCHIVE_FILE_BYTES_RANGE`] as a CEL rule (a test checks the two agree).
const MAX_FILE_BYTES_RULE: &str = "self >= 65536 && self <= 1073741824";
/// Why, with the bounds.
const MAX_FILE_BYTES_MESSAGE: &str = "archive.maxFileBytes must be between 65536 (64 KiB) and 1073741824 (1 GiB)";
/// [`settings::ARCHIVE_FILE_AGE_MS_RANGE`] as a CEL rule (a test checks the two agree).
const MAX_FILE_AGE_RULE: &str = "duration(self) >= duration('1s') && duration(self) <= duration('1h')";
/// Why, with the bounds.
const MAX_FILE_AGE_MESSAGE: &str = "archive.maxFileAge must be a duration between 1s and 1h";

/// A field of `spec.archive` that the CEL rules refuse, with their message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArchiveProblem {
    /// The field's path: `spec.archive.uri`, `spec.archive.maxFileBytes` or `spec.archive.maxFileAge`.
    pub field: &'static str,
    /// The CEL rule's message, which starts with the field's path below `spec.`.
    pub message: &'static str,
}

impl ArchiveProblem {
    /// The message without the field's path it starts with, for a report that names the field.
    pub fn reason(&self) -> &'static str {
        let path = self.field.strip_prefix("spec.").unwrap_or(self.field);
        self.message.strip_prefix(path).map_or(self.message, str::trim_start)
    }
}

impl ArchiveSpec {
    /// The first field the CEL rules refuse, in their words, or `None`. A `maxFileAge` that is no
    /// Go duration at all is left to the caller, which reports the parse error.
    pub fn problem(&self) -> Option<ArchiveProblem> {
        if !is_s3_uri_with_bucket(&self.uri) {
            return Some(ArchiveProblem { field: "spec.archive.uri", message: URI_MESSAGE });
        }
        let bytes_ok =
            u64::try_from(self.max_file_bytes).is_ok_and(|n| settings::ARCHIVE_FILE_BYTES_RANGE.contains(&n));
        if !bytes_ok {
            return Some(ArchiveProblem { field: "spec.archive.maxFileBytes", message: MAX_FILE_BYTES_MESSAGE });
        }
        let age_ok = duration::parse(&self.max_file_age).map_or(true, file_age_in_bounds);
        if !age_ok {
            return Some(ArchiveProblem { field: "spec.archive.maxFileAge", message: MAX_FILE_AGE_MESSAGE });
        }
        None
    }
}

/// Whether `age` lies in [`settings::ARCHIVE_FILE_AGE_MS_RANGE`], compared at full precision as the
/// CEL rule compares durations (`1h` and 1 ns is too long, though it is `1h` in milliseconds).
fn file_age_in_bounds(age: Duration) -> bool {
    let range = &settings::ARCHIVE_FILE_AGE_MS_RANGE;
    age >= Duration::from_millis(*range.start()) && age <= Duration::from_millis(*range.end())
}

/// [`URI_RULE`] in Rust: `s3://`, a bucket of 3 to 63 lower-case letters, digits, `.` and `-`
/// that starts and ends with a letter or digit, then nothing or `/` and a path without a line
/// break (RE2's `.` matches any character but `\n`).
fn is_s3_uri_with_bucket(uri: &str) -> bool {
    let Some(rest) = uri.strip_prefix("s3://") else { return false };
    let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
    let alphanumeric = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    (3..=63).contains(&bucket.len())
        && bucket.starts_with(alphanumeric)
        && bucket.ends_with(alphanumeric)
        && bucket.chars().all(|c| alphanumeric(c) || matches!(c, '.' | '-'))
        && !path.contains('\n')
}

fn default_max_file_bytes() -> i64 {
    i64::try_from(settings::DEFAULT_ARCHIVE_MAX_FILE_BYTES).unwrap_or(i64::MAX)
}
fn default_max_file_age() -> String {
    duration::format(settings::DEFAULT_ARCHIVE_MAX_FILE_AGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(uri: &str, max_file_bytes: i64, max_file_age: &str) -> ArchiveSpec {
        ArchiveSpec { uri: uri.to_owned(), max_file_bytes, max_file_age: max_file_age.to_owned() }
    }

    #[test]
    fn the_rules_state_the_bounds_of_the_worker_settings() {
        let (lo, hi) = (settings::ARCHIVE_FILE_BYTES_RANGE.start(), settings::ARCHIVE_FILE_BYTES_RANGE.end());
        assert_eq!(MAX_FILE_BYTES_RULE, format!("self >= {lo} && self <= {hi}"));
        assert!(MAX_FILE_BYTES_MESSAGE.contains(&format!("between {lo} (64 KiB) and {hi} (1 GiB)")));
        let (lo, hi) = (settings::ARCHIVE_FILE_AGE_MS_RANGE.start(), settings::ARCHIVE_FILE_AGE_MS_RANGE.end());
        let (lo, hi) = (duration::format(Duration::from_millis(*lo)), duration::format(Duration::from_millis(*hi)));
        assert_eq!(
            MAX_FILE_AGE_RULE,
            format!("duration(self) >= duration('{lo}') && duration(self) <= duration('{hi}')")
        );
        assert!(MAX_FILE_AGE_MESSAGE.ends_with(&format!("between {lo} and {hi}")));
    }

    #[test]
    fn the_defaults_are_the_workers_and_within_the_bounds() {
        let defaulted: ArchiveSpec = serde_json::from_str(r#"{"uri": "s3://archive-bucket"}"#).expect("an archive");
        assert_eq!(defaulted, spec("s3://archive-bucket", 64 * 1024 * 1024, "5m"));
        assert_eq!(defaulted.problem(), None);
    }

    #[test]
    fn uris_are_checked_as_the_rule_does() {
        for ok in ["s3://abc", "s3://archive-bucket/trips/", "s3://a.b-c/x/y", &format!("s3://{}", "b".repeat(63))] {
            assert_eq!(spec(ok, 65536, "1s").problem(), None, "{ok}");
        }
        let too_long = format!("s3://{}", "b".repeat(64));
        for bad in
            ["", "s3://", "s3:///trips", "s3://ab", "s3://Archive", "s3://-archive", "s3://archive-", "s3://a_b/c"]
                .into_iter()
                .chain(["gs://archive/trips", "/var/archive", "s3://archive/a\nb", too_long.as_str()])
        {
            let problem = ArchiveProblem { field: "spec.archive.uri", message: URI_MESSAGE };
            assert_eq!(spec(bad, 65536, "1s").problem(), Some(problem), "{bad:?}");
        }
    }

    #[test]
    fn sizes_and_ages_are_checked_at_and_beyond_their_bounds() {
        let uri = "s3://archive-bucket/trips";
        let bytes = ArchiveProblem { field: "spec.archive.maxFileBytes", message: MAX_FILE_BYTES_MESSAGE };
        let age = ArchiveProblem { field: "spec.archive.maxFileAge", message: MAX_FILE_AGE_MESSAGE };
        for ok in [65536, 1 << 30] {
            assert_eq!(spec(uri, ok, "5m").problem(), None, "{ok}");
        }
        for bad in [65535, (1 << 30) + 1, 0, -1] {
            assert_eq!(spec(uri, bad, "5m").problem(), Some(bytes), "{bad}");
        }
        assert_eq!(bytes.reason(), "must be between 65536 (64 KiB) and 1073741824 (1 GiB)");
        for ok in ["1s", "1000ms", "1h", "60m", "59m59.999s"] {
            assert_eq!(spec(uri, 65536, ok).problem(), None, "{ok}");
        }
        for bad in ["999ms", "0s", "1h0m0.000000001s", "2h"] {
            assert_eq!(spec(uri, 65536, bad).problem(), Some(age), "{bad}");
        }
        // Not a duration: the caller's parse reports it.
        assert_eq!(spec(uri, 65536, "5 minutes").problem(), None);
    }
}
