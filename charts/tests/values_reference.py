"""Writes docs/reference/chart-values.md: every value of charts/taxi-pipeline/values.yaml with its
type (from values.schema.json, else from the default), its default and its `# --` comment.

values.yaml documents a value the helm-docs way: a comment starting with `# --` right above the key
(continued on the comment lines that follow, up to the key). Other comments are notes for whoever
edits the file and stay out of the page. A `# --` comment on a map whose own keys carry none
documents the map as one value; elsewhere every leaf (a scalar, a list or an empty map) is a value.

test_values_reference.py fails while the page on disk differs from what this script writes.

Usage: python3 charts/tests/values_reference.py
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

try:
    import yaml
except ImportError:  # pragma: no cover - only outside the chart tests' environment
    sys.exit("values_reference.py needs PyYAML: pip install pyyaml (bash .ci/chart-test installs it in its venv)")

REPO = Path(__file__).resolve().parents[2]
VALUES = REPO / "charts" / "taxi-pipeline" / "values.yaml"
SCHEMA = REPO / "charts" / "taxi-pipeline" / "values.schema.json"
PAGE = REPO / "docs" / "reference" / "chart-values.md"
REGENERATE = "python3 charts/tests/values_reference.py"

KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.\-/]+|\"[^\"]*\"|'[^']*'):(?P<rest>.*)$")
LIST_ITEM = re.compile(r"^(?P<indent> *)-(?:\s|$)")
COMMENT = re.compile(r"^ *#(?P<text>.*)$")
BLOCK_SCALAR = re.compile(r"^\s*[|>][-+0-9]*\s*(?:#.*)?$")


class ValuesShapeError(Exception):
    """values.yaml has a shape the comment scanner does not follow: it found other keys than YAML."""


@dataclass(frozen=True)
class Value:
    """One row of the page."""

    path: str
    kind: str
    default: str | None
    description: str


@dataclass(frozen=True)
class Scan:
    """What the line scanner read: every key's dotted path, and the `# --` comments by path."""

    paths: set[str]
    docs: dict[str, str]


def scan(text: str) -> Scan:
    """Reads the keys of values.yaml line by line, with the `# --` comment right above each."""
    paths: set[str] = set()
    docs: dict[str, str] = {}
    stack: list[tuple[int, str]] = []  # (indent, key) of the maps enclosing the current line
    pending: list[str] | None = None  # the `# --` comment being read, if any
    opaque_below: int | None = None  # lines indented deeper are a list's items or a block scalar
    for line in text.splitlines():
        if not line.strip():
            pending = None  # a comment documents the key right below it only
            continue
        comment = COMMENT.match(line)
        if comment:
            body = comment["text"].strip()
            if body == "--" or body.startswith("-- "):
                pending = [body[2:].strip()]
            elif pending is not None:
                pending.append(body)
            continue
        indent = len(line) - len(line.lstrip(" "))
        if opaque_below is not None and indent > opaque_below:
            continue
        opaque_below = None
        if LIST_ITEM.match(line):
            if not stack:
                raise ValuesShapeError("values.yaml is a list, not a map")
            opaque_below = stack[-1][0]  # the list is the value of the key above
            pending = None
            continue
        key = KEY.match(line)
        if not key:
            raise ValuesShapeError(f"not a key, a list item or a comment: {line!r}")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        name = key["key"].strip("\"'")
        path = ".".join([k for _, k in stack] + [name])
        paths.add(path)
        if pending is not None:
            docs[path] = " ".join(part for part in pending if part)
        pending = None
        stack.append((indent, name))
        if BLOCK_SCALAR.match(key["rest"]):
            opaque_below = indent
    return Scan(paths, docs)


def key_paths(values: dict, prefix: str = "") -> set[str]:
    """Every key of every map in `values`, as dotted paths."""
    paths = set()
    for key, value in values.items():
        path = f"{prefix}{key}"
        paths.add(path)
        if isinstance(value, dict):
            paths |= key_paths(value, f"{path}.")
    return paths


SCHEMA_TYPES = {"integer": "int", "boolean": "bool", "array": "list"}


def resolve(schema: dict, node: dict) -> dict:
    """`node` with a local `$ref` (`#/$defs/name`) followed."""
    while "$ref" in node:
        target = schema
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def schema_at(schema: dict, path: str) -> dict | None:
    """The schema of the value at the dotted `path`, or None where the schema does not say."""
    node = resolve(schema, schema)
    for part in path.split("."):
        properties = node.get("properties", {})
        if part in properties:
            node = resolve(schema, properties[part])
        elif isinstance(node.get("additionalProperties"), dict):
            node = resolve(schema, node["additionalProperties"])
        else:
            return None
    return node


def schema_type(schema: dict, node: dict) -> str | None:
    """The type the schema allows, e.g. `int`, `string or null`, or the values of an enum."""
    if "enum" in node:
        return "one of " + ", ".join(code(json.dumps(v)) for v in node["enum"])
    types = node.get("type")
    if types is None:
        alternatives = node.get("oneOf") or node.get("anyOf")
        if not alternatives:
            return None
        names = [schema_type(schema, resolve(schema, a)) for a in alternatives]
        return either([n for n in dict.fromkeys(names) if n]) or None
    types = types if isinstance(types, list) else [types]
    return either([SCHEMA_TYPES.get(t, t) for t in types])


def either(names: list[str]) -> str:
    """`a`, `a or b`, `a, b or c`."""
    return " or ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 2 else " or ".join(names)


def kind_of(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return "null"


def rows(values: dict, docs: dict[str, str], schema: dict, prefix: str = "") -> list[Value]:
    """The page's rows under `values`, in the file's order."""
    out = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        description = docs.get(path, "")
        documented_inside = any(p.startswith(f"{path}.") for p in docs)
        if isinstance(value, dict) and value and documented_inside:
            if description:
                out.append(Value(path, "object", None, description))
            out.extend(rows(value, docs, schema, f"{path}."))
        elif isinstance(value, dict) and value and not description:
            out.extend(rows(value, docs, schema, f"{path}."))
        else:
            node = schema_at(schema, path)
            kind = (schema_type(schema, node) if node else None) or kind_of(value)
            default = json.dumps(value, separators=(", ", ": "), ensure_ascii=False)
            out.append(Value(path, kind, default, description))
    return out


def markdown(text: str) -> str:
    """Comment text for a table cell: `<`, `>` and `*` escaped outside code spans, `|` everywhere."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;").replace("*", "\\*")
    return "`".join(parts).replace("|", "\\|")


def code(text: str) -> str:
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def render(text: str, schema: dict) -> str:
    """The page for the values file `text`, typed by its JSON `schema`."""
    values = yaml.safe_load(text) or {}
    scanned = scan(text)
    if scanned.paths != key_paths(values):
        missed = sorted(key_paths(values) - scanned.paths)
        extra = sorted(scanned.paths - key_paths(values))
        raise ValuesShapeError(f"the scanner's keys differ from YAML's: missed {missed}, extra {extra}")
    docs = scanned.docs
    all_rows = rows(values, docs, schema)
    top_level = [key for key in values if any(r.path.startswith(f"{key}.") for r in all_rows)]
    lines = [
        f"_Generated from charts/taxi-pipeline/values.yaml by `{REGENERATE}` (or `make docs`); "
        "do not edit it by hand._",
        "",
        "# Helm chart values",
        "",
        "The values of the `taxi-pipeline` chart (charts/taxi-pipeline), with their defaults. Set them with "
        "`--set path=value` or a values file (`-f my-values.yaml`); values.schema.json rejects unknown keys "
        "and wrong types.",
        "",
        "- [Top-level values](#top-level-values)",
        *(f"- [{key}](#{key.lower()})" for key in top_level),
    ]

    def table(selected: list[Value]) -> list[str]:
        out = ["", "| Value | Type | Default | Description |", "| --- | --- | --- | --- |"]
        for row in selected:
            default = code(row.default) if row.default is not None else ""
            out.append(f"| {code(row.path)} | {row.kind} | {default} | {markdown(row.description)} |")
        return out

    lines += ["", "## Top-level values", *table([r for r in all_rows if "." not in r.path and r.path not in top_level])]
    for key in top_level:
        lines += ["", f"## {key}"]
        if docs.get(key):
            lines += ["", markdown(docs[key])]
        lines += table([r for r in all_rows if r.path.startswith(f"{key}.")])
    return "\n".join(lines) + "\n"


def main() -> int:
    page = render(VALUES.read_text(), json.loads(SCHEMA.read_text()))
    if PAGE.exists() and PAGE.read_text() == page:
        print(f"{PAGE.relative_to(REPO)} is current")
        return 0
    PAGE.parent.mkdir(parents=True, exist_ok=True)
    PAGE.write_text(page)
    print(f"wrote {PAGE.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
