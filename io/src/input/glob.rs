//! [`KeyGlob`]: a shell-style pattern on S3 keys. `*` is any run of characters and `?` any one
//! character, neither crossing a `/`; `[...]` is one character of a set (`[abc]`, `[0-3]`, negated
//! by a leading `!` or `^`). There is no escape: a key with a literal `*`, `?` or `[` is named
//! whole, without a pattern.

/// One element of a pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    /// This very character.
    Literal(char),
    /// Any one character but `/`.
    One,
    /// Any run of characters without `/`, possibly empty.
    Run,
    /// One character (not `/`) of the ranges, or outside them when `negated`.
    Class { ranges: Vec<(char, char)>, negated: bool },
}

/// A compiled key pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyGlob {
    tokens: Vec<Token>,
}

/// The characters that make a key a pattern.
const WILDCARDS: [char; 3] = ['*', '?', '['];

impl KeyGlob {
    /// True when `key` holds a wildcard, so it names a pattern rather than one key.
    pub fn is_pattern(key: &str) -> bool {
        key.contains(WILDCARDS)
    }

    /// The part of `pattern` before its first wildcard: every matching key starts with it, so a
    /// listing under it finds them all.
    pub fn literal_prefix(pattern: &str) -> &str {
        pattern.find(WILDCARDS).map_or(pattern, |at| &pattern[..at])
    }

    /// Compiles `pattern`; the error says what is wrong with it.
    pub fn new(pattern: &str) -> Result<KeyGlob, String> {
        let mut tokens = Vec::new();
        let mut chars = pattern.chars();
        while let Some(c) = chars.next() {
            tokens.push(match c {
                '*' => Token::Run,
                '?' => Token::One,
                '[' => {
                    let (class, rest) = parse_class(chars.as_str())?;
                    chars = rest.chars();
                    class
                }
                c => Token::Literal(c),
            });
        }
        Ok(KeyGlob { tokens })
    }

    /// True when the whole of `key` matches.
    pub fn matches(&self, key: &str) -> bool {
        let key: Vec<char> = key.chars().collect();
        matches_from(&self.tokens, &key)
    }
}

/// Parses a class after its `[`: the token and the rest of the pattern after its `]`.
fn parse_class(text: &str) -> Result<(Token, &str), String> {
    let (negated, body) = match text.strip_prefix(['!', '^']) {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let mut ranges = Vec::new();
    let mut chars = body.char_indices().peekable();
    // A `]` right after the opening (or its negation) is a member, as in the shell.
    let mut first = true;
    while let Some((at, c)) = chars.next() {
        if c == ']' && !first {
            return Ok((Token::Class { ranges, negated }, &body[at + 1..]));
        }
        first = false;
        let end = match (chars.peek(), body[at + c.len_utf8()..].chars().nth(1)) {
            (Some(&(_, '-')), Some(end)) if end != ']' => {
                chars.next();
                chars.next();
                end
            }
            _ => c,
        };
        if end < c {
            return Err(format!("the range {c}-{end} in a [...] set is reversed"));
        }
        ranges.push((c, end));
    }
    Err("a [...] set is not closed by ']'".to_owned())
}

/// Whether `key` matches `tokens`: a backtracking match whose only branching is `*`. Each `*`
/// resumes after the last one tried, so the work stays proportional to tokens × characters.
fn matches_from(tokens: &[Token], key: &[char]) -> bool {
    let (mut t, mut k) = (0, 0);
    // The last `*` seen and the key position it currently stops at.
    let mut star: Option<(usize, usize)> = None;
    while k < key.len() {
        let step = match tokens.get(t) {
            Some(Token::Literal(c)) => *c == key[k],
            Some(Token::One) => key[k] != '/',
            Some(Token::Class { ranges, negated }) => {
                key[k] != '/' && ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&key[k])) != *negated
            }
            Some(Token::Run) => {
                star = Some((t, k));
                t += 1;
                continue;
            }
            None => false,
        };
        if step {
            t += 1;
            k += 1;
        } else if let Some((star_t, star_k)) = star
            && key[star_k] != '/'
        {
            // Let the last `*` take one more character, and match the rest again after it.
            star = Some((star_t, star_k + 1));
            t = star_t + 1;
            k = star_k + 1;
        } else {
            return false;
        }
    }
    tokens[t..].iter().all(|token| *token == Token::Run)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob(pattern: &str) -> KeyGlob {
        KeyGlob::new(pattern).expect(pattern)
    }

    #[test]
    fn stars_and_question_marks_stay_within_a_folder() {
        let parquet = glob("trips/*.parquet");
        assert!(parquet.matches("trips/yellow_2016-01.parquet"));
        assert!(parquet.matches("trips/.parquet"), "a star may be empty");
        assert!(!parquet.matches("trips/2016/yellow.parquet"), "a star does not cross '/'");
        assert!(!parquet.matches("trips/yellow.parquet.tmp"));
        assert!(glob("a?c").matches("abc"));
        assert!(!glob("a?c").matches("a/c"));
        assert!(!glob("a?c").matches("ac"));
        assert!(glob("*/*.csv").matches("2016/jan.csv"));
        assert!(glob("*a*b*").matches("xxaxxbxx"));
        assert!(!glob("*a*b*").matches("xxbxxaxx"));
        assert!(glob("**").matches("anything"));
        assert!(glob("").matches(""));
        assert!(!glob("").matches("x"));
    }

    #[test]
    fn sets_ranges_and_negation() {
        let months = glob("yellow_2016-0[1-3]*.csv.gz");
        for month in ["01", "02", "03"] {
            assert!(months.matches(&format!("yellow_2016-{month}.csv.gz")), "{month}");
        }
        assert!(!months.matches("yellow_2016-04.csv.gz"));
        assert!(glob("[abc]").matches("b"));
        assert!(!glob("[!abc]").matches("b"));
        assert!(glob("[^abc]").matches("d"));
        assert!(!glob("[!abc]").matches("/"), "a negated set does not match '/' either");
        assert!(glob("[]x]").matches("]"), "']' first is a member");
        assert!(glob("[a-]").matches("-"), "a trailing '-' is a member");
        assert!(glob("[é-ï]").matches("î"));
    }

    #[test]
    fn bad_patterns_say_why() {
        assert!(KeyGlob::new("a[bc").expect_err("open set").contains("not closed"));
        assert!(KeyGlob::new("[z-a]").expect_err("reversed").contains("reversed"));
    }

    #[test]
    fn the_literal_prefix_ends_at_the_first_wildcard() {
        assert_eq!(KeyGlob::literal_prefix("data/2016-0[1-3]*.csv"), "data/2016-0");
        assert_eq!(KeyGlob::literal_prefix("data/*.parquet"), "data/");
        assert_eq!(KeyGlob::literal_prefix("*"), "");
        assert_eq!(KeyGlob::literal_prefix("data/key"), "data/key");
        assert!(KeyGlob::is_pattern("a?") && KeyGlob::is_pattern("[a]") && !KeyGlob::is_pattern("a/b"));
    }

    #[test]
    fn long_keys_with_many_stars_match_quickly() {
        let key = "a".repeat(5000);
        let pattern = format!("{}b", "*a".repeat(20));
        assert!(!glob(&pattern).matches(&key));
    }
}
