//! TLC trip files in Parquet for tests, written by pyarrow in the layout the TLC publishes from
//! July 2016 on (`tpep_*_datetime` timestamps, `PULocationID` / `DOLocationID` zone ids, fares),
//! and the matching zone centroid table.
//!
//! The python comes from `TAXI_TEST_PYTHON`, which `.ci/services.sh start` exports (a virtual
//! environment with pyarrow); outside CI a test without it is skipped with a message, in CI it
//! fails, as for the emulators.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use taxi_core::event::{Event, GeoPoint, Millis};
use taxi_core::generate::{GeneratorConfig, write_json_lines};
use taxi_core::input::parse_json_record;
use taxi_core::time::format_timestamp;

use crate::services::service_endpoint;

/// The variable holding a python with pyarrow.
pub const PYTHON: &str = "TAXI_TEST_PYTHON";

/// The python of [`PYTHON`], or `None` (with a message) outside CI when it is not set.
pub fn python() -> Option<String> {
    service_endpoint(PYTHON)
}

/// One trip between two taxi zones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZoneTrip {
    /// Pickup time.
    pub pickup: Millis,
    /// Dropoff time.
    pub dropoff: Millis,
    /// `PULocationID`.
    pub pickup_zone: i32,
    /// `DOLocationID`.
    pub dropoff_zone: i32,
}

/// Generated trips moved onto taxi zones: the same trips as a Parquet file of zone ids with a
/// centroid table, or as JSON lines at the centroids.
#[derive(Clone, Debug)]
pub struct ZoneInput {
    /// Zone `i + 1` lies at `centroids[i]`.
    pub centroids: Vec<GeoPoint>,
    /// The trips, in input order; trip `k` (0-based) is record `k + 1`.
    pub trips: Vec<ZoneTrip>,
}

/// Zones of a [`ZoneInput`]: the pickup and dropoff points of its first trips.
const ZONES: usize = 128;

impl ZoneInput {
    /// The valid trips of a generated day of `trips` trips (watermarks and invalid lines left
    /// out), their times kept, each trip's zones drawn from the table by its position.
    pub fn generate(trips: u64, seed: u64) -> ZoneInput {
        let config = GeneratorConfig { trips, seed, ..GeneratorConfig::default() };
        let mut lines = Vec::new();
        write_json_lines(&config, &mut lines).expect("generate");
        let generated: Vec<_> = lines
            .split(|b| *b == b'\n')
            .filter_map(|line| match parse_json_record(line) {
                Ok(Event::Trip(t)) => Some(t),
                _ => None,
            })
            .collect();
        let centroids: Vec<GeoPoint> = generated.iter().flat_map(|t| [t.pickup, t.dropoff]).take(ZONES).collect();
        let zone = |k: usize| i32::try_from(k % centroids.len() + 1).expect("a small zone id");
        let trips = generated
            .iter()
            .enumerate()
            .map(|(k, t)| ZoneTrip {
                pickup: t.pickup_time,
                dropoff: t.dropoff_time,
                pickup_zone: zone(k * 31 + 7),
                dropoff_zone: zone(k * 17 + 3),
            })
            .collect();
        ZoneInput { centroids, trips }
    }

    /// The trips as JSON lines in the reference architecture's format, each at its zones'
    /// centroids, `trip_id` = its record number (as a Parquet row's).
    pub fn json_lines(&self) -> String {
        let mut out = String::new();
        for (t, id) in self.trips.iter().zip(1u64..) {
            let (p, d) = (self.centroid(t.pickup_zone), self.centroid(t.dropoff_zone));
            out.push_str(&format!(
                "{{\"type\":\"trip\",\"trip_id\":{id},\"pickup_datetime\":\"{}\",\"dropoff_datetime\":\"{}\",\
                 \"pickup_latitude\":{},\"pickup_longitude\":{},\"dropoff_latitude\":{},\"dropoff_longitude\":{}}}\n",
                format_timestamp(t.pickup),
                format_timestamp(t.dropoff),
                p.lat,
                p.lon,
                d.lat,
                d.lon
            ));
        }
        out
    }

    /// The centroid of zone `id`.
    fn centroid(&self, id: i32) -> GeoPoint {
        self.centroids[usize::try_from(id - 1).expect("a zone id from 1")]
    }
}

/// The unit of the Parquet timestamps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeUnit {
    /// `timestamp[us]`, as the TLC writes them.
    Micros,
    /// `timestamp[ns]`.
    Nanos,
}

/// pyarrow script: reads `pickup_ms,dropoff_ms,pu,do` lines and writes the TLC's columns.
const WRITE_TLC_PARQUET: &str = r#"
import sys, datetime
import pyarrow as pa, pyarrow.parquet as pq
src, out, unit, group = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
rows = [tuple(int(v) for v in line.split(",")) for line in open(src) if line.strip()]
n = len(rows)
scale = 1000 if unit == "us" else 1000000
ts = pa.timestamp(unit)
table = pa.table({
    "VendorID": pa.array([1 + i % 2 for i in range(n)], pa.int32()),
    "tpep_pickup_datetime": pa.array([r[0] * scale for r in rows], pa.int64()).cast(ts),
    "tpep_dropoff_datetime": pa.array([r[1] * scale for r in rows], pa.int64()).cast(ts),
    "passenger_count": pa.array([1.0] * n, pa.float64()),
    "trip_distance": pa.array([2.5] * n, pa.float64()),
    "RatecodeID": pa.array([1.0] * n, pa.float64()),
    "store_and_fwd_flag": pa.array(["N"] * n, pa.string()),
    "PULocationID": pa.array([r[2] for r in rows], pa.int32()),
    "DOLocationID": pa.array([r[3] for r in rows], pa.int32()),
    "payment_type": pa.array([1] * n, pa.int64()),
    "fare_amount": pa.array([12.5] * n, pa.float64()),
    "extra": pa.array([1.0] * n, pa.float64()),
    "mta_tax": pa.array([0.5] * n, pa.float64()),
    "tip_amount": pa.array([3.0] * n, pa.float64()),
    "tolls_amount": pa.array([0.0] * n, pa.float64()),
    "improvement_surcharge": pa.array([1.0] * n, pa.float64()),
    "total_amount": pa.array([18.0] * n, pa.float64()),
    "congestion_surcharge": pa.array([2.5] * n, pa.float64()),
    "airport_fee": pa.array([0.0] * n, pa.float64()),
})
pq.write_table(table, out, row_group_size=group)
"#;

/// Writes `trips` to `out` as a TLC Parquet file with `unit` timestamps and row groups of
/// `row_group` rows, with `python` (see [`python`]). Panics when the script fails.
pub fn write_tlc_parquet(python: &str, trips: &[ZoneTrip], unit: TimeUnit, row_group: usize, out: &Path) {
    let rows = out.with_extension("rows.csv");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&rows).expect("create the rows file"));
    for t in trips {
        writeln!(file, "{},{},{},{}", t.pickup, t.dropoff, t.pickup_zone, t.dropoff_zone).expect("write a row");
    }
    file.flush().expect("flush the rows file");
    let unit = match unit {
        TimeUnit::Micros => "us",
        TimeUnit::Nanos => "ns",
    };
    let status = Command::new(python)
        .arg("-c")
        .arg(WRITE_TLC_PARQUET)
        .arg(&rows)
        .arg(out)
        .arg(unit)
        .arg(row_group.to_string())
        .status()
        .expect("run the python of TAXI_TEST_PYTHON");
    assert!(status.success(), "pyarrow failed to write {}: {status}", out.display());
    std::fs::remove_file(rows).expect("remove the rows file");
}

/// Writes a zone centroid table (`LocationID,lat,lon` with a header), zone `i + 1` at
/// `centroids[i]`.
pub fn write_centroids(centroids: &[GeoPoint], out: &Path) {
    let mut text = String::from("LocationID,lat,lon\n");
    for (i, c) in centroids.iter().enumerate() {
        text.push_str(&format!("{},{},{}\n", i + 1, c.lat, c.lon));
    }
    std::fs::write(out, text).expect("write the centroid table");
}
