"""The Kubernetes and KServe manifests, validated against the schemas a cluster would apply: the core resources
(Deployment, Service, HorizontalPodAutoscaler, ConfigMap) with kubernetes-validate's strict JSON schemas of
Kubernetes 1.37, the KServe resources against KServe's own generated API types (the kserve package, whose
models mirror its CRDs' OpenAPI, with the Kubernetes client's types inside them); and the probes and the
autoscaling metric against a real running service."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import httpx
import kserve.models as kserve_models
import kubernetes.client.models as k8s_models
import pytest
import yaml
from kubernetes_validate import utils as k8s_validate

from pih2t_deploy.serving.rest import create_app
from tests.fakes import FakeClassifier
from tests.servers import running_server

KUBERNETES = Path(__file__).resolve().parents[1] / "serving" / "kubernetes"
KUBERNETES_VERSION = "1.37.0"
KSERVE_TYPES = {
    ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime",
}
SCALARS = {"str": str, "bool": bool, "int": int, "float": (int, float), "datetime": str}


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


def _api_type(name: str) -> type:
    found = getattr(kserve_models, name, None) or getattr(k8s_models, name, None)
    assert found is not None, f"no API type {name}"
    return found


def kserve_problems(value: object, type_name: str, where: str = "") -> list[str]:
    """Where ``value`` does not fit the generated API type ``type_name``: unknown fields (strictly, as
    ``kubectl apply --validate=strict``) and values of the wrong kind. The kserve models write containers
    as list[X] / dict(str, X), the Kubernetes client's as List[X] / Dict[str, X]."""
    if type_name.lower().startswith("list["):
        if not isinstance(value, list):
            return [f"{where}: expected a list"]
        return [p for i, item in enumerate(value) for p in kserve_problems(item, type_name[5:-1], f"{where}[{i}]")]
    if type_name.lower().startswith(("dict(", "dict[")):
        if not isinstance(value, dict):
            return [f"{where}: expected a mapping"]
        inner = type_name[type_name.index(",") + 1 : -1].strip()
        return [p for key, item in value.items() for p in kserve_problems(item, inner, f"{where}.{key}")]
    if type_name == "object":
        return []
    if type_name in SCALARS:
        fits = isinstance(value, SCALARS[type_name]) and (type_name == "bool" or not isinstance(value, bool))
        return [] if fits else [f"{where}: expected {type_name}, got {value!r}"]
    if not isinstance(value, dict):
        return [f"{where}: expected an object ({type_name})"]
    api = _api_type(type_name)
    fields = {json_name: attribute for attribute, json_name in api.attribute_map.items()}
    problems = []
    for key, item in value.items():
        if key not in fields:
            problems.append(f"{where}.{key}: unknown field of {type_name}")
        else:
            problems += kserve_problems(item, api.openapi_types[fields[key]], f"{where}.{key}")
    return problems


@pytest.mark.parametrize(("name", "document"), CORE, ids=[name for name, _ in CORE])
def test_every_core_resource_validates_strictly_against_the_kubernetes_schema(name, document):
    k8s_validate.validate(document, KUBERNETES_VERSION, strict=True)  # raises with the path of what is wrong


@pytest.mark.parametrize(("name", "document"), KSERVE, ids=[name for name, _ in KSERVE])
def test_every_kserve_resource_fits_kserves_api_types(name, document):
    assert kserve_problems(document, KSERVE_TYPES[document["apiVersion"], document["kind"]]) == []


def test_both_validations_catch_a_misspelled_field_and_a_wrong_type():
    deployment = copy.deepcopy(dict(DOCUMENTS)["pih2t-serve.yaml:Deployment"])
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(k8s_validate.ValidationError, match="readinesProbe"):
        k8s_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    service = copy.deepcopy(dict(DOCUMENTS)["triton-inferenceservice.yaml:InferenceService"])
    service["spec"]["predictor"]["model"]["storageURI"] = service["spec"]["predictor"]["model"].pop("storageUri")
    service["spec"]["predictor"]["minReplicas"] = "1"
    assert kserve_problems(service, "V1beta1InferenceService") == [
        ".spec.predictor.minReplicas: expected int, got '1'",
        ".spec.predictor.model.storageURI: unknown field of V1beta1ModelSpec",
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
