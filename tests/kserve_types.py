"""Strict checks of KServe manifests against KServe's generated API types (the kserve package's models mirror
its CRDs' OpenAPI; the Kubernetes client's models fill in the core types inside them).

Run as ``python -m tests.kserve_types`` with a JSON list of ``[document, type name]`` pairs on stdin; prints the
list of problems of each. A separate interpreter because kserve's gRPC definitions and tritonclient's register
the same protobuf messages (``inference.*``) and cannot be imported into one process.
"""

from __future__ import annotations

import json
import sys

import kserve.models as kserve_models
import kubernetes.client.models as k8s_models

SCALARS = {"str": str, "bool": bool, "int": int, "float": (int, float), "datetime": str}


def _api_type(name: str) -> type:
    found = getattr(kserve_models, name, None) or getattr(k8s_models, name, None)
    if found is None:
        raise KeyError(f"no API type {name}")
    return found


def problems(value: object, type_name: str, where: str = "") -> list[str]:
    """Where ``value`` does not fit the generated API type ``type_name``: unknown fields (strictly, as
    ``kubectl apply --validate=strict``) and values of the wrong kind. The kserve models write containers
    as list[X] / dict(str, X), the Kubernetes client's as List[X] / Dict[str, X]."""
    if type_name.lower().startswith("list["):
        if not isinstance(value, list):
            return [f"{where}: expected a list"]
        return [p for i, item in enumerate(value) for p in problems(item, type_name[5:-1], f"{where}[{i}]")]
    if type_name.lower().startswith(("dict(", "dict[")):
        if not isinstance(value, dict):
            return [f"{where}: expected a mapping"]
        inner = type_name[type_name.index(",") + 1 : -1].strip()
        return [p for key, item in value.items() for p in problems(item, inner, f"{where}.{key}")]
    if type_name == "object":
        return []
    if type_name in SCALARS:
        fits = isinstance(value, SCALARS[type_name]) and (type_name == "bool" or not isinstance(value, bool))
        return [] if fits else [f"{where}: expected {type_name}, got {value!r}"]
    if not isinstance(value, dict):
        return [f"{where}: expected an object ({type_name})"]
    api = _api_type(type_name)
    fields = {json_name: attribute for attribute, json_name in api.attribute_map.items()}
    found = []
    for key, item in value.items():
        if key not in fields:
            found.append(f"{where}.{key}: unknown field of {type_name}")
        else:
            found += problems(item, api.openapi_types[fields[key]], f"{where}.{key}")
    return found


if __name__ == "__main__":
    checks = json.load(sys.stdin)
    print(json.dumps([problems(document, type_name) for document, type_name in checks]))
