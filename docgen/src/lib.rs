//! Writes the reference pages of `docs/reference/` from the code they describe, so they cannot
//! drift from it:
//!
//! - [`crd`]: `crd.md`, the TaxiPipeline API, from the CRD schema the operator generates;
//! - [`cli`]: `cli.md`, both command lines, from their clap types (one renderer for both);
//! - [`metrics`]: `metrics.md`, every Prometheus metric of the worker and of the operator.
//!
//! `cargo run -p taxi-docgen` (or `make docs`, which also writes the chart's values page with
//! charts/tests/values_reference.py) rewrites the pages; a test of this crate fails while one on
//! disk differs from what the code generates, naming that command.
//!
//! Why a crate of its own, rather than a hidden subcommand on each binary: the CLI page needs
//! both binaries' clap types and one renderer for them. In a binary's crate the other binary's
//! types are out of reach (the operator may not depend on the worker, `.ci/layers` checks it), and
//! the crates both share cannot hold the renderer (the core takes no clap, the adapters no clap or
//! Kubernetes types). A development-only crate above both binaries is the one place that sees
//! everything; it is outside the default members, so a plain `cargo build` skips it, and nothing
//! depends on it.

use std::path::{Path, PathBuf};

pub mod cli;
pub mod crd;
pub mod markdown;
pub mod metrics;

/// The command that rewrites every page of this crate.
pub const REGENERATE: &str = "cargo run -p taxi-docgen";

/// One generated page.
#[derive(Clone, Copy, Debug)]
pub struct Page {
    /// Path of the page, relative to the workspace root.
    pub path: &'static str,
    /// Renders the page's whole text.
    pub render: fn() -> String,
}

/// Every page this crate generates.
pub fn pages() -> [Page; 3] {
    [
        Page { path: "docs/reference/crd.md", render: crd::page },
        Page { path: "docs/reference/cli.md", render: cli::page },
        Page { path: "docs/reference/metrics.md", render: metrics::page },
    ]
}

/// The workspace root, which the pages' paths are relative to.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// A page that could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct PageError {
    /// The page's path.
    pub path: PathBuf,
    /// What the file system said.
    #[source]
    pub source: std::io::Error,
}

/// Where a page on disk differs from what the code generates, or `None` when it is current.
pub fn difference(page: &Page, root: &Path) -> Result<Option<String>, PageError> {
    let path = root.join(page.path);
    let on_disk = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Some("the page does not exist".to_owned())),
        Err(source) => return Err(PageError { path, source }),
    };
    let generated = (page.render)();
    if on_disk == generated {
        return Ok(None);
    }
    let line = on_disk.lines().zip(generated.lines()).position(|(a, b)| a != b);
    Ok(Some(match line {
        Some(i) => format!("first difference at line {}", i + 1),
        None => "the page differs in length".to_owned(),
    }))
}

/// Writes every page under `root` whose text changed; returns the paths written.
pub fn write_all(root: &Path) -> Result<Vec<&'static str>, PageError> {
    let mut written = Vec::new();
    for page in pages() {
        if difference(&page, root)?.is_none() {
            continue;
        }
        let path = root.join(page.path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| PageError { path: dir.to_path_buf(), source })?;
        }
        std::fs::write(&path, (page.render)()).map_err(|source| PageError { path, source })?;
        written.push(page.path);
    }
    Ok(written)
}
