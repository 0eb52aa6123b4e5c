"""The chart's controls for a cluster shared by several teams, and the operator's knobs.

What pipeline authors may ask of the operator (policy values reaching its flags), the operator's
NetworkPolicy, the aggregated roles for people and a second release in the same cluster, and the
operator Deployment's knobs: images by digest, commonLabels, topology spread, the disruption budget.
Rendering and helpers: test_chart.py.
"""

from __future__ import annotations

import pytest

from test_chart import (  # noqa: F401
    AGGREGATED_ROLES,
    FULLNAME,
    RELEASE,
    VARIANTS,
    args_of,
    chart,
    container,
    full_values,
    manifests,
    of_kind,
    one,
    render_files,
    rule_table,
)


# ---- Policy values reach the operator's flags ----------------------------------------------------


def test_policy_values_reach_the_operator_flags(chart):
    values = {
        "policy": {"allowedImageRepositories": ["*"], "serviceAccounts": "any"},
        "workers": {
            "networkPolicy": {"enabled": False, "metrics": {"podLabels": {"app": "prom", "team": "obs"}}},
            "defaults": {"sinkCaSecret": "corporate-ca"},
        },
        "imagePullSecrets": [{"name": "only-one"}],
    }
    args = args_of(container(one(manifests(chart, values), "Deployment")))
    assert args["--allowed-image-repositories"] == "*"
    assert args["--service-account-policy"] == "any"
    assert args["--worker-network-policy"] == "false"
    assert args["--metrics-pod-labels"] == "app=prom,team=obs"
    assert "--metrics-namespace-labels" not in args
    assert args["--default-sink-ca-secret"] == "corporate-ca"
    assert args["--worker-image-pull-secrets"] == "only-one"
    # Unset lists and strings leave the operator's defaults alone rather than passing "".
    defaults = args_of(container(one(manifests(chart), "Deployment")))
    for flag in (
        "--allowed-image-repositories",
        "--worker-image-pull-secrets",
        "--default-sink-ca-secret",
        "--metrics-namespace-labels",
        "--metrics-pod-labels",
    ):
        assert flag not in defaults, flag


def label_flag(value: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in value.split(","))


@pytest.mark.parametrize("variant", VARIANTS)
def test_operator_pod_labels_select_exactly_the_operator_pods(chart, variant):
    """The workers' NetworkPolicy admits the pods --operator-pod-labels selects: they must be this
    Deployment's pods, and not the saved-objects Job's, which shares the release's labels."""
    docs = manifests(chart, VARIANTS[variant]())
    deployment = one(docs, "Deployment")
    selector = label_flag(args_of(container(deployment))["--operator-pod-labels"])
    assert selector == deployment["spec"]["selector"]["matchLabels"]
    for doc in docs:
        if doc["kind"] in {"Deployment", "Job"}:
            labels = doc["spec"]["template"]["metadata"].get("labels", {}).items()
            assert (selector.items() <= labels) == (doc["kind"] == "Deployment"), doc["metadata"]["name"]


# ---- The operator's NetworkPolicy -----------------------------------------------------------------


def operator_network_policy(docs: list[dict]) -> dict:
    policy = one(docs, "NetworkPolicy", f"{FULLNAME}-operator")
    assert policy["spec"]["podSelector"] == one(docs, "Deployment")["spec"]["selector"]
    return policy["spec"]


def test_operator_network_policy_admits_no_pod_by_default_and_leaves_egress_open(chart):
    spec = operator_network_policy(manifests(chart))
    assert spec == {**spec, "policyTypes": ["Ingress"], "ingress": []}
    assert "egress" not in spec


def test_operator_network_policy_admits_the_metrics_scrapers_on_8080_and_the_extra_rules(chart):
    values = full_values()
    spec = operator_network_policy(manifests(chart, values))
    scrape = {
        "ports": [{"port": 8080, "protocol": "TCP"}],
        "from": [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
            }
        ],
    }
    assert spec["ingress"] == [scrape, *values["operator"]["networkPolicy"]["extraIngress"]]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["egress"] == values["operator"]["networkPolicy"]["egress"]


def test_operator_network_policy_with_pod_labels_alone_admits_pods_of_its_namespace(chart):
    values = {"workers": {"networkPolicy": {"metrics": {"podLabels": {"app": "prometheus"}}}}}
    spec = operator_network_policy(manifests(chart, values))
    assert spec["ingress"] == [
        {"ports": [{"port": 8080, "protocol": "TCP"}], "from": [{"podSelector": {"matchLabels": {"app": "prometheus"}}}]}
    ]
    namespaces = {"workers": {"networkPolicy": {"metrics": {"namespaceLabels": {"team": "obs"}}}}}
    spec = operator_network_policy(manifests(chart, namespaces))
    assert spec["ingress"][0]["from"] == [{"namespaceSelector": {"matchLabels": {"team": "obs"}}}]


def test_notes_warn_when_service_monitors_meet_network_policies_without_scrapers(chart):
    monitored = {"metrics": {"serviceMonitor": {"enabled": True}}}
    assert "admit no scraper" in render_files(chart, monitored)["templates/NOTES.txt"]
    assert "admit no scraper" not in render_files(chart, full_values())["templates/NOTES.txt"]
    no_policies = {**monitored, "operator": {"networkPolicy": {"enabled": False}}, "workers": {"networkPolicy": {"enabled": False}}}
    assert "admit no scraper" not in render_files(chart, no_policies)["templates/NOTES.txt"]


def test_no_operator_network_policy_when_disabled(chart):
    assert of_kind(manifests(chart, {"operator": {"networkPolicy": {"enabled": False}}}), "NetworkPolicy") == []


# ---- Roles for people, and a second release -------------------------------------------------------


EDIT_RULES = {
    ("taxipipeline.io", "taxipipelines", ()): {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"},
    ("taxipipeline.io", "taxipipelines/scale", ()): {"get", "update", "patch"},
    ("taxipipeline.io", "taxipipelines/status", ()): {"get"},
}
VIEW_RULES = {
    ("taxipipeline.io", resource, ()): {"get", "list", "watch"}
    for resource in ("taxipipelines", "taxipipelines/status", "taxipipelines/scale")
}


def test_aggregated_roles_let_editors_manage_and_viewers_read_pipelines_but_not_write_status(chart):
    roles = {r["metadata"]["name"]: r for r in of_kind(manifests(chart), "ClusterRole")}
    assert set(roles) == set(AGGREGATED_ROLES)
    for name, aggregation in AGGREGATED_ROLES.items():
        labels = roles[name]["metadata"]["labels"]
        assert {k: v for k, v in labels.items() if k.startswith("rbac.authorization.k8s.io/")} == aggregation
        assert labels["app.kubernetes.io/instance"] == RELEASE
    assert rule_table(roles["taxipipeline-edit"]["rules"]) == EDIT_RULES
    assert rule_table(roles["taxipipeline-view"]["rules"]) == VIEW_RULES
    for role in roles.values():
        assert not {"update", "patch"} & role_verbs(role, "taxipipelines/status"), "only the operator writes status"


def role_verbs(role: dict, resource: str) -> set[str]:
    return {v for (_, res, _), verbs in rule_table(role["rules"]).items() if res == resource for v in verbs}


def test_no_aggregated_roles_when_switched_off_or_without_rbac(chart):
    for values in ({"rbac": {"aggregatedRoles": False}}, {"rbac": {"create": False}}):
        assert of_kind(manifests(chart, values), "ClusterRole") == [], values


def object_keys(docs: list[dict]) -> set[tuple[str, str, str]]:
    """(kind, namespace or "" for cluster-scoped objects, name) of every object."""
    return {(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]) for d in docs}


def test_a_second_release_without_crd_and_roles_owns_nothing_of_the_first(chart):
    """Helm refuses to install an object another release owns. A second operator in the cluster,
    in its own namespace and watching its own namespaces, collides with the first release only on
    the cluster's one CRD and the aggregated roles, which it leaves to the first release."""
    first = object_keys(manifests(chart, full_values()))
    team_b = {"operator": {"watchNamespaces": ["team-b"]}, "metrics": {"serviceMonitor": {"enabled": True}}}
    second = object_keys(manifests(chart, team_b, release="taxi-b", namespace="taxi-b-system"))
    assert first & second == {
        ("CustomResourceDefinition", "", "taxipipelines.taxipipeline.io"),
        ("ClusterRole", "", "taxipipeline-edit"),
        ("ClusterRole", "", "taxipipeline-view"),
    }
    team_b |= {"crds": {"install": False}, "rbac": {"aggregatedRoles": False}}
    second = object_keys(manifests(chart, team_b, release="taxi-b", namespace="taxi-b-system"))
    assert first & second == set()
    cluster_wide = {**team_b, "rbac": {"aggregatedRoles": False, "clusterWide": True}}
    second = object_keys(manifests(chart, cluster_wide, release="taxi-b", namespace="taxi-b-system"))
    assert first & second == set()


# ---- The operator Deployment's knobs --------------------------------------------------------------


DIGEST = "sha256:" + "0123456789abcdef" * 4


def test_image_digest_wins_over_the_tag_for_the_operator_and_the_default_worker_image(chart):
    values = {"image": {"tag": "9.9.9", "digest": DIGEST}}
    c = container(one(manifests(chart, values), "Deployment"))
    assert c["image"] == f"ghcr.io/taxipipeline/taxi@{DIGEST}"
    assert args_of(c)["--worker-image"] == f"ghcr.io/taxipipeline/taxi@{DIGEST}"
    # An explicit worker image stays as given.
    values["operator"] = {"workerImage": "registry.example.com/taxi:1.2.3"}
    assert args_of(container(one(manifests(chart, values), "Deployment")))["--worker-image"] == "registry.example.com/taxi:1.2.3"
    job = {"opensearchDashboards": {"savedObjects": {"enabled": True, "url": "http://osd:5601", "image": {
        "repository": "curlimages/curl", "tag": "8.11.1", "digest": DIGEST, "pullPolicy": "IfNotPresent"}}}}
    (import_container,) = one(manifests(chart, job), "Job")["spec"]["template"]["spec"]["containers"]
    assert import_container["image"] == f"curlimages/curl@{DIGEST}"


def labels_of(doc: dict) -> list[tuple[str, dict]]:
    """The labels of an object and, for workloads, of its pods."""
    found = [(f"{doc['kind']}/{doc['metadata']['name']}", doc["metadata"].get("labels", {}))]
    if doc["kind"] in {"Deployment", "Job"}:
        found.append((f"pods of {found[0][0]}", doc["spec"]["template"]["metadata"].get("labels", {})))
    return found


def test_common_labels_are_on_every_object_and_pod(chart):
    common = full_values()["commonLabels"]
    docs = manifests(chart, full_values())
    assert {"CustomResourceDefinition", "ClusterRole", "NetworkPolicy", "Job", "PrometheusRule"} <= {d["kind"] for d in docs}
    for doc in docs:
        for where, labels in labels_of(doc):
            assert common.items() <= labels.items(), where


def test_topology_spread_constraints_select_the_operator_pods_unless_they_say_otherwise(chart):
    deployment = one(manifests(chart, full_values()), "Deployment")
    zone, host = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert zone == {
        "maxSkew": 1,
        "topologyKey": "topology.kubernetes.io/zone",
        "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": deployment["spec"]["selector"],
    }
    assert host == full_values()["operator"]["topologySpreadConstraints"][1]
    assert "topologySpreadConstraints" not in one(manifests(chart), "Deployment")["spec"]["template"]["spec"]


def test_disruption_budget_takes_min_available_over_max_unavailable_and_can_be_switched_off(chart):
    def budget(pdb: dict) -> dict:
        (found,) = of_kind(manifests(chart, {"operator": {"pdb": pdb}}), "PodDisruptionBudget")
        return {k: v for k, v in found["spec"].items() if k != "selector"}

    assert budget({}) == {"maxUnavailable": 1}
    assert budget({"maxUnavailable": "50%"}) == {"maxUnavailable": "50%"}
    assert budget({"minAvailable": 1}) == {"minAvailable": 1}
    assert budget({"minAvailable": "60%", "maxUnavailable": 1}) == {"minAvailable": "60%"}
    pdb = one(manifests(chart, full_values()), "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 2 and "maxUnavailable" not in pdb["spec"]
    assert of_kind(manifests(chart, {"operator": {"pdb": {"enabled": False}}}), "PodDisruptionBudget") == []
