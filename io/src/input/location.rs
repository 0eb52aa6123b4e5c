//! [`InputLocation`]: what an input argument names. `s3://bucket/key` is one object,
//! `s3://bucket/prefix/` (or `s3://bucket`) every object under the prefix, a key with `*`, `?` or
//! `[...]` the objects whose keys match it ([`KeyGlob`]); anything else is a local path.

use std::path::PathBuf;

use super::S3InputError;
use super::glob::KeyGlob;
use crate::s3::{BUCKET_NAMES, is_bucket_name};

/// What an input argument names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InputLocation {
    /// A file on the local file system.
    Local(PathBuf),
    /// Objects of an S3 bucket.
    S3 {
        /// The bucket.
        bucket: String,
        /// Which of its objects.
        selection: KeySelection,
    },
}

/// Which objects of a bucket an S3 URI names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySelection {
    /// The object of this key.
    Key(String),
    /// Every object whose key starts with this prefix (empty: the whole bucket).
    Prefix(String),
    /// The objects whose keys match the pattern; all start with its literal prefix.
    Glob {
        /// The pattern as given.
        pattern: String,
        /// The pattern compiled.
        glob: KeyGlob,
    },
}

impl KeySelection {
    /// The prefix to list: empty for a single key, the prefix, or the pattern's literal prefix.
    pub fn listed_prefix(&self) -> &str {
        match self {
            KeySelection::Key(_) => "",
            KeySelection::Prefix(prefix) => prefix,
            KeySelection::Glob { pattern, .. } => KeyGlob::literal_prefix(pattern),
        }
    }
}

impl InputLocation {
    /// Parses an input argument: `s3://…`, `file:///path`, or a local path.
    pub fn parse(arg: &str) -> Result<InputLocation, S3InputError> {
        let invalid = |reason: &str| S3InputError::InvalidUri { uri: arg.to_owned(), reason: reason.to_owned() };
        if arg.is_empty() {
            return Err(invalid("it is empty"));
        }
        let Some(rest) = arg.strip_prefix("s3://") else {
            if let Some(path) = arg.strip_prefix("file://") {
                return Ok(InputLocation::Local(PathBuf::from(path)));
            }
            if arg.contains("://") {
                return Err(invalid("unknown scheme: inputs are s3:// URIs or local paths"));
            }
            return Ok(InputLocation::Local(PathBuf::from(arg)));
        };
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(invalid("no bucket name"));
        }
        if !is_bucket_name(bucket) {
            return Err(invalid(BUCKET_NAMES));
        }
        let selection = if KeyGlob::is_pattern(key) {
            let glob = KeyGlob::new(key).map_err(|reason| invalid(&reason))?;
            KeySelection::Glob { pattern: key.to_owned(), glob }
        } else if key.is_empty() || key.ends_with('/') {
            KeySelection::Prefix(key.to_owned())
        } else {
            KeySelection::Key(key.to_owned())
        };
        Ok(InputLocation::S3 { bucket: bucket.to_owned(), selection })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(arg: &str) -> (String, KeySelection) {
        match InputLocation::parse(arg) {
            Ok(InputLocation::S3 { bucket, selection }) => (bucket, selection),
            other => panic!("{arg}: {other:?}"),
        }
    }

    #[test]
    fn one_key_a_prefix_or_a_pattern() {
        assert_eq!(
            s3("s3://trips/2016/yellow.csv.gz"),
            ("trips".into(), KeySelection::Key("2016/yellow.csv.gz".into()))
        );
        assert_eq!(s3("s3://trips/2016/"), ("trips".into(), KeySelection::Prefix("2016/".into())));
        assert_eq!(s3("s3://trips"), ("trips".into(), KeySelection::Prefix(String::new())));
        assert_eq!(s3("s3://trips/"), ("trips".into(), KeySelection::Prefix(String::new())));
        let (bucket, selection) = s3("s3://trips/2016/yellow_2016-0[1-3]*.csv.gz");
        assert_eq!(bucket, "trips");
        assert_eq!(selection.listed_prefix(), "2016/yellow_2016-0");
        let KeySelection::Glob { glob, .. } = selection else { panic!("not a pattern") };
        assert!(glob.matches("2016/yellow_2016-02.csv.gz"));
    }

    #[test]
    fn anything_else_is_a_local_path() {
        for (arg, path) in [
            ("trips.json", "trips.json"),
            ("/data/trips.csv.gz", "/data/trips.csv.gz"),
            ("file:///d/t.json", "/d/t.json"),
        ] {
            assert_eq!(InputLocation::parse(arg).expect(arg), InputLocation::Local(PathBuf::from(path)));
        }
    }

    #[test]
    fn bad_arguments_say_what_is_wrong_and_what_is_expected() {
        for (arg, reason) in [
            ("", "empty"),
            ("s3://", "no bucket"),
            ("s3:///key", "no bucket"),
            ("s3://Trips/key", "bucket names"),
            ("s3://trips/a[b", "not closed"),
            ("gs://trips/key", "unknown scheme"),
        ] {
            let error = InputLocation::parse(arg).expect_err(arg);
            let text = error.to_string();
            assert!(matches!(error, S3InputError::InvalidUri { .. }), "{arg}: {error:?}");
            assert!(text.contains(reason) && text.contains("expected s3://bucket/key"), "{arg}: {text}");
        }
    }
}
