//! The `file://` checkpoint store: a directory of objects with the same conditional-put semantics
//! as S3, so local mode and tests fence a shard's previous owner exactly as a pod does.

use std::io::Write;
use std::path::{Component, Path, PathBuf};

use md5::{Digest, Md5};

use super::StoreError;

/// Entity tag of a stored object: the MD5 of its bytes, as S3 computes it for single-part objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ETag(pub String);

impl ETag {
    fn of(bytes: &[u8]) -> ETag {
        ETag(Md5::digest(bytes).iter().map(|b| format!("{b:02x}")).collect())
    }
}

/// When a put may happen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// Always.
    None,
    /// Only if the object does not exist (If-None-Match `*`).
    Absent,
    /// Only if the object still has this tag (If-Match).
    Matches(ETag),
}

/// A directory of checkpoint objects (`file://` URIs), with the same conditional-put semantics
/// as the S3 store. Writes are atomic (temporary file + rename); the check-then-rename is not
/// atomic across processes, so one directory must be written by one process at a time.
#[derive(Clone, Debug)]
pub struct DirStore {
    root: PathBuf,
}

impl DirStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> DirStore {
        DirStore { root: root.into() }
    }

    /// A store from `file:///abs/path`, `file://rel/path` or a plain path.
    pub fn from_uri(uri: &str) -> Result<DirStore, StoreError> {
        if let Some(rest) = uri.strip_prefix("file://") {
            return Ok(DirStore::new(rest));
        }
        if uri.contains("://") || uri.is_empty() {
            return Err(StoreError::UnsupportedUri(uri.to_owned()));
        }
        Ok(DirStore::new(uri))
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        let relative = Path::new(key);
        let safe = !key.is_empty() && relative.components().all(|c| matches!(c, Component::Normal(_)));
        if !safe {
            return Err(StoreError::BadKey(key.to_owned()));
        }
        Ok(self.root.join(relative))
    }

    /// Reads an object and its tag, `None` if absent.
    pub fn get(&self, key: &str) -> Result<Option<(Vec<u8>, ETag)>, StoreError> {
        let path = self.path(key)?;
        match std::fs::read(&path) {
            Ok(bytes) => {
                let tag = ETag::of(&bytes);
                Ok(Some((bytes, tag)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io { action: "read", path, source }),
        }
    }

    /// Writes an object atomically if `precondition` holds, returning its new tag.
    pub fn put(&self, key: &str, bytes: &[u8], precondition: &Precondition) -> Result<ETag, StoreError> {
        let path = self.path(key)?;
        let current = match precondition {
            Precondition::None => None,
            _ => self.get(key)?.map(|(_, tag)| tag),
        };
        let allowed = match (precondition, &current) {
            (Precondition::None, _) | (Precondition::Absent, None) => true,
            (Precondition::Matches(expected), Some(actual)) => expected == actual,
            _ => false,
        };
        if !allowed {
            return Err(StoreError::Conflict { key: key.to_owned() });
        }
        let io = |action, source| StoreError::Io { action, path: path.clone(), source };
        let dir = path.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(dir).map_err(|e| io("create the directory of", e))?;
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        let mut file = std::fs::File::create(&tmp).map_err(|e| io("create", e))?;
        file.write_all(bytes).map_err(|e| io("write", e))?;
        file.sync_all().map_err(|e| io("sync", e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io("rename", e))?;
        Ok(ETag::of(bytes))
    }

    /// Deletes an object or a whole prefix directory; absent is fine.
    pub fn delete_prefix(&self, prefix: &str) -> Result<(), StoreError> {
        let path = self.path(prefix)?;
        let result = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        match result {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Io { action: "delete", path, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_store_puts_conditionally() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = DirStore::from_uri(&format!("file://{}", dir.path().display())).expect("uri");
        assert!(store.get("p/shard-1").expect("get").is_none());
        let first = store.put("p/shard-1", b"one", &Precondition::Absent).expect("create");
        assert!(matches!(store.put("p/shard-1", b"x", &Precondition::Absent), Err(StoreError::Conflict { .. })));
        let second = store.put("p/shard-1", b"two", &Precondition::Matches(first.clone())).expect("update");
        // A zombie still holding the first tag is fenced.
        assert!(matches!(
            store.put("p/shard-1", b"zombie", &Precondition::Matches(first)),
            Err(StoreError::Conflict { .. })
        ));
        let (bytes, tag) = store.get("p/shard-1").expect("get").expect("present");
        assert_eq!((bytes.as_slice(), tag), (&b"two"[..], second));
        store.delete_prefix("p").expect("delete");
        assert!(store.get("p/shard-1").expect("get").is_none());
    }

    #[test]
    fn dir_store_rejects_keys_escaping_its_root_and_foreign_uris() {
        let store = DirStore::new("/tmp/x");
        for key in ["../etc/passwd", "/abs", "", "a/../../b"] {
            assert!(matches!(store.get(key), Err(StoreError::BadKey(_))), "{key}");
        }
        assert!(matches!(DirStore::from_uri("s3://bucket/p"), Err(StoreError::UnsupportedUri(_))));
    }
}
