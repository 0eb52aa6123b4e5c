//! Markdown building blocks every page uses: the generated-page notice, inline code, text that
//! came from doc comments (made safe for Markdown), table cells and heading anchors.

use crate::REGENERATE;

/// The first line of every generated page: where it comes from, the command that writes it,
/// and that it is not edited by hand.
pub fn generated_notice(source: &str) -> String {
    format!("_Generated from {source} by `{REGENERATE}` (or `make docs`); do not edit it by hand._\n")
}

/// `text` as inline code, with a fence long enough for the backticks it holds.
pub fn code(text: &str) -> String {
    let longest_run = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest_run + 1);
    let pad = if text.starts_with('`') || text.ends_with('`') { " " } else { "" };
    format!("{fence}{pad}{text}{pad}{fence}")
}

/// Prose from a doc comment or a help text, as Markdown paragraphs: the lines of a paragraph are
/// joined (doc comments wrap at a fixed width), paragraphs are separated by `separator`, and
/// outside code spans `<`, `>` and `*` are escaped (descriptions write `<name>` and `TAXI_*`,
/// which Markdown would take for HTML and emphasis).
pub fn prose(text: &str, separator: &str) -> String {
    text.split("\n\n")
        .map(|paragraph| paragraph.split('\n').map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" "))
        .filter(|p| !p.is_empty())
        .map(|p| escape_outside_code(&p))
        .collect::<Vec<_>>()
        .join(separator)
}

/// Prose for one table cell: paragraphs separated by `<br><br>`, and `|` escaped.
pub fn cell(text: &str) -> String {
    prose(text, "<br><br>").replace('|', "\\|")
}

/// A table row of already formatted cells.
pub fn row(cells: &[String]) -> String {
    format!("| {} |\n", cells.join(" | "))
}

/// A table's header row and its separator.
pub fn table_header(titles: &[&str]) -> String {
    let separator: Vec<&str> = titles.iter().map(|_| "---").collect();
    format!("| {} |\n| {} |\n", titles.join(" | "), separator.join(" | "))
}

/// The anchor GitHub gives a heading: lower case, punctuation other than `-` and `_` dropped,
/// spaces turned into `-`.
pub fn anchor(heading: &str) -> String {
    heading
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

fn escape_outside_code(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, part) in text.split('`').enumerate() {
        if i > 0 {
            out.push('`');
        }
        if i % 2 == 1 {
            out.push_str(part);
        } else {
            for c in part.chars() {
                match c {
                    '<' => out.push_str("&lt;"),
                    '>' => out.push_str("&gt;"),
                    '*' => out.push_str("\\*"),
                    c => out.push(c),
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prose_joins_wrapped_lines_and_keeps_paragraphs() {
        let text = "Number of worker pods. Default 1.\n0 pauses the pipeline.\n\nWhile autoscaling it is\nthe floor.";
        assert_eq!(
            prose(text, "\n\n"),
            "Number of worker pods. Default 1. 0 pauses the pipeline.\n\nWhile autoscaling it is the floor."
        );
    }

    #[test]
    fn prose_escapes_html_and_emphasis_only_outside_code() {
        assert_eq!(
            prose("the Service <name>-worker, `<ns>.<name>` and TAXI_* names", " "),
            "the Service &lt;name&gt;-worker, `<ns>.<name>` and TAXI_\\* names"
        );
    }

    #[test]
    fn cells_keep_paragraphs_apart_and_escape_pipes() {
        assert_eq!(cell("a | b\nc\n\nd"), "a \\| b c<br><br>d");
    }

    #[test]
    fn code_spans_hold_backticks() {
        assert_eq!(code("spec.stream"), "`spec.stream`");
        assert_eq!(code("a`b"), "``a`b``");
        assert_eq!(code("`x`"), "`` `x` ``");
    }

    #[test]
    fn anchors_follow_github() {
        assert_eq!(anchor("`taxi-worker dead-letter list`"), "taxi-worker-dead-letter-list");
        assert_eq!(anchor("worker.podTemplate"), "workerpodtemplate");
        assert_eq!(anchor("`spec.stream.name`"), "specstreamname");
    }
}
