//! Reading input files as chunks of complete lines, for a parallel parser downstream.
//!
//! Compression is detected from content (gzip, zstd or plain), then the format from the first
//! non-blank line. Reads go through large buffers straight into each chunk's own `Vec`, and only
//! the partial line at a chunk's end is copied (into the next chunk), so the file is never loaded
//! whole and each byte is copied about once after decompression.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::sync::Arc;

use memchr::{memchr, memrchr};

use super::csv::preview;
use super::{CsvLayout, Format, InputError, InputReader, MAX_LINE_BYTES, Records, ZoneCentroids, ZoneLayout, is_blank};

/// Buffer size of every reader layer.
const BUF_BYTES: usize = 256 * 1024;
/// A CSV header longer than this is not a header.
const MAX_HEADER_BYTES: u64 = 1 << 20;
/// Upper bound of a chunk's target size, which keeps [`Chunk::records`] far from `u32::MAX`.
const MAX_TARGET_BYTES: usize = 1 << 30;
/// Chunk size used by [`ChunkReader::skip_records`].
const INTERNAL_CHUNK_BYTES: usize = 1 << 20;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// The first four bytes of a Parquet file.
pub(super) const PARQUET_MAGIC: [u8; 4] = *b"PAR1";
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// A run of complete lines of an input file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// 1-based number of the first non-blank line in `data` among the file's data lines (the
    /// CSV header excluded).
    pub first_record: u64,
    /// How many non-blank lines `data` holds.
    pub records: u32,
    /// The lines, each ending in `\n` except possibly the file's last.
    pub data: Vec<u8>,
}

impl Chunk {
    /// The non-blank lines as `(record_no, line)`, numbered consecutively from
    /// [`Chunk::first_record`]; each line is without its `\n` / `\r\n`.
    pub fn lines(&self) -> impl Iterator<Item = (u64, &[u8])> {
        numbered_lines(&self.data, self.first_record)
    }
}

/// The non-blank lines of `data` as `(record_no, line)`, numbered from `first`; each line is
/// without its `\n` / `\r\n`.
pub(super) fn numbered_lines(data: &[u8], first: u64) -> impl Iterator<Item = (u64, &[u8])> {
    Lines { rest: data }.filter(|line| !is_blank(line)).zip(first..).map(|(line, no)| (no, line))
}

/// Splits bytes into lines on `\n`, dropping the `\n` and a `\r` before it.
struct Lines<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        let (line, rest) = match memchr(b'\n', self.rest) {
            Some(i) => (&self.rest[..i], &self.rest[i + 1..]),
            None => (self.rest, &[][..]),
        };
        self.rest = rest;
        Some(line.strip_suffix(b"\r").unwrap_or(line))
    }
}

/// Reads a plain, gzip or zstd input file as [`Chunk`]s of complete lines.
pub struct ChunkReader {
    /// The decompressed content, positioned after what has been handed out (and the CSV header).
    src: Box<dyn BufRead + Send>,
    /// `input file <path>` or `input stream`, for error messages.
    origin: String,
    format: Format,
    /// Bytes read past the last chunk's end: the start of the next chunk.
    carry: Vec<u8>,
    /// `src` is exhausted.
    eof: bool,
    /// Number of the next record to hand out.
    next_record: u64,
}

impl std::fmt::Debug for ChunkReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkReader")
            .field("origin", &self.origin)
            .field("format", &self.format)
            .field("next_record", &self.next_record)
            .finish_non_exhaustive()
    }
}

impl ChunkReader {
    /// Opens `path`, detects its compression from content and its format from the first
    /// non-blank line.
    pub fn open(path: &Path) -> Result<ChunkReader, InputError> {
        let file = File::open(path).map_err(|source| InputError::Open { path: path.to_owned(), source })?;
        Self::with_origin(Box::new(file), format!("input file {}", path.display()))
    }

    /// Like [`ChunkReader::open`], over any reader (compressed or not).
    pub fn from_reader(reader: Box<dyn Read + Send>) -> Result<ChunkReader, InputError> {
        Self::with_origin(reader, "input stream".to_owned())
    }

    fn with_origin(mut raw: Box<dyn Read + Send>, origin: String) -> Result<ChunkReader, InputError> {
        let head = read_magic(&mut raw, &origin)?;
        if head == PARQUET_MAGIC {
            return Err(InputError::ParquetStream { origin });
        }
        ChunkReader::from_head(head, raw, origin, None)
    }

    /// A reader of `raw` whose first bytes, `head` (up to the four a magic number takes), have
    /// already been read from it; `zones` lets a CSV header that places trips by taxi zone be read.
    pub(super) fn from_head(
        head: Vec<u8>,
        raw: Box<dyn Read + Send>,
        origin: String,
        zones: Option<Arc<ZoneCentroids>>,
    ) -> Result<ChunkReader, InputError> {
        let joined = io::Cursor::new(head.clone()).chain(raw);
        let decoded: Box<dyn Read + Send> = if head.starts_with(&GZIP_MAGIC) {
            // Multi-member: concatenated gzip files (as `cat a.gz b.gz`) decode whole.
            Box::new(flate2::bufread::MultiGzDecoder::new(BufReader::with_capacity(BUF_BYTES, joined)))
        } else if head == ZSTD_MAGIC {
            match zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(BUF_BYTES, joined)) {
                Ok(d) => Box::new(d),
                Err(source) => return Err(InputError::Read { origin, source }),
            }
        } else {
            Box::new(joined)
        };
        let mut reader = ChunkReader {
            src: Box::new(BufReader::with_capacity(BUF_BYTES, decoded)),
            origin,
            format: Format::JsonLines,
            carry: Vec::new(),
            eof: false,
            next_record: 1,
        };
        reader.format = reader.detect_format(zones)?;
        Ok(reader)
    }

    /// Skips leading whitespace and a BOM, then looks at the first line: `{` is JSON lines,
    /// anything else must be a CSV header (which is consumed).
    fn detect_format(&mut self, zones: Option<Arc<ZoneCentroids>>) -> Result<Format, InputError> {
        loop {
            let buf = self.src.fill_buf().map_err(|e| read_error(&self.origin, e))?;
            if buf.is_empty() {
                return Err(InputError::Empty { origin: self.origin.clone() });
            }
            let ws = buf.iter().take_while(|b| b.is_ascii_whitespace()).count();
            let all_ws = ws == buf.len();
            let bom = !all_ws && buf[ws..].starts_with(UTF8_BOM);
            self.src.consume(ws + if bom { UTF8_BOM.len() } else { 0 });
            if !all_ws && !bom {
                break;
            }
        }
        let first = self.src.fill_buf().map_err(|e| read_error(&self.origin, e))?;
        if first.first() == Some(&b'{') {
            return Ok(Format::JsonLines);
        }
        let mut line = Vec::new();
        (&mut self.src).take(MAX_HEADER_BYTES).read_until(b'\n', &mut line).map_err(|e| read_error(&self.origin, e))?;
        if memchr(b',', &line).is_none() {
            return Err(InputError::UnknownFormat { origin: self.origin.clone(), preview: preview(&line, 64) });
        }
        match CsvLayout::from_header(&line) {
            Ok(layout) => Ok(Format::Csv(layout)),
            Err(InputError::UnknownCsvHeader { missing, header, .. }) => {
                Err(InputError::UnknownCsvHeader { origin: self.origin.clone(), missing, header })
            }
            Err(InputError::ZoneIdsInsteadOfCoordinates { .. }) => match (zones, ZoneLayout::from_header(&line)) {
                (Some(zones), Some(layout)) => Ok(Format::CsvZones(layout, zones)),
                (None, _) => Err(InputError::ZoneIdsInsteadOfCoordinates { origin: self.origin.clone() }),
                (Some(_), None) => Err(InputError::UnknownCsvHeader {
                    origin: self.origin.clone(),
                    missing: "pickup time, dropoff time, PULocationID or DOLocationID".to_owned(),
                    header: preview(line.trim_ascii(), 200),
                }),
            },
            Err(e) => Err(e),
        }
    }

    /// The detected format.
    pub fn format(&self) -> &Format {
        &self.format
    }

    /// The number the next record handed out will have (1 before any).
    pub fn next_record_no(&self) -> u64 {
        self.next_record
    }

    /// Numbers the next record `first` (the object's first record, when it follows others).
    pub(super) fn number_from(&mut self, first: u64) {
        self.next_record = first;
    }

    /// Appends up to `max` bytes of `src` to `data`; a short read means the end of input.
    fn read_more(&mut self, data: &mut Vec<u8>, max: usize) -> Result<(), InputError> {
        let want = u64::try_from(max).unwrap_or(u64::MAX);
        let got = (&mut self.src).take(want).read_to_end(data).map_err(|e| read_error(&self.origin, e))?;
        if got < max {
            self.eof = true;
        }
        Ok(())
    }

    /// Discards `src` up to and including the next `\n` (or to the end of input).
    fn skip_line(&mut self) -> Result<(), InputError> {
        loop {
            let buf = self.src.fill_buf().map_err(|e| read_error(&self.origin, e))?;
            if buf.is_empty() {
                self.eof = true;
                return Ok(());
            }
            match memchr(b'\n', buf) {
                Some(i) => {
                    self.src.consume(i + 1);
                    return Ok(());
                }
                None => {
                    let n = buf.len();
                    self.src.consume(n);
                }
            }
        }
    }

    /// The next run of about `target_bytes` of complete lines holding at least one record, or
    /// `None` at the end of input.
    ///
    /// A chunk ends at the last line end within `target_bytes`; a single line longer than that is
    /// returned whole, up to [`MAX_LINE_BYTES`] + 1 bytes (the parser rejects it; the rest is
    /// skipped unread), and a final line without `\n` is still a line. Chunks of blank lines
    /// only are skipped.
    pub fn next_chunk(&mut self, target_bytes: usize) -> Result<Option<Chunk>, InputError> {
        let target = target_bytes.clamp(1, MAX_TARGET_BYTES);
        loop {
            // Capped so a huge target on a small input does not reserve its full size up front.
            let mut data = Vec::with_capacity(target.min(16 * BUF_BYTES).max(self.carry.len()));
            data.extend_from_slice(&self.carry);
            self.carry.clear();
            if data.len() < target && !self.eof {
                let room = target - data.len();
                self.read_more(&mut data, room)?;
            }
            // Cut after the last '\n' within the target; without one, after the first '\n'
            // beyond it, reading on until a line ends (or the input does).
            let limit = target.min(data.len());
            let cut = match memrchr(b'\n', &data[..limit]) {
                Some(i) => i + 1,
                None => {
                    let mut searched = limit;
                    loop {
                        if let Some(i) = memchr(b'\n', &data[searched..]) {
                            break searched + i + 1;
                        }
                        if self.eof {
                            break data.len();
                        }
                        if data.len() > MAX_LINE_BYTES {
                            // The chunk is one line, longer than any record may be: keep enough
                            // of it for the parser to reject it, and skip the rest unread.
                            data.truncate(MAX_LINE_BYTES + 1);
                            self.skip_line()?;
                            break data.len();
                        }
                        searched = data.len();
                        self.read_more(&mut data, BUF_BYTES)?;
                    }
                }
            };
            self.carry.extend_from_slice(&data[cut..]);
            data.truncate(cut);
            if data.is_empty() {
                return Ok(None);
            }
            let count = Lines { rest: &data }.filter(|l| !is_blank(l)).count();
            if count == 0 {
                continue;
            }
            let chunk =
                Chunk { first_record: self.next_record, records: u32::try_from(count).unwrap_or(u32::MAX), data };
            self.next_record += u64::from(chunk.records);
            return Ok(Some(chunk));
        }
    }

    /// Skips the next `n` records (to resume after them), returning how many were skipped:
    /// fewer than `n` only at the end of input.
    pub fn skip_records(&mut self, n: u64) -> Result<u64, InputError> {
        let mut skipped = 0;
        while skipped < n {
            let Some(chunk) = self.next_chunk(INTERNAL_CHUNK_BYTES)? else {
                break;
            };
            let want = n - skipped;
            if u64::from(chunk.records) <= want {
                skipped += u64::from(chunk.records);
                continue;
            }
            // The chunk runs past the last record to skip: hand its rest back to the next chunk.
            let keep_from = offset_after_records(&chunk.data, want);
            let mut rest = chunk.data[keep_from..].to_vec();
            rest.extend_from_slice(&self.carry);
            self.carry = rest;
            self.next_record = chunk.first_record + want;
            skipped += want;
        }
        Ok(skipped)
    }

    /// Turns the reader into a sequential iterator of parsed records.
    pub fn into_records(self) -> Records {
        InputReader::from_lines(self).into_records()
    }
}

/// Reads the first bytes of `raw`, as many as a magic number takes (fewer only when the input is
/// shorter): a pipe may deliver fewer per read.
pub(super) fn read_magic(raw: &mut dyn Read, origin: &str) -> Result<Vec<u8>, InputError> {
    let mut magic = [0u8; 4];
    let mut n = 0;
    while n < magic.len() {
        match raw.read(&mut magic[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => return Err(read_error(origin, source)),
        }
    }
    Ok(magic[..n].to_vec())
}

/// A read error of `origin`.
fn read_error(origin: &str, source: io::Error) -> InputError {
    InputError::Read { origin: origin.to_owned(), source }
}

/// Byte offset just after the line holding the `k`-th non-blank line of `data` (k ≥ 1), or
/// `data.len()` if there are fewer.
fn offset_after_records(data: &[u8], k: u64) -> usize {
    let mut seen = 0;
    let mut start = 0;
    while start < data.len() {
        let end = memchr(b'\n', &data[start..]).map_or(data.len(), |i| start + i + 1);
        if !is_blank(&data[start..end]) {
            seen += 1;
            if seen == k {
                return end;
            }
        }
        start = end;
    }
    data.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, InvalidReason, ParsedRecord};
    use crate::input::{parse_line, read_records};
    use std::io::Write;

    fn jsonl_fixture() -> String {
        let mut s = String::from("\n  \n");
        for i in 1..=40u32 {
            s.push_str(&format!(
                r#"{{"type":"trip","trip_id":{i},"pickup_datetime":"2016-01-01T00:{:02}:00Z","dropoff_datetime":"2016-01-01T01:00:00Z","pickup_lat":40.{i:02},"pickup_lon":-73.{i:02},"dropoff_lat":40.7,"dropoff_lon":-73.9}}"#,
                i % 60
            ));
            s.push_str(if i % 3 == 0 { "\r\n" } else { "\n" });
            if i % 7 == 0 {
                s.push_str("\n \t\n");
            }
            if i == 20 {
                s.push_str("not json\n");
                s.push_str(r#"{"watermark":"2016-01-01T00:30:00Z","type":"watermark"}"#);
                s.push('\n');
            }
        }
        s
    }

    fn reader(bytes: Vec<u8>) -> ChunkReader {
        ChunkReader::from_reader(Box::new(io::Cursor::new(bytes))).unwrap()
    }

    fn all_records(bytes: Vec<u8>) -> Vec<(u64, ParsedRecord)> {
        reader(bytes).into_records().map(|r| r.unwrap()).collect()
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    fn zstd(bytes: &[u8]) -> Vec<u8> {
        zstd::stream::encode_all(bytes, 3).unwrap()
    }

    #[test]
    fn json_lines_records() {
        let recs = all_records(jsonl_fixture().into_bytes());
        assert_eq!(recs.len(), 42);
        assert_eq!(recs.iter().map(|r| r.0).collect::<Vec<_>>(), (1..=42).collect::<Vec<_>>());
        let Ok(Event::Trip(t)) = recs[0].1 else {
            panic!("{:?}", recs[0]);
        };
        assert_eq!((t.trip_id, t.pickup.lat, t.pickup.lon), (1, 40.01, -73.01));
        assert_eq!(recs[20].1, Err(InvalidReason::NotJson));
        assert_eq!(recs[21].1, Ok(Event::Watermark(1_451_608_200_000)));
        let Ok(Event::Trip(t)) = recs[41].1 else {
            panic!("{:?}", recs[41]);
        };
        assert_eq!(t.trip_id, 40);
    }

    #[test]
    fn compressed_inputs_give_the_same_records() {
        let plain = jsonl_fixture().into_bytes();
        let want = all_records(plain.clone());
        assert_eq!(all_records(gzip(&plain)), want);
        assert_eq!(all_records(zstd(&plain)), want);
        // Concatenated gzip members decode whole.
        let (a, b) = plain.split_at(plain.len() / 2);
        let mut two = gzip(a);
        two.extend(gzip(b));
        assert_eq!(all_records(two), want);
    }

    #[test]
    fn open_files_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let plain = jsonl_fixture().into_bytes();
        let want = all_records(plain.clone());
        for (name, bytes) in [("a.jsonl", plain.clone()), ("b.json.gz", gzip(&plain)), ("c.zst", zstd(&plain))] {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            let got: Vec<_> = read_records(&path).unwrap().map(|r| r.unwrap()).collect();
            assert_eq!(got, want, "{name}");
        }
        let missing = dir.path().join("nope.jsonl");
        let err = ChunkReader::open(&missing).unwrap_err();
        assert!(matches!(err, InputError::Open { .. }));
        assert!(err.to_string().contains("nope.jsonl"), "{err}");
    }

    #[test]
    fn chunks_cross_lines_and_number_continuously() {
        let plain = jsonl_fixture().into_bytes();
        let want = all_records(plain.clone());
        for target in [1, 7, 100, 333, 1000, 1 << 20] {
            for bytes in [plain.clone(), gzip(&plain), zstd(&plain)] {
                let mut r = reader(bytes);
                let mut got = Vec::new();
                let mut next = 1;
                let mut total_bytes = 0;
                while let Some(chunk) = r.next_chunk(target).unwrap() {
                    assert_eq!(chunk.first_record, next);
                    assert!(chunk.records > 0);
                    assert!(chunk.data.ends_with(b"\n"), "complete lines only");
                    if target >= 1000 {
                        // Several lines fit: a chunk stays within the target.
                        assert!(chunk.data.len() <= target);
                    }
                    next += u64::from(chunk.records);
                    total_bytes += chunk.data.len();
                    let lines: Vec<_> = chunk.lines().collect();
                    assert_eq!(lines.len(), chunk.records as usize);
                    got.extend(lines.into_iter().map(|(no, l)| (no, parse_line(r.format(), l, no))));
                }
                assert_eq!(got, want, "target {target}");
                assert!(total_bytes <= plain.len());
                assert_eq!(r.next_chunk(target).unwrap(), None);
            }
        }
    }

    #[test]
    fn final_line_without_newline() {
        let s = "{\"type\":\"watermark\",\"watermark\":\"2016-01-01T00:00:00Z\"}\n{\"type\":\"watermark\",\"watermark\":\"2016-01-01T00:00:01Z\"}";
        for target in [1, 10, 1000] {
            let mut r = reader(s.as_bytes().to_vec());
            let mut lines = Vec::new();
            while let Some(c) = r.next_chunk(target).unwrap() {
                lines.extend(c.lines().map(|(n, l)| (n, l.to_vec())));
            }
            assert_eq!(lines.len(), 2);
            assert_eq!(lines[1].0, 2);
            assert!(lines[1].1.ends_with(b"01Z\"}"));
        }
        // Trailing blank lines without newline are not records.
        let recs = all_records(format!("{s}\n  ").into_bytes());
        assert_eq!(recs.len(), 2);
    }

    #[test]
    fn skip_records_resumes_at_the_right_record() {
        let plain = jsonl_fixture().into_bytes();
        let want = all_records(plain.clone());
        for n in [0u64, 1, 5, 20, 21, 41, 42, 43, 1000] {
            let mut r = reader(plain.clone());
            let skipped = r.skip_records(n).unwrap();
            assert_eq!(skipped, n.min(42));
            assert_eq!(r.next_record_no(), skipped + 1);
            let rest: Vec<_> = r.into_records().map(|x| x.unwrap()).collect();
            assert_eq!(rest, want[skipped as usize..], "n={n}");
        }
        // Skipping in steps across small chunks.
        let mut r = reader(gzip(&plain));
        assert_eq!(r.skip_records(3).unwrap(), 3);
        let c = r.next_chunk(300).unwrap().unwrap();
        assert_eq!(c.first_record, 4);
        assert_eq!(r.skip_records(2).unwrap(), 2);
        let c2 = r.next_chunk(1).unwrap().unwrap();
        assert_eq!(c2.first_record, 4 + u64::from(c.records) + 2);
    }

    const HEADER_2009: &str = "vendor_name,Trip_Pickup_DateTime,Trip_Dropoff_DateTime,Passenger_Count,Trip_Distance,Start_Lon,Start_Lat,Rate_Code,store_and_forward,End_Lon,End_Lat,Payment_Type,Fare_Amt,surcharge,mta_tax,Tip_Amt,Tolls_Amt,Total_Amt";
    const HEADER_2010: &str = "vendor_id, pickup_datetime, dropoff_datetime, passenger_count, trip_distance, pickup_longitude, pickup_latitude, rate_code, store_and_fwd_flag, dropoff_longitude, dropoff_latitude, payment_type, fare_amount, surcharge, mta_tax, tip_amount, tolls_amount, total_amount";
    const HEADER_2015: &str = "VendorID,tpep_pickup_datetime,tpep_dropoff_datetime,passenger_count,trip_distance,pickup_longitude,pickup_latitude,RateCodeID,store_and_fwd_flag,dropoff_longitude,dropoff_latitude,payment_type,fare_amount,extra,mta_tax,tip_amount,tolls_amount,improvement_surcharge,total_amount";

    /// Three rows in a layout with coordinates at (plon, plat, dlon, dlat) = columns 5, 6, 9, 10.
    fn csv_fixture(header: &str, blank_second_line: bool, crlf: bool) -> Vec<u8> {
        let nl = if crlf { "\r\n" } else { "\n" };
        let mut s = format!("{header}{nl}");
        if blank_second_line {
            s.push_str(nl);
        }
        s.push_str(&format!(
            "X,2013-03-10 01:59:00,2013-03-10 03:01:30,1,1.0,-73.991,40.751,1,N,-73.781,40.641,CSH,5,0,0,0,0,5,0{nl}"
        ));
        s.push_str(&format!(
            "X,2013-03-10 02:10:00,2013-03-10 02:00:00,1,1.0,-73.992,40.752,1,N,-73.782,40.642,CSH,5,0,0,0,0,5,0{nl}"
        ));
        s.push_str(nl);
        s.push_str("X,2013-03-10 02:10:00,2013-03-10 02:20:00,1,1.0,0,0,1,N,0,0,CSH,5,0,0,0,0,5,0");
        s.into_bytes()
    }

    fn check_csv(bytes: Vec<u8>) {
        let r = reader(bytes);
        assert!(matches!(r.format(), Format::Csv(_)));
        let recs: Vec<_> = r.into_records().map(|x| x.unwrap()).collect();
        assert_eq!(recs.len(), 3);
        let Ok(Event::Trip(t)) = recs[0].1 else {
            panic!("{:?}", recs[0]);
        };
        assert_eq!(recs[0].0, 1);
        assert_eq!(t.trip_id, 1);
        assert_eq!(t.pickup_time, 1_362_880_740_000); // 2013-03-10T01:59:00Z (naive = UTC)
        assert_eq!(t.dropoff_time, 1_362_884_490_000); // 2013-03-10T03:01:30Z
        assert_eq!((t.pickup.lat, t.pickup.lon), (40.751, -73.991));
        assert_eq!((t.dropoff.lat, t.dropoff.lon), (40.641, -73.781));
        assert_eq!(recs[1], (2, Err(InvalidReason::DropoffBeforePickup)));
        let Ok(Event::Trip(t3)) = recs[2].1 else {
            panic!("{:?}", recs[2]);
        };
        assert_eq!((recs[2].0, t3.trip_id, t3.pickup.lat), (3, 3, 0.0));
    }

    #[test]
    fn csv_layouts_plain_and_compressed() {
        for (header, blank, crlf) in [
            (HEADER_2009, false, false),
            (HEADER_2010, true, true),
            (HEADER_2010, true, false),
            (HEADER_2015, false, true),
        ] {
            let plain = csv_fixture(header, blank, crlf);
            check_csv(gzip(&plain));
            check_csv(zstd(&plain));
            check_csv(plain);
        }
    }

    #[test]
    fn csv_skip_and_chunks() {
        let plain = csv_fixture(HEADER_2010, true, true);
        let mut r = reader(plain.clone());
        assert_eq!(r.skip_records(2).unwrap(), 2);
        let c = r.next_chunk(1).unwrap().unwrap();
        assert_eq!((c.first_record, c.records), (3, 1));
        let (no, line) = c.lines().next().unwrap();
        let Ok(Event::Trip(t)) = parse_line(r.format(), line, no) else {
            panic!();
        };
        assert_eq!(t.trip_id, 3);
        assert_eq!(r.next_chunk(1).unwrap(), None);
    }

    #[test]
    fn format_detection_errors() {
        let err = |bytes: &[u8]| ChunkReader::from_reader(Box::new(io::Cursor::new(bytes.to_vec()))).unwrap_err();
        assert!(matches!(err(b""), InputError::Empty { .. }));
        assert!(matches!(err(b" \n\r\n\t"), InputError::Empty { .. }));
        assert!(matches!(err(&gzip(b"\n\n")), InputError::Empty { .. }));
        let e = err(b"hello world\n{}\n");
        assert!(matches!(e, InputError::UnknownFormat { .. }), "{e}");
        assert!(e.to_string().contains("hello world"), "{e}");
        let e = err(b"a,b,c\n1,2,3\n");
        assert!(matches!(e, InputError::UnknownCsvHeader { .. }), "{e}");
        assert!(e.to_string().contains("pickup time"), "{e}");
        // The TLC's files of today: zone IDs instead of coordinates (without a centroid table),
        // or Parquet, which a stream cannot give.
        let since_2016 = "VendorID,tpep_pickup_datetime,tpep_dropoff_datetime,passenger_count,trip_distance,\
                          RatecodeID,store_and_fwd_flag,PULocationID,DOLocationID,payment_type,fare_amount\n";
        let e = err(since_2016.as_bytes());
        assert!(matches!(e, InputError::ZoneIdsInsteadOfCoordinates { .. }), "{e}");
        assert!(e.to_string().starts_with("input stream places trips by taxi zone (PULocationID"), "{e}");
        assert!(e.to_string().contains("January 2009 to June 2016"), "{e}");
        assert!(
            e.to_string().ends_with(
                "pass --zone-centroids FILE: a CSV file with a header line, then one LocationID,lat,lon line per taxi zone"
            ),
            "{e}"
        );
        let e = err(b"PAR1\x15\x04\x15\x80");
        assert!(matches!(e, InputError::ParquetStream { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            "input stream is a Parquet file, which is read by byte ranges (its footer first), not front to back: give \
             it as an input file or object"
        );
        // Truncated compressed data is a read error, not a panic.
        let mut gz = gzip(jsonl_fixture().as_bytes());
        gz.truncate(gz.len() / 2);
        let mut r = reader(gz);
        let mut saw_error = false;
        loop {
            match r.next_chunk(100) {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    assert!(matches!(e, InputError::Read { .. }));
                    assert!(e.to_string().starts_with("failed to read input stream"), "{e}");
                    saw_error = true;
                    break;
                }
            }
        }
        assert!(saw_error);
    }

    #[test]
    fn bom_and_leading_blank_lines() {
        let mut bytes = b"\xEF\xBB\xBF\n\n".to_vec();
        bytes.extend(csv_fixture(HEADER_2015, false, false));
        check_csv(bytes);
        let bytes = b"\xEF\xBB\xBF{\"type\":\"watermark\",\"watermark\":\"2016-01-01T00:00:00Z\"}\n".to_vec();
        assert_eq!(all_records(bytes), vec![(1, Ok(Event::Watermark(1_451_606_400_000)))]);
    }

    #[test]
    fn reader_and_chunks_move_across_threads() {
        fn assert_send<T: Send>() {}
        assert_send::<ChunkReader>();
        assert_send::<Chunk>();
        assert_send::<Records>();
        assert_send::<InputError>();
    }

    #[test]
    fn huge_target_reads_everything_once() {
        let plain = jsonl_fixture().into_bytes();
        let mut r = reader(plain);
        let c = r.next_chunk(usize::MAX).unwrap().unwrap();
        assert_eq!((c.first_record, c.records), (1, 42));
        assert_eq!(r.next_chunk(usize::MAX).unwrap(), None);
    }

    /// A stream of one 64 MiB line between two good ones, produced on the fly.
    fn stream_with_a_huge_line(tail_newline: bool) -> Box<dyn Read + Send> {
        let good = r#"{"type":"watermark","watermark":"2016-01-01T00:00:00Z"}"#;
        let huge = io::repeat(b'a').take(64 << 20);
        let after = if tail_newline { format!("\n{good}\n") } else { String::new() };
        Box::new(
            io::Cursor::new(format!("{good}\n{{\"type\":\"trip\",\"x\":\"")).chain(huge).chain(io::Cursor::new(after)),
        )
    }

    #[test]
    fn a_line_over_the_cap_is_invalid_and_never_read_whole() {
        let mut r = ChunkReader::from_reader(stream_with_a_huge_line(true)).unwrap();
        let mut records = Vec::new();
        while let Some(chunk) = r.next_chunk(256 * 1024).unwrap() {
            assert!(chunk.data.len() <= MAX_LINE_BYTES + 2 * BUF_BYTES, "a chunk of {} bytes", chunk.data.len());
            records.extend(chunk.lines().map(|(no, line)| (no, parse_line(&Format::JsonLines, line, no))));
        }
        let watermark = Ok(Event::Watermark(1_451_606_400_000));
        assert_eq!(records, vec![(1, watermark), (2, Err(InvalidReason::LineTooLong)), (3, watermark)]);
        // At the very end of the input, without a final newline, too.
        let records: Vec<_> = ChunkReader::from_reader(stream_with_a_huge_line(false))
            .unwrap()
            .into_records()
            .map(Result::unwrap)
            .collect();
        assert_eq!(records, vec![(1, watermark), (2, Err(InvalidReason::LineTooLong))]);
    }

    #[test]
    fn tiny_inputs() {
        // Fewer bytes than the compression magic.
        assert_eq!(all_records(b"{}".to_vec()), vec![(1, Err(InvalidReason::MissingType))]);
        assert_eq!(all_records(b"{".to_vec()), vec![(1, Err(InvalidReason::NotJson))]);
        // A CSV header with no rows.
        let r = reader(HEADER_2015.as_bytes().to_vec());
        assert_eq!(r.into_records().count(), 0);
    }
}
