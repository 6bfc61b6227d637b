"""ETSI GS QKD 015 figures (docs/etsi-qkd-015.md): the mapping table and the recording group
``qkd-etsi-qkd-015`` name the same series, each from the YANG leaf it maps, each carrying ``qkdl_id``.
Values are checked by promtool (alert_rules/tests/alerts_test.yml); that they answer on a running stack
by the executive dashboard's panel (tests/test_dashboards.py, every panel query returns data)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "etsi-qkd-015.md"
GROUP = "qkd-etsi-qkd-015"
# YANG leaf (the mapping table's first column, under /qkd_node/qkd_links/qkd_link) → its unit in our name
LEAVES = {"qkdl_performance/skr": "skr_bits_per_second", "qkdl_performance/eskr": "eskr_bits_per_second",
          "qkdl_performance/expected_consumption": "expected_consumption_bits_per_second",
          "phys_channel_att": "phys_channel_att_decibels",
          "phys_perf[perf_type=etsi-qkdn-types:QBER]/value": "phys_perf_qber"}


def recordings() -> dict[str, str]:
    groups = yaml.safe_load((REPO / "alert_rules" / "qkd-recording.yml").read_text())["groups"]
    (group,) = [g for g in groups if g["name"] == GROUP]
    return {rule["record"]: rule["expr"] for rule in group["rules"]}


def mapping() -> dict[str, str]:
    """YANG path → qkdops series, from the document's table rows."""
    rows = re.findall(r"^\| `([^`]+)` \|[^|]*\| `(qkdl:[^`]+)` \|", DOC.read_text(), re.M)
    return dict(rows)


def test_the_document_maps_every_leaf_to_a_recording_of_the_group_and_nothing_else():
    table, rules = mapping(), recordings()
    assert set(table) == set(LEAVES)
    assert set(table.values()) == set(rules)
    for leaf, series in table.items():
        level, metric, _aggregation = series.split(":")
        assert level == "qkdl" and metric == LEAVES[leaf], (leaf, series)


def test_every_recording_carries_the_links_qkdl_id_and_reads_one_link_at_a_time():
    for record, expr in recordings().items():
        assert "group_left (qkdl_id)" in expr and "qkd_link_info" in expr, record
        assert "by (link, protocol)" in expr, record
