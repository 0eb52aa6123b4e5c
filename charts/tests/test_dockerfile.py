"""The image's Dockerfile and .dockerignore, checked by structure (no docker engine here to build
them): a multi-stage --locked build of both binaries into distroless, non-root, exec-form, and an
entrypoint that matches how the chart and the operator start the two binaries."""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CARGO = tomllib.loads((REPO / "Cargo.toml").read_text())
VERSION = CARGO["workspace"]["package"]["version"]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    lines = [line for line in (REPO / "Dockerfile").read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    result = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions():
        if keyword == "FROM":
            found.append([])
        if found:
            found[-1].append((keyword, rest))
    return found


def only(stage: list[tuple[str, str]], keyword: str) -> str:
    values = [rest for k, rest in stage if k == keyword]
    assert len(values) == 1, f"expected one {keyword}, found {values}"
    return values[0]


def test_builder_stage_builds_both_binaries_locked_with_cache_mounts():
    builder, *_ = stages()
    image = only(builder, "FROM")
    assert re.fullmatch(r"rust:(\S+)-bookworm AS builder", image), image
    assert image.split(":")[1].split("-")[0] == CARGO["workspace"]["package"]["rust-version"]
    (build,) = [rest for k, rest in builder if k == "RUN" and "cargo build" in rest]
    assert re.search(r"cargo build --release --locked -p taxi-operator -p taxi-worker(\s|$)", build)
    mounts = re.findall(r"--mount=type=cache,target=(\S+?)(?:,|\s)", build)
    assert "/usr/local/cargo/registry" in mounts
    target = only(builder, "WORKDIR") + "/target"
    assert target in mounts, "the target dir must be a cache mount"
    # A cache mount is not in the layer: the binaries must be copied out of it in the same RUN.
    assert re.search(r"cp target/release/taxi-operator target/release/taxi-worker /out/", build)


def test_builder_copies_every_workspace_member():
    builder, *_ = stages()
    copied = {rest.split()[0] for k, rest in builder if k == "COPY"}
    for member in CARGO["workspace"]["members"]:
        assert member in copied, f"the Dockerfile does not COPY the workspace member {member}/"


def test_runtime_stage_is_distroless_non_root_with_both_binaries_and_no_shell():
    *_, runtime = stages()
    assert len(stages()) >= 2
    assert only(runtime, "FROM") == "gcr.io/distroless/cc-debian12:nonroot"
    user = only(runtime, "USER")
    uid, _, gid = user.partition(":")
    assert uid == gid == "65532", "numeric non-root user, the one the chart's runAsUser expects"
    values = yaml.safe_load((REPO / "charts" / "taxi-pipeline" / "values.yaml").read_text())
    assert values["operator"]["podSecurityContext"]["runAsUser"] == int(uid)
    copy = only(runtime, "COPY")
    assert copy == "--from=builder /out/taxi-operator /out/taxi-worker /usr/local/bin/"
    # Distroless has no shell: nothing may RUN in the final stage, and every command is exec-form.
    assert [k for k, _ in runtime if k == "RUN"] == []
    assert only(runtime, "EXPOSE") == "8080"
    for keyword in ("ENTRYPOINT", "CMD"):
        assert isinstance(json.loads(only(runtime, keyword)), list), f"{keyword} must be exec-form"


def worker_container_command() -> list[str] | None:
    """The `command` of the worker container the operator builds (operator/src/resources.rs), with
    constants resolved; None when it sets only `args`."""
    resources = (REPO / "operator" / "src" / "resources.rs").read_text()
    container = resources.split('name: "worker".into(),', 1)[1].split("security_context", 1)[0]
    assert "args: Some(" in container
    command = re.search(r"command: Some\(vec!\[(\w+)\.to_owned\(\)\]\)", container)
    if command is None:
        assert "command:" not in container, "update this parser for the new command"
        return None
    value = re.search(rf'const {command.group(1)}: &str = "([^"]+)";', resources)
    assert value, f"{command.group(1)} is not a string constant of resources.rs"
    return [value.group(1)]


def test_operator_pods_run_the_operator_and_worker_pods_the_worker():
    """One image, two binaries: the chart's Deployment and the operator's StatefulSets must each
    reach their binary, through their own `command` or the image's ENTRYPOINT."""
    *_, runtime = stages()
    entrypoint = json.loads(only(runtime, "ENTRYPOINT"))
    worker_command = worker_container_command() or entrypoint
    assert worker_command == ["/usr/local/bin/taxi-worker"]
    deployment = (REPO / "charts" / "taxi-pipeline" / "templates" / "deployment.yaml").read_text()
    assert 'command: ["/usr/local/bin/taxi-operator"]' in deployment
    # `docker run IMAGE` runs the operator, as the image is named for it.
    assert entrypoint == ["/usr/local/bin/taxi-operator"]
    assert json.loads(only(runtime, "CMD")) == ["run"]


def test_image_labels_name_the_workspace_version_and_license():
    *_, runtime = stages()
    assert only(runtime, "ARG") == f"VERSION={VERSION}"
    labels = dict(re.findall(r'(org\.opencontainers\.image\.\w+)="([^"]*)"', only(runtime, "LABEL")))
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert labels["org.opencontainers.image.licenses"] == CARGO["workspace"]["package"]["license"]
    assert labels["org.opencontainers.image.source"] == CARGO["workspace"]["package"]["repository"]


def test_chart_default_image_is_the_one_the_operator_defaults_its_workers_to():
    chart = yaml.safe_load((REPO / "charts" / "taxi-pipeline" / "Chart.yaml").read_text())
    values = yaml.safe_load((REPO / "charts" / "taxi-pipeline" / "values.yaml").read_text())
    assert chart["appVersion"] == VERSION
    cli = (REPO / "operator" / "src" / "cli.rs").read_text()
    assert f'concat!("{values["image"]["repository"]}:", env!("CARGO_PKG_VERSION"))' in cli
    assert values["image"]["tag"] == "", "the tag defaults to appVersion, i.e. the workspace version"


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore drops `path` (its patterns here: names, globs and **/ prefixes)."""
    parts = path.split("/")
    for pattern in patterns:
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatch(part, pattern[3:]) for part in parts):
                return True
        elif fnmatch.fnmatch(path, pattern) or any(
            fnmatch.fnmatch("/".join(parts[: i + 1]), pattern) for i in range(len(parts))
        ):
            return True
    return False


def test_dockerignore_drops_build_output_and_data_but_keeps_the_sources():
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not any(p.startswith("!") for p in patterns), "the ignored() model above has no negation"
    for path in ("target/release/taxi-worker", ".git/HEAD", "trips.jsonl", "out/hot.jsonl.zst",
                 "node_modules/x/index.js", "data/yellow_tripdata_2015-01.csv.gz"):
        assert ignored(path, patterns), path
    # Everything the builder COPYs must reach it.
    members = CARGO["workspace"]["members"]
    for path in ("Cargo.toml", "Cargo.lock", *(f"{m}/Cargo.toml" for m in members), "operator/src/main.rs",
                 "worker/src/main.rs", "core/src/lib.rs"):
        assert not ignored(path, patterns), path
    # Files the crates embed at compile time (include_str!/include_bytes!) must reach it too.
    for crate in members:
        for source in (REPO / crate / "src").rglob("*.rs"):
            for embedded in re.findall(r'include_(?:str|bytes)!\("([^"]+)"\)', source.read_text()):
                path = (source.parent / embedded).resolve().relative_to(REPO).as_posix()
                assert not ignored(path, patterns), f"{source.name} embeds {path}"
                assert path.split("/")[0] in members, f"the Dockerfile does not COPY {path}"
