//! An input object's [`RandomAccess`] as the Parquet decoder's byte source.
//!
//! The decoder asks for the footer, then, for every page of every column it reads, a small read
//! of the page header followed by the page's bytes. Each of those asks would be a request on a
//! remote object, so reads go through a few cached windows of [`WINDOW_BYTES`]: a column chunk is
//! fetched a window at a time, front to back, and only the columns the projection needs are
//! fetched at all.

use std::io::{self, Read};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use parquet::errors::{ParquetError, Result};
use parquet::file::reader::{ChunkReader, Length};

use super::RandomAccess;

/// Bytes fetched per read of the object when the decoder asks for less.
const WINDOW_BYTES: usize = 1 << 20;
/// Windows kept: one per column read in parallel (six at most) and the footer's.
const WINDOWS: usize = 8;

/// The object's bytes, shared by the decoder's readers.
#[derive(Clone)]
pub(super) struct ObjectBytes {
    inner: Arc<Inner>,
}

struct Inner {
    ranges: Arc<dyn RandomAccess>,
    /// Recently fetched windows, least recently used first: `(offset, bytes)`.
    windows: Mutex<Vec<(u64, Bytes)>>,
}

impl ObjectBytes {
    /// Reads of `ranges`, through the window cache.
    pub(super) fn new(ranges: Arc<dyn RandomAccess>) -> ObjectBytes {
        ObjectBytes { inner: Arc::new(Inner { ranges, windows: Mutex::new(Vec::with_capacity(WINDOWS)) }) }
    }

    /// Up to `len` bytes from `start`, fewer only at the end of the object.
    fn bytes(&self, start: u64, len: usize) -> io::Result<Bytes> {
        let end = start.saturating_add(len as u64).min(self.inner.ranges.len());
        let len = usize::try_from(end.saturating_sub(start)).unwrap_or(usize::MAX);
        if len == 0 {
            return Ok(Bytes::new());
        }
        let mut windows = self.inner.windows.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = windows.iter().position(|(at, w)| *at <= start && end <= at + w.len() as u64) {
            let window = windows.remove(i);
            let from = (start - window.0) as usize;
            let slice = window.1.slice(from..from + len);
            windows.push(window);
            return Ok(slice);
        }
        if len >= WINDOW_BYTES {
            return Ok(Bytes::from(self.inner.ranges.read_at(start, len)?));
        }
        let window = Bytes::from(self.inner.ranges.read_at(start, WINDOW_BYTES)?);
        let slice = window.slice(..len.min(window.len()));
        if windows.len() == WINDOWS {
            windows.remove(0);
        }
        windows.push((start, window));
        Ok(slice)
    }
}

impl Length for ObjectBytes {
    fn len(&self) -> u64 {
        self.inner.ranges.len()
    }
}

impl ChunkReader for ObjectBytes {
    type T = ObjectReader;

    fn get_read(&self, start: u64) -> Result<ObjectReader> {
        Ok(ObjectReader { source: self.clone(), position: start })
    }

    fn get_bytes(&self, start: u64, length: usize) -> Result<Bytes> {
        let bytes = self.bytes(start, length).map_err(|e| ParquetError::External(Box::new(e)))?;
        if bytes.len() < length {
            return Err(ParquetError::EOF(format!("expected {length} bytes at offset {start}, got {}", bytes.len())));
        }
        Ok(bytes)
    }
}

/// A reader from an offset of the object to its end.
pub(super) struct ObjectReader {
    source: ObjectBytes,
    position: u64,
}

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let bytes = self.source.bytes(self.position, buf.len().min(WINDOW_BYTES))?;
        buf[..bytes.len()].copy_from_slice(&bytes);
        self.position += bytes.len() as u64;
        Ok(bytes.len())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// 3 MiB of a known pattern, counting the reads that reach it.
    struct Counted {
        data: Vec<u8>,
        reads: AtomicUsize,
    }

    impl RandomAccess for Counted {
        fn len(&self) -> u64 {
            self.data.len() as u64
        }

        fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            let start = (offset as usize).min(self.data.len());
            Ok(self.data[start..(start + len).min(self.data.len())].to_vec())
        }
    }

    #[test]
    fn small_reads_are_served_from_windows_and_large_ones_go_through() {
        let data: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
        let counted = Arc::new(Counted { data: data.clone(), reads: AtomicUsize::new(0) });
        let source = ObjectBytes::new(counted.clone());
        assert_eq!(source.len(), 3 << 20);
        assert_eq!(&source.get_bytes(10, 100).expect("bytes")[..], &data[10..110]);
        assert_eq!(&source.get_bytes(5000, 20).expect("bytes")[..], &data[5000..5020]);
        let mut header = [0u8; 16];
        source.get_read(200).expect("reader").read_exact(&mut header).expect("read");
        assert_eq!(header, data[200..216]);
        assert_eq!(counted.reads.load(Ordering::Relaxed), 1, "one window served all three");
        assert_eq!(source.get_bytes(1 << 20, 2 << 20).expect("bytes").len(), 2 << 20);
        assert_eq!(counted.reads.load(Ordering::Relaxed), 2);
        let mut tail = Vec::new();
        source.get_read((3 << 20) - 5).expect("reader").read_to_end(&mut tail).expect("read");
        assert_eq!(tail, data[(3 << 20) - 5..]);
        assert!(matches!(source.get_bytes((3 << 20) - 5, 10), Err(ParquetError::EOF(_))));
    }
}
