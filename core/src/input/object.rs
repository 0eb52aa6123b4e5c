//! Where an input's bytes come from. An input is a list of [`InputObject`]s read in order: local
//! files here, S3 objects in the I/O layer. Each object is read either as one sequential stream
//! (JSON lines and CSV, compressed or not) or by ranges (Parquet, whose footer comes first).

use std::fmt::Debug;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::InputError;

/// Reads of byte ranges of one object, from any thread.
pub trait RandomAccess: Send + Sync {
    /// The object's size in bytes.
    fn len(&self) -> u64;

    /// True when the object holds no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Up to `len` bytes from `offset` (fewer only at the object's end).
    fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>>;
}

/// One object of an input: a local file or a remote object.
pub trait InputObject: Send + Sync + Debug {
    /// How messages name it: `input file <path>` or `s3://bucket/key`.
    fn origin(&self) -> &str;

    /// The whole content, read front to back.
    fn stream(&self) -> Result<Box<dyn Read + Send>, InputError>;

    /// Reads of ranges of the content.
    fn random_access(&self) -> Result<Arc<dyn RandomAccess>, InputError>;
}

/// A file on the local file system.
#[derive(Debug, Clone)]
pub struct LocalFile {
    path: PathBuf,
    origin: String,
}

impl LocalFile {
    /// The file at `path` (opened only when read).
    pub fn new(path: impl Into<PathBuf>) -> LocalFile {
        let path = path.into();
        let origin = format!("input file {}", path.display());
        LocalFile { path, origin }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open(&self) -> Result<File, InputError> {
        File::open(&self.path).map_err(|source| InputError::Open { path: self.path.clone(), source })
    }
}

impl InputObject for LocalFile {
    fn origin(&self) -> &str {
        &self.origin
    }

    fn stream(&self) -> Result<Box<dyn Read + Send>, InputError> {
        Ok(Box::new(self.open()?))
    }

    fn random_access(&self) -> Result<Arc<dyn RandomAccess>, InputError> {
        let file = self.open()?;
        let len = file.metadata().map_err(|source| InputError::Read { origin: self.origin.clone(), source })?.len();
        Ok(Arc::new(LocalRanges { file, len }))
    }
}

/// Positioned reads of an open local file.
struct LocalRanges {
    file: File,
    len: u64,
}

impl RandomAccess for LocalRanges {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let available = usize::try_from(self.len.saturating_sub(offset)).unwrap_or(usize::MAX);
        let mut buf = vec![0; len.min(available)];
        let mut filled = 0;
        while filled < buf.len() {
            match positioned_read(&self.file, &mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(filled);
        Ok(buf)
    }
}

#[cfg(unix)]
fn positioned_read(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, offset)
}

#[cfg(windows)]
fn positioned_read(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(file, buf, offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_local_file_reads_as_a_stream_and_by_ranges() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(b"0123456789").expect("write");
        let object = LocalFile::new(file.path());
        assert!(object.origin().starts_with("input file "));
        let mut all = String::new();
        object.stream().expect("stream").read_to_string(&mut all).expect("read");
        assert_eq!(all, "0123456789");
        let ranges = object.random_access().expect("ranges");
        assert_eq!(ranges.len(), 10);
        assert_eq!(ranges.read_at(3, 4).expect("read"), b"3456");
        assert_eq!(ranges.read_at(8, 4).expect("read"), b"89", "short at the end");
        assert_eq!(ranges.read_at(20, 4).expect("read"), b"");
    }

    #[test]
    fn a_missing_file_is_an_open_error_naming_it() {
        let object = LocalFile::new("/nonexistent/trips.json");
        let Err(err) = object.stream() else { panic!("a missing file opened") };
        assert!(err.to_string().contains("/nonexistent/trips.json"), "{err}");
    }
}
