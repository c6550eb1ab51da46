"""The monitoring files of docs/monitoring, read the way the tests need them: the PromQL they hold and the
metric names it uses."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

MONITORING = Path(__file__).resolve().parents[2] / "docs" / "monitoring"
RULES = MONITORING / "prometheus-rules.yml"
RULE_TESTS = MONITORING / "prometheus-rules.test.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"

# A metric of the service, not part of a recording rule's name (level:metric:operations).
_METRIC = re.compile(r"(?<![\w:])(routee_callbacks_\w+)(?![\w:])")


def rules() -> list[dict[str, Any]]:
    """Every recording and alerting rule."""
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    """The Grafana dashboard."""
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def panels() -> list[dict[str, Any]]:
    """The dashboard's panels that show data (not rows)."""
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def queries() -> list[str]:
    """Every PromQL expression of the rules, the panels and the dashboard's variables."""
    variables = [variable["definition"] for variable in dashboard()["templating"]["list"] if "definition" in variable]
    targets = [target["expr"] for panel in panels() for target in panel["targets"]]
    return [rule["expr"] for rule in rules()] + targets + variables


def metric_names_used() -> set[str]:
    """The service's metrics (sample names: ``_total``, ``_bucket``…) that the dashboard and the rules use."""
    return {name for query in queries() for name in _METRIC.findall(query)}
