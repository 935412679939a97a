"""``pih2t-triton build``: a versioned Triton model repository generated from an exported artifact.

Models (``<name>`` is --name): the artifact's model, served as its format's entry in ``pih2t_deploy.formats``
says (``<name>_onnx`` on the onnxruntime backend for onnx and onnx-int8, ``<name>_trt`` for a TensorRT plan,
``<name>_openvino`` for an OpenVINO IR), ``<name>_preprocess`` (Python backend: encoded image -> input tensor),
```<name>`` (ensemble: image in, logits out), and with --cpu-python ``<name>_onnx_py`` (Python backend running
onnxruntime, for Triton builds without the onnxruntime backend) in place of ``<name>_onnx``. Every model
folder is built under a temporary name inside REPO, then installed (``install.py``) replacing only what this
package wrote; nothing is written outside REPO.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from google.protobuf import text_format

from pih2t_deploy.artifact import LABELS_FILE
from pih2t_deploy.atomic import require_writable_folder
from pih2t_deploy.errors import ConfigError, UserError
from pih2t_deploy.formats import FORMATS
from pih2t_deploy.runtime.classifier import ModelInfo
from pih2t_deploy.runtime.loader import read_artifact_info
from pih2t_deploy.serving.triton.install import check_installable, install_model

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
TYPES = {"float32": "TYPE_FP32", "uint8": "TYPE_UINT8"}


@dataclass
class RepositorySettings:
    """Options of ``pih2t-triton build``."""

    name: str | None = None  # the ensemble's name; default: the artifact's (what pih2t-serve calls it)
    max_batch: int = 64
    instances: int = 1
    kind: str = "cpu"
    preferred_batch: list[int] = field(default_factory=list)
    max_queue_delay_us: int = 100
    trt_accelerator: bool = False
    warmup: bool = False
    cpu_python: bool = False
    force: bool = False
    version: int = 1

    def validate(self) -> None:
        """ConfigError naming the first bad setting."""
        if self.name is not None and not NAME.match(self.name):
            raise ConfigError(f"--name {self.name!r} must be letters, digits, '_' or '-' (at most 64)")
        if self.max_batch < 1 or self.instances < 1 or self.max_queue_delay_us < 0 or self.version < 1:
            raise ConfigError("--max-batch, --instances and the version must be >= 1, --max-queue-delay-us >= 0")
        if self.kind not in ("cpu", "gpu"):
            raise ConfigError(f"--kind must be cpu or gpu, got {self.kind!r}")
        if any(b < 1 or b > self.max_batch for b in self.preferred_batch):
            raise ConfigError("--preferred-batch sizes must lie between 1 and --max-batch")
        if self.trt_accelerator and self.kind != "gpu":
            raise ConfigError("--trt-accelerator needs --kind gpu")
        if self.cpu_python and self.kind != "cpu":
            raise ConfigError("--cpu-python models run on --kind cpu")


def model_config_pb2():
    """tritonclient's ModelConfig protobuf module (the triton extra), or a UserError saying how to get it."""
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise UserError("Triton support needs the triton extra: pip install 'pih2t-deploy[triton]'") from None
    return model_config_pb2


def _base(name: str, settings: RepositorySettings, kind: str):
    mc = model_config_pb2()
    config = mc.ModelConfig(name=name, max_batch_size=settings.max_batch)
    config.dynamic_batching.preferred_batch_size.extend(settings.preferred_batch)
    config.dynamic_batching.max_queue_delay_microseconds = settings.max_queue_delay_us
    kinds = {"cpu": mc.ModelInstanceGroup.KIND_CPU, "gpu": mc.ModelInstanceGroup.KIND_GPU}
    config.instance_group.add(count=settings.instances, kind=kinds[kind])
    config.version_policy.latest.num_versions = 1
    return config


def _logits(config, info: ModelInfo) -> None:
    mc = model_config_pb2()
    config.output.add(name="logits", data_type=mc.TYPE_FP32, dims=[info.num_classes], label_filename=LABELS_FILE)


def backend_config(
    name: str,
    info: ModelInfo,
    settings: RepositorySettings,
    shape: list[int],
    dtype: str,
    *,
    platform: str = "",
    backend: str = "",
    kind: str | None = None,
):
    """ModelConfig of a model mapping ``input`` to ``logits`` (onnxruntime, TensorRT or Python backend)."""
    mc = model_config_pb2()
    config = _base(name, settings, kind or settings.kind)
    config.platform, config.backend = platform, backend
    config.input.add(name="input", data_type=mc.DataType.Value(dtype), dims=shape)
    _logits(config, info)
    if settings.warmup:
        warmup = config.model_warmup.add(name="zeros", batch_size=1)
        warmup.inputs["input"].data_type = mc.DataType.Value(dtype)
        warmup.inputs["input"].dims.extend(shape)
        warmup.inputs["input"].zero_data = True
    if settings.trt_accelerator and platform == "onnxruntime_onnx":
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        accelerator.parameters.update(
            {"precision_mode": "FP16", "max_workspace_size_bytes": str(4 << 30), "trt_engine_cache_enable": "1"}
        )
    return config


def _openvino_precision(config, info: ModelInfo) -> None:
    """Ask NVIDIA's OpenVINO backend for bfloat16 (HINT_BF16) when the artifact was exported and verified with
    --bf16."""
    if ((info.manifest.openvino if info.manifest else None) or {}).get("inference_precision") == "bf16":
        config.parameters["HINT_BF16"].string_value = "YES"


def preprocess_config(name: str, info: ModelInfo, settings: RepositorySettings, shape: list[int], dtype: str):
    """ModelConfig of the Python-backend preprocess model: BYTES ``image`` -> ``input``."""
    mc = model_config_pb2()
    config = _base(name, settings, "cpu")
    config.backend = "python"
    config.input.add(name="image", data_type=mc.TYPE_STRING, dims=[1])
    config.output.add(name="input", data_type=mc.DataType.Value(dtype), dims=shape)
    config.parameters["preprocessing"].string_value = json.dumps(info.preprocessing.to_dict())
    config.parameters["pixel_input"].string_value = "true" if info.pixel_input else "false"
    return config


def ensemble_config(name: str, target: str, info: ModelInfo, settings: RepositorySettings):
    """ModelConfig of the ensemble: encoded ``image`` -> preprocess -> ``target`` -> ``logits``."""
    mc = model_config_pb2()
    config = mc.ModelConfig(name=name, platform="ensemble", max_batch_size=settings.max_batch)
    config.input.add(name="image", data_type=mc.TYPE_STRING, dims=[1])
    _logits(config, info)
    first = config.ensemble_scheduling.step.add(model_name=f"{name}_preprocess", model_version=-1)
    first.input_map["image"], first.output_map["input"] = "image", "preprocessed"
    second = config.ensemble_scheduling.step.add(model_name=target, model_version=-1)
    second.input_map["input"], second.output_map["logits"] = "preprocessed", "logits"
    return config


def _backend_file(module: str) -> str:
    return resources.files("pih2t_deploy.serving.triton.backends").joinpath(f"{module}.py").read_text(encoding="utf-8")


def build_repository(artifact: Path, repo: Path, settings: RepositorySettings) -> list[str]:
    """Write the models for ``artifact`` into ``repo``; returns their names. UserError if a version exists."""
    settings.validate()
    artifact = Path(artifact)
    info = read_artifact_info(artifact)
    manifest = info.manifest
    if manifest is None:
        raise UserError(f"{artifact} is not an exported artifact; run pih2t-export first")
    spec = FORMATS.get(manifest.model_format)
    if spec is None or spec.triton is None:
        servable = ", ".join(name for name, other in FORMATS.items() if other.triton is not None)
        raise UserError(
            f"{artifact} is a --format {manifest.model_format} artifact, which Triton does not serve; "
            f"build the repository from one of: {servable}"
        )
    triton = spec.triton
    if settings.cpu_python and triton.platform != "onnxruntime_onnx":
        raise ConfigError(
            "--cpu-python runs onnxruntime in the Python backend: build it from an ONNX artifact "
            f"(this one is --format {spec.name})"
        )
    dtype = TYPES[manifest.input.dtype]
    shape = [int(d) for d in manifest.input.shape[1:]]
    if manifest.input.shape[0] != "batch":
        raise UserError(f"{artifact} was exported with a fixed batch size; re-export without --static-batch")
    name, version = settings.name or info.name, str(settings.version)
    if not NAME.match(name):
        raise ConfigError(
            f"the artifact's name {name!r} is not a Triton model name: pass --name NAME (letters, digits, '_', '-')"
        )
    copies: dict[str, Path | str] = {inside: artifact / source for inside, source in triton.files.items()}
    if settings.cpu_python:
        target = f"{name}_onnx_py"
        config = backend_config(target, info, settings, shape, dtype, backend="python", kind="cpu")
        copies["model.py"] = _backend_file("onnx_model")
    else:
        target = f"{name}_{triton.suffix}"
        config = backend_config(
            target, info, settings, shape, dtype, platform=triton.platform, backend=triton.backend, kind=triton.kind
        )
        if triton.backend == "openvino":
            _openvino_precision(config, info)
    models: dict[str, tuple[Any, dict[str, Path | str]]] = {
        f"{name}_preprocess": (
            preprocess_config(f"{name}_preprocess", info, settings, shape, dtype),
            {"model.py": _backend_file("preprocess")},
        ),
        name: (ensemble_config(name, target, info, settings), {}),
        target: (config, copies),
    }
    repo = Path(repo)
    require_writable_folder(repo, f"--repo {repo}")
    others = sorted(entry.name for entry in repo.iterdir() if entry.name not in models and entry.name[0] != ".")
    if others and not settings.force:
        listed = ", ".join(others[:5]) + (" ..." if len(others) > 5 else "")
        raise UserError(
            f"--repo {repo} already holds other entries ({listed}) that tritonserver would load too; "
            "choose an empty folder, or pass --force to add the models beside them (they are left alone)"
        )
    check_installable(repo, list(models), version, settings.force)
    labels = (artifact / LABELS_FILE).read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix=".pih2t-build-", dir=repo) as staging:
        for model, (config, files) in models.items():
            folder = Path(staging) / model
            (folder / version).mkdir(parents=True)
            (folder / "config.pbtxt").write_text(text_format.MessageToString(config), encoding="utf-8")
            if any(output.label_filename for output in config.output):
                (folder / LABELS_FILE).write_text(labels, encoding="utf-8")
            for file_name, source in files.items():
                if isinstance(source, Path):
                    shutil.copy2(source, folder / version / file_name)
                else:
                    (folder / version / file_name).write_text(source, encoding="utf-8")
        for model in models:
            install_model(Path(staging) / model, repo / model, version)
    return list(models)
