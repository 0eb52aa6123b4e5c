"""docs/reference/chart-values.md is what values_reference.py makes of values.yaml, and the script
reads values.yaml's `# --` comments the way helm-docs does."""

from __future__ import annotations

import json

import pytest
import values_reference as ref

SCHEMA = {
    "type": "object",
    "$defs": {"policy": {"type": "string", "enum": ["Always", "Never"]}},
    "properties": {
        "image": {"type": "object", "properties": {"pullPolicy": {"$ref": "#/$defs/policy"}}},
        "pdb": {"oneOf": [{"type": "null"}, {"type": "integer"}, {"type": "string"}]},
    },
}

VALUES = """\
# Notes for whoever edits the file: not on the page.

# -- The image, documented as a whole
# over two lines.
image:
  repository: ghcr.io/x/taxi
  # -- Pull policy.
  pullPolicy: IfNotPresent

# A plain note: the key below stays undocumented.
replicas: 2
# -- Detached by a blank line, so it documents nothing.

pdb: null
securityContext:
  capabilities:
    drop:
      - ALL
  # -- After the list.
  readOnly: true
# -- Labels, documented as one value.
labels:
  team: data
"""


def test_the_page_on_disk_is_current():
    expected = ref.render(ref.VALUES.read_text(), json.loads(ref.SCHEMA.read_text()))
    on_disk = ref.PAGE.read_text() if ref.PAGE.exists() else ""
    assert on_disk == expected, (
        f"{ref.PAGE.relative_to(ref.REPO)} is stale; regenerate it with\n    {ref.REGENERATE}\n(or `make docs`)"
    )


def test_comments_attach_to_the_key_right_below_them():
    scan = ref.scan(VALUES)
    assert scan.docs == {
        "image": "The image, documented as a whole over two lines.",
        "image.pullPolicy": "Pull policy.",
        "securityContext.readOnly": "After the list.",
        "labels": "Labels, documented as one value.",
    }
    assert scan.paths == {
        "image", "image.repository", "image.pullPolicy", "replicas", "pdb", "securityContext",
        "securityContext.capabilities", "securityContext.capabilities.drop", "securityContext.readOnly",
        "labels", "labels.team",
    }


def test_every_value_is_a_row_with_its_default_and_type():
    rows = {row.path: row for row in ref.rows(ref.yaml.safe_load(VALUES), ref.scan(VALUES).docs, SCHEMA)}
    assert list(rows) == [
        "image", "image.repository", "image.pullPolicy", "replicas", "pdb",
        "securityContext.capabilities.drop", "securityContext.readOnly", "labels",
    ]
    assert rows["image"] == ref.Value("image", "object", None, "The image, documented as a whole over two lines.")
    assert rows["image.repository"] == ref.Value("image.repository", "string", '"ghcr.io/x/taxi"', "")
    assert rows["image.pullPolicy"].kind == 'one of `"Always"`, `"Never"`'
    assert rows["pdb"].kind == "null, int or string"
    assert rows["securityContext.capabilities.drop"].default == '["ALL"]'
    assert rows["labels"] == ref.Value("labels", "object", '{"team": "data"}', "Labels, documented as one value.")


def test_a_shape_the_scanner_cannot_follow_is_refused():
    with pytest.raises(ref.ValuesShapeError):
        ref.render("key: value\n  stray line\n", SCHEMA)


def test_descriptions_are_safe_markdown_outside_code_spans():
    assert ref.markdown("the <release>-<chart> prefix, `a|b` and app.kubernetes.io/*") == (
        "the &lt;release&gt;-&lt;chart&gt; prefix, `a\\|b` and app.kubernetes.io/\\*"
    )
