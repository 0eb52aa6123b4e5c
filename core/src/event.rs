//! The event model: what one Kinesis record (or one input line) means.
//!
//! Parsing lives in [`crate::input`]; this module only defines the values every other part of the
//! worker consumes, so the parser, the engine and the tests share one definition.

use std::fmt;

/// Milliseconds since the Unix epoch, UTC. Event time and watermarks use this unit throughout.
pub type Millis = i64;

/// Event times a record may carry: from 1970-01-01 up to (not including) 2100-01-01, UTC. Anything
/// else is [`InvalidReason::ImplausibleTime`]: a trip dated 2999 would otherwise close every window.
pub const PLAUSIBLE_TIMES: std::ops::Range<Millis> = 0..4_102_444_800_000;

/// A WGS84 point in decimal degrees.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GeoPoint {
    /// Latitude, −90 ..= 90.
    pub lat: f64,
    /// Longitude, −180 ..= 180.
    pub lon: f64,
}

/// One validated taxi trip.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Trip {
    /// The trip id; its decimal form is the Kinesis partition key.
    pub trip_id: u64,
    /// Pickup time.
    pub pickup_time: Millis,
    /// Dropoff time: the trip's event time.
    pub dropoff_time: Millis,
    /// Where the passenger got in.
    pub pickup: GeoPoint,
    /// Where the passenger got out.
    pub dropoff: GeoPoint,
}

impl Trip {
    /// Event time of a trip is its dropoff time.
    pub fn event_time(&self) -> Millis {
        self.dropoff_time
    }

    /// Trip duration in whole milliseconds (never negative for a validated trip).
    pub fn duration_ms(&self) -> i64 {
        self.dropoff_time.saturating_sub(self.pickup_time)
    }
}

/// A valid input record.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Event {
    /// A taxi trip.
    Trip(Trip),
    /// A watermark event: event time has progressed to this instant on the shard it arrived on.
    Watermark(Millis),
}

/// Why a record was rejected. Each variant is a bounded metric label (see [`InvalidReason::as_str`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InvalidReason {
    /// The bytes are not valid JSON (or, for CSV, the row cannot be split into the layout's columns).
    NotJson,
    /// Valid JSON, but not an object.
    NotAnObject,
    /// The object has no `type` field.
    MissingType,
    /// The `type` is neither `trip` nor `watermark`.
    UnknownType,
    /// A required field is absent.
    MissingField,
    /// A required field is present but cannot be read (wrong JSON type, bad number, bad timestamp).
    BadField,
    /// A latitude outside ±90 or a longitude outside ±180.
    CoordinateOutOfRange,
    /// The dropoff time is before the pickup time.
    DropoffBeforePickup,
    /// An event time outside [`PLAUSIBLE_TIMES`], or too far past the shard's latest event time
    /// (see `EventTimeConfig::max_time_jump_ms`). It never moves a watermark.
    ImplausibleTime,
    /// An input line longer than `input::MAX_LINE_BYTES` (1 MiB, the largest Kinesis record): it
    /// is skipped without being read whole.
    LineTooLong,
    /// A trip placed by taxi zone names a zone the zone centroid table does not list.
    UnknownZone,
}

impl InvalidReason {
    /// Every reason, in a fixed order (for metrics and summaries).
    pub const ALL: [InvalidReason; 11] = [
        InvalidReason::NotJson,
        InvalidReason::NotAnObject,
        InvalidReason::MissingType,
        InvalidReason::UnknownType,
        InvalidReason::MissingField,
        InvalidReason::BadField,
        InvalidReason::CoordinateOutOfRange,
        InvalidReason::DropoffBeforePickup,
        InvalidReason::ImplausibleTime,
        InvalidReason::LineTooLong,
        InvalidReason::UnknownZone,
    ];

    /// Stable snake_case name, used as a metric label and in summaries.
    pub fn as_str(self) -> &'static str {
        match self {
            InvalidReason::NotJson => "not_json",
            InvalidReason::NotAnObject => "not_an_object",
            InvalidReason::MissingType => "missing_type",
            InvalidReason::UnknownType => "unknown_type",
            InvalidReason::MissingField => "missing_field",
            InvalidReason::BadField => "bad_field",
            InvalidReason::CoordinateOutOfRange => "coordinate_out_of_range",
            InvalidReason::DropoffBeforePickup => "dropoff_before_pickup",
            InvalidReason::ImplausibleTime => "implausible_time",
            InvalidReason::LineTooLong => "line_too_long",
            InvalidReason::UnknownZone => "unknown_zone",
        }
    }

    /// Position of this reason in [`InvalidReason::ALL`], for array-indexed counters.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for InvalidReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of parsing one record.
pub type ParsedRecord = Result<Event, InvalidReason>;
