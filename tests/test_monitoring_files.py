"""serving/monitoring: the Prometheus alert rules and the Grafana dashboard name only series a live pih2t-serve
exports, with label values it uses, so neither silently watches nothing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
import yaml

from pih2t_deploy.serving.rest import create_app
from tests.fakes import FakeClassifier
from tests.servers import running_server

MONITORING = Path(__file__).resolve().parents[1] / "serving" / "monitoring"
SERIES = re.compile(r"\b(pih2t_[a-z_]+)(\{[^}]*\})?")
LABEL = re.compile(r'(\w+)(=~?|!=)"([^"$]*)"')


@pytest.fixture(scope="module")
def exported() -> dict[str, set[tuple[str, str]]]:
    """Series name -> (label, value) pairs of a live server's /metrics after answers in every group."""
    with running_server(create_app(FakeClassifier)) as (url, _):
        batch = FakeClassifier.voting_for([0, 1, 2])
        body = {
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [3, 1, 4, 4], "data": batch.ravel().tolist()}]
        }
        assert httpx.post(f"{url}/v2/models/fake/infer", json=body).status_code == 200
        httpx.get(f"{url}/v1/label-shift")
        text = httpx.get(f"{url}/metrics").text
    found: dict[str, set[tuple[str, str]]] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            match = SERIES.match(line)
            labels = {(k, v) for k, _, v in LABEL.findall(match.group(2) or "")}
            found.setdefault(match.group(1), set()).update(labels)
    return found


def expressions() -> list[tuple[str, str]]:
    rules = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    found = [(f"alert {rule['alert']}", rule["expr"]) for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    found += [(f"panel {p['title']}", t["expr"]) for p in dashboard["panels"] for t in p["targets"]]
    return found


@pytest.mark.parametrize(("where", "expr"), expressions(), ids=[w for w, _ in expressions()])
def test_every_series_and_label_value_a_rule_or_panel_uses_is_exported(exported, where, expr):
    for name, selector in SERIES.findall(expr):
        assert name in exported, f"{where}: {name} is not exported"
        for label, operator, value in LABEL.findall(selector):
            if operator == "=" and label not in ("instance",):
                assert (label, value) in exported[name], f"{where}: {name}{{{label}={value!r}}} never appears"


def test_the_rules_and_the_dashboard_are_complete():
    rules = yaml.safe_load((MONITORING / "alerts.yaml").read_text())["groups"][0]["rules"]
    assert {rule["alert"] for rule in rules} == {
        "Pih2tLabelShift",
        "Pih2tTailNeverPredicted",
        "Pih2tLowConfidence",
        "Pih2tErrors",
    }
    assert all({"expr", "for", "labels", "annotations"} <= set(rule) for rule in rules)
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"]) == 8
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "instance"}
