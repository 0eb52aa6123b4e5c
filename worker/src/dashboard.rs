//! The live local dashboard (`taxi-worker local --dashboard ADDR`): one self-contained page and
//! the JSON API behind it, served while the run progresses and after it ends.
//!
//! | path | answer |
//! |---|---|
//! | `/` | the page (`worker/assets/dashboard.html`: inline CSS, JS and SVG; no network) |
//! | `/nyc-boroughs.json` | the borough outlines the map draws (`worker/assets/nyc-boroughs.json`) |
//! | `/api/config` | region, airports, geohash precision, window length, shards, pace |
//! | `/api/summary` | run state and headline figures (the run's [`Summary`] once it ended) |
//! | `/api/results?after=S` | final merged windows starting after epoch second `S` (all without it) |
//!
//! A final window never changes, so the page polls `/api/results` with the last start it has.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Response, StatusCode, Uri};
use serde::Serialize;
use serde_json::{Value, json};

use crate::local::{Progress, Summary};
use taxi_core::analysis::{MergedResult, round4};
use taxi_core::config::EngineConfig;
use taxi_core::event::Millis;
use taxi_core::geo::BoundingBox;
use taxi_core::time::format_timestamp;
use taxi_io::http::respond;

/// The page, built into the binary so the dashboard needs no files and no network.
const PAGE: &str = include_str!("../assets/dashboard.html");

/// The five boroughs' outlines (NYC DCP borough boundaries, simplified by
/// `scripts/borough-outline.py`), built in beside the page.
const BOROUGHS: &str = include_str!("../assets/nyc-boroughs.json");

/// Where a run stands, as `/api/summary` reports it.
#[derive(Clone, Debug, PartialEq)]
pub enum RunState {
    /// Records are being processed.
    Running,
    /// The input was read to the end; the summary is the run's own.
    Finished(Summary),
    /// Stopped on request before the end of the input.
    Stopped(Summary),
}

impl RunState {
    fn name(&self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Finished(_) => "finished",
            RunState::Stopped(_) => "stopped",
        }
    }
}

/// The dashboard of one local run: reads the run's live [`Progress`] and answers requests.
#[derive(Debug)]
pub struct Dashboard {
    /// `/api/config`, rendered once.
    config: Bytes,
    progress: Arc<Progress>,
    started: Instant,
    state: Mutex<RunState>,
    /// The last rate sample: when, records then, and the rate measured up to then.
    rate: Mutex<(Instant, u64, f64)>,
}

/// The shortest interval the current events/s is measured over.
const RATE_INTERVAL_S: f64 = 1.0;

impl Dashboard {
    /// The dashboard of a run with these settings, reading `progress` (which should be made with
    /// [`Progress::keeping_results`], or no window will ever show).
    pub fn new(engine: &EngineConfig, shards: u32, speedup: Option<f64>, progress: Arc<Progress>) -> Dashboard {
        let config = api_config(engine, shards, speedup);
        let now = Instant::now();
        Dashboard {
            config: Bytes::from(serde_json::to_vec_pretty(&config).unwrap_or_default()),
            progress,
            started: now,
            state: Mutex::new(RunState::Running),
            rate: Mutex::new((now, 0, 0.0)),
        }
    }

    /// Records how the run ended.
    pub fn set_state(&self, state: RunState) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = state;
    }

    /// Answers one request.
    pub fn route(&self, method: &Method, uri: &Uri) -> Response<Full<Bytes>> {
        if method != Method::GET && method != Method::HEAD {
            return respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n");
        }
        match uri.path() {
            "/" | "/index.html" => respond(StatusCode::OK, "text/html; charset=utf-8", PAGE),
            "/nyc-boroughs.json" => respond(StatusCode::OK, "application/json", BOROUGHS),
            "/api/config" => json_response(self.config.clone()),
            "/api/summary" => json_response(to_json(&self.summary())),
            "/api/results" => match after_param(uri.query()) {
                Ok(after) => {
                    let windows = group_windows(&self.progress.results_after(after.map(|s| s * 1000)));
                    json_response(to_json(&json!({ "windows": windows })))
                }
                Err(message) => respond(StatusCode::BAD_REQUEST, "text/plain", format!("{message}\n")),
            },
            "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n"),
            _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found: try /, /api/summary, /api/results\n"),
        }
    }

    /// The `/api/summary` document: live figures while running, the run's summary once it ended.
    pub fn summary(&self) -> Value {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let p = &self.progress;
        let watermark = Some(p.watermark.load(Ordering::Relaxed)).filter(|w| *w != i64::MIN).map(format_timestamp);
        let kept = p.kept_counts();
        let (figures, current) = match &state {
            RunState::Finished(s) | RunState::Stopped(s) => (s.clone(), s.events_per_s),
            RunState::Running => {
                let elapsed_s = self.started.elapsed().as_secs_f64();
                let records = p.records.load(Ordering::Relaxed);
                let live = Summary {
                    records,
                    trips: p.trips.load(Ordering::Relaxed),
                    watermarks: p.watermarks.load(Ordering::Relaxed),
                    invalid: p.invalid.load(Ordering::Relaxed),
                    outside_region: p.outside_region.load(Ordering::Relaxed),
                    late: p.late.load(Ordering::Relaxed),
                    elapsed_s,
                    events_per_s: if elapsed_s > 0.0 { records as f64 / elapsed_s } else { 0.0 },
                    ..Summary::default()
                };
                (live, self.current_rate(records))
            }
        };
        let (hot_spots, airport_trips) = match &state {
            RunState::Finished(s) | RunState::Stopped(s) => (s.hot_spots, s.airport_trips),
            _ => (kept.hot_spots, kept.airport_trips),
        };
        json!({
            "state": state.name(),
            "records": figures.records,
            "trips": figures.trips,
            "watermarks": figures.watermarks,
            "invalid": figures.invalid,
            "outside_region": figures.outside_region,
            "late": figures.late,
            "hot_spots": hot_spots,
            "airport_trips": airport_trips,
            "elapsed_s": figures.elapsed_s,
            "events_per_s": figures.events_per_s,
            "current_events_per_s": current,
            "watermark": watermark,
            "windows": kept.windows,
        })
    }

    /// Records per second over the last [`RATE_INTERVAL_S`] or more.
    fn current_rate(&self, records: u64) -> f64 {
        let mut sample = self.rate.lock().unwrap_or_else(PoisonError::into_inner);
        let elapsed = sample.0.elapsed().as_secs_f64();
        if elapsed >= RATE_INTERVAL_S {
            let rate = records.saturating_sub(sample.1) as f64 / elapsed;
            *sample = (Instant::now(), records, rate);
        }
        sample.2
    }
}

/// Binds `addr` and serves `dashboard` until the task is dropped. Returns the bound address and
/// the serving future.
pub async fn serve(
    addr: SocketAddr,
    dashboard: Arc<Dashboard>,
) -> std::io::Result<(SocketAddr, impl std::future::Future<Output = ()> + Send)> {
    taxi_io::http::serve(addr, move |method, uri| dashboard.route(method, uri)).await
}

fn to_json(value: &impl Serialize) -> Bytes {
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

fn json_response(body: Bytes) -> Response<Full<Bytes>> {
    let mut response = respond(StatusCode::OK, "application/json", body);
    // Live figures: a browser must never show a cached answer.
    response.headers_mut().insert(hyper::header::CACHE_CONTROL, hyper::header::HeaderValue::from_static("no-store"));
    response
}

/// Reads `after=EPOCH_S` from a query string.
fn after_param(query: Option<&str>) -> Result<Option<i64>, String> {
    let Some(value) = query.into_iter().flat_map(|q| q.split('&')).find_map(|kv| kv.strip_prefix("after=")) else {
        return Ok(None);
    };
    value.parse().map(Some).map_err(|_| format!("after={value:?} is not a whole number of seconds since the epoch"))
}

#[derive(Serialize)]
struct ApiBox {
    lat_min: f64,
    lat_max: f64,
    lon_min: f64,
    lon_max: f64,
}

impl From<BoundingBox> for ApiBox {
    fn from(b: BoundingBox) -> ApiBox {
        ApiBox { lat_min: b.min_lat, lat_max: b.max_lat, lon_min: b.min_lon, lon_max: b.max_lon }
    }
}

fn api_config(engine: &EngineConfig, shards: u32, speedup: Option<f64>) -> Value {
    let airports: Vec<Value> = engine
        .airport_trips
        .airports
        .iter()
        .map(|a| {
            let mut value = json!(ApiBox::from(a.bounds));
            value["name"] = json!(a.name);
            value
        })
        .collect();
    json!({
        "region": ApiBox::from(engine.region),
        "airports": airports,
        "geohash_precision": engine.hot_spots.geohash_precision,
        "window_s": engine.hot_spots.window_ms / 1000,
        "airport_window_s": engine.airport_trips.window_ms / 1000,
        "min_pickups": engine.hot_spots.min_pickups,
        "min_trips": engine.airport_trips.min_trips,
        "shards": shards,
        "speedup": speedup,
    })
}

/// One final window as `/api/results` shows it.
#[derive(Debug, Default, PartialEq, Serialize)]
pub struct WindowView {
    /// Window start (ISO-8601).
    pub window_start: String,
    /// Window end, exclusive (ISO-8601).
    pub window_end: String,
    /// Window start in seconds since the epoch (what `?after=` takes).
    pub start_s: i64,
    /// Hot spots, busiest first.
    pub hot_spots: Vec<HotSpotView>,
    /// Per airport: the sums over the window's reported cells, in configuration order of first
    /// appearance; an airport without a reported cell is absent.
    pub airports: Vec<AirportView>,
    /// The reported airport cells.
    pub airport_cells: Vec<AirportCellView>,
}

/// A hot-spot cell of a window.
#[derive(Debug, PartialEq, Serialize)]
pub struct HotSpotView {
    /// The cell.
    pub geohash: String,
    /// Pickups in the window.
    pub pickup_count: u64,
}

/// Trips to one airport in a window, summed over the reported cells.
#[derive(Debug, PartialEq, Serialize)]
pub struct AirportView {
    /// The airport's name.
    pub airport: String,
    /// Trips.
    pub trip_count: u64,
    /// Sum of their durations in minutes.
    pub sum_duration_min: f64,
    /// The merged average: sum of durations / sum of trips (not an average of averages).
    pub avg_duration_min: f64,
}

/// Trips from one pickup cell to one airport in a window.
#[derive(Debug, PartialEq, Serialize)]
pub struct AirportCellView {
    /// The pickup cell.
    pub pickup_geohash: String,
    /// The airport's name.
    pub airport: String,
    /// Trips.
    pub trip_count: u64,
    /// Sum of their durations in minutes.
    pub sum_duration_min: f64,
    /// Their average duration in minutes.
    pub avg_duration_min: f64,
}

/// Groups final results by window start, in time order.
pub fn group_windows(results: &[MergedResult]) -> Vec<WindowView> {
    // By start: the latest end among the window's results, and the view being filled.
    let mut windows: BTreeMap<Millis, (Millis, WindowView)> = BTreeMap::new();
    for result in results {
        match result {
            MergedResult::HotSpot { window_start, window_end, geohash, pickup_count } => {
                let window = window_of(&mut windows, *window_start, *window_end);
                window.hot_spots.push(HotSpotView { geohash: geohash.to_string(), pickup_count: *pickup_count });
            }
            MergedResult::AirportTrip {
                window_start,
                window_end,
                pickup_geohash,
                airport,
                trip_count,
                sum_duration_min,
                avg_duration_min,
            } => {
                let window = window_of(&mut windows, *window_start, *window_end);
                window.airport_cells.push(AirportCellView {
                    pickup_geohash: pickup_geohash.to_string(),
                    airport: airport.clone(),
                    trip_count: *trip_count,
                    sum_duration_min: *sum_duration_min,
                    avg_duration_min: *avg_duration_min,
                });
                match window.airports.iter_mut().find(|a| a.airport == *airport) {
                    Some(total) => {
                        total.trip_count += trip_count;
                        total.sum_duration_min += sum_duration_min;
                    }
                    None => window.airports.push(AirportView {
                        airport: airport.clone(),
                        trip_count: *trip_count,
                        sum_duration_min: *sum_duration_min,
                        avg_duration_min: 0.0,
                    }),
                }
            }
        }
    }
    let mut windows: Vec<WindowView> = windows
        .into_values()
        .map(|(end, mut window)| {
            window.window_end = format_timestamp(end);
            window
        })
        .collect();
    for window in &mut windows {
        window.hot_spots.sort_by(|a, b| b.pickup_count.cmp(&a.pickup_count).then_with(|| a.geohash.cmp(&b.geohash)));
        for airport in &mut window.airports {
            airport.avg_duration_min = round4(airport.sum_duration_min / airport.trip_count.max(1) as f64);
            airport.sum_duration_min = round4(airport.sum_duration_min);
        }
    }
    windows
}

/// The window starting at `start`, made on first use; its end is the latest of its results'.
fn window_of(windows: &mut BTreeMap<Millis, (Millis, WindowView)>, start: Millis, end: Millis) -> &mut WindowView {
    let (latest_end, window) = windows.entry(start).or_insert_with(|| {
        let view = WindowView {
            window_start: format_timestamp(start),
            start_s: start.div_euclid(1000),
            ..WindowView::default()
        };
        (end, view)
    });
    *latest_end = (*latest_end).max(end);
    window
}

#[cfg(test)]
mod tests {
    use super::*;
    use taxi_core::geo::Geohash;

    const T0: Millis = 1_451_606_400_000; // 2016-01-01T00:00:00Z
    const TEN_MIN: Millis = 600_000;

    fn hot(start: Millis, cell: &str, count: u64) -> MergedResult {
        MergedResult::HotSpot {
            window_start: start,
            window_end: start + TEN_MIN,
            geohash: cell.parse::<Geohash>().expect("geohash"),
            pickup_count: count,
        }
    }

    fn airport(start: Millis, cell: &str, name: &str, trips: u64, minutes: f64) -> MergedResult {
        MergedResult::AirportTrip {
            window_start: start,
            window_end: start + TEN_MIN,
            pickup_geohash: cell.parse::<Geohash>().expect("geohash"),
            airport: name.to_owned(),
            trip_count: trips,
            sum_duration_min: minutes,
            avg_duration_min: minutes / trips as f64,
        }
    }

    fn dashboard(results: &[MergedResult]) -> Dashboard {
        let progress = Arc::new(Progress::keeping_results());
        progress.records.store(1234, Ordering::Relaxed);
        progress.watermark.store(T0 + 2 * TEN_MIN, Ordering::Relaxed);
        progress.keep(results); // as the merge does when windows become final
        Dashboard::new(&EngineConfig::default(), 8, Some(6480.0), progress)
    }

    fn get(d: &Dashboard, uri: &str) -> (StatusCode, Value) {
        let response = d.route(&Method::GET, &uri.parse().expect("uri"));
        let status = response.status();
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let body = runtime.block_on(http_body_util::BodyExt::collect(response.into_body())).expect("body").to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    #[test]
    fn windows_group_results_busiest_first_with_merged_airport_averages() {
        let windows = group_windows(&[
            hot(T0, "dr5ru7", 3),
            hot(T0, "dr5ru6", 9),
            airport(T0, "dr5ru7", "JFK", 2, 100.0),
            airport(T0, "dr5ru6", "JFK", 4, 140.0),
            airport(T0, "dr5ru6", "LGA", 2, 50.0),
            hot(T0 + TEN_MIN, "dr5ru7", 5),
        ]);
        assert_eq!(windows.len(), 2);
        let first = &windows[0];
        assert_eq!(
            (first.window_start.as_str(), first.window_end.as_str()),
            ("2016-01-01T00:00:00Z", "2016-01-01T00:10:00Z")
        );
        assert_eq!(first.start_s, 1_451_606_400);
        let cells: Vec<(&str, u64)> = first.hot_spots.iter().map(|h| (h.geohash.as_str(), h.pickup_count)).collect();
        assert_eq!(cells, [("dr5ru6", 9), ("dr5ru7", 3)]);
        // 240 minutes over 6 trips is 40, not the average of the cells' averages (45).
        assert_eq!(
            first.airports[0],
            AirportView { airport: "JFK".into(), trip_count: 6, sum_duration_min: 240.0, avg_duration_min: 40.0 }
        );
        assert_eq!((first.airports[1].airport.as_str(), first.airports[1].avg_duration_min), ("LGA", 25.0));
        assert_eq!(first.airport_cells.len(), 3);
        assert!(windows[1].airports.is_empty());
    }

    #[test]
    fn results_after_a_start_return_only_later_windows() {
        let d = dashboard(&[hot(T0, "dr5ru7", 3), hot(T0 + TEN_MIN, "dr5ru7", 4), hot(T0 + 2 * TEN_MIN, "dr5ru7", 5)]);
        let (status, all) = get(&d, "/api/results");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(all["windows"].as_array().map(Vec::len), Some(3));
        let after = (T0 + TEN_MIN) / 1000;
        let (_, later) = get(&d, &format!("/api/results?after={after}"));
        let starts: Vec<&str> =
            later["windows"].as_array().expect("windows").iter().filter_map(|w| w["window_start"].as_str()).collect();
        assert_eq!(starts, ["2016-01-01T00:20:00Z"]);
        let (status, _) = get(&d, "/api/results?after=soon");
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn summary_is_live_while_running_and_the_runs_own_once_finished() {
        let d = dashboard(&[hot(T0, "dr5ru7", 3), airport(T0, "dr5ru7", "JFK", 2, 80.0)]);
        let (_, live) = get(&d, "/api/summary");
        assert_eq!(live["state"], "running");
        assert_eq!(live["records"], 1234);
        assert_eq!((live["hot_spots"].as_u64(), live["airport_trips"].as_u64()), (Some(1), Some(1)));
        assert_eq!(live["watermark"], "2016-01-01T00:20:00Z");
        assert_eq!(live["windows"], 1);

        let summary = Summary {
            records: 5000,
            trips: 4990,
            invalid: 10,
            late: 3,
            hot_spots: 1,
            airport_trips: 1,
            elapsed_s: 2.0,
            events_per_s: 2500.0,
            ..Summary::default()
        };
        d.set_state(RunState::Finished(summary));
        let (_, done) = get(&d, "/api/summary");
        assert_eq!(done["state"], "finished");
        assert_eq!(
            (done["records"].as_u64(), done["invalid"].as_u64(), done["late"].as_u64()),
            (Some(5000), Some(10), Some(3))
        );
        assert_eq!(done["events_per_s"], 2500.0);
    }

    #[test]
    fn config_names_the_region_airports_and_pace() {
        let d = dashboard(&[]);
        let (_, config) = get(&d, "/api/config");
        assert_eq!(config["region"]["lat_min"], 40.4774);
        assert_eq!(config["airports"][0]["name"], "JFK");
        assert_eq!(config["airports"][1]["lon_max"], -73.859);
        assert_eq!((config["window_s"].as_i64(), config["shards"].as_u64()), (Some(600), Some(8)));
        assert_eq!(config["speedup"], 6480.0);
    }

    #[test]
    fn the_page_is_served_and_self_contained() {
        let d = dashboard(&[]);
        let response = d.route(&Method::GET, &"/".parse().expect("uri"));
        assert_eq!(response.status(), StatusCode::OK);
        // No external scripts, styles, fonts or tiles: the page works offline.
        for external in ["src=\"http", "href=\"http", "url(http", "@import"] {
            assert!(!PAGE.contains(external), "the page refers to something external: {external}");
        }
        assert_eq!(d.route(&Method::POST, &"/".parse().expect("uri")).status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(d.route(&Method::GET, &"/nope".parse().expect("uri")).status(), StatusCode::NOT_FOUND);
    }

    /// One borough of `/nyc-boroughs.json`: polygons of rings of (lat, lon), outside ring first.
    struct Borough {
        name: String,
        polygons: Vec<Vec<Vec<(f64, f64)>>>,
    }

    /// The points of an Encoded Polyline as (lat, lon), decoded as the page decodes them.
    fn decode_polyline(text: &str, precision: i32) -> Vec<(f64, f64)> {
        let mut deltas = Vec::new();
        let (mut value, mut shift) = (0_i64, 0);
        for byte in text.bytes() {
            let group = i64::from(byte) - 63;
            assert!((0..64).contains(&group), "not a polyline character: {:?}", char::from(byte));
            value |= (group & 0x1f) << shift;
            shift += 5;
            if group < 0x20 {
                deltas.push(if value & 1 == 1 { !(value >> 1) } else { value >> 1 });
                (value, shift) = (0, 0);
            }
        }
        assert!(shift == 0 && deltas.len() % 2 == 0, "a polyline ends mid-point: {text}");
        let scale = 10_f64.powi(precision);
        let (mut lat, mut lon) = (0, 0);
        deltas
            .chunks_exact(2)
            .map(|d| {
                (lat, lon) = (lat + d[0], lon + d[1]);
                (lat as f64 / scale, lon as f64 / scale)
            })
            .collect()
    }

    fn boroughs() -> (Value, Vec<Borough>) {
        let asset: Value = serde_json::from_str(BOROUGHS).expect("nyc-boroughs.json is JSON");
        let precision = asset["polyline_precision"].as_i64().and_then(|p| i32::try_from(p).ok()).expect("precision");
        let boroughs = asset["boroughs"]
            .as_array()
            .expect("boroughs")
            .iter()
            .map(|b| Borough {
                name: b["name"].as_str().expect("name").to_owned(),
                polygons: serde_json::from_value::<Vec<Vec<String>>>(b["polygons"].clone())
                    .expect("polygons of polyline rings")
                    .iter()
                    .map(|rings| rings.iter().map(|ring| decode_polyline(ring, precision)).collect())
                    .collect(),
            })
            .collect();
        (asset, boroughs)
    }

    /// Even-odd over every ring of every polygon, as the page fills and names them.
    fn borough_at(boroughs: &[Borough], (lat, lon): (f64, f64)) -> Option<&str> {
        let crossings = |ring: &[(f64, f64)]| {
            let edges = ring.iter().zip(ring.iter().cycle().skip(1));
            edges
                .filter(|((lat_a, lon_a), (lat_b, lon_b))| {
                    (*lat_a > lat) != (*lat_b > lat) && lon < (lon_b - lon_a) * (lat - lat_a) / (lat_b - lat_a) + lon_a
                })
                .count()
        };
        boroughs
            .iter()
            .find(|b| b.polygons.iter().flatten().map(|ring| crossings(ring)).sum::<usize>() % 2 == 1)
            .map(|b| b.name.as_str())
    }

    #[test]
    fn the_borough_map_is_served_and_names_its_source() {
        let d = dashboard(&[]);
        let response = d.route(&Method::GET, &"/nyc-boroughs.json".parse().expect("uri"));
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[hyper::header::CONTENT_TYPE], "application/json");
        let (asset, boroughs) = boroughs();
        let source = asset["source"].as_str().expect("source");
        assert!(source.contains("NYC Department of City Planning") && source.contains("nybb 16a"), "{source}");
        let names: Vec<&str> = boroughs.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["Manhattan", "Bronx", "Brooklyn", "Queens", "Staten Island"]);
        let region = EngineConfig::default().region;
        for b in &boroughs {
            assert!(!b.polygons.is_empty(), "{} has no polygon", b.name);
            for ring in b.polygons.iter().flatten() {
                assert!(ring.len() >= 3, "{} has a ring of {} points", b.name, ring.len());
                for &(lat, lon) in ring {
                    // The region box is the city's own, so its outline lies inside it (to the rounding).
                    assert!(
                        (region.min_lat - 1e-3..=region.max_lat + 1e-3).contains(&lat)
                            && (region.min_lon - 1e-3..=region.max_lon + 1e-3).contains(&lon),
                        "{} has a point outside the region: {lat}, {lon}",
                        b.name
                    );
                }
            }
        }
    }

    #[test]
    fn places_fall_in_their_borough_and_the_water_in_none() {
        let (_, boroughs) = boroughs();
        let busiest_generated_cell = "dr5ru7".parse::<Geohash>().expect("geohash").center();
        let places = [
            ("Times Square", (40.7580, -73.9855), Some("Manhattan")),
            (
                "the busiest cell of a generated day",
                (busiest_generated_cell.lat, busiest_generated_cell.lon),
                Some("Manhattan"),
            ),
            ("Roosevelt Island", (40.7704, -73.9420), Some("Manhattan")),
            ("Yankee Stadium", (40.8296, -73.9262), Some("Bronx")),
            ("City Island", (40.8468, -73.7868), Some("Bronx")),
            ("Brooklyn Borough Hall", (40.6928, -73.9903), Some("Brooklyn")),
            ("JFK Terminal 4", (40.6441, -73.7823), Some("Queens")),
            ("Rockaway Beach", (40.5860, -73.8110), Some("Queens")),
            ("Staten Island Mall", (40.5826, -74.1658), Some("Staten Island")),
            ("the Hudson off West 42nd Street", (40.7620, -74.0120), None),
            ("the East River off Wall Street", (40.7035, -73.9990), None),
            ("the Upper Bay", (40.6700, -74.0450), None),
            ("Hoboken", (40.7440, -74.0324), None),
        ];
        for (place, at, want) in places {
            assert_eq!(borough_at(&boroughs, at), want, "{place} at {at:?}");
        }
    }
}
