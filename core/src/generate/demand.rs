//! When people ride and how fast they move: the weekday demand and congestion curves of NYC, read
//! on the hour of day of the timestamps, and driving times by road distance.

use super::DAY_MS;
use crate::event::Millis;

/// Share of the day's trips per hour of day on a 2016 weekday (TLC yellow data, rounded): trough
/// at 4–5 am, morning rush 8–9, shift-change dip at 16, evening peak 18–19.
const HOURLY_DEMAND: [f64; 24] = [
    3.8, 2.8, 2.1, 1.5, 1.1, 1.0, 2.0, 3.6, 4.4, 4.5, 4.3, 4.4, 4.6, 4.6, 4.8, 4.7, 4.2, 5.0, 6.0, 6.2, 5.6, 5.5, 5.4,
    4.7,
];

/// Travel-time factor per hour of day (1 = a normal daytime hour).
const HOURLY_CONGESTION: [f64; 24] = [
    0.75, 0.7, 0.68, 0.68, 0.68, 0.72, 0.85, 1.1, 1.3, 1.3, 1.2, 1.15, 1.15, 1.15, 1.2, 1.3, 1.35, 1.4, 1.4, 1.25,
    1.05, 0.95, 0.9, 0.82,
];

/// Reads an hourly table as a smooth function: linear between hour midpoints, wrapping at midnight.
fn interpolate_hourly(table: &[f64; 24], hour: f64) -> f64 {
    let x = hour - 0.5;
    let lo = x.floor();
    let frac = x - lo;
    let i = (lo as i64).rem_euclid(24) as usize;
    let j = (i + 1) % 24;
    table[i] * (1.0 - frac) + table[j] * frac
}

/// Relative demand at an hour of day.
pub(super) fn demand(hour: f64) -> f64 {
    interpolate_hourly(&HOURLY_DEMAND, hour)
}

/// Travel-time factor at an hour of day.
pub(super) fn congestion(hour: f64) -> f64 {
    interpolate_hourly(&HOURLY_CONGESTION, hour)
}

/// Hour of day (0 ≤ h < 24, fractional) of a timestamp, read as written (TLC times are local).
pub(super) fn hour_of_day(at: Millis) -> f64 {
    at.rem_euclid(DAY_MS) as f64 / 3_600_000.0
}

/// Free-flow-ish driving minutes for a road distance: city streets (~3 min/km) for the first 5 km,
/// then avenues and highways (~1.5 min/km).
pub(super) fn drive_minutes(road_km: f64) -> f64 {
    let city = road_km.min(5.0);
    let fast = (road_km - 5.0).max(0.0);
    city * 3.0 + fast * 1.5
}
