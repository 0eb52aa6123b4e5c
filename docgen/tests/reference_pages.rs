//! The generated pages in `docs/reference/` are current: each one on disk is exactly what the
//! code generates now. A failure names the page and the command that rewrites it.

use taxi_docgen::{REGENERATE, difference, pages, workspace_root};

#[test]
fn every_reference_page_matches_the_code() {
    let root = workspace_root();
    let stale: Vec<String> = pages()
        .iter()
        .filter_map(|page| {
            let difference = difference(page, &root).unwrap_or_else(|e| panic!("{e}"));
            difference.map(|d| format!("{} is stale ({d})", page.path))
        })
        .collect();
    assert!(stale.is_empty(), "{}; regenerate with\n    {REGENERATE}\n(or `make docs`)", stale.join("; "));
}

#[test]
fn every_page_says_it_is_generated_and_how() {
    for page in pages() {
        let text = (page.render)();
        let first = text.lines().next().unwrap_or_default();
        assert!(first.contains(REGENERATE) && first.contains("do not edit it by hand"), "{}: {first}", page.path);
    }
}
