//! Where a shard with nothing processed yet starts reading (`--start-position`, and
//! `spec.stream.startPosition` of a pipeline), and how that is fixed at the shard's first claim.

use crate::checkpoint::Position;
use crate::event::Millis;
use crate::time::parse_timestamp;

/// Where a shard with nothing processed yet starts (`--start-position`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InitialPosition {
    /// The oldest record still retained (TRIM_HORIZON).
    TrimHorizon,
    /// Only records that arrive after the shard is first claimed (LATEST).
    Latest,
    /// The first record that arrived at or after this instant (AT_TIMESTAMP).
    AtTimestamp(Millis),
}

/// Resolves where a shard with nothing processed yet starts, once, at its first claim; the claim
/// checkpoints the result, so a restart or handoff before the first record reads from the same
/// place. LATEST becomes the claim's instant (`now`). A child shard (`child`: one of its parents
/// is still listed, so it was read to its end first) always starts at TRIM_HORIZON, whatever was
/// configured: everything in it came after its parents, and none of it may be skipped.
pub fn initial_position(configured: &InitialPosition, child: bool, now: Millis) -> Position {
    match configured {
        _ if child => Position::Start,
        InitialPosition::TrimHorizon => Position::Start,
        InitialPosition::Latest => Position::ArrivedFrom { timestamp: now },
        InitialPosition::AtTimestamp(timestamp) => Position::ArrivedFrom { timestamp: *timestamp },
    }
}

/// Parses a start position: `trim-horizon`, `latest` (either spelling) or an ISO-8601 time.
pub fn parse(s: &str) -> Result<InitialPosition, String> {
    match s {
        "trim-horizon" | "TRIM_HORIZON" => Ok(InitialPosition::TrimHorizon),
        "latest" | "LATEST" => Ok(InitialPosition::Latest),
        other => parse_timestamp(other.as_bytes()).map(InitialPosition::AtTimestamp).ok_or_else(|| {
            format!("invalid start position {other:?}: expected trim-horizon, latest or an ISO-8601 time")
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_resolves_to_the_first_claim_and_children_start_at_their_beginning() {
        let now = 1_451_606_400_000;
        assert_eq!(initial_position(&InitialPosition::Latest, false, now), Position::ArrivedFrom { timestamp: now });
        assert_eq!(
            initial_position(&InitialPosition::AtTimestamp(42), false, now),
            Position::ArrivedFrom { timestamp: 42 }
        );
        assert_eq!(initial_position(&InitialPosition::TrimHorizon, false, now), Position::Start);
        for configured in [InitialPosition::Latest, InitialPosition::AtTimestamp(42), InitialPosition::TrimHorizon] {
            assert_eq!(initial_position(&configured, true, now), Position::Start, "{configured:?} for a child");
        }
    }

    #[test]
    fn both_spellings_and_timestamps_parse() {
        assert_eq!(parse("trim-horizon"), Ok(InitialPosition::TrimHorizon));
        assert_eq!(parse("LATEST"), Ok(InitialPosition::Latest));
        assert_eq!(parse("1970-01-01T00:00:01Z"), Ok(InitialPosition::AtTimestamp(1000)));
        assert!(parse("yesterday").expect_err("not a position").contains("trim-horizon"));
    }
}
