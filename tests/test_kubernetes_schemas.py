"""The Kubernetes and KServe manifests, validated against the schemas a cluster would apply: the core resources
(Deployment, Service, HorizontalPodAutoscaler, ConfigMap) with kubernetes-validate's strict JSON schemas of
Kubernetes 1.37, the KServe resources against KServe's own generated API types (the kserve package, whose
models mirror its CRDs' OpenAPI, with the Kubernetes client's types inside them); and the probes and the
autoscaling metric against a real running service."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from kubernetes_validate import utils as k8s_validate

from pih2t_deploy.serving.rest import create_app
from tests.fakes import FakeClassifier
from tests.servers import running_server

ROOT = Path(__file__).resolve().parents[1]
KUBERNETES = ROOT / "serving" / "kubernetes"
KUBERNETES_VERSION = "1.37.0"
KSERVE_TYPES = {
    ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime",
}


def _documents() -> list[tuple[str, dict]]:
    return [
        (f"{path.name}:{doc['kind']}", doc)
        for path in sorted(KUBERNETES.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


DOCUMENTS = _documents()
CORE = [(name, doc) for name, doc in DOCUMENTS if (doc["apiVersion"], doc["kind"]) not in KSERVE_TYPES]
KSERVE = [(name, doc) for name, doc in DOCUMENTS if (doc["apiVersion"], doc["kind"]) in KSERVE_TYPES]


def kserve_problems(*checks: tuple[object, str]) -> list[list[str]]:
    """For each (document, API type name), where it does not fit KServe's generated types (tests/kserve_types.py),
    checked in a separate interpreter: kserve's gRPC definitions clash with tritonclient's (both register
    ``inference.*`` protobuf messages) in one process."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.kserve_types"],
        input=json.dumps([[document, type_name] for document, type_name in checks]),
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.mark.parametrize(("name", "document"), CORE, ids=[name for name, _ in CORE])
def test_every_core_resource_validates_strictly_against_the_kubernetes_schema(name, document):
    k8s_validate.validate(document, KUBERNETES_VERSION, strict=True)  # raises with the path of what is wrong


@pytest.mark.parametrize(("name", "document"), KSERVE, ids=[name for name, _ in KSERVE])
def test_every_kserve_resource_fits_kserves_api_types(name, document):
    assert kserve_problems((document, KSERVE_TYPES[document["apiVersion"], document["kind"]])) == [[]]


def test_both_validations_catch_a_misspelled_field_and_a_wrong_type():
    deployment = copy.deepcopy(dict(DOCUMENTS)["pih2t-serve.yaml:Deployment"])
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(k8s_validate.ValidationError, match="readinesProbe"):
        k8s_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    service = copy.deepcopy(dict(DOCUMENTS)["triton-inferenceservice.yaml:InferenceService"])
    service["spec"]["predictor"]["model"]["storageURI"] = service["spec"]["predictor"]["model"].pop("storageUri")
    service["spec"]["predictor"]["minReplicas"] = "1"
    assert kserve_problems((service, "V1beta1InferenceService")) == [
        [
            ".spec.predictor.minReplicas: expected int, got '1'",
            ".spec.predictor.model.storageURI: unknown field of V1beta1ModelSpec",
        ]
    ]


def test_probes_and_the_autoscaling_metric_are_real_routes_and_series_of_the_service():
    """The probe paths answer 200 on a running service, and the metric the autoscaler scales on is one
    /metrics exports, under the name prometheus-adapter publishes it as."""
    docs = dict(DOCUMENTS)
    deployment, autoscaler = docs["pih2t-serve.yaml:Deployment"], docs["pih2t-serve.yaml:HorizontalPodAutoscaler"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert autoscaler["spec"]["scaleTargetRef"] == {
        "apiVersion": deployment["apiVersion"],
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    (pods_metric,) = [m["pods"]["metric"]["name"] for m in autoscaler["spec"]["metrics"] if m["type"] == "Pods"]
    (rule,) = yaml.safe_load(docs["prometheus-adapter-rules.yaml:ConfigMap"]["data"]["config.yaml"])["rules"]
    assert rule["name"]["as"] == pods_metric and re.match(rule["name"]["matches"], pods_metric)
    with running_server(create_app(FakeClassifier)) as (url, _server):
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert httpx.get(url + container[probe]["httpGet"]["path"]).status_code == 200, probe
        exported = httpx.get(f"{url}/metrics").text
    assert re.search(rf"^{pods_metric} 1\.0$", exported, flags=re.M), "the scrape itself is in flight"
    assert rule["seriesQuery"].startswith(pods_metric + "{")
