"""The files of examples/: every manifest is valid for Kubernetes, every values file installs the
chart cleanly, and the examples that belong together are wired to each other.

Kubernetes objects are validated strictly with kubernetes-validate. TaxiPipelines are validated
against the generated CRD's schema (crds/taxipipelines.yaml), made strict as the API server's
field validation is; their CEL rules are evaluated in Rust, by operator/tests/crd.rs, which reads
the same files. Values files (values-*.yaml) are rendered and linted with test_chart.py's helpers.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from test_chart import (  # noqa: F401
    CHART,
    KUBERNETES_VERSION,
    NAMESPACE,
    chart,
    check_monitoring_object,
    manifests,
    of_kind,
    one,
    validate_strictly,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
CRD = REPO / "crds" / "taxipipelines.yaml"

EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))
VALUES_FILES = [p for p in EXAMPLE_FILES if p.name.startswith("values-")]
MANIFEST_FILES = [p for p in EXAMPLE_FILES if p not in VALUES_FILES]


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def example(name: str) -> list[dict]:
    return documents(EXAMPLES / name)


def values(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / name).read_text())


# ---- TaxiPipelines against the CRD's schema ------------------------------------------------------

# Keywords of a structural schema that JSON Schema does not know or that validation does not use.
KUBERNETES_ONLY = {
    "description",
    "default",
    "format",
    "nullable",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-validations",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
}


def json_schema(node: dict) -> dict:
    """A structural schema of a CRD as JSON Schema, with the API server's reading of it: an object
    with properties rejects unknown fields (unless it preserves them), `nullable` admits null and
    `x-kubernetes-int-or-string` admits either."""
    out = {key: value for key, value in node.items() if key not in KUBERNETES_ONLY}
    if "properties" in node:
        out["properties"] = {name: json_schema(sub) for name, sub in node["properties"].items()}
        if "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            out[key] = json_schema(node[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in node:
            out[key] = [json_schema(sub) for sub in node[key]]
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


@pytest.fixture(scope="module")
def pipeline_validator() -> jsonschema.Draft202012Validator:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = crd["spec"]["versions"]
    schema = json_schema(version["schema"]["openAPIV3Schema"])
    # What every custom resource has without its CRD saying so (metadata: validate_pipeline).
    schema["properties"] |= {
        "apiVersion": {"const": f"{crd['spec']['group']}/{version['name']}"},
        "kind": {"const": crd["spec"]["names"]["kind"]},
        "metadata": {"type": "object"},
    }
    return jsonschema.Draft202012Validator(schema)


def validate_pipeline(validator: jsonschema.Draft202012Validator, doc: dict) -> None:
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
    problems = [f"{'.'.join(str(p) for p in e.path)}: {e.message}" for e in errors]
    assert problems == [], f"TaxiPipeline {doc['metadata']['name']}: {problems}"
    # The CRD's schema leaves metadata to the API server: check it as any object's.
    carrier = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]}
    kubernetes_validate.validate(carrier, KUBERNETES_VERSION, strict=True)


def test_the_crd_schema_check_rejects_what_the_api_server_rejects(pipeline_validator):
    """The strict reading of the CRD is what makes the example checks worth anything."""
    (pipeline,) = example("taxipipeline-minimal.yaml")
    validate_pipeline(pipeline_validator, pipeline)
    for path, value, expected in [
        (("spec", "stream", "shard"), 4, "spec.stream: Additional properties are not allowed ('shard'"),
        (("spec", "parallelism"), "two", "spec.parallelism: 'two' is not of type 'integer'"),
        (("spec", "analyses", "hotSpots", "geohashPrecision"), 13, "geohashPrecision: 13 is greater than the maximum"),
        (("spec", "sink", "opensearch", "auth", "type"), "oauth", "auth.type: 'oauth' is not one of"),
        (("spec", "checkpoint", "s3EndpointUrl"), None, None),  # nullable: null is fine
    ]:
        broken = yaml.safe_load(yaml.safe_dump(pipeline))
        node = broken
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
        if expected is None:
            validate_pipeline(pipeline_validator, broken)
            continue
        with pytest.raises(AssertionError, match=re.escape(expected)):
            validate_pipeline(pipeline_validator, broken)
    misspelt_metadata = {**pipeline, "metadata": {"name": "nyc-taxi", "lables": {"team": "a"}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_pipeline(pipeline_validator, misspelt_metadata)


# ---- Every manifest -------------------------------------------------------------------------------


def test_examples_are_there():
    names = {p.name for p in EXAMPLE_FILES}
    assert {
        "taxipipeline-minimal.yaml",
        "taxipipeline.yaml",
        "taxipipeline-efo.yaml",
        "taxipipeline-autoscaling.yaml",
        "taxipipeline-multi-tenant.yaml",
        "values-multi-tenant.yaml",
        "emulators.yaml",
        "taxipipeline-emulators.yaml",
        "values-emulators.yaml",
        "replay-job.yaml",
    } <= names
    readme = (EXAMPLES / "README.md").read_text()
    for name in names:
        assert f"`{name}`" in readme, f"examples/README.md does not describe {name}"


@pytest.mark.parametrize("path", MANIFEST_FILES, ids=lambda p: p.name)
def test_every_example_manifest_is_valid(path, pipeline_validator):
    docs = documents(path)
    assert docs, f"{path.name} holds no object"
    for doc in docs:
        if doc["kind"] == "TaxiPipeline":
            validate_pipeline(pipeline_validator, doc)
            continue
        validate_strictly(doc, f"{path.name}: ")


@pytest.mark.parametrize("path", VALUES_FILES, ids=lambda p: p.name)
def test_every_example_values_file_installs_the_chart(chart, path):
    example_values = yaml.safe_load(path.read_text())
    report = helm.lint(CHART, example_values, namespace=NAMESPACE, strict=True)
    assert report["errors"] == [] and [m for m in report["messages"] if m["severity"] >= 2] == [], report
    for doc in manifests(chart, example_values):
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            check_monitoring_object(doc)
        else:
            validate_strictly(doc, f"{path.name}: ")


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_every_example_says_first_what_it_costs_on_aws(path):
    lines = path.read_text().splitlines()
    leading = []
    for line in lines:
        if not line.startswith("#"):
            break
        leading.append(line)
    assert any(line.startswith("# Cost on AWS: ") for line in leading), (
        f"{path.name}: its first comment must say what it costs on AWS (a line '# Cost on AWS: ...')"
    )


def images(doc) -> list[str]:
    """Every container image and TaxiPipeline worker image named in `doc`."""
    found = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key == "image" and isinstance(value, str):
                found.append(value)
            else:
                found.extend(images(value))
    elif isinstance(doc, list):
        for item in doc:
            found.extend(images(item))
    return found


def test_the_examples_run_the_image_the_chart_installs(chart):
    """The project's image in the examples is the chart's default (repository and appVersion tag), so
    the examples run what `helm install` deploys, and the default image policy admits them."""
    default = f"{chart.values['image']['repository']}:{chart.metadata['appVersion']}"
    project = image_repository(default).rsplit("/", 1)[0] + "/"
    named = [
        (path.name, image) for path in MANIFEST_FILES for doc in documents(path) for image in images(doc)
    ]
    ours = [(name, image) for name, image in named if image.startswith(project)]
    assert {name for name, _ in ours} >= {"taxipipeline.yaml", "replay-job.yaml"}, ours
    for name, image in ours:
        assert image == default, f"{name} names {image}, but the chart installs {default}"


# ---- Examples that belong together ---------------------------------------------------------------


def operator_args(chart, example_values: dict) -> dict[str, str]:
    """The operator's flags as the chart renders them from `example_values`."""
    (c,) = one(manifests(chart, example_values), "Deployment")["spec"]["template"]["spec"]["containers"]
    return dict(arg.partition("=")[::2] for arg in c["args"][1:])


def image_repository(image: str) -> str:
    """The reference without :tag or @digest (a registry's :port is not a tag)."""
    name = image.split("@", 1)[0]
    head, _, last = name.rpartition("/")
    return f"{head}/{last.split(':', 1)[0]}" if head else last.split(":", 1)[0]


def allowed(image: str, entries: list[str]) -> bool:
    """The operator's --allowed-image-repositories rule."""
    repository = image_repository(image)
    return any(e == "*" or e == repository or (e.endswith("/") and repository.startswith(e)) for e in entries)


def test_image_repository_ignores_tags_digests_and_registry_ports():
    assert image_repository("registry.example.com:5000/platform/taxi:0.1.0") == "registry.example.com:5000/platform/taxi"
    assert image_repository("ghcr.io/taxipipeline/taxi@sha256:" + "a" * 64) == "ghcr.io/taxipipeline/taxi"
    assert image_repository("taxi:1") == "taxi"
    assert allowed("registry.example.com/tenants/a/taxi:1", ["registry.example.com/tenants/"])
    assert not allowed("registry.example.com/tenants-evil/taxi:1", ["registry.example.com/tenants/"])
    assert not allowed("registry.example.com/platform/taxi-evil:1", ["registry.example.com/platform/taxi"])


def test_multi_tenant_pipeline_is_within_the_platform_policy(chart):
    args = operator_args(chart, values("values-multi-tenant.yaml"))
    service_account, pipeline = example("taxipipeline-multi-tenant.yaml")
    namespace = pipeline["metadata"]["namespace"]
    assert namespace in args["--namespaces"].split(",")
    worker = pipeline["spec"]["worker"]
    assert allowed(worker["image"], args["--allowed-image-repositories"].split(","))
    assert args["--service-account-policy"] == "labeled"
    assert (service_account["kind"], service_account["metadata"]["namespace"]) == ("ServiceAccount", namespace)
    assert worker["serviceAccountName"] == service_account["metadata"]["name"]
    assert service_account["metadata"]["labels"]["taxipipeline.io/workers-allowed"] == "true"
    assert worker["networkPolicy"]["enabled"] is True
    # The pipeline leaves its CA to the platform default, which the policy values set.
    assert "caSecretRef" not in pipeline["spec"]["sink"]["opensearch"] and args["--default-sink-ca-secret"]
    assert args["--worker-image-pull-secrets"] == "platform-registry"
    # Secrets only by reference: a plain value is never a credential.
    for env in worker["podTemplate"]["env"]:
        assert "value" in env or env["valueFrom"]["secretKeyRef"]["name"], env
        assert not re.search(r"PASSWORD|SECRET|TOKEN|KEY", env["name"]) or "valueFrom" in env, env


def services(docs: list[dict]) -> dict[tuple[str, int], dict]:
    """(<name>.<namespace>.svc, port) of every Service."""
    return {
        (f"{s['metadata']['name']}.{s['metadata']['namespace']}.svc", port["port"]): s
        for s in docs
        if s["kind"] == "Service"
        for port in s["spec"]["ports"]
    }


def test_the_emulator_pipeline_and_replay_reach_the_emulators_services():
    emulators = example("emulators.yaml")
    reachable = services(emulators)
    (pipeline,) = example("taxipipeline-emulators.yaml")
    (replay,) = example("replay-job.yaml")
    spec = pipeline["spec"]
    replay_container = replay["spec"]["template"]["spec"]["containers"][0]
    replay_args = dict(a.partition("=")[::2] for a in replay_container["args"][1:])
    urls = {
        "kinesis-mock": [spec["stream"]["endpointUrl"], replay_args["--endpoint-url"]],
        "moto": [spec["checkpoint"]["s3EndpointUrl"]],
        "opensearch": [spec["sink"]["opensearch"]["endpoint"]],
    }
    for service, endpoints in urls.items():
        for url in endpoints:
            parts = urlsplit(url)
            assert reachable.get((parts.hostname, parts.port), {}).get("metadata", {}).get("name") == service, url
    # Every Service selects the pods of a Deployment of the file, on a port it names.
    deployments = {d["metadata"]["name"]: d for d in of_kind(emulators, "Deployment")}
    for service in of_kind(emulators, "Service"):
        pod = deployments[service["metadata"]["name"]]["spec"]["template"]
        assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        ports = {p["name"] for c in pod["spec"]["containers"] for p in c["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
    # The stream kinesis-mock creates is the pipeline's, with its shards; the bucket is its bucket.
    kinesis = deployments["kinesis-mock"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in kinesis["env"]}
    assert env["INITIALIZE_STREAMS"] == f"{spec['stream']['name']}:{spec['stream']['shards']}"
    assert replay_args["--stream"] == spec["stream"]["name"]
    (bucket_job,) = of_kind(emulators, "Job")
    bucket_url = bucket_job["spec"]["template"]["spec"]["containers"][0]["args"][-1]
    assert urlsplit(bucket_url).path.strip("/") == urlsplit(spec["checkpoint"]["uri"]).netloc
    assert bucket_url.startswith(spec["checkpoint"]["s3EndpointUrl"] + "/")


def test_the_emulator_credentials_come_from_the_secret_of_emulators_yaml():
    (secret,) = of_kind(example("emulators.yaml"), "Secret")
    keys = set(secret["stringData"])
    namespace = secret["metadata"]["namespace"]
    (pipeline,) = example("taxipipeline-emulators.yaml")
    assert pipeline["metadata"]["namespace"] == namespace
    refs = [e["valueFrom"]["secretKeyRef"] for e in pipeline["spec"]["worker"]["podTemplate"]["env"]]
    assert {(r["name"], r["key"]) for r in refs} == {(secret["metadata"]["name"], k) for k in keys}
    (replay,) = example("replay-job.yaml")
    assert replay["metadata"]["namespace"] == namespace
    (env_from,) = replay["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    assert env_from["secretRef"]["name"] == secret["metadata"]["name"]
    assert keys == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def test_the_emulator_values_watch_the_emulators_namespace(chart):
    args = operator_args(chart, values("values-emulators.yaml"))
    (pipeline,) = example("taxipipeline-emulators.yaml")
    assert args["--namespaces"] == pipeline["metadata"]["namespace"]
    assert args["--region"] == pipeline["spec"]["stream"]["region"]
