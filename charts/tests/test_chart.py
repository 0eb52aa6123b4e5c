"""The taxi-pipeline chart, rendered offline with Helm 4's SDK (helm-python-sdk, no helm binary).

Renders the defaults, charts/tests/values-full.yaml (every feature on, namespaced RBAC over two
namespaces) and a cluster-wide variant, lints them, validates every manifest against the
Kubernetes schemas of kubernetes-validate, and checks what matters: pod security, the exact RBAC
rules the operator's code needs, the operator's flags, the CRD copy, and the values schema.
"""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "taxi-pipeline"
FULL_VALUES = Path(__file__).with_name("values-full.yaml")
RELEASE = "taxi"
NAMESPACE = "taxi-system"
FULLNAME = "taxi-taxi-pipeline"
# The newest Kubernetes whose schemas kubernetes-validate ships (strict: unknown fields fail).
KUBERNETES_VERSION = "1.37"
# The operator Deployment's selector, as --operator-pod-labels passes it.
OPERATOR_POD_LABELS = "app.kubernetes.io/component=operator,app.kubernetes.io/instance=taxi,app.kubernetes.io/name=taxi-pipeline"
WORKSPACE_VERSION = tomllib.loads((REPO / "Cargo.toml").read_text())["workspace"]["package"]["version"]


def full_values() -> dict:
    return yaml.safe_load(FULL_VALUES.read_text())


def cluster_wide_values() -> dict:
    return {"rbac": {"clusterWide": True}}


VARIANTS = {"default": dict, "full": full_values, "cluster-wide": cluster_wide_values}


@pytest.fixture(scope="module")
def chart():
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render_files(chart, values: dict | None = None, release: str = RELEASE, namespace: str = NAMESPACE) -> dict[str, str]:
    """Template path (relative to the chart) -> rendered text."""
    rendered = chart.render(values or {}, name=release, namespace=namespace, is_install=True)
    return {path.split("/", 1)[1]: text for path, text in rendered.items()}


def manifests(chart, values: dict | None = None, release: str = RELEASE, namespace: str = NAMESPACE) -> list[dict]:
    """Every Kubernetes object the chart renders (NOTES.txt is not one)."""
    docs = []
    for path, text in sorted(render_files(chart, values, release, namespace).items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in of_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def container(deployment: dict) -> dict:
    (operator,) = deployment["spec"]["template"]["spec"]["containers"]
    return operator


def env_of(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


# ---- Lint and schema validation of everything rendered ------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_lint_reports_no_warnings_or_errors(variant):
    report = helm.lint(CHART, VARIANTS[variant](), namespace=NAMESPACE, strict=True)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


def check_monitoring_object(doc: dict) -> None:
    """prometheus-operator kinds are CRDs, absent from the Kubernetes schemas kubernetes-validate
    ships: check their shape here instead (what the operator requires and what we rely on)."""
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
    assert doc["metadata"]["name"] and doc["metadata"]["namespace"] == NAMESPACE
    spec = doc["spec"]
    if doc["kind"] == "ServiceMonitor":
        assert spec["selector"]["matchLabels"]
        assert spec["endpoints"]
        for endpoint in spec["endpoints"]:
            assert endpoint["port"] and endpoint["path"] == "/metrics"
            assert re.fullmatch(r"([0-9]+(ms|s|m|h))+", endpoint["interval"])
            assert re.fullmatch(r"([0-9]+(ms|s|m|h))+", endpoint["scrapeTimeout"])
    elif doc["kind"] == "PrometheusRule":
        assert spec["groups"]
        for group in spec["groups"]:
            assert group["name"] and group["rules"]
            for rule in group["rules"]:
                assert rule["expr"] and ("alert" in rule) != ("record" in rule)
    else:
        pytest.fail(f"unexpected monitoring.coreos.com kind {doc['kind']}")


def validate_strictly(doc: dict, source: str = "") -> None:
    """Fails the test unless `doc` is valid for KUBERNETES_VERSION, unknown fields included."""
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        where = ".".join(str(p) for p in e.path)
        pytest.fail(f"{source}{doc['kind']}/{doc['metadata']['name']}: {where}: {e.message}")


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_manifest_is_valid_for_kubernetes(chart, variant):
    docs = manifests(chart, VARIANTS[variant]())
    assert docs
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            check_monitoring_object(doc)
            continue
        validate_strictly(doc)


def test_full_values_render_every_template(chart):
    """values-full.yaml exists to exercise every template: none may render empty."""
    empty = [path for path, text in render_files(chart, full_values()).items() if not text.strip()]
    assert empty == []


# ---- Pod security ---------------------------------------------------------------------------------


def pod_specs(docs: list[dict]) -> list[tuple[str, dict]]:
    specs = []
    for doc in docs:
        if doc["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
            specs.append((f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]))
        elif doc["kind"] == "CronJob":
            specs.append((doc["metadata"]["name"], doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]))
        elif doc["kind"] == "Pod":
            specs.append((doc["metadata"]["name"], doc["spec"]))
    return specs


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_pod_runs_non_root_on_a_read_only_root_without_privileges(chart, variant):
    specs = pod_specs(manifests(chart, VARIANTS[variant]()))
    assert specs
    for name, spec in specs:
        pod = spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, name
        assert pod.get("runAsUser", 0) != 0, name
        assert pod.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), name
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c.get("securityContext", {})
            where = f"{name} container {c['name']}"
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert "ALL" in sc.get("capabilities", {}).get("drop", []), where
            assert not sc.get("capabilities", {}).get("add"), where
            assert sc.get("privileged") is not True, where
            assert sc.get("runAsUser", pod["runAsUser"]) != 0, where


# ---- RBAC: exactly the rules the operator's code paths need -------------------------------------

# (apiGroup, resource, resourceNames) -> verbs. Why each is needed: templates/rbac.yaml.
OPERATOR_RULES = {
    ("taxipipeline.io", "taxipipelines", ()): {"list", "watch", "patch"},
    ("taxipipeline.io", "taxipipelines/status", ()): {"patch"},
    ("taxipipeline.io", "taxipipelines/finalizers", ()): {"update"},
    ("apps", "statefulsets", ()): {"get", "list", "watch", "create", "patch"},
    ("", "configmaps", ()): {"get", "list", "watch", "create", "patch"},
    ("", "services", ()): {"get", "create", "patch"},
    ("", "serviceaccounts", ()): {"get", "create", "patch", "delete"},
    ("policy", "poddisruptionbudgets", ()): {"get", "create", "patch", "delete"},
    ("networking.k8s.io", "networkpolicies", ()): {"get", "create", "patch", "delete"},
    ("rbac.authorization.k8s.io", "roles", ()): {"get", "create", "patch"},
    ("rbac.authorization.k8s.io", "rolebindings", ()): {"get", "create", "patch"},
    ("events.k8s.io", "events", ()): {"create", "patch"},
}
LEADER_RULES = {
    ("coordination.k8s.io", "leases", ()): {"create"},
    ("coordination.k8s.io", "leases", ("taxi-operator-leader",)): {"get", "update"},
}


# The ClusterRoles for people (templates/aggregated-roles.yaml): the label that aggregates each.
AGGREGATED_ROLES = {
    "taxipipeline-edit": {
        "rbac.authorization.k8s.io/aggregate-to-admin": "true",
        "rbac.authorization.k8s.io/aggregate-to-edit": "true",
    },
    "taxipipeline-view": {"rbac.authorization.k8s.io/aggregate-to-view": "true"},
}


def operator_cluster_roles(docs: list[dict]) -> list[dict]:
    return [r for r in of_kind(docs, "ClusterRole") if r["metadata"]["name"] not in AGGREGATED_ROLES]


def rule_table(rules: list[dict]) -> dict[tuple, set[str]]:
    """Rules flattened to (apiGroup, resource, resourceNames) -> verbs, failing on wildcards."""
    table: dict[tuple, set[str]] = {}
    for rule in rules:
        assert set(rule) <= {"apiGroups", "resources", "resourceNames", "verbs"}, rule
        names = tuple(sorted(rule.get("resourceNames", [])))
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert "*" not in (group, resource, *rule["verbs"]), rule
                table.setdefault((group, resource, names), set()).update(rule["verbs"])
    return table


def bound_subject(binding: dict, kind: str, role: str, sa: str) -> None:
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]


def test_namespaced_rbac_grants_exactly_the_operator_rules_in_each_watched_namespace(chart):
    docs = manifests(chart, full_values())
    assert operator_cluster_roles(docs) == [] and of_kind(docs, "ClusterRoleBinding") == []
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]): r for r in of_kind(docs, "Role")}
    assert set(roles) == {
        ("taxi-prod", FULLNAME),
        ("taxi-staging", FULLNAME),
        (NAMESPACE, f"{FULLNAME}-leader-election"),
    }
    for ns in ("taxi-prod", "taxi-staging"):
        assert rule_table(roles[(ns, FULLNAME)]["rules"]) == OPERATOR_RULES
    assert rule_table(roles[(NAMESPACE, f"{FULLNAME}-leader-election")]["rules"]) == LEADER_RULES
    bindings = {(b["metadata"]["namespace"], b["metadata"]["name"]): b for b in of_kind(docs, "RoleBinding")}
    assert set(bindings) == set(roles)
    for (ns, name), binding in bindings.items():
        bound_subject(binding, "Role", name, "taxi-operator")


def test_default_rbac_covers_only_the_release_namespace(chart):
    docs = manifests(chart)
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]): r for r in of_kind(docs, "Role")}
    assert set(roles) == {(NAMESPACE, FULLNAME), (NAMESPACE, f"{FULLNAME}-leader-election")}
    assert rule_table(roles[(NAMESPACE, FULLNAME)]["rules"]) == OPERATOR_RULES
    assert operator_cluster_roles(docs) == []
    for binding in of_kind(docs, "RoleBinding"):
        bound_subject(binding, "Role", binding["metadata"]["name"], FULLNAME)


def test_cluster_wide_rbac_is_one_cluster_role_and_the_lease_stays_namespaced(chart):
    docs = manifests(chart, cluster_wide_values())
    (cluster_role,) = operator_cluster_roles(docs)
    assert rule_table(cluster_role["rules"]) == OPERATOR_RULES
    bound_subject(one(docs, "ClusterRoleBinding"), "ClusterRole", cluster_role["metadata"]["name"], FULLNAME)
    role = one(docs, "Role")
    assert role["metadata"] == {**role["metadata"], "name": f"{FULLNAME}-leader-election", "namespace": NAMESPACE}
    assert rule_table(role["rules"]) == LEADER_RULES


def test_no_rbac_objects_without_rbac_create_and_no_lease_role_without_election(chart):
    docs = manifests(chart, {"rbac": {"create": False}})
    assert not [d for d in docs if d["apiVersion"].startswith("rbac.authorization.k8s.io/")]
    docs = manifests(chart, {"operator": {"replicas": 1, "leaderElection": False}})
    assert [r["metadata"]["name"] for r in of_kind(docs, "Role")] == [FULLNAME]


def test_rbac_rules_cover_every_kind_the_reconciler_applies():
    """Guards the rule list against drift: every kind the reconciler's apply step server-side
    applies or deletes has create+patch (or delete) above."""
    source = (REPO / "operator" / "src" / "reconcile" / "apply.rs").read_text()
    applied = set(re.findall(r"server_side_apply::<(\w+)>", source))
    applied |= {"ServiceAccount", "PodDisruptionBudget"}  # applied through a `match` without turbofish
    deleted = set(re.findall(r"delete_if_owned::<(\w+)>", source))
    resource = {
        "StatefulSet": ("apps", "statefulsets"),
        "ConfigMap": ("", "configmaps"),
        "Service": ("", "services"),
        "ServiceAccount": ("", "serviceaccounts"),
        "PodDisruptionBudget": ("policy", "poddisruptionbudgets"),
        "NetworkPolicy": ("networking.k8s.io", "networkpolicies"),
        "Role": ("rbac.authorization.k8s.io", "roles"),
        "RoleBinding": ("rbac.authorization.k8s.io", "rolebindings"),
    }
    assert deleted == {"ServiceAccount", "PodDisruptionBudget", "NetworkPolicy"}
    assert applied == set(resource)
    for kind in applied:
        assert {"create", "patch"} <= OPERATOR_RULES[(*resource[kind], ())], kind
    for kind in deleted:
        assert "delete" in OPERATOR_RULES[(*resource[kind], ())], kind


# ---- The operator Deployment ----------------------------------------------------------------------


def operator_flags() -> set[str]:
    """The long flags of `taxi-operator run`, read from operator/src/cli.rs."""
    source = (REPO / "operator" / "src" / "cli.rs").read_text()
    run_args = source.split("struct RunArgs", 1)[1].split("\n}\n", 1)[0]
    fields = re.findall(r"#\[arg\(long[^\]]*\]\s*(\w+):", run_args)
    assert fields, "RunArgs has no flags?"
    return {"--" + f.replace("_", "-") for f in fields}


def args_of(c: dict) -> dict[str, str]:
    assert c["args"][0] == "run"
    parsed = {}
    for arg in c["args"][1:]:
        flag, _, value = arg.partition("=")
        parsed[flag] = value
    return parsed


def test_operator_runs_with_flags_the_binary_knows(chart):
    known = operator_flags()
    for variant, values in VARIANTS.items():
        deployment = one(manifests(chart, values()), "Deployment")
        c = container(deployment)
        assert c["command"] == ["/usr/local/bin/taxi-operator"]
        assert set(args_of(c)) <= known, variant


def test_default_operator_watches_its_namespace_and_elects_a_leader(chart):
    docs = manifests(chart)
    deployment = one(docs, "Deployment", FULLNAME)
    pod = deployment["spec"]["template"]["spec"]
    c = container(deployment)
    assert deployment["spec"]["replicas"] == 2
    assert args_of(c) == {
        "--http-addr": "0.0.0.0:8080",
        "--leader-election": "true",
        "--namespaces": NAMESPACE,
        "--worker-image": f"ghcr.io/taxipipeline/taxi:{WORKSPACE_VERSION}",
        "--service-account-policy": "labeled",
        "--worker-network-policy": "true",
        "--operator-pod-labels": OPERATOR_POD_LABELS,
    }
    assert c["image"] == f"ghcr.io/taxipipeline/taxi:{WORKSPACE_VERSION}"
    env = env_of(c)
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["RUST_LOG"]["value"] == "info"
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert pod["automountServiceAccountToken"] is True
    assert pod["serviceAccountName"] == FULLNAME
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": "8080", "prometheus.io/path": "/metrics"}
    assert c["resources"] == {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": deployment["spec"]["selector"]}


def test_full_values_reach_the_operator_pod(chart):
    docs = manifests(chart, full_values())
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    c = container(deployment)
    assert deployment["spec"]["replicas"] == 3
    assert args_of(c) == {
        "--http-addr": "0.0.0.0:8080",
        "--leader-election": "true",
        "--namespaces": "taxi-prod,taxi-staging",
        "--worker-image": "registry.example.com/platform/taxi-worker:0.1.0-rc.1",
        "--region": "eu-west-1",
        "--kinesis-endpoint-url": "https://kinesis.eu-west-1.amazonaws.com",
        "--allowed-image-repositories": "registry.example.com/platform/taxi-worker,registry.example.com/tenants/",
        "--service-account-policy": "forbid",
        "--worker-image-pull-secrets": "regcred,mirror-pull",
        "--default-sink-ca-secret": "opensearch-ca:bundle.pem",
        "--worker-network-policy": "true",
        "--operator-pod-labels": OPERATOR_POD_LABELS,
        "--metrics-namespace-labels": "kubernetes.io/metadata.name=monitoring",
        "--metrics-pod-labels": "app.kubernetes.io/name=prometheus",
        "--lease-namespace": "taxi-system",
    }
    assert c["args"][-1] == "--lease-namespace=taxi-system", "extraArgs come last"
    assert c["image"] == f"registry.example.com/platform/taxi@{full_values()['image']['digest']}"
    assert c["imagePullPolicy"] == "Always"
    env = env_of(c)
    assert env["RUST_LOG"]["value"] == "info,taxi_operator=debug,kube=warn"
    assert env["AWS_STS_REGIONAL_ENDPOINTS"]["value"] == "regional"
    assert env["HTTPS_PROXY"]["valueFrom"]["secretKeyRef"] == {"name": "proxy", "key": "url"}
    assert c["resources"] == {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}}
    assert pod["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror-pull"}]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"] == full_values()["operator"]["tolerations"]
    assert pod["affinity"] == full_values()["operator"]["affinity"]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["serviceAccountName"] == "taxi-operator"
    meta = deployment["spec"]["template"]["metadata"]
    # podAnnotations override the scrape defaults; the rest stay.
    assert meta["annotations"]["prometheus.io/scrape"] == "false"
    assert meta["annotations"]["prometheus.io/port"] == "8080"
    assert meta["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "true"
    assert meta["labels"]["team"] == "data-platform"
    sa = one(docs, "ServiceAccount", "taxi-operator")
    assert sa["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/taxi-operator"}
    assert sa["automountServiceAccountToken"] is True


def test_cluster_wide_without_a_list_watches_every_namespace(chart):
    c = container(one(manifests(chart, cluster_wide_values()), "Deployment"))
    assert "--namespaces" not in args_of(c)
    listed = {"rbac": {"clusterWide": True}, "operator": {"watchNamespaces": ["a", "b"]}}
    assert args_of(container(one(manifests(chart, listed), "Deployment")))["--namespaces"] == "a,b"


def test_pod_labels_cannot_break_the_selector(chart):
    values = {"operator": {"podLabels": {"app.kubernetes.io/component": "other", "app.kubernetes.io/name": "x"}}}
    deployment = one(manifests(chart, values), "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_single_replica_without_election_has_no_disruption_budget(chart):
    docs = manifests(chart, {"operator": {"replicas": 1, "leaderElection": False}})
    assert of_kind(docs, "PodDisruptionBudget") == []
    assert args_of(container(one(docs, "Deployment")))["--leader-election"] == "false"


def test_metrics_service_selects_only_operator_pods(chart):
    docs = manifests(chart, full_values())
    service = one(docs, "Service", f"{FULLNAME}-metrics")
    assert service["spec"]["ports"] == [{"name": "http-metrics", "port": 9090, "targetPort": "http", "protocol": "TCP"}]
    selector = service["spec"]["selector"].items()
    for doc in docs:
        if doc["kind"] in {"Deployment", "Job"}:
            labels = doc["spec"]["template"]["metadata"].get("labels", {}).items()
            assert (selector <= labels) == (doc["kind"] == "Deployment"), doc["metadata"]["name"]


def test_service_monitors_scrape_the_operator_and_the_workers_of_watched_namespaces(chart):
    docs = manifests(chart, full_values())
    monitors = {m["metadata"]["name"]: m for m in of_kind(docs, "ServiceMonitor")}
    assert set(monitors) == {FULLNAME, f"{FULLNAME}-workers"}
    for monitor in monitors.values():
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        for endpoint in monitor["spec"]["endpoints"]:
            assert (endpoint["interval"], endpoint["scrapeTimeout"]) == ("15s", "5s")
    operator = monitors[FULLNAME]["spec"]
    assert operator["selector"]["matchLabels"] == one(docs, "Service")["spec"]["selector"]
    assert operator["endpoints"][0]["port"] == "http-metrics"
    workers = monitors[f"{FULLNAME}-workers"]["spec"]
    # The labels and port name of the headless Service the operator builds (operator/src/resources.rs).
    assert workers["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "taxi-worker",
        "app.kubernetes.io/managed-by": "taxi-operator",
    }
    assert workers["endpoints"][0]["port"] == "http"
    assert workers["namespaceSelector"] == {"matchNames": ["taxi-prod", "taxi-staging"]}
    everywhere = manifests(chart, {"rbac": {"clusterWide": True}, "metrics": {"serviceMonitor": {"enabled": True}}})
    assert one(everywhere, "ServiceMonitor", f"{FULLNAME}-workers")["spec"]["namespaceSelector"] == {"any": True}
    assert of_kind(manifests(chart), "ServiceMonitor") == []


def test_worker_service_labels_and_port_match_the_operator_builders():
    """The worker ServiceMonitor relies on these names in the operator's builders."""
    source = (REPO / "operator" / "src" / "resources.rs").read_text()
    assert '("app.kubernetes.io/name".to_owned(), "taxi-worker".to_owned())' in source
    assert 'labels.insert("app.kubernetes.io/managed-by".into(), "taxi-operator".into());' in source
    assert 'name: Some("http".into()),' in source


# ---- The CRD --------------------------------------------------------------------------------------

CRD_SOURCE = REPO / "crds" / "taxipipelines.yaml"
CRD_COPY = CHART / "files" / "crds" / "taxipipelines.yaml"


def test_chart_crd_copy_is_byte_identical_to_crds():
    assert CRD_COPY.read_bytes() == CRD_SOURCE.read_bytes(), "run `make crd` to refresh the chart's copy"


def test_rendered_crd_is_the_generated_one_plus_the_keep_annotation(chart):
    source = yaml.safe_load(CRD_SOURCE.read_text())
    assert "annotations" not in source["metadata"]
    kept = one(manifests(chart), "CustomResourceDefinition")
    expected = copy.deepcopy(source)
    expected["metadata"]["annotations"] = {"helm.sh/resource-policy": "keep"}
    assert kept == expected
    plain = one(manifests(chart, {"crds": {"keep": False}}), "CustomResourceDefinition")
    assert plain == source
    labelled = one(manifests(chart, {"commonLabels": {"team": "platform"}}), "CustomResourceDefinition")
    expected["metadata"]["labels"] = {"team": "platform"}
    assert labelled == expected


def test_no_crd_without_crds_install_and_notes_say_so(chart):
    values = {"crds": {"install": False}}
    assert of_kind(manifests(chart, values), "CustomResourceDefinition") == []
    notes = render_files(chart, values)["templates/NOTES.txt"]
    assert "crds.install is false" in notes
    assert "kubectl apply --server-side -f crds/taxipipelines.yaml" in notes
    # A release without the CRD is often the cluster's second: the roles would collide.
    assert "rbac.aggregatedRoles=false" in notes
    values["rbac"] = {"aggregatedRoles": False}
    assert "rbac.aggregatedRoles=false" not in render_files(chart, values)["templates/NOTES.txt"]


# ---- The values schema ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"operator": {"replicas": "two"}}, "/operator/replicas"),
        ({"operator": {"replica": 2}}, "additional properties 'replica' not allowed"),
        ({"metrics": {"serviceMonitor": {"enabled": "yes"}}}, "/metrics/serviceMonitor/enabled"),
        ({"metric": {}}, "additional properties 'metric' not allowed"),
        ({"image": {"tag": "v1 latest"}}, "/image/tag"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"metrics": {"serviceMonitor": {"interval": "30 seconds"}}}, "/metrics/serviceMonitor/interval"),
        ({"metrics": {"prometheusRule": {"for": "5min"}}}, "/metrics/prometheusRule/for"),
        ({"metrics": {"prometheusRule": {"missedCheckpointIntervals": 0}}}, "/metrics/prometheusRule/missedCheckpointIntervals"),
        ({"operator": {"watchNamespaces": ["Taxi_Prod"]}}, "/operator/watchNamespaces/0"),
        ({"operator": {"region": "Europe"}}, "/operator/region"),
        ({"operator": {"resources": {"requests": {"memory": "lots"}}}}, "/operator/resources/requests/memory"),
        ({"operator": {"tolerations": [{"key": "a", "effect": "Sometimes"}]}}, "/operator/tolerations/0/effect"),
        ({"operator": {"replicas": 2, "leaderElection": False}}, "/operator/leaderElection"),
        ({"opensearchDashboards": {"savedObjects": {"enabled": True}}}, "/opensearchDashboards/savedObjects/url"),
        ({"crds": {"install": "true"}}, "/crds/install"),
        ({"policy": {"serviceAccounts": "some"}}, "/policy/serviceAccounts"),
        ({"policy": {"allowedImageRepositories": ["Registry.example.com/taxi"]}}, "/policy/allowedImageRepositories/0"),
        ({"policy": {"allowedImageRepositories": ["taxi:1.0"]}}, "/policy/allowedImageRepositories/0"),
        ({"workers": {"networkPolicy": {"enabled": "yes"}}}, "/workers/networkPolicy/enabled"),
        ({"workers": {"networkPolicy": {"metrics": {"podLabels": {"app": 1}}}}}, "/workers/networkPolicy/metrics/podLabels/app"),
        ({"workers": {"defaults": {"sinkCaSecret": "ca/bundle"}}}, "/workers/defaults/sinkCaSecret"),
        ({"operator": {"networkPolicy": {"egress": {"to": []}}}}, "/operator/networkPolicy/egress"),
        ({"rbac": {"aggregatedRoles": "yes"}}, "/rbac/aggregatedRoles"),
        ({"image": {"digest": "latest"}}, "/image/digest"),
        # The chart's own labels end up in selectors: commonLabels cannot replace them.
        ({"commonLabels": {"app.kubernetes.io/name": "x"}}, "invalid propertyName 'app.kubernetes.io/name'"),
        ({"operator": {"extraEnv": [{"name": "POD_NAME", "value": "x"}]}}, "/operator/extraEnv/0/name"),
        ({"operator": {"extraArgs": ["run"]}}, "/operator/extraArgs/0"),
        ({"operator": {"pdb": {"minAvailable": "half"}}}, "/operator/pdb/minAvailable"),
        ({"operator": {"pdb": {"maxUnavailable": -1}}}, "/operator/pdb/maxUnavailable"),
        ({"operator": {"topologySpreadConstraints": [{"maxSkew": 1}]}}, "/operator/topologySpreadConstraints/0"),
    ],
)
def test_schema_rejects_bad_values_with_the_offending_path(chart, values, message):
    with pytest.raises(helm.HelmValuesError) as failure:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert "values don't meet the specifications of the schema" in str(failure.value)
    assert message in str(failure.value)


def test_schema_documents_and_closes_every_object_of_values_yaml(chart):
    """Every key of values.yaml has a schema entry, and every fixed-shape object rejects typos."""
    schema = chart.schema
    defs = schema["$defs"]

    def resolve(node):
        while "$ref" in node:
            node = {**defs[node["$ref"].rsplit("/", 1)[1]], **{k: v for k, v in node.items() if k != "$ref"}}
        return node

    def walk(values, node, path):
        node = resolve(node)
        if isinstance(values, dict) and "properties" in node:
            assert node.get("additionalProperties") is False, path
            for key, value in values.items():
                assert key in node["properties"], f"{path}.{key} has no schema entry"
                walk(value, node["properties"][key], f"{path}.{key}")
        else:
            assert "type" in node or "oneOf" in node, f"{path} has no type"

    walk(chart.values, schema, "")


# ---- Versions, image and notes --------------------------------------------------------------------


def test_chart_app_version_is_the_workspace_version_and_the_default_image_is_the_operators(chart):
    metadata = chart.metadata
    assert metadata["appVersion"] == WORKSPACE_VERSION
    assert metadata["kubeVersion"] == ">=1.30.0-0"
    cli = (REPO / "operator" / "src" / "cli.rs").read_text()
    default = re.search(r'concat!\("([^"]+)", env!\("CARGO_PKG_VERSION"\)\)', cli)
    assert default, "the operator's --worker-image default moved"
    assert f"{chart.values['image']['repository']}:" == default.group(1)
    assert chart.values["image"]["tag"] == ""  # "" = appVersion = the operator's built-in default


def test_notes_point_at_the_example_and_the_next_commands(chart):
    notes = render_files(chart)["templates/NOTES.txt"]
    assert "kubectl apply -n taxi-system -f examples/taxipipeline-minimal.yaml" in notes
    assert (REPO / "examples" / "taxipipeline-minimal.yaml").is_file()
    assert "kubectl get tp -A -w" in notes
    assert "kubectl scale tp NAME --replicas" in notes
    assert f"http://{FULLNAME}-metrics.{NAMESPACE}.svc:8080/metrics" in notes
    assert "metrics.serviceMonitor.enabled=true" in notes
    full = render_files(chart, full_values())["templates/NOTES.txt"]
    assert "namespace(s) taxi-prod, taxi-staging" in full
    assert "ServiceMonitors" in full and "metrics.serviceMonitor.enabled=true" not in full
    assert "every namespace" in render_files(chart, cluster_wide_values())["templates/NOTES.txt"]
