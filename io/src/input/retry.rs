//! [`ReadRetry`]: how S3 input reads wait out transient failures, and when they give up.

use std::time::Duration;

use crate::retry::{BackoffPolicy, Jitter};

/// Attempts and back-off of the requests that read S3 inputs. A streaming read counts its
/// failures in a row without progress: bytes received start the count over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadRetry {
    /// Failed attempts in a row after which a read gives up (the first attempt included).
    pub attempts: u32,
    /// The waits between attempts.
    pub backoff: BackoffPolicy,
}

impl Default for ReadRetry {
    /// Six attempts, 0.2 s doubling up to 5 s in between: about 6 s of failures in a row.
    fn default() -> ReadRetry {
        ReadRetry {
            attempts: 6,
            backoff: BackoffPolicy::new(Duration::from_millis(200), Duration::from_secs(5), Jitter::Equal),
        }
    }
}
