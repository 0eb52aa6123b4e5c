//! The archive's I/O for the shard tasks: where files go, and uploading the files a checkpoint
//! decided. What goes into which file, and the marks that make a restart rebuild exactly those
//! files, are in [`taxi_core::archive`]; the order (marks in the checkpoint first, then the
//! upload) is kept by the shard task's checkpoint.

use taxi_core::archive::ShardArchive;
use taxi_core::settings::ArchiveSettings;
use taxi_core::time::wall_clock_millis;
use taxi_io::store::{CheckpointStore, Precondition, S3Settings, StoreError};

use crate::metrics::WorkerMetrics;

/// Where a run's archive files go, and when they close.
#[derive(Clone, Debug)]
pub(super) struct ArchiveTarget {
    /// The bucket and prefix (or directory) of the files.
    store: CheckpointStore,
    /// URI, file size and age.
    pub(super) settings: ArchiveSettings,
}

impl ArchiveTarget {
    /// Opens the archive's store (same S3 endpoint and addressing as the checkpoints).
    pub(super) async fn open(settings: &ArchiveSettings, s3: &S3Settings) -> Result<ArchiveTarget, StoreError> {
        let store = CheckpointStore::from_uri(&settings.uri, s3, 0).await?;
        Ok(ArchiveTarget { store, settings: settings.clone() })
    }

    /// Closes the files of `archive` that are due (size or age).
    pub(super) fn close_due(&self, archive: &mut ShardArchive) -> Result<(), taxi_core::archive::ArchiveError> {
        archive.close_due(wall_clock_millis(), self.settings.max_file_bytes, self.settings.max_file_age_ms)
    }

    /// Uploads every complete file of `archive`. A file that fails is handed back and tried again
    /// at the next checkpoint, which still lists it. Returns true when nothing is left to upload.
    pub(super) async fn upload_ready(&self, archive: &mut ShardArchive, metrics: &WorkerMetrics) -> bool {
        let mut all_uploaded = true;
        for file in archive.take_ready() {
            let key = file.key(archive.shard_id());
            // Overwriting is safe: a file's name fixes its rows, so a second write (after a
            // restart, or by a fenced previous owner) writes the same rows.
            match self.store.put(&key, &file.bytes, &Precondition::None).await {
                Ok(_) => {
                    metrics.archive_files.inc();
                    metrics.archive_trips.inc_by(file.rows);
                    metrics.archive_bytes.inc_by(file.bytes.len() as u64);
                    tracing::debug!(shard = archive.shard_id(), key, rows = file.rows, "archive file written");
                }
                Err(error) => {
                    metrics.archive_failures.inc();
                    tracing::warn!(shard = archive.shard_id(), key, %error, "failed to write an archive file; retried at the next checkpoint");
                    archive.give_back(file);
                    all_uploaded = false;
                }
            }
        }
        all_uploaded
    }
}
