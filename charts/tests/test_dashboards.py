"""The chart's dashboards: the OpenSearch Dashboards saved objects, the Grafana dashboard, and the
templates that ship them (the Grafana ConfigMap, the PrometheusRule, the saved-objects import Job).

File-level checks run anywhere. Rendering uses test_chart.py's helpers (Helm's Go SDK); the import
script is run for real with sh and curl against a small fake Dashboards server. That every metric
name and label the queries use is exported is checked in Rust: operator/tests/dashboards.rs.
"""

from __future__ import annotations

import base64
import http.server
import json
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = REPO / "charts" / "taxi-pipeline" / "dashboards"
NDJSON = DASHBOARDS / "opensearch-dashboards.ndjson"
GRAFANA = DASHBOARDS / "taxi-pipeline.json"

try:
    from test_chart import FULLNAME, NAMESPACE, chart, full_values, manifests, one, render_files  # noqa: F401
except ImportError:  # the chart engineer's renderer is not there: file-level tests only
    chart = None

needs_renderer = pytest.mark.skipif(chart is None, reason="test_chart.py's renderer is unavailable")

# JSON held as strings inside saved objects' attributes.
JSON_ATTRIBUTES = ("visState", "uiStateJSON", "panelsJSON", "optionsJSON")


# ---- OpenSearch Dashboards saved objects ---------------------------------------------------------


def saved_objects(text: str | None = None) -> list[dict]:
    lines = (text if text is not None else NDJSON.read_text()).splitlines()
    objects = []
    for number, line in enumerate(lines, 1):
        assert line.strip(), f"line {number} is blank: the import API reads one object per line"
        obj = json.loads(line)
        assert isinstance(obj, dict), f"line {number} is not an object"
        objects.append(obj)
    return objects


def by_id(objects: list[dict]) -> dict[tuple[str, str], dict]:
    return {(o["type"], o["id"]): o for o in objects}


def search_source(obj: dict) -> dict:
    return json.loads(obj["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])


def vis_state(obj: dict) -> dict:
    return json.loads(obj["attributes"]["visState"])


def with_prefix(text: str, prefix: str) -> str:
    """What the Job's ConfigMap does to the file."""
    return text.replace("taxi-", f"{prefix}-")


def assert_references_resolve(objects: list[dict]) -> None:
    known = by_id(objects)
    for obj in objects:
        names = {r["name"] for r in obj["references"]}
        for ref in obj["references"]:
            assert (ref["type"], ref["id"]) in known, f"{obj['id']} references missing {ref}"
        meta = obj["attributes"].get("kibanaSavedObjectMeta")
        if meta:
            index_ref = search_source(obj).get("indexRefName")
            assert index_ref is None or index_ref in names, f"{obj['id']}: indexRefName {index_ref} unresolved"
        if "panelsJSON" in obj["attributes"]:
            for panel in json.loads(obj["attributes"]["panelsJSON"]):
                assert panel["panelRefName"] in names, f"{obj['id']}: panel {panel} unresolved"


def test_every_line_is_a_saved_object_with_id_type_and_attributes():
    objects = saved_objects()
    for obj in objects:
        assert {"id", "type", "attributes", "references"} <= obj.keys(), obj
        assert isinstance(obj["attributes"], dict) and obj["id"] and obj["type"]
        for key in JSON_ATTRIBUTES:
            if key in obj["attributes"]:
                json.loads(obj["attributes"][key])
        if "kibanaSavedObjectMeta" in obj["attributes"]:
            search_source(obj)
    assert len(by_id(objects)) == len(objects), "ids are unique per type"
    assert sorted(o["type"] for o in objects) == [
        "dashboard",
        "index-pattern",
        "index-pattern",
        "visualization",
        "visualization",
    ]


def test_every_reference_resolves_to_an_object_in_the_file():
    assert_references_resolve(saved_objects())


def test_index_patterns_cover_both_indices_by_window_start():
    patterns = {o["attributes"]["title"]: o["attributes"] for o in saved_objects() if o["type"] == "index-pattern"}
    assert set(patterns) == {"taxi-hot-spots*", "taxi-airport-trips*"}
    assert {p["timeFieldName"] for p in patterns.values()} == {"window_start"}


def test_hot_spot_map_sums_pickup_count_over_geohash_grid_cells_of_location():
    objects = by_id(saved_objects())
    vis = objects[("visualization", "taxi-hot-spot-map")]
    state = vis_state(vis)
    assert state["type"] == "tile_map" and state["params"]["mapType"] == "Shaded Geohash Grid"
    aggs = {a["schema"]: a for a in state["aggs"]}
    assert (aggs["metric"]["type"], aggs["metric"]["params"]["field"]) == ("sum", "pickup_count")
    assert (aggs["segment"]["type"], aggs["segment"]["params"]["field"]) == ("geohash_grid", "location")
    assert aggs["segment"]["params"]["precision"] == 6, "the cells the workers key by"
    index_ref = search_source(vis)["indexRefName"]
    (ref,) = [r for r in vis["references"] if r["name"] == index_ref]
    assert objects[("index-pattern", ref["id"])]["attributes"]["title"] == "taxi-hot-spots*"


def airport_model() -> dict:
    state = vis_state(by_id(saved_objects())[("visualization", "taxi-airport-duration")])
    assert state["type"] == "metrics", "a TSVB visualization"
    return state["params"]


def merged_average(series: dict, partials: list[dict]) -> float:
    """Evaluates the series' final (math) metric the way TSVB does for one bucket of `partials`."""
    metrics = {m["id"]: m for m in series["metrics"]}
    *inputs, math = series["metrics"]
    assert math["type"] == "math"
    values = {}
    for variable in math["variables"]:
        source = metrics[variable["field"]]
        assert source["type"] == "sum", f"{variable['name']} must be a sum, not {source['type']}"
        values[variable["name"]] = sum(p[source["field"]] for p in partials)
    match = re.fullmatch(r"\s*params\.(\w+)\s*/\s*params\.(\w+)\s*", math["script"])
    assert match, f"the script divides one sum by the other: {math['script']!r}"
    return values[match[1]] / values[match[2]]


def test_airport_chart_divides_summed_durations_by_summed_trips_per_airport():
    model = airport_model()
    assert (model["index_pattern"], model["time_field"]) == ("taxi-airport-trips*", "window_start")
    assert model["interval"] == "10m", "one bucket per window"
    (series,) = model["series"]
    assert (series["split_mode"], series["terms_field"]) == ("terms", "airport")
    metrics = {m["id"]: m for m in series["metrics"]}
    math = series["metrics"][-1]
    fields = {v["name"]: metrics[v["field"]]["field"] for v in math["variables"]}
    assert math["script"].replace(" ", "") == "params.duration/params.trips"
    assert fields == {"duration": "sum_duration_min", "trips": "trip_count"}
    assert not [m for m in series["metrics"] if m["type"] in {"avg", "avg_bucket"}], "no average of averages"
    # Two shards' partials of one window: 1 trip of 60 min and 3 trips of 20 min each. The merged
    # average is 120 / 4 = 30 min; an average of the shards' averages would say 40.
    partials = [{"sum_duration_min": 60.0, "trip_count": 1}, {"sum_duration_min": 60.0, "trip_count": 3}]
    assert merged_average(series, partials) == 30.0


def test_dashboard_shows_the_map_and_the_airport_chart():
    objects = by_id(saved_objects())
    dashboard = objects[("dashboard", "taxi-dashboard")]
    panels = json.loads(dashboard["attributes"]["panelsJSON"])
    refs = {r["name"]: r for r in dashboard["references"]}
    shown = {refs[p["panelRefName"]]["id"] for p in panels}
    assert shown == {"taxi-hot-spot-map", "taxi-airport-duration"}
    assert len({p["panelIndex"] for p in panels}) == len(panels)


def test_another_index_prefix_renames_patterns_ids_and_the_tsvb_index_consistently():
    text = with_prefix(NDJSON.read_text(), "nyc-taxi")
    objects = saved_objects(text)
    assert_references_resolve(objects)
    titles = {o["attributes"]["title"] for o in objects if o["type"] == "index-pattern"}
    assert titles == {"nyc-taxi-hot-spots*", "nyc-taxi-airport-trips*"}
    assert all(o["id"].startswith("nyc-taxi-") for o in objects), "a release per prefix keeps its own objects"
    tsvb = vis_state(by_id(objects)[("visualization", "nyc-taxi-airport-duration")])
    assert tsvb["params"]["index_pattern"] == "nyc-taxi-airport-trips*"
    assert not re.search(r"(?<!nyc-)taxi-", text)


# ---- Grafana -------------------------------------------------------------------------------------


def grafana() -> dict:
    return json.loads(GRAFANA.read_text())


def graph_panels(dashboard: dict) -> list[dict]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


WORKER_SELECTOR = 'namespace=~"$namespace", pod=~"($pipeline)-worker-[0-9]+"'
PIPELINE_SELECTOR = 'pipeline=~"($namespace)/($pipeline)"'


def test_grafana_dashboard_has_every_panel_with_unique_ids():
    dashboard = grafana()
    assert dashboard["uid"] and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), ids
    titles = {p["title"] for p in graph_panels(dashboard)}
    for title in [
        "Throughput by outcome",
        "Per-shard lag (millis behind latest)",
        "Watermark delay",
        "Checkpoint latency",
        "Checkpoint failures",
        "Sink bulk latency",
        "Sink item errors",
        "Replicas vs desired",
        "Shard handoffs",
        "Reconciles",
        "Autoscaler decisions",
    ]:
        assert title in titles, f"missing panel {title}"


def test_grafana_panels_do_not_overlap():
    taken = set()
    for panel in grafana()["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def test_every_query_uses_the_datasource_variable_and_the_variables_exist():
    dashboard = grafana()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "pipeline"):
        assert variables[name]["datasource"]["uid"] == "${datasource}"
    # Pipelines are named after their worker pods (StatefulSet <pipeline>-worker).
    assert re.search(variables["pipeline"]["regex"].strip("/"), "nyc-rides-worker-12")[1] == "nyc-rides"
    for panel in graph_panels(dashboard):
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_worker_queries_select_pods_of_the_chosen_pipelines_and_operator_queries_their_label():
    # The operator's own series (no pipeline label) are shown for the whole operator.
    operator_wide = {
        "taxi_operator_leader",
        "taxi_operator_lease_errors_total",
        "taxi_operator_reconciles_total",
        "taxi_operator_reconcile_errors_total",
        "taxi_operator_reconcile_duration_seconds_bucket",
    }
    for panel in graph_panels(grafana()):
        for target in panel["targets"]:
            expr = target["expr"]
            for name in set(re.findall(r"\btaxi_[a-z0-9_]+", expr)) - operator_wide:
                selector = PIPELINE_SELECTOR if name.startswith("taxi_operator_") else WORKER_SELECTOR
                uses = len(re.findall(rf"\b{name}\b", expr))
                assert expr.count(f"{name}{{{selector}}}") == uses, f"{panel['title']}: {name} unfiltered in {expr}"
                if name.startswith("taxi_operator_") and not name.endswith("_total"):
                    # Only the leader's gauges are current: a replica that lost the Lease keeps old values.
                    assert "and on(instance) (taxi_operator_leader == 1)" in expr, expr


def test_legends_name_only_labels_the_query_keeps():
    for panel in graph_panels(grafana()):
        for target in panel["targets"]:
            kept = set()
            for group in re.findall(r"\bby \(([^)]*)\)", target["expr"]):
                kept |= {label.strip() for label in group.split(",")}
            for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")):
                assert label in kept, f"{panel['title']}: legend {label} is not kept by {target['expr']}"


# ---- Rendered templates --------------------------------------------------------------------------


def rendered_docs(chart, values: dict | None = None) -> list[dict]:
    return manifests(chart, values)


@needs_renderer
def test_nothing_of_this_renders_by_default(chart):
    docs = rendered_docs(chart)
    assert not [d for d in docs if d["kind"] in {"PrometheusRule", "Job"}]
    assert not [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith(("-dashboard", "-saved-objects"))]


@needs_renderer
def test_grafana_configmap_carries_the_dashboard_for_the_sidecar(chart):
    values = full_values()
    cm = one(rendered_docs(chart, values), "ConfigMap", f"{FULLNAME}-dashboard")
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "TaxiPipeline"}
    assert json.loads(cm["data"]["taxi-pipeline.json"]) == grafana()
    # Without a namespace override it lands in the release namespace.
    values["grafana"]["dashboard"]["namespace"] = ""
    cm = one(rendered_docs(chart, values), "ConfigMap", f"{FULLNAME}-dashboard")
    assert cm["metadata"]["namespace"] == NAMESPACE


def checkpoint_threshold(expr: str) -> tuple[str, str]:
    """The checkpoint alert's (intervals, fallback interval), checking the expression around them:
    a shard's checkpoint age at scrape time, compared per pod (many shards to one pod) with that
    many of the pod's own taxi_checkpoint_interval_seconds, or of the fallback where the pod does
    not export it. operator/tests/dashboards.rs parses it as PromQL."""
    shape = (
        r"max by \(namespace, pod, shard\) \( "
        r"timestamp\(taxi_checkpoint_last_success_timestamp_seconds\) - taxi_checkpoint_last_success_timestamp_seconds \) "
        r"> on \(namespace, pod\) group_left ([0-9]+) \* \( "
        r"max by \(namespace, pod\) \(taxi_checkpoint_interval_seconds\) or "
        r"max by \(namespace, pod\) \(0 \* taxi_checkpoint_last_success_timestamp_seconds \+ ([0-9.]+)\) \)"
    )
    match = re.fullmatch(shape, " ".join(expr.split()))
    assert match, f"unexpected checkpoint alert: {expr}"
    return match[1], match[2]


@needs_renderer
def test_prometheus_rule_alerts_with_the_thresholds_of_values(chart):
    rule = one(rendered_docs(chart, full_values()), "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(alerts) == {
        "TaxiWorkerLagHigh",
        "TaxiCheckpointMissed",
        "TaxiSinkItemErrors",
        "TaxiSinkDeadLetters",
        "TaxiShardsFailing",
        "TaxiWorkersNotReady",
        "TaxiOperatorReconcileErrors",
    }
    for name, alert in alerts.items():
        assert alert["for"] == "10m", name
        assert alert["labels"]["severity"] in {"warning", "critical"}, name
        assert alert["annotations"]["summary"] and alert["annotations"]["description"], name
        assert "{{ $labels." in alert["annotations"]["description"], f"{name}: Prometheus templating survives Helm"

    def threshold(name: str) -> str:
        return re.search(r">\s*([0-9.]+)\s*$", alerts[name]["expr"].strip())[1]

    assert threshold("TaxiWorkerLagHigh") == "120"
    assert "taxi_millis_behind_latest" in alerts["TaxiWorkerLagHigh"]["expr"]
    # Each shard's age against 4 intervals of its own pod, 15 s for pods that do not say theirs.
    assert checkpoint_threshold(alerts["TaxiCheckpointMissed"]["expr"]) == ("4", "15")
    assert threshold("TaxiSinkItemErrors") == "0.5"
    assert "rate(taxi_sink_item_errors_total[5m])" in alerts["TaxiSinkItemErrors"]["expr"]
    assert threshold("TaxiOperatorReconcileErrors") == "0.1"
    assert alerts["TaxiSinkDeadLetters"]["expr"] == "max by (namespace, pod) (taxi_sink_dead_letters) > 0"
    assert alerts["TaxiShardsFailing"]["expr"] == "max by (namespace, pod) (taxi_failed_shards) > 0"
    not_ready = " ".join(alerts["TaxiWorkersNotReady"]["expr"].split())
    assert "(taxi_operator_desired_replicas - taxi_operator_ready_replicas) > 0" in not_ready
    assert "and on(instance) (taxi_operator_leader == 1)" in not_ready


@needs_renderer
def test_default_rule_thresholds(chart):
    rule = one(rendered_docs(chart, {"metrics": {"prometheusRule": {"enabled": True}}}), "PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert checkpoint_threshold(alerts["TaxiCheckpointMissed"]["expr"]) == ("3", "10")
    assert alerts["TaxiWorkerLagHigh"]["expr"].rstrip().endswith("> 60")
    assert alerts["TaxiSinkItemErrors"]["expr"].rstrip().endswith("> 0")
    assert {a["for"] for a in alerts.values()} == {"5m"}


def saved_objects_job(chart, values: dict) -> tuple[dict, dict]:
    docs = rendered_docs(chart, values)
    return one(docs, "Job", f"{FULLNAME}-saved-objects"), one(docs, "ConfigMap", f"{FULLNAME}-saved-objects")


@needs_renderer
def test_saved_objects_job_is_a_hook_with_the_prefixed_objects(chart):
    job, cm = saved_objects_job(chart, full_values())
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "post-install,post-upgrade"
    assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    assert job["spec"]["backoffLimit"] == 3
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    (c,) = pod["containers"]
    assert c["image"] == "curlimages/curl:8.11.1"
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    env = {e["name"]: e for e in c["env"]}
    assert env["OSD_URL"]["value"] == "http://opensearch-dashboards.opensearch.svc:5601"
    assert env["OSD_TENANT"]["value"] == "global"
    for name, key in [("OSD_USERNAME", "username"), ("OSD_PASSWORD", "password")]:
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "opensearch-dashboards-admin", "key": key}
    assert pod["volumes"][0]["configMap"]["name"] == cm["metadata"]["name"]
    assert job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "saved-objects"
    objects = saved_objects(cm["data"]["export.ndjson"])
    assert_references_resolve(objects)
    assert {o["attributes"]["title"] for o in objects if o["type"] == "index-pattern"} == {
        "nyc-taxi-hot-spots*",
        "nyc-taxi-airport-trips*",
    }


@needs_renderer
def test_saved_objects_job_without_auth_or_tenant_and_url_required(chart):
    values = {"opensearchDashboards": {"savedObjects": {"enabled": True, "url": "http://osd:5601"}}}
    job, cm = saved_objects_job(chart, values)
    (c,) = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in c["env"]}
    assert "OSD_USERNAME" not in env and env["OSD_TENANT"]["value"] == ""
    assert cm["data"]["export.ndjson"] == NDJSON.read_text().rstrip("\n"), "the default prefix is the file as is"


# ---- The import script, run against a fake Dashboards -------------------------------------------


class FakeDashboards(http.server.ThreadingHTTPServer):
    """Answers the import API from a script of (status, body) replies; records each request."""

    def __init__(self, replies: list[tuple[int, dict]]):
        self.replies = list(replies)
        self.requests: list[dict] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                outer.requests.append({"path": self.path, "headers": dict(self.headers.items()), "body": body})
                status, reply = outer.replies.pop(0) if len(outer.replies) > 1 else outer.replies[0]
                data = json.dumps(reply, separators=(",", ":")).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def run_import(cm: dict, tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Runs the ConfigMap's import.sh with its mount paths moved under tmp_path."""
    objects = tmp_path / "saved-objects"
    objects.mkdir(exist_ok=True)
    (objects / "export.ndjson").write_text(cm["data"]["export.ndjson"])
    script = (
        cm["data"]["import.sh"]
        .replace("/tmp/response.json", f"{tmp_path}/response.json")
        .replace("/saved-objects/", f"{objects}/")
    )
    base = {"PATH": "/usr/bin:/bin", "OSD_ATTEMPTS": "3", "OSD_DELAY_SECONDS": "0", "OSD_TENANT": ""}
    return subprocess.run(["sh", "-c", script], env=base | env, capture_output=True, text=True, timeout=60)


needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")


@needs_renderer
@needs_curl
def test_import_retries_until_dashboards_is_up_and_sends_the_file_with_headers_and_auth(chart, tmp_path):
    _, cm = saved_objects_job(chart, full_values())
    server = FakeDashboards([(503, {"statusCode": 503}), (200, {"success": True, "successCount": 5})])
    try:
        password = 'p"a\\ss'
        env = {"OSD_URL": server.url + "/", "OSD_TENANT": "global", "OSD_USERNAME": "admin", "OSD_PASSWORD": password}
        result = run_import(cm, tmp_path, env)
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr
    assert len(server.requests) == 2, "retried once after the 503"
    request = server.requests[-1]
    assert request["path"] == "/api/saved_objects/_import?overwrite=true"
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert headers["osd-xsrf"] == "true" and headers["securitytenant"] == "global"
    assert headers["authorization"] == "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()
    assert headers["content-type"].startswith("multipart/form-data")
    assert b'name="file"; filename="export.ndjson"' in request["body"]
    assert cm["data"]["export.ndjson"].encode() in request["body"]


@needs_renderer
@needs_curl
def test_import_gives_up_after_bounded_attempts_and_at_once_on_refused_objects(chart, tmp_path):
    values = {"opensearchDashboards": {"savedObjects": {"enabled": True, "url": "http://osd:5601"}}}
    _, cm = saved_objects_job(chart, values)
    down = FakeDashboards([(503, {})])
    try:
        result = run_import(cm, tmp_path, {"OSD_URL": down.url})
    finally:
        down.shutdown()
    assert result.returncode == 1 and len(down.requests) == 3, result.stdout
    assert "not ready after 3 attempts" in result.stderr
    assert all("authorization" not in {k.lower() for k in r["headers"]} for r in down.requests)
    assert all("securitytenant" not in {k.lower() for k in r["headers"]} for r in down.requests)

    refused = FakeDashboards([(200, {"success": False, "errors": [{"id": "taxi-dashboard"}]})])
    try:
        result = run_import(cm, tmp_path, {"OSD_URL": refused.url})
    finally:
        refused.shutdown()
    assert result.returncode == 1 and len(refused.requests) == 1
    assert "refused some objects" in result.stderr


def test_values_layout_has_what_the_templates_read():
    values = yaml.safe_load((REPO / "charts" / "taxi-pipeline" / "values.yaml").read_text())
    rule = values["metrics"]["prometheusRule"]
    for key in [
        "enabled",
        "labels",
        "workerLagThresholdSeconds",
        "missedCheckpointIntervals",
        "checkpointIntervalSeconds",
        "sinkErrorRatePerSecond",
        "reconcileErrorRatePerSecond",
        "for",
    ]:
        assert key in rule, key
    assert values["grafana"]["dashboard"]["labels"] == {"grafana_dashboard": "1"}
    saved = values["opensearchDashboards"]["savedObjects"]
    assert saved["indexPrefix"] == "taxi", "the NDJSON is written for the default prefix"
    assert {"url", "tenant", "basicAuthSecret", "image", "backoffLimit"} <= saved.keys()
