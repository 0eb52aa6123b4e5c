//! The live counters of a running replay ([`ReplayProgress`]), for the progress line, and their
//! copy at one instant ([`ProgressSnapshot`]).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use taxi_core::event::Millis;

/// Live counters of a running replay, for a progress line; every field is updated as the replay goes.
#[derive(Debug)]
pub struct ReplayProgress {
    /// User records (trips, invalid lines, watermarks) handed to `PutRecords` for the first time.
    pub sent: AtomicU64,
    /// User records Kinesis has stored.
    pub acknowledged: AtomicU64,
    /// Entries sent again after a failure.
    pub retried: AtomicU64,
    /// `PutRecords` calls that were throttled (as a whole or for some entries).
    pub throttled: AtomicU64,
    /// Largest event time read so far ([`i64::MIN`] before the first trip).
    pub event_time: AtomicI64,
    /// Value of the last watermark sent ([`i64::MIN`] before the first).
    pub watermark: AtomicI64,
}

impl Default for ReplayProgress {
    fn default() -> Self {
        ReplayProgress {
            sent: AtomicU64::new(0),
            acknowledged: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            event_time: AtomicI64::new(i64::MIN),
            watermark: AtomicI64::new(i64::MIN),
        }
    }
}

impl ReplayProgress {
    /// Counters at zero.
    pub fn new() -> ReplayProgress {
        ReplayProgress::default()
    }

    /// A consistent-enough copy of the counters.
    pub fn snapshot(&self) -> ProgressSnapshot {
        let time = |a: &AtomicI64| Some(a.load(Ordering::Relaxed)).filter(|&t| t != i64::MIN);
        ProgressSnapshot {
            sent: self.sent.load(Ordering::Relaxed),
            acknowledged: self.acknowledged.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            throttled: self.throttled.load(Ordering::Relaxed),
            event_time: time(&self.event_time),
            watermark: time(&self.watermark),
        }
    }
}

/// A copy of [`ReplayProgress`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgressSnapshot {
    /// See [`ReplayProgress::sent`].
    pub sent: u64,
    /// See [`ReplayProgress::acknowledged`].
    pub acknowledged: u64,
    /// See [`ReplayProgress::retried`].
    pub retried: u64,
    /// See [`ReplayProgress::throttled`].
    pub throttled: u64,
    /// Largest event time read so far.
    pub event_time: Option<Millis>,
    /// Value of the last watermark sent.
    pub watermark: Option<Millis>,
}
