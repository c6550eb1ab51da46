"""The monitoring files (docs/monitoring): the rules pass promtool's checks and their unit tests, every alert is
tested and has a runbook, and the dashboard is importable as is (a data source variable, no hard-coded instance)
and names only metrics the service defines."""

from __future__ import annotations

import subprocess

import yaml
from prometheus_client import CollectorRegistry

from service.monitoring.metrics import Metrics
from support.monitoring_files import RULE_TESTS, RULES, dashboard, metric_names_used, panels, queries, rules

_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60, check=False)


class TestRules:
    """prometheus-rules.yml and its tests."""

    def test_promtool_accepts_the_rules(self) -> None:
        result = promtool("check", "rules", str(RULES))
        assert result.returncode == 0, result.stdout + result.stderr

    def test_the_rule_unit_tests_pass(self) -> None:
        result = promtool("test", "rules", str(RULE_TESTS))
        assert result.returncode == 0, result.stdout + result.stderr

    def test_every_alert_is_tested_firing_and_has_a_severity_and_a_runbook(self) -> None:
        """Each alert appears in at least one test where it is expected to fire."""
        alerts = {rule["alert"]: rule for rule in rules() if "alert" in rule}
        firing = {
            case["alertname"]
            for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
            for case in test.get("alert_rule_test", [])
            if case["exp_alerts"]
        }
        assert set(alerts) == firing
        for name, rule in alerts.items():
            assert rule["labels"]["severity"] in ("critical", "warning"), name
            assert "\n" not in rule["annotations"]["runbook"].strip(), f"{name}: the runbook is one line"


class TestDashboard:
    """grafana-dashboard.json."""

    def test_data_source_job_and_instance_are_variables(self) -> None:
        variables = {variable["name"]: variable for variable in dashboard()["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        assert variables["instance"]["includeAll"]
        assert variables["instance"]["multi"]
        for panel in panels():
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}", panel["title"]
                assert 'job="$job"' in target["expr"], panel["title"]

    def test_no_query_names_an_instance(self) -> None:
        """Instances are chosen with the variable, never written into a query."""
        for query in queries():
            assert "instance=" not in query.replace('instance=~"$instance"', ""), query

    def test_panels_have_unique_ids_and_do_not_overlap(self) -> None:
        every = dashboard()["panels"]
        assert len({panel["id"] for panel in every}) == len(every)
        boxes = [panel["gridPos"] for panel in every]
        for box in boxes:
            assert box["x"] >= 0
            assert box["x"] + box["w"] <= 24
        for index, first in enumerate(boxes):
            for second in boxes[index + 1 :]:
                apart = (
                    first["x"] + first["w"] <= second["x"]
                    or second["x"] + second["w"] <= first["x"]
                    or first["y"] + first["h"] <= second["y"]
                    or second["y"] + second["h"] <= first["y"]
                )
                assert apart, (first, second)


def test_the_dashboard_and_rules_name_only_metrics_the_service_defines() -> None:
    """A typo or a renamed metric shows here; tests/e2e/test_monitoring.py checks a running service exports them."""
    defined = {
        family.name + suffix
        for family in Metrics(CollectorRegistry()).registry.collect()
        for suffix in _SUFFIXES[family.type]
    }
    assert metric_names_used() - defined == set()
    assert len(metric_names_used()) >= 20
