//! Input files for tests: generated trips, files split into parts (to put into a stream in
//! phases), and trips written as JSON lines in the reference architecture's format.

use std::path::{Path, PathBuf};

use taxi_core::event::Trip;
use taxi_core::generate::{GenerateStats, GeneratorConfig, write_json_lines};
use taxi_core::input::read_records;

/// `dir/trips.jsonl` with `trips` generated trips of `seed` (the generator's defaults otherwise).
pub fn generated_input(dir: &Path, trips: u64, seed: u64) -> PathBuf {
    let path = dir.join("trips.jsonl");
    write_generated(&path, &GeneratorConfig { trips, seed, ..GeneratorConfig::default() });
    path
}

/// Writes the trips `config` generates to `path`, as JSON lines.
pub fn write_generated(path: &Path, config: &GeneratorConfig) -> GenerateStats {
    write_json_lines(config, std::fs::File::create(path).expect("create")).expect("generate")
}

/// The records of a file (blank lines are none), as the pipeline reads them.
pub fn count_records(path: &Path) -> u64 {
    read_records(path).expect("open").count() as u64
}

/// Splits the lines of `input` into two files of `dir`, the first half and the rest.
pub fn split_in_halves(input: &Path, dir: &Path, names: [&str; 2]) -> (PathBuf, PathBuf) {
    split_at_share(input, dir, names, (1, 2))
}

/// Splits the lines of `input` into two files of `dir`: the first `numerator / denominator` of
/// them, and the rest.
pub fn split_at_share(
    input: &Path,
    dir: &Path,
    names: [&str; 2],
    (numerator, denominator): (usize, usize),
) -> (PathBuf, PathBuf) {
    let text = std::fs::read_to_string(input).expect("read");
    let lines: Vec<&str> = text.lines().collect();
    let (first, second) = lines.split_at(lines.len() * numerator / denominator);
    (write_lines(&dir.join(names[0]), first), write_lines(&dir.join(names[1]), second))
}

/// Splits the lines of `input` into `parts` files of equal line counts (the last one may be
/// shorter), `phase1.jsonl`, `phase2.jsonl`… beside it.
pub fn split_in_phases(input: &Path, parts: usize) -> Vec<PathBuf> {
    let text = std::fs::read_to_string(input).expect("read");
    let lines: Vec<&str> = text.lines().collect();
    lines
        .chunks(lines.len().div_ceil(parts))
        .enumerate()
        .map(|(i, part)| write_lines(&input.with_file_name(format!("phase{}.jsonl", i + 1)), part))
        .collect()
}

/// Writes `lines` to `path`, each ended by a newline.
fn write_lines(path: &Path, lines: &[&str]) -> PathBuf {
    std::fs::write(path, lines.join("\n") + "\n").expect("write");
    path.to_owned()
}

/// One trip as a JSON line in the reference architecture's format (no newline).
pub fn trip_line(t: &Trip) -> String {
    format!(
        r#"{{"trip_id":{},"pickup_datetime":"{}","dropoff_datetime":"{}","pickup_latitude":{},"pickup_longitude":{},"dropoff_latitude":{},"dropoff_longitude":{},"total_amount":12.5,"type":"trip"}}"#,
        t.trip_id,
        taxi_core::time::format_timestamp(t.pickup_time),
        taxi_core::time::format_timestamp(t.dropoff_time),
        t.pickup.lat,
        t.pickup.lon,
        t.dropoff.lat,
        t.dropoff.lon
    )
}

/// Trips as the text of a JSON-lines file, one [`trip_line`] per trip.
pub fn trip_lines(trips: &[Trip]) -> String {
    trips.iter().map(|t| trip_line(t) + "\n").collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path).expect("read").lines().map(str::to_owned).collect()
    }

    #[test]
    fn splits_keep_every_line_once_and_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = dir.path().join("all.jsonl");
        let all: Vec<String> = (1..=10).map(|i| format!("line {i}")).collect();
        std::fs::write(&input, all.join("\n") + "\n").expect("write");

        let (a, b) = split_in_halves(&input, dir.path(), ["a.jsonl", "b.jsonl"]);
        assert_eq!((lines_of(&a), lines_of(&b)), (all[..5].to_vec(), all[5..].to_vec()));
        let (a, b) = split_at_share(&input, dir.path(), ["c.jsonl", "d.jsonl"], (2, 5));
        assert_eq!((lines_of(&a), lines_of(&b)), (all[..4].to_vec(), all[4..].to_vec()));
        let phases = split_in_phases(&input, 3);
        let names: Vec<_> = phases.iter().map(|p| p.file_name().expect("name").to_owned()).collect();
        assert_eq!(names, ["phase1.jsonl", "phase2.jsonl", "phase3.jsonl"]);
        let counts: Vec<usize> = phases.iter().map(|p| lines_of(p).len()).collect();
        assert_eq!(counts, [4, 4, 2]);
        assert_eq!(phases.iter().flat_map(|p| lines_of(p)).collect::<Vec<_>>(), all);
    }

    #[test]
    fn generated_trips_are_counted_as_the_pipeline_reads_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = generated_input(dir.path(), 300, 7);
        assert_eq!(input, dir.path().join("trips.jsonl"));
        assert_eq!(count_records(&input), 300);
    }

    #[test]
    fn a_trip_line_reads_back_as_the_trip() {
        use taxi_core::event::{Event, GeoPoint};
        use taxi_core::input::parse_json_record;

        let trip = Trip {
            trip_id: 42,
            pickup_time: 1_451_606_400_000,
            dropoff_time: 1_451_607_600_000,
            pickup: GeoPoint { lat: 40.758, lon: -73.9855 },
            dropoff: GeoPoint { lat: 40.6413, lon: -73.7781 },
        };
        assert_eq!(parse_json_record(trip_line(&trip).as_bytes()), Ok(Event::Trip(trip)));
        let two = trip_lines(&[trip, Trip { trip_id: 43, ..trip }]);
        assert_eq!(two.lines().count(), 2);
        assert!(two.ends_with('\n'));
    }
}
