//! Credentials kept out of what the pipeline shows: the user information of a URL
//! (`user:password@`, or `user@`) is masked before a URL reaches a log line, an error message, a
//! Kubernetes Event or `/status`.
//!
//! The settings refuse such URLs in the first place ([`crate::settings::WorkerSettings::validate`]);
//! [`url`] is the second line, for one that got past them (a document written before the check,
//! options built in code) and for messages of libraries that quote the URL they were given.

use std::borrow::Cow;
use std::ops::Range;

/// What replaces the user information of a URL.
pub const MASK: &str = "***";

/// `text` with the user information of every URL in it replaced by [`MASK`]:
/// `https://admin:s3cret@search:9200/_bulk` becomes `https://***@search:9200/_bulk`. `text` may be
/// one URL or a message quoting several; without user information it comes back borrowed.
///
/// A URL's authority runs from its `://` to the first character a URL's user information cannot
/// hold (`/`, `?`, `#`, `\`, whitespace, `"`, `<`, `>`, `` ` ``), and its user information up to
/// the last `@` in the authority, as URL parsers read it: a password with a stray `@` is masked
/// whole. A doubtful end masks too much rather than too little.
pub fn url(text: &str) -> Cow<'_, str> {
    let mut masked = String::new();
    let mut copied = 0;
    for userinfo in userinfo_spans(text) {
        masked.push_str(&text[copied..userinfo.start]);
        masked.push_str(MASK);
        copied = userinfo.end;
    }
    // Every span ends after a `://`, so nothing was masked exactly when nothing was copied.
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    masked.push_str(&text[copied..]);
    Cow::Owned(masked)
}

/// Whether `url` carries user information (`user:password@` or `user@`) that [`url`] would mask.
pub fn has_credentials(url: &str) -> bool {
    userinfo_spans(url).next().is_some()
}

/// The byte ranges of the user information of each URL authority in `text`, in order.
fn userinfo_spans(text: &str) -> impl Iterator<Item = Range<usize>> + '_ {
    text.match_indices("://").filter_map(|(at, separator)| {
        let start = at + separator.len();
        let rest = &text[start..];
        let end = rest.find(ends_authority).unwrap_or(rest.len());
        rest[..end].rfind('@').map(|at_sign| start..start + at_sign)
    })
}

fn ends_authority(c: char) -> bool {
    matches!(c, '/' | '?' | '#' | '\\' | '"' | '`' | '<' | '>') || c.is_whitespace()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_user_information_of_a_url_is_masked() {
        let cases = [
            ("https://admin:s3cret@search.example.com:9200/_bulk", "https://***@search.example.com:9200/_bulk"),
            ("http://admin@opensearch:9200", "http://***@opensearch:9200"),
            ("https://writer:p%40ss@search.example.com", "https://***@search.example.com"),
            ("https://writer:p@ss@search.example.com/", "https://***@search.example.com/"),
            ("http://@opensearch:9200", "http://***@opensearch:9200"),
            ("https://u:p@h?q=1", "https://***@h?q=1"),
        ];
        for (raw, shown) in cases {
            assert_eq!(url(raw), shown, "{raw}");
            assert!(has_credentials(raw), "{raw}");
        }
    }

    #[test]
    fn a_url_without_user_information_is_returned_unchanged_and_borrowed() {
        for raw in [
            "https://search.example.com:9200",
            "https://search.example.com/proxy/@team?owner=a@b#c@d",
            "file:///var/lib/taxi/partials.jsonl",
            "s3://bucket/prefix",
            "opensearch:9200",
            "mail ops@example.com about it",
            "",
        ] {
            assert!(matches!(url(raw), Cow::Borrowed(s) if s == raw), "{raw}");
            assert!(!has_credentials(raw), "{raw}");
        }
    }

    #[test]
    fn every_url_quoted_in_a_message_is_masked() {
        let message = "invalid URL \"http://a:b@x:1\": OpenSearch bulk request to https://c@y/z failed \
            (error sending request for url (http://d:e@w/_bulk))";
        assert_eq!(
            url(message),
            "invalid URL \"http://***@x:1\": OpenSearch bulk request to https://***@y/z failed \
            (error sending request for url (http://***@w/_bulk))"
        );
    }

    proptest! {
        #[test]
        fn no_password_survives(
            user in "[A-Za-z0-9._~%!$&'()*+,;=-]{0,12}",
            password in "[A-Za-z0-9._~%!$&'()*+,;=:@-]{1,24}",
            host in "[a-z][a-z0-9.-]{0,20}",
        ) {
            let raw = format!("https://{user}:{password}@{host}:9200/_bulk");
            let shown = format!("https://***@{host}:9200/_bulk");
            prop_assert_eq!(url(&raw), shown.as_str());
            let message = format!("request to '{raw}' failed; retrying {raw}");
            prop_assert_eq!(url(&message), format!("request to '{shown}' failed; retrying {shown}"));
        }
    }
}
