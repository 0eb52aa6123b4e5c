//! The JSON record parser: one Kinesis record's data, or one line of a JSON-lines file.
//!
//! Hot path, so this is a hand-written single-pass scanner rather than serde: measured on the
//! target machine, serde_json needs ~300 ns just to *skip* a 400-byte record and ~600 ns to read
//! one with a custom `Visitor` (most of it validating and matching the ~18 keys), against a budget
//! of 400 ns. The scanner validates the whole input as strict JSON (RFC 8259: string escapes,
//! control characters, UTF-8, number grammar, nesting up to 128 levels), matches keys as
//! borrowed bytes, reads numbers and timestamps in place, and allocates only for strings with
//! escapes in the few fields it reads. Since `type` may come last, fields are collected first
//! and the record is judged at the end.
//!
//! Numbers too large for an `f64` (`1e400`) are valid JSON here (serde_json rejects them): in a
//! coordinate they are [`InvalidReason::BadField`], elsewhere they are ignored.
//!
//! Duplicate keys: the last occurrence wins (as in most JSON readers). The two coordinate namings
//! (`pickup_latitude` / `pickup_lat`, …) fill the same slot, so mixing them is allowed and the
//! later one wins too.
//!
//! The scanner stays in one file: its parts (skipping values, matching keys, reading strings,
//! numbers and timestamps) make up one hot loop that is read and tuned as a whole; only its tests
//! live apart, in `tests.rs`.

use crate::event::{Event, GeoPoint, InvalidReason, Millis, PLAUSIBLE_TIMES, ParsedRecord, Trip};
use crate::time::parse_timestamp;

/// Deepest nesting accepted (the same limit as serde_json's): deeper input is
/// [`InvalidReason::NotJson`], which keeps the scanner's recursion bounded.
pub(crate) const MAX_DEPTH: usize = 128;

/// Parses one JSON record (a Kinesis record's data or one file line) into an [`Event`].
///
/// Whitespace around the object (a trailing `\n` or `\r\n`) is allowed; anything else after it
/// is [`InvalidReason::NotJson`]. See [`Trip`] for what a record carries, and
/// [`InvalidReason`] for how a record is rejected. A `trip_id` may be a JSON unsigned integer or a
/// string of decimal digits; coordinates may be JSON numbers or numbers encoded as JSON strings.
/// Never panics.
pub fn parse_json_record(data: &[u8]) -> ParsedRecord {
    let mut p = Scanner { b: data, i: 0 };
    p.ws();
    let top = if p.peek() == Some(b'{') {
        p.i += 1;
        p.object_fields().map(Some)
    } else {
        p.skip_value(0).map(|()| None)
    };
    let top = top.map_err(|Syntax| InvalidReason::NotJson)?;
    p.ws();
    if p.i != data.len() {
        return Err(InvalidReason::NotJson);
    }
    match top {
        Some(fields) => fields.into_event(),
        None => Err(InvalidReason::NotAnObject),
    }
}

/// A field as read: absent, present but unreadable, or present with a value.
#[derive(Clone, Copy, Default)]
enum Slot<T> {
    #[default]
    Missing,
    Bad,
    Ok(T),
}

impl<T> Slot<T> {
    fn get(self) -> Result<T, InvalidReason> {
        match self {
            Slot::Missing => Err(InvalidReason::MissingField),
            Slot::Bad => Err(InvalidReason::BadField),
            Slot::Ok(v) => Ok(v),
        }
    }
}

impl<T> From<Option<T>> for Slot<T> {
    fn from(v: Option<T>) -> Self {
        v.map_or(Slot::Bad, Slot::Ok)
    }
}

/// The value of the `type` field.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Trip,
    Watermark,
    /// Any other string, or a non-string.
    Unknown,
}

/// Everything a record may carry, collected before the `type` is known.
#[derive(Default)]
struct Fields {
    kind: Option<Kind>,
    trip_id: Slot<u64>,
    pickup_time: Slot<Millis>,
    dropoff_time: Slot<Millis>,
    pickup_lat: Slot<f64>,
    pickup_lon: Slot<f64>,
    dropoff_lat: Slot<f64>,
    dropoff_lon: Slot<f64>,
    watermark: Slot<Millis>,
}

impl Fields {
    fn into_event(self) -> ParsedRecord {
        match self.kind {
            None => Err(InvalidReason::MissingType),
            Some(Kind::Unknown) => Err(InvalidReason::UnknownType),
            Some(Kind::Watermark) => {
                let watermark = self.watermark.get()?;
                if !PLAUSIBLE_TIMES.contains(&watermark) {
                    return Err(InvalidReason::ImplausibleTime);
                }
                Ok(Event::Watermark(watermark))
            }
            Some(Kind::Trip) => {
                let trip = Trip {
                    trip_id: self.trip_id.get()?,
                    pickup_time: self.pickup_time.get()?,
                    dropoff_time: self.dropoff_time.get()?,
                    pickup: GeoPoint { lat: self.pickup_lat.get()?, lon: self.pickup_lon.get()? },
                    dropoff: GeoPoint { lat: self.dropoff_lat.get()?, lon: self.dropoff_lon.get()? },
                };
                validate_trip(trip).map(Event::Trip)
            }
        }
    }
}

/// The checks shared by the JSON and CSV parsers once every field has been read.
pub(crate) fn validate_trip(trip: Trip) -> Result<Trip, InvalidReason> {
    let in_range = |p: GeoPoint| p.lat.abs() <= 90.0 && p.lon.abs() <= 180.0;
    if !in_range(trip.pickup) || !in_range(trip.dropoff) {
        return Err(InvalidReason::CoordinateOutOfRange);
    }
    if !PLAUSIBLE_TIMES.contains(&trip.pickup_time) || !PLAUSIBLE_TIMES.contains(&trip.dropoff_time) {
        return Err(InvalidReason::ImplausibleTime);
    }
    if trip.dropoff_time < trip.pickup_time {
        return Err(InvalidReason::DropoffBeforePickup);
    }
    Ok(trip)
}

/// The keys this parser cares about.
#[derive(Clone, Copy)]
enum Key {
    Type,
    TripId,
    PickupTime,
    DropoffTime,
    Watermark,
    PickupLat,
    PickupLon,
    DropoffLat,
    DropoffLon,
    Other,
}

impl Key {
    /// Matches a key; dispatching on the length first leaves at most three comparisons.
    #[inline]
    fn from_bytes(k: &[u8]) -> Key {
        let is = |name: &[u8]| k == name;
        match k.len() {
            4 if is(b"type") => Key::Type,
            7 if is(b"trip_id") => Key::TripId,
            9 if is(b"watermark") => Key::Watermark,
            10 if is(b"pickup_lat") => Key::PickupLat,
            10 if is(b"pickup_lon") => Key::PickupLon,
            11 if is(b"dropoff_lat") => Key::DropoffLat,
            11 if is(b"dropoff_lon") => Key::DropoffLon,
            15 if is(b"pickup_datetime") => Key::PickupTime,
            15 if is(b"pickup_latitude") => Key::PickupLat,
            16 if is(b"dropoff_datetime") => Key::DropoffTime,
            16 if is(b"pickup_longitude") => Key::PickupLon,
            16 if is(b"dropoff_latitude") => Key::DropoffLat,
            17 if is(b"dropoff_longitude") => Key::DropoffLon,
            _ => Key::Other,
        }
    }
}

/// How a field converts each JSON scalar it may meet; `None` means "present but bad".
trait Convert {
    type Out;
    fn from_u64(_: u64) -> Option<Self::Out> {
        None
    }
    fn from_i64(_: i64) -> Option<Self::Out> {
        None
    }
    fn from_f64(_: f64) -> Option<Self::Out> {
        None
    }
    /// A string's content (valid UTF-8, escapes already decoded).
    fn from_str(_: &[u8]) -> Option<Self::Out> {
        None
    }
    /// The value for a non-string, non-number JSON value (null, bool, array, object).
    fn other() -> Option<Self::Out> {
        None
    }
}

/// `trip_id`: an unsigned integer, or a string of decimal digits.
struct U64Of;
impl Convert for U64Of {
    type Out = u64;
    fn from_u64(v: u64) -> Option<u64> {
        Some(v)
    }
    fn from_str(s: &[u8]) -> Option<u64> {
        parse_u64(s)
    }
}

/// Coordinates: a finite JSON number, or a number encoded as a JSON string.
struct F64Of;
impl Convert for F64Of {
    type Out = f64;
    fn from_u64(v: u64) -> Option<f64> {
        Some(v as f64)
    }
    fn from_i64(v: i64) -> Option<f64> {
        Some(v as f64)
    }
    fn from_f64(v: f64) -> Option<f64> {
        v.is_finite().then_some(v)
    }
    fn from_str(s: &[u8]) -> Option<f64> {
        parse_f64(s)
    }
}

/// Timestamps: an ISO-8601 string.
struct TimeOf;
impl Convert for TimeOf {
    type Out = Millis;
    fn from_str(s: &[u8]) -> Option<Millis> {
        parse_timestamp(s)
    }
}

/// The `type` tag: `"trip"`, `"watermark"`, or anything else (unknown).
struct KindOf;
impl Convert for KindOf {
    type Out = Kind;
    fn from_u64(_: u64) -> Option<Kind> {
        Some(Kind::Unknown)
    }
    fn from_i64(_: i64) -> Option<Kind> {
        Some(Kind::Unknown)
    }
    fn from_f64(_: f64) -> Option<Kind> {
        Some(Kind::Unknown)
    }
    fn from_str(s: &[u8]) -> Option<Kind> {
        Some(match s {
            b"trip" => Kind::Trip,
            b"watermark" => Kind::Watermark,
            _ => Kind::Unknown,
        })
    }
    fn other() -> Option<Kind> {
        Some(Kind::Unknown)
    }
}

/// Parses a string of decimal digits (nothing else) as a `u64`.
fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &c| {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u64::from(d))
    })
}

/// Parses a decimal number from bytes; `None` unless it is valid and finite.
///
/// Rust's float grammar also accepts `inf` / `NaN`; the finiteness check rejects those.
pub(crate) fn parse_f64(b: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(b).ok()?;
    s.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// The input is not valid JSON.
#[derive(Debug)]
struct Syntax;

/// A JSON string as found in the input: its raw bytes between the quotes (already checked:
/// escapes well-formed, no control characters, valid UTF-8) and whether it has escapes.
struct RawStr<'a> {
    raw: &'a [u8],
    escaped: bool,
}

impl RawStr<'_> {
    /// Calls `f` with the string's content, decoding escapes into a temporary `String` only when
    /// there are any.
    fn with_content<T>(&self, f: impl FnOnce(&[u8]) -> T) -> Result<T, Syntax> {
        if self.escaped { Ok(f(unescape(self.raw)?.as_bytes())) } else { Ok(f(self.raw)) }
    }
}

/// Decodes the escapes of a checked raw string. Lone surrogates are a syntax error (as serde_json
/// treats them when it decodes a string).
fn unescape(raw: &[u8]) -> Result<String, Syntax> {
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let Some(j) = memchr::memchr(b'\\', &raw[i..]) else {
            out.push_str(std::str::from_utf8(&raw[i..]).map_err(|_| Syntax)?);
            break;
        };
        out.push_str(std::str::from_utf8(&raw[i..i + j]).map_err(|_| Syntax)?);
        i += j + 1;
        let c = match raw.get(i).copied().ok_or(Syntax)? {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = hex4(raw.get(i + 1..i + 5).ok_or(Syntax)?)?;
                i += 4;
                let code = if (0xD800..0xDC00).contains(&hi) {
                    // A high surrogate must be followed by an escaped low surrogate.
                    if raw.get(i + 1..i + 3) != Some(b"\\u") {
                        return Err(Syntax);
                    }
                    let lo = hex4(raw.get(i + 3..i + 7).ok_or(Syntax)?)?;
                    if !(0xDC00..0xE000).contains(&lo) {
                        return Err(Syntax);
                    }
                    i += 6;
                    0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                } else {
                    hi
                };
                char::from_u32(code).ok_or(Syntax)?
            }
            _ => return Err(Syntax),
        };
        out.push(c);
        i += 1;
    }
    Ok(out)
}

/// Four hex digits as a number.
fn hex4(h: &[u8]) -> Result<u32, Syntax> {
    h.iter().try_fold(0u32, |acc, &c| {
        let d = (c as char).to_digit(16).ok_or(Syntax)?;
        Ok(acc * 16 + d)
    })
}

/// A JSON number as found in the input.
enum Num {
    U64(u64),
    I64(i64),
    F64(f64),
}

/// The scanner: `b[i..]` is what is left to read.
struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    #[inline(always)]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// Skips JSON whitespace.
    #[inline(always)]
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.i += 1;
        }
    }

    #[inline(always)]
    fn expect(&mut self, c: u8) -> Result<(), Syntax> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(Syntax)
        }
    }

    /// The members of an object whose `{` has been read, through its `}`.
    fn object_fields(&mut self) -> Result<Fields, Syntax> {
        let mut f = Fields::default();
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(f);
        }
        loop {
            self.ws();
            self.expect(b'"')?;
            let key = self.string()?;
            let key = if key.escaped { key.with_content(Key::from_bytes)? } else { Key::from_bytes(key.raw) };
            self.ws();
            self.expect(b':')?;
            self.ws();
            match key {
                Key::Type => f.kind = Some(self.scalar::<KindOf>()?.unwrap_or(Kind::Unknown)),
                Key::TripId => f.trip_id = self.scalar::<U64Of>()?.into(),
                Key::PickupTime => f.pickup_time = self.scalar::<TimeOf>()?.into(),
                Key::DropoffTime => f.dropoff_time = self.scalar::<TimeOf>()?.into(),
                Key::Watermark => f.watermark = self.scalar::<TimeOf>()?.into(),
                Key::PickupLat => f.pickup_lat = self.scalar::<F64Of>()?.into(),
                Key::PickupLon => f.pickup_lon = self.scalar::<F64Of>()?.into(),
                Key::DropoffLat => f.dropoff_lat = self.scalar::<F64Of>()?.into(),
                Key::DropoffLon => f.dropoff_lon = self.scalar::<F64Of>()?.into(),
                Key::Other => self.skip_value(1)?,
            }
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(f);
                }
                _ => return Err(Syntax),
            }
        }
    }

    /// Reads a member value of the object at depth 1, converting it with `C`.
    #[inline]
    fn scalar<C: Convert>(&mut self) -> Result<Option<C::Out>, Syntax> {
        match self.peek() {
            Some(b'"') => {
                self.i += 1;
                let s = self.string()?;
                s.with_content(C::from_str)
            }
            Some(b'-' | b'0'..=b'9') => Ok(match self.number()? {
                Num::U64(v) => C::from_u64(v),
                Num::I64(v) => C::from_i64(v),
                Num::F64(v) => C::from_f64(v),
            }),
            _ => {
                self.skip_value(1)?;
                Ok(C::other())
            }
        }
    }

    /// Reads a string whose opening `"` has been read, through its closing `"`.
    #[inline]
    fn string(&mut self) -> Result<RawStr<'a>, Syntax> {
        let start = self.i;
        let mut escaped = false;
        let mut non_ascii = false;
        loop {
            // Eight bytes at a time while none of them needs a look.
            while let Some(word) = self.b.get(self.i..self.i + 8) {
                let mut w = [0u8; 8];
                w.copy_from_slice(word);
                let flags = special_bytes(u64::from_le_bytes(w));
                if flags != 0 {
                    self.i += (flags.trailing_zeros() / 8) as usize;
                    break;
                }
                self.i += 8;
            }
            match self.peek().ok_or(Syntax)? {
                b'"' => {
                    let raw = &self.b[start..self.i];
                    self.i += 1;
                    // Escapes are ASCII, so the raw bytes are UTF-8 iff the content is.
                    if non_ascii && std::str::from_utf8(raw).is_err() {
                        return Err(Syntax);
                    }
                    return Ok(RawStr { raw, escaped });
                }
                b'\\' => {
                    escaped = true;
                    self.i += 1;
                    match self.peek().ok_or(Syntax)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 1,
                        b'u' => {
                            let hex = self.b.get(self.i + 1..self.i + 5).ok_or(Syntax)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return Err(Syntax);
                            }
                            self.i += 5;
                        }
                        _ => return Err(Syntax),
                    }
                }
                0..=0x1f => return Err(Syntax),
                c => {
                    non_ascii |= c >= 0x80;
                    self.i += 1;
                }
            }
        }
    }

    /// Reads a number (its first byte is `-` or a digit) per the JSON grammar.
    #[inline]
    fn number(&mut self) -> Result<Num, Syntax> {
        let start = self.i;
        let neg = self.peek() == Some(b'-');
        if neg {
            self.i += 1;
        }
        // The decimal significand (wrapping; only used when it has at most 19 digits, so it
        // fits) and its exponent.
        let mut mant: u64 = 0;
        let mut n_digits = match self.peek() {
            Some(b'0') => {
                self.i += 1;
                1
            }
            Some(b'1'..=b'9') => self.digit_run(&mut mant),
            _ => return Err(Syntax),
        };
        let mut exp10: i64 = 0;
        let mut is_int = true;
        if self.peek() == Some(b'.') {
            self.i += 1;
            let frac = self.digit_run(&mut mant);
            if frac == 0 {
                return Err(Syntax);
            }
            n_digits += frac;
            exp10 = -(frac as i64);
            is_int = false;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            let neg_exp = match self.peek() {
                Some(b'-') => {
                    self.i += 1;
                    true
                }
                Some(b'+') => {
                    self.i += 1;
                    false
                }
                _ => false,
            };
            if !self.peek().is_some_and(|c| c.is_ascii_digit()) {
                return Err(Syntax);
            }
            let mut e: i64 = 0;
            while let Some(c @ b'0'..=b'9') = self.peek() {
                // Saturate: anything this large is out of f64 range anyway.
                e = (e * 10 + i64::from(c - b'0')).min(1_000_000);
                self.i += 1;
            }
            exp10 += if neg_exp { -e } else { e };
            is_int = false;
        }
        if n_digits <= 19 {
            if is_int {
                if !neg {
                    return Ok(Num::U64(mant));
                }
                if let Some(v) = 0i64.checked_sub_unsigned(mant) {
                    return Ok(Num::I64(v));
                }
            } else if mant <= 1 << 53 && (-22..=22).contains(&exp10) {
                // Clinger's fast path: both operands are exact, so one IEEE operation rounds
                // correctly.
                let m = mant as f64;
                let v = if exp10 < 0 { m / POW10[exp10.unsigned_abs() as usize] } else { m * POW10[exp10 as usize] };
                return Ok(Num::F64(if neg { -v } else { v }));
            }
        }
        // Everything else (long significands, big exponents, 64-bit overflow): the standard
        // library's correctly rounded parser.
        let text = std::str::from_utf8(&self.b[start..self.i]).map_err(|_| Syntax)?;
        text.parse::<f64>().map(Num::F64).map_err(|_| Syntax)
    }

    /// Reads a run of digits into `mant` (wrapping), returning how many there were.
    #[inline(always)]
    fn digit_run(&mut self, mant: &mut u64) -> usize {
        let start = self.i;
        while let Some(c @ b'0'..=b'9') = self.peek() {
            *mant = mant.wrapping_mul(10).wrapping_add(u64::from(c - b'0'));
            self.i += 1;
        }
        self.i - start
    }

    /// Skips (and checks) one value of any type, nested `depth` levels deep.
    fn skip_value(&mut self, depth: usize) -> Result<(), Syntax> {
        match self.peek().ok_or(Syntax)? {
            b'"' => {
                self.i += 1;
                self.string().map(|_| ())
            }
            b'-' | b'0'..=b'9' => self.number().map(|_| ()),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'[' => {
                if depth >= MAX_DEPTH {
                    return Err(Syntax);
                }
                self.i += 1;
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    self.ws();
                    self.skip_value(depth + 1)?;
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(());
                        }
                        _ => return Err(Syntax),
                    }
                }
            }
            b'{' => {
                if depth >= MAX_DEPTH {
                    return Err(Syntax);
                }
                self.i += 1;
                self.ws();
                if self.peek() == Some(b'}') {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    self.ws();
                    self.expect(b'"')?;
                    self.string()?;
                    self.ws();
                    self.expect(b':')?;
                    self.ws();
                    self.skip_value(depth + 1)?;
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(());
                        }
                        _ => return Err(Syntax),
                    }
                }
            }
            _ => Err(Syntax),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), Syntax> {
        if self.b.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(Syntax)
        }
    }
}

/// Powers of ten that are exact in an `f64`.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20,
    1e21, 1e22,
];

/// Flags (high bit of each byte) the bytes of `x` a string scan must look at: `"`, `\`,
/// control characters and non-ASCII. The lowest flagged byte is always a true one (borrows only
/// carry upwards), which is all the scan relies on.
#[inline(always)]
fn special_bytes(x: u64) -> u64 {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |v: u64| v.wrapping_sub(LO) & !v & HI;
    zero_byte(x ^ (LO * u64::from(b'"')))
        | zero_byte(x ^ (LO * u64::from(b'\\')))
        | (x.wrapping_sub(LO * 0x20) & !x & HI)
        | (x & HI)
}

#[cfg(test)]
mod tests;
