#!/usr/bin/env python3
"""Writes worker/assets/nyc-boroughs.json, the borough map of the local dashboard.

The source is NYC Department of City Planning's "Borough Boundaries" (nybb 16a: the five
boroughs clipped to the shoreline, in EPSG:2263), as shipped inside PyPI geopandas 0.14.4 at
geopandas/datasets/nybb_16a.zip. The script

  1. drops the islands smaller than --min-island-km2 (a speck on a 560-pixel map),
  2. simplifies each borough with Douglas-Peucker at --tolerance-m, in EPSG:2263 itself, whose
     units are feet on the ground, so the tolerance is the same distance north-south and east-west
     (in degrees a longitude step is 25 % shorter than a latitude step here),
  3. projects to WGS84 latitude/longitude (EPSG:4326),
  4. rounds to 4 decimals (1e-4 degrees: 11 m north-south, 8 m east-west), well under the
     tolerance and a tenth of a pixel on the map; a fifth decimal would add bytes that carry only
     detail the simplification already dropped,
  5. writes each ring as an Encoded Polyline (latitude then longitude, precision 4): deltas
     between rounded points in a few ASCII characters each, which keeps the file a few KB where
     plain [lon, lat] arrays take about seven times as much.

It prints what it kept and how far the simplified Manhattan west shore (the Hudson side, which
the Midtown hot spots sit next to) lies from the unsimplified one.

The dashboard and CI only read the generated file, which is checked in. To regenerate it:

    python3 -m venv /tmp/geo && /tmp/geo/bin/pip install geopandas==0.14.4
    /tmp/geo/bin/python scripts/borough-outline.py

(written with geopandas 0.14.4, shapely 2.2, pyproj 3.7 and fiona 1.10).
"""

import argparse
import json
import os
import sys

import geopandas
import geopandas.datasets
from shapely.geometry import LineString, MultiPolygon, Point, Polygon

SOURCE = "nybb_16a.zip"
SOURCE_CRS = "EPSG:2263"  # NAD83 / New York Long Island, US survey feet
TARGET_CRS = "EPSG:4326"
METRES_PER_FOOT = 1200 / 3937  # the US survey foot of EPSG:2263
DECIMALS = 4
OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "worker", "assets", "nyc-boroughs.json")

# Manhattan's west shore: the boundary west of the line from the Battery to the island's north tip,
# which splits the island lengthwise.
BATTERY = (40.7003, -74.0153)
NORTH_TIP = (40.8790, -73.9230)


def encode_polyline(points):
    """Encoded Polyline of (lat, lon) points already rounded to DECIMALS."""
    scale = 10**DECIMALS
    out = []
    previous = (0, 0)
    for lat, lon in points:
        current = (round(lat * scale), round(lon * scale))
        for value in (current[0] - previous[0], current[1] - previous[1]):
            value = ~(value << 1) if value < 0 else value << 1
            while value >= 0x20:
                out.append(chr((0x20 | (value & 0x1F)) + 63))
                value >>= 5
            out.append(chr(value + 63))
        previous = current
    return "".join(out)


def ring_points(ring):
    """(lat, lon) rounded, without the closing repeat of the first point."""
    coords = list(ring.coords)[:-1]
    return [(round(lat, DECIMALS), round(lon, DECIMALS)) for lon, lat in coords]


def polygons_of(geometry):
    """The polygons of a borough, largest first."""
    parts = list(geometry.geoms) if isinstance(geometry, MultiPolygon) else [geometry]
    return sorted(parts, key=lambda p: p.area, reverse=True)


def km2(polygon):
    return polygon.area * METRES_PER_FOOT**2 / 1e6


def to_feet(lon_lat_geometry):
    return geopandas.GeoSeries([lon_lat_geometry], crs=TARGET_CRS).to_crs(SOURCE_CRS).iloc[0]


def west_shore_report(original, drawn_polygons):
    """How far the drawn Manhattan west shore lies from the unsimplified one, in metres."""
    main = max(polygons_of(original), key=lambda p: p.area)
    a, b = to_feet(Point(BATTERY[1], BATTERY[0])), to_feet(Point(NORTH_TIP[1], NORTH_TIP[0]))

    def west_of_axis(x, y):
        return (b.x - a.x) * (y - a.y) - (b.y - a.y) * (x - a.x) > 0

    shore = [(x, y) for x, y in main.exterior.coords if west_of_axis(x, y)]
    drawn = MultiPolygon([to_feet(Polygon([(lon, lat) for lat, lon in rings[0]])) for rings in drawn_polygons])
    drawn_main = max(drawn.geoms, key=lambda p: p.area)
    drawn_edge, true_edge = drawn_main.exterior, main.exterior
    # Both ways: every true shore point to the drawn outline, and every drawn shore point to the
    # true one (the drawn vertices are true vertices moved by the rounding).
    to_drawn = [drawn_edge.distance(Point(p)) * METRES_PER_FOOT for p in shore]
    drawn_shore = [(x, y) for x, y in drawn_edge.coords if west_of_axis(x, y)]
    to_true = [true_edge.distance(Point(p)) * METRES_PER_FOOT for p in drawn_shore]
    shore_length = LineString(shore).length * METRES_PER_FOOT / 1000
    return {
        "shore_km": shore_length,
        "true_points": len(shore),
        "drawn_points": len(drawn_shore),
        "max_true_to_drawn_m": max(to_drawn),
        "mean_true_to_drawn_m": sum(to_drawn) / len(to_drawn),
        "max_drawn_to_true_m": max(to_true),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tolerance-m", type=float, default=75.0, help="Douglas-Peucker tolerance in metres")
    parser.add_argument("--min-island-km2", type=float, default=0.1, help="drop polygons smaller than this")
    parser.add_argument("--out", default=OUTPUT, help="the asset to write")
    args = parser.parse_args()

    source = os.path.join(os.path.dirname(geopandas.datasets.__file__), SOURCE)
    frame = geopandas.read_file("zip://" + source)
    if str(frame.crs).upper() != SOURCE_CRS:
        sys.exit(f"{source} is in {frame.crs}, expected {SOURCE_CRS}")
    frame = frame.sort_values("BoroCode")

    boroughs = []
    dropped = 0
    report = None
    for _, row in frame.iterrows():
        parts = polygons_of(row.geometry)
        kept = [p for p in parts if km2(p) >= args.min_island_km2]
        dropped += len(parts) - len(kept)
        simplified = MultiPolygon(kept).simplify(args.tolerance_m / METRES_PER_FOOT, preserve_topology=True)
        projected = geopandas.GeoSeries([simplified], crs=SOURCE_CRS).to_crs(TARGET_CRS).iloc[0]
        polygons = [[ring_points(p.exterior)] + [ring_points(h) for h in p.interiors] for p in polygons_of(projected)]
        points = sum(len(r) for rings in polygons for r in rings)
        print(f"{row.BoroName}: {len(kept)} of {len(parts)} polygons, {points} points", file=sys.stderr)
        boroughs.append(
            {
                "name": row.BoroName,
                "code": int(row.BoroCode),
                "polygons": [[encode_polyline(r) for r in rings] for rings in polygons],
            }
        )
        if row.BoroName == "Manhattan":
            report = west_shore_report(row.geometry, polygons)

    tolerance = f"{args.tolerance_m:g} m"
    asset = {
        "title": "New York City borough boundaries, simplified for the local dashboard",
        "source": "NYC Department of City Planning, Borough Boundaries (nybb 16a, clipped to the shoreline), "
        "as packaged by geopandas 0.14.4 (geopandas/datasets/nybb_16a.zip)",
        "generator": "scripts/borough-outline.py",
        "projection": f"EPSG:4326 (WGS84 latitude and longitude), projected from {SOURCE_CRS} "
        "(NAD83 / New York Long Island, US feet)",
        "simplification": f"Douglas-Peucker with a tolerance of {tolerance}, applied in {SOURCE_CRS} before "
        f"projecting; {dropped} islands under {args.min_island_km2:g} km2 dropped",
        "encoding": "each ring is an Encoded Polyline of (latitude, longitude) at polyline_precision decimals; "
        "a polygon's first ring is its outside, any further rings are holes; rings are not closed",
        "polyline_precision": DECIMALS,
        "boroughs": boroughs,
    }
    text = json.dumps(asset, indent=1, ensure_ascii=True) + "\n"
    with open(args.out, "w", encoding="ascii") as out:
        out.write(text)
    print(f"wrote {os.path.normpath(args.out)}: {len(text)} bytes, tolerance {tolerance}", file=sys.stderr)
    print(
        "Manhattan west shore ({shore_km:.1f} km, {true_points} true points, {drawn_points} drawn): "
        "true to drawn max {max_true_to_drawn_m:.0f} m, mean {mean_true_to_drawn_m:.0f} m; "
        "drawn to true max {max_drawn_to_true_m:.0f} m".format(**report),
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
