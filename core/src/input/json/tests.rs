//! Tests of the JSON scanner: records as producers write them, every rejection reason, strict
//! JSON validation, and property tests against serde_json.

use super::*;
use proptest::prelude::*;

const PICKUP: Millis = 1_451_606_739_000; // 2016-01-01T00:05:39Z
const DROPOFF: Millis = 1_451_607_330_000; // 2016-01-01T00:15:30Z

/// A realistic ~350-byte trip record with long coordinate names.
pub(crate) const TRIP_LONG: &str = r#"{"type":"trip","trip_id":12345,"vendor_id":2,"pickup_datetime":"2016-01-01T00:05:39Z","dropoff_datetime":"2016-01-01T00:15:30Z","passenger_count":1,"trip_distance":1.1,"pickup_longitude":-73.990372,"pickup_latitude":40.734695,"rate_code":1,"store_and_fwd_flag":"N","dropoff_longitude":-73.981842,"dropoff_latitude":40.732407,"payment_type":2,"fare_amount":7.5,"total_amount":8.8}"#;

fn expected_trip() -> Event {
    Event::Trip(Trip {
        trip_id: 12345,
        pickup_time: PICKUP,
        dropoff_time: DROPOFF,
        pickup: GeoPoint { lat: 40.734695, lon: -73.990372 },
        dropoff: GeoPoint { lat: 40.732407, lon: -73.981842 },
    })
}

fn parse(s: &str) -> ParsedRecord {
    parse_json_record(s.as_bytes())
}

fn short_trip(extra: &str) -> String {
    format!(
        r#"{{"trip_id":7,"pickup_datetime":"2016-01-01T00:05:39Z","dropoff_datetime":"2016-01-01T00:15:30Z","pickup_lat":40.75,"pickup_lon":-73.99,"dropoff_lat":40.64,"dropoff_lon":-73.78{extra}}}"#
    )
}

fn short_expected() -> Event {
    Event::Trip(Trip {
        trip_id: 7,
        pickup_time: PICKUP,
        dropoff_time: DROPOFF,
        pickup: GeoPoint { lat: 40.75, lon: -73.99 },
        dropoff: GeoPoint { lat: 40.64, lon: -73.78 },
    })
}

#[test]
fn parses_long_naming() {
    assert_eq!(parse(TRIP_LONG), Ok(expected_trip()));
}

#[test]
fn parses_short_naming_with_type_last() {
    assert_eq!(parse(&short_trip(r#","type":"trip""#)), Ok(short_expected()));
}

#[test]
fn allows_trailing_whitespace_only() {
    for tail in ["\n", "\r\n", "  \t\n", " "] {
        assert_eq!(parse(&format!("{TRIP_LONG}{tail}")), Ok(expected_trip()));
    }
    assert_eq!(parse(&format!("{TRIP_LONG}x")), Err(InvalidReason::NotJson));
    assert_eq!(parse(&format!("{TRIP_LONG}{{}}")), Err(InvalidReason::NotJson));
    assert_eq!(parse(&format!("{TRIP_LONG}\n{TRIP_LONG}")), Err(InvalidReason::NotJson));
    // Leading whitespace is JSON whitespace too.
    assert_eq!(parse(&format!("  {TRIP_LONG}")), Ok(expected_trip()));
}

#[test]
fn ignores_unknown_fields_of_every_type() {
    let extra = r#","a":null,"b":true,"c":false,"d":-1,"e":1.5e3,"f":"s\"x","g":[1,[2,{"h":3}]],"i":{"j":{"k":[]}},"l":18446744073709551615,"type":"trip""#;
    assert_eq!(parse(&short_trip(extra)), Ok(short_expected()));
}

#[test]
fn accepts_numbers_as_strings() {
    let s = r#"{"type":"trip","trip_id":"7","pickup_datetime":"2016-01-01T00:05:39Z","dropoff_datetime":"2016-01-01T00:15:30Z","pickup_lat":"40.75","pickup_lon":"-73.99","dropoff_lat":"40.64","dropoff_lon":"-73.78"}"#;
    assert_eq!(parse(s), Ok(short_expected()));
}

#[test]
fn accepts_integer_coordinates_and_escaped_keys() {
    let s = r#"{"type":"trip","trip_\u0069d":7,"pickup_datetime":"2016-01-01T00:05:39Z","dropoff_datetime":"2016-01-01T00:15:30Z","pickup_lat":40,"pickup_lon":-74,"dropoff_lat":41,"dropoff_lon":-73}"#;
    let Ok(Event::Trip(t)) = parse(s) else {
        panic!("not a trip: {:?}", parse(s));
    };
    assert_eq!(t.trip_id, 7);
    assert_eq!(t.pickup, GeoPoint { lat: 40.0, lon: -74.0 });
    assert_eq!(t.dropoff, GeoPoint { lat: 41.0, lon: -73.0 });
}

#[test]
fn offsets_and_fractions() {
    let s = r#"{"type":"trip","trip_id":7,"pickup_datetime":"2016-01-01T05:35:39.250+05:30","dropoff_datetime":"2015-12-31T20:15:30.5-0400","pickup_lat":40.75,"pickup_lon":-73.99,"dropoff_lat":40.64,"dropoff_lon":-73.78}"#;
    let Ok(Event::Trip(t)) = parse(s) else {
        panic!("not a trip: {:?}", parse(s));
    };
    assert_eq!(t.pickup_time, PICKUP + 250);
    assert_eq!(t.dropoff_time, DROPOFF + 500);
}

#[test]
fn parses_watermarks() {
    assert_eq!(parse(r#"{"watermark":"2016-01-01T00:05:39Z","type":"watermark"}"#), Ok(Event::Watermark(PICKUP)));
    assert_eq!(
        parse("{\"type\":\"watermark\",\"watermark\":\"2016-01-01T00:05:39.001Z\"}\r\n"),
        Ok(Event::Watermark(PICKUP + 1))
    );
    assert_eq!(parse(r#"{"type":"watermark"}"#), Err(InvalidReason::MissingField));
    assert_eq!(parse(r#"{"type":"watermark","watermark":12}"#), Err(InvalidReason::BadField));
    assert_eq!(parse(r#"{"type":"watermark","watermark":"yesterday"}"#), Err(InvalidReason::BadField));
}

#[test]
fn duplicate_keys_last_wins() {
    let s = short_trip(r#","trip_id":8,"type":"watermark","type":"trip""#);
    let Ok(Event::Trip(t)) = parse(&s) else {
        panic!("not a trip");
    };
    assert_eq!(t.trip_id, 8);
    // Mixed namings fill one slot; the later wins.
    let s = short_trip(r#","pickup_latitude":40.5,"type":"trip""#);
    let Ok(Event::Trip(t)) = parse(&s) else {
        panic!("not a trip");
    };
    assert_eq!(t.pickup.lat, 40.5);
}

#[test]
fn not_json() {
    for s in [
        "",
        "   ",
        "{",
        "{\"type\":\"trip\"",
        "{\"type\":trip}",
        "nope",
        "{'type':'trip'}",
        "{\"a\":1,}",
        "[1,2",
        "\u{feff}{}",
    ] {
        assert_eq!(parse(s), Err(InvalidReason::NotJson), "{s:?}");
    }
    assert_eq!(parse_json_record(b"{\"type\":\"\xff\"}"), Err(InvalidReason::NotJson));
}

#[test]
fn not_an_object() {
    for s in ["[]", "[1,{\"type\":\"trip\"}]", "1", "-2.5", "\"trip\"", "null", "true", "false"] {
        assert_eq!(parse(s), Err(InvalidReason::NotAnObject), "{s:?}");
    }
}

#[test]
fn missing_and_unknown_type() {
    assert_eq!(parse("{}"), Err(InvalidReason::MissingType));
    assert_eq!(parse(&short_trip("")), Err(InvalidReason::MissingType));
    for t in [r#""taxi""#, r#""Trip""#, "1", "null", "[\"trip\"]", "{}"] {
        assert_eq!(parse(&short_trip(&format!(r#","type":{t}"#))), Err(InvalidReason::UnknownType), "{t}");
    }
}

#[test]
fn missing_fields() {
    for field in
        ["trip_id", "pickup_datetime", "dropoff_datetime", "pickup_lat", "pickup_lon", "dropoff_lat", "dropoff_lon"]
    {
        let full = short_trip(r#","type":"trip""#);
        let v: serde_json::Value = serde_json::from_str(&full).unwrap();
        let mut obj = v.as_object().unwrap().clone();
        obj.remove(field);
        let s = serde_json::to_string(&obj).unwrap();
        assert_eq!(parse(&s), Err(InvalidReason::MissingField), "{field}");
    }
}

#[test]
fn bad_fields() {
    let cases = [
        ("trip_id", r#""abc""#),
        ("trip_id", "-1"),
        ("trip_id", "1.5"),
        ("trip_id", r#""+1""#),
        ("trip_id", "null"),
        ("pickup_datetime", r#""2016-13-01T00:00:00Z""#),
        ("pickup_datetime", "1451606739000"),
        ("dropoff_datetime", r#""""#),
        ("dropoff_datetime", "{}"),
        ("pickup_lat", r#""north""#),
        ("pickup_lat", r#""NaN""#),
        ("pickup_lon", r#""inf""#),
        ("dropoff_lat", "true"),
        ("dropoff_lon", "[1]"),
        ("dropoff_lon", r#""""#),
        ("pickup_lon", r#""1e999""#),
    ];
    for (field, value) in cases {
        let s = short_trip(&format!(r#","{field}":{value},"type":"trip""#));
        assert_eq!(parse(&s), Err(InvalidReason::BadField), "{field}={value}");
    }
}

#[test]
fn coordinate_out_of_range() {
    for (field, value) in
        [("pickup_lat", "90.0001"), ("pickup_lon", "-180.5"), ("dropoff_lat", "-91"), ("dropoff_lon", "181")]
    {
        let s = short_trip(&format!(r#","{field}":{value},"type":"trip""#));
        assert_eq!(parse(&s), Err(InvalidReason::CoordinateOutOfRange), "{field}");
    }
    // The bounds themselves and 0,0 are fine.
    let s = short_trip(r#","pickup_lat":90,"pickup_lon":-180,"dropoff_lat":0,"dropoff_lon":0,"type":"trip""#);
    assert!(parse(&s).is_ok());
}

#[test]
fn times_outside_1970_to_2100_are_implausible() {
    for (field, value) in [
        ("pickup_datetime", "1969-12-31T23:59:59Z"),
        ("dropoff_datetime", "2100-01-01T00:00:00Z"),
        ("dropoff_datetime", "2999-01-01T00:00:00Z"),
    ] {
        let s = short_trip(&format!(r#","{field}":"{value}","type":"trip""#));
        assert_eq!(parse(&s), Err(InvalidReason::ImplausibleTime), "{field}={value}");
    }
    let s = r#"{"type":"watermark","watermark":"2100-06-01T00:00:00Z"}"#;
    assert_eq!(parse(s), Err(InvalidReason::ImplausibleTime));
    // The edges of the range are fine.
    let s = short_trip(
        r#","pickup_datetime":"1970-01-01T00:00:00Z","dropoff_datetime":"2099-12-31T23:59:59.999Z","type":"trip""#,
    );
    assert!(parse(&s).is_ok(), "{:?}", parse(&s));
}

#[test]
fn dropoff_before_pickup() {
    let s = short_trip(r#","dropoff_datetime":"2016-01-01T00:05:38.999Z","type":"trip""#);
    assert_eq!(parse(&s), Err(InvalidReason::DropoffBeforePickup));
    // Equal is fine (zero-length trip).
    let s = short_trip(r#","dropoff_datetime":"2016-01-01T00:05:39Z","type":"trip""#);
    assert!(parse(&s).is_ok());
}

/// `s` parsed by the scanner as a number.
fn scan_number(s: &str) -> Option<f64> {
    let mut p = Scanner { b: s.as_bytes(), i: 0 };
    let n = p.number().ok()?;
    (p.i == s.len()).then_some(match n {
        Num::U64(v) => v as f64,
        Num::I64(v) => v as f64,
        Num::F64(v) => v,
    })
}

#[test]
fn numbers_match_the_standard_parser() {
    for s in [
        "0",
        "-0",
        "40.75",
        "-73.990371704101563",
        "40.734695434570313",
        "1e22",
        "1e23",
        "1.7976931348623157e308",
        "5e-324",
        "123456789012345678901234567890",
        "0.1",
        "0.30000000000000004",
        "9007199254740993",
        "-9223372036854775808",
        "18446744073709551615",
        "18446744073709551616",
        "1E+2",
        "1e-2",
    ] {
        assert_eq!(scan_number(s), s.parse::<f64>().ok(), "{s}");
    }
    for s in ["01", "-", "1.", ".5", "1e", "1e+", "+1", "--1", "0x10", "1.e5"] {
        assert_eq!(scan_number(s), None, "{s}");
    }
}

#[test]
fn strings_are_checked() {
    let ok = |s: &[u8]| parse_json_record(s) != Err(InvalidReason::NotJson);
    assert!(ok(br#"{"a":"\u00e9\n\t\"\\\/\b\f\r","type":"x"}"#));
    assert!(ok("{\"a\":\"caf\u{e9} \u{1F695}\"}".as_bytes()));
    assert!(ok(br#"{"a":"\ud83d\ude95"}"#));
    assert!(!ok(b"{\"a\":\"tab\there\"}"));
    assert!(!ok(br#"{"a":"\x"}"#));
    assert!(!ok(br#"{"a":"\u12"}"#));
    assert!(!ok(b"{\"a\":\"\xc3\x28\"}"));
    assert!(!ok(b"{\"\xff\":1}"));
    // Escaped values of read fields are decoded.
    let s = br#"{"type":"w\u0061termark","watermark":"2016-01-01T00:05:39\u005a"}"#;
    assert_eq!(parse_json_record(s), Ok(Event::Watermark(PICKUP)));
    // A lone surrogate in a read field is not JSON text we can decode.
    let s = br#"{"type":"watermark","watermark":"\ud800"}"#;
    assert_eq!(parse_json_record(s), Err(InvalidReason::NotJson));
}

#[test]
fn nesting_limit() {
    let deep = |n: usize| format!("{{\"a\":{}{}}}", "[".repeat(n), "]".repeat(n));
    assert_eq!(parse(&deep(MAX_DEPTH - 1)), Err(InvalidReason::MissingType));
    assert_eq!(parse(&deep(MAX_DEPTH + 1)), Err(InvalidReason::NotJson));
    // Far deeper input fails cleanly instead of overflowing the stack.
    assert_eq!(parse(&deep(100_000)), Err(InvalidReason::NotJson));
}

/// Arbitrary JSON values (strings include escapes and non-ASCII once serialized).
fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |v| v.is_finite()).prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = parse_json_record(&bytes);
    }

    #[test]
    fn never_panics_on_mutated_records(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8)
    ) {
        let mut bytes = TRIP_LONG.as_bytes().to_vec();
        for (at, byte, op) in edits {
            if bytes.is_empty() {
                break;
            }
            let i = at.index(bytes.len());
            match op {
                0 => bytes[i] = byte,
                1 => { bytes.remove(i); }
                _ => bytes.insert(i, byte),
            }
        }
        let _ = parse_json_record(&bytes);
    }

    #[test]
    fn numbers_match_std(v in any::<f64>().prop_filter("finite", |v| v.is_finite()), digits in 0usize..20) {
        for s in [format!("{v}"), format!("{v:e}"), format!("{v:.digits$}")] {
            prop_assert_eq!(scan_number(&s), s.parse::<f64>().ok(), "{}", s);
        }
    }

    #[test]
    fn validity_matches_serde_json(s in r#"[{}\[\]":,0-9a-z_.\-+eE \\]{0,60}"#) {
        let ours = parse_json_record(s.as_bytes()) == Err(InvalidReason::NotJson);
        match serde_json::from_str::<serde_json::Value>(&s) {
            Ok(_) => prop_assert!(!ours, "we reject valid JSON {:?}", s),
            // serde_json rejects numbers that overflow f64; we accept them as JSON.
            Err(e) if e.to_string().contains("out of range") => {}
            Err(_) => prop_assert!(ours, "we accept invalid JSON {:?}", s),
        }
    }

    #[test]
    fn validity_matches_serde_json_on_mutated_records(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), prop::sample::select(br#"{}[]":,.-+eE0159a\ "#.to_vec()), 0u8..3), 1..4)
    ) {
        let mut bytes = TRIP_LONG.as_bytes().to_vec();
        for (at, byte, op) in edits {
            let i = at.index(bytes.len());
            match op {
                0 => bytes[i] = byte,
                1 => { bytes.remove(i); }
                _ => bytes.insert(i, byte),
            }
        }
        let ours = parse_json_record(&bytes) == Err(InvalidReason::NotJson);
        match serde_json::from_slice::<serde_json::Value>(&bytes) {
            // serde_json rejects numbers that overflow f64; we accept them as JSON.
            Err(e) if e.to_string().contains("out of range") => {}
            theirs => prop_assert_eq!(ours, theirs.is_err(), "{}", String::from_utf8_lossy(&bytes)),
        }
    }

    #[test]
    fn valid_json_is_never_not_json(v in arb_json()) {
        let s = serde_json::to_string(&v).unwrap();
        prop_assert_ne!(parse_json_record(s.as_bytes()), Err(InvalidReason::NotJson));
        let pretty = serde_json::to_string_pretty(&v).unwrap();
        prop_assert_ne!(parse_json_record(pretty.as_bytes()), Err(InvalidReason::NotJson));
    }

    #[test]
    fn never_panics_on_json_like_text(s in r#"[{}\[\]":,0-9a-z_.\-+eE ]{0,120}"#) {
        let _ = parse_json_record(s.as_bytes());
    }
}
