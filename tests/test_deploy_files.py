"""The container and cluster files: each parsed, and the fields that must agree checked against each other and
against the package (Python version, extras, ports, probes, paths)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SERVING = ROOT / "serving"
DOCKERFILES = sorted(SERVING.rglob("Dockerfile*"))


def _documents(path: Path) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(path.read_text()) if doc}


def test_the_package_supports_exactly_python_3_11():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11,<3.12"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(SERVING)))
def test_every_dockerfile_runs_python_3_11_and_says_why(dockerfile):
    text = dockerfile.read_text()
    base = re.search(r"^FROM (\S+)", text, re.MULTILINE).group(1)
    assert base.startswith("python:3.11") or "python3.11 python3.11-venv" in text, base
    assert re.search(r"Python 3\.11: .*(supports|needs)", text), "state which Python and why"
    installs = re.findall(r'pip install "?([^"\s]+)', text)
    assert installs, "the image must install the package"
    for spec in installs:
        extras = set(re.search(r"\[(.*)\]", spec).group(1).split(",")) if "[" in spec else set()
        assert len(extras & {"cpu", "gpu"}) == 1, f"exactly one ONNX Runtime flavour: {spec}"
        assert "train" not in extras and "torch" not in spec, f"serving images stay torch-free: {spec}"


def test_serving_images_run_as_uid_10001_on_port_8000():
    for name in ("Dockerfile.cpu", "Dockerfile.cuda"):
        text = (SERVING / name).read_text()
        assert "useradd --create-home --uid 10001" in text and "\nUSER 10001\n" in text
        assert '"--model", "/model"' in text and '"--port", "8000"' in text and "EXPOSE 8000" in text
        assert "/v2/health/ready" in text
    assert '"--device", "cuda"' in (SERVING / "Dockerfile.cuda").read_text()


def test_triton_image_installs_the_python_3_11_backend_stub_of_its_server_version():
    text = (SERVING / "triton" / "Dockerfile").read_text()
    assert "FROM nvcr.io/nvidia/tritonserver:24.10-py3" in text
    assert "python_backend_stubs/3.11/triton_python_backend_stub" in text
    assert "/opt/tritonserver/backends/python/triton_python_backend_stub" in text
    pinned = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert '"nvidia-pytriton==0.7.0"' in text and "nvidia-pytriton==0.7.0" in pinned["triton"]
    assert pinned["tensorrt"] == ["tensorrt-cu12==10.5.0"], "TensorRT of tritonserver:24.10 (10.5)"


def test_kserve_triton_manifest_uses_the_model_form_and_the_runtime_ports():
    docs = _documents(SERVING / "kubernetes" / "triton-inferenceservice.yaml")
    runtime, service = docs["ServingRuntime"], docs["InferenceService"]
    model = service["spec"]["predictor"]["model"]
    assert "triton" not in service["spec"]["predictor"], "no legacy predictor.triton form"
    assert model["modelFormat"] == {"name": "triton", "version": "2"}
    assert model["runtime"] == runtime["metadata"]["name"] and "runtimeVersion" not in model
    assert model["storageUri"].startswith("gs://")
    assert {"name": "triton", "version": "2", "autoSelect": False} in runtime["spec"]["supportedModelFormats"]
    (container,) = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container"
    args = container["args"]
    assert args[0] == "tritonserver" and "--model-store=/mnt/models" in args
    assert "--http-port=8080" in args and "--grpc-port=9000" in args
    assert container["ports"] == [{"containerPort": 8080, "protocol": "TCP"}]
    assert model["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_pih2t_serve_manifest_probes_ports_and_read_only_artifact_agree():
    docs = _documents(SERVING / "kubernetes" / "pih2t-serve.yaml")
    deployment, service = docs["Deployment"], docs["Service"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    port = int(args[args.index("--port") + 1])
    model_path = args[args.index("--model") + 1]
    assert container["ports"][0]["containerPort"] == port == service["spec"]["ports"][0]["targetPort"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": port}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts[model_path]["readOnly"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts[model_path]["name"]]["persistentVolumeClaim"]["readOnly"] is True
    assert "/tmp" in mounts and "emptyDir" in volumes[mounts["/tmp"]["name"]], "uploads spool to /tmp"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsUser"] == 10001 and pod["securityContext"]["runAsNonRoot"] is True
    assert set(container["resources"]["requests"]) == {"cpu", "memory"}
    grpc_port = int(args[args.index("--grpc-port") + 1])
    assert container["ports"][1] == {"name": "grpc", "containerPort": grpc_port}
    assert service["spec"]["ports"][1]["targetPort"] == grpc_port
    drain = float(args[args.index("--drain-s") + 1])
    assert pod["terminationGracePeriodSeconds"] > drain + 30, "longer than the drain plus the server's 30 s to finish"
    assert deployment["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]


def test_compose_mounts_the_repository_where_tritonserver_reads_it():
    compose = yaml.safe_load((SERVING / "triton" / "docker-compose.yml").read_text())["services"]["triton"]
    store = next(a.split("=", 1)[1] for a in compose["command"] if a.startswith("--model-repository="))
    assert any(v.endswith(f":{store}:ro") for v in compose["volumes"])
    assert {p.split(":")[1] for p in compose["ports"]} == {"8000", "8001", "8002"}
    assert compose["image"] == "pih2t-triton:24.10"


def _containers() -> dict[str, tuple[dict, dict]]:
    """Every container of the Kubernetes and KServe files: name -> (its securityContext, its pod's)."""
    found = {}
    serve = _documents(SERVING / "kubernetes" / "pih2t-serve.yaml")["Deployment"]["spec"]["template"]["spec"]
    for container in serve["containers"]:
        found[container["name"]] = (container.get("securityContext", {}), serve.get("securityContext", {}))
    runtime = _documents(SERVING / "kubernetes" / "triton-inferenceservice.yaml")["ServingRuntime"]["spec"]
    for container in runtime["containers"]:
        found[container["name"]] = (container.get("securityContext", {}), runtime.get("securityContext", {}))
    return found


@pytest.mark.parametrize("name", sorted(_containers()))
def test_every_container_runs_as_a_user_without_capabilities_on_a_read_only_root(name):
    own, pod = _containers()[name]
    merged = {**pod, **own}
    assert merged["runAsNonRoot"] is True and merged["runAsUser"] == 10001
    assert own["allowPrivilegeEscalation"] is False and own["readOnlyRootFilesystem"] is True
    assert own["capabilities"] == {"drop": ["ALL"]}
    assert merged["seccompProfile"] == {"type": "RuntimeDefault"}


def test_every_image_and_the_compose_service_drop_root():
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text()
        assert "useradd --create-home --uid 10001" in text and text.rstrip().count("\nUSER 10001") == 1, dockerfile
    compose = yaml.safe_load((SERVING / "triton" / "docker-compose.yml").read_text())["services"]["triton"]
    assert compose["user"] == "10001" and compose["cap_drop"] == ["ALL"] and compose["read_only"] is True
    assert compose["security_opt"] == ["no-new-privileges:true"] and compose["tmpfs"] == ["/tmp"]
