"""The export formats: one FormatSpec per format, registered once, read by everything else.

A format's entry says everything the package does with it: the files it writes (the first is the model file
that ``model.json`` names), the builder that writes them, the runtime backend that runs them, the export
options that apply to it, whether it needs calibration images (INT8), how the generated Triton repository
serves it, and its name(s) in ``pih2t-bench``. The exporter, the runtime loader, the benchmark, the Triton
repository builder and its validator read this table and nothing else, so adding a format is one
``register_format`` call (a test shows it).

The table lives here, below every other package and free of torch, because the torch-free serving install
reads it too; builders are named as ``"module:function"`` and imported only when an export runs.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from pih2t_deploy.errors import ConfigError


@dataclass(frozen=True)
class TritonModel:
    """How the generated Triton repository serves a format: ``platform`` or ``backend`` of the model's
    config, the suffix of its model name (``<name>_<suffix>``), the instance kind it needs (None: the
    repository's ``--kind``), and the file names in the version folder (repository name -> artifact name)."""

    suffix: str
    files: Mapping[str, str]
    platform: str = ""
    backend: str = ""
    kind: str | None = None


@dataclass(frozen=True)
class FormatSpec:
    """One export format (see the module docstring)."""

    name: str
    model_files: tuple[str, ...]
    builder: str
    backend: str
    runtime_module: str
    description: str
    options: frozenset[str] = frozenset()
    needs_calibration: bool = False
    triton: TritonModel | None = None
    bench_label: str | None = None
    bench_variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    precision: str = "fp32"  # what the CPU computes in (a bench variant with "bf16" computes in bf16)

    @property
    def model_file(self) -> str:
        """The file ``model.json`` names as the model (the first of ``model_files``)."""
        return self.model_files[0]

    @property
    def bench_name(self) -> str:
        """The format's name in ``pih2t-bench --formats``."""
        return self.bench_label or self.name

    def builder_function(self) -> Callable[..., Any]:
        """The builder, imported now (builders need torch; nothing imports them before an export runs)."""
        module, _, function = self.builder.partition(":")
        return getattr(importlib.import_module(module), function)

    def runtime_installed(self) -> bool:
        """True when the Python package of this format's runtime is importable here."""
        return importlib.util.find_spec(self.runtime_module) is not None


_REGISTRY: dict[str, FormatSpec] = {}
FORMATS: Mapping[str, FormatSpec] = MappingProxyType(_REGISTRY)


def register_format(spec: FormatSpec) -> FormatSpec:
    """Add ``spec`` to the table (ValueError if its name, or one of its bench names, is taken)."""
    taken = {name for other in _REGISTRY.values() for name in (other.name, other.bench_name, *other.bench_variants)}
    clashes = {spec.name, spec.bench_name, *spec.bench_variants} & taken
    if clashes:
        raise ValueError(f"format name(s) already registered: {', '.join(sorted(clashes))}")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_format(name: str) -> None:
    """Remove a format added with ``register_format`` (tests and plug-ins that undo themselves)."""
    _REGISTRY.pop(name, None)


def get_format(name: str) -> FormatSpec:
    """The entry of format ``name``; ConfigError listing the known formats otherwise."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown format {name!r}; choose one of: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def formats_of_backend(backend: str) -> list[FormatSpec]:
    """The formats the runtime ``backend`` runs, in registration order."""
    return [spec for spec in _REGISTRY.values() if spec.backend == backend]


def bench_entries() -> dict[str, tuple[FormatSpec, Mapping[str, Any]]]:
    """Every name ``pih2t-bench --formats`` knows besides its baseline: each format's bench name and its
    variants (e.g. openvino-bf16), with the export options beyond the defaults that the name stands for."""
    entries: dict[str, tuple[FormatSpec, Mapping[str, Any]]] = {}
    for spec in _REGISTRY.values():
        entries[spec.bench_name] = (spec, {})
        entries.update({name: (spec, extra) for name, extra in spec.bench_variants.items()})
    return entries


def formats_help() -> str:
    """The ``--format`` help text: every format with its description."""
    return "; ".join(f"{name}: {spec.description}" for name, spec in _REGISTRY.items())


_ONNX_OPTIONS = frozenset({"opset"})
_INT8_OPTIONS = frozenset({"opset", "calib_data", "calib_count", "max_group_drop"})

register_format(
    FormatSpec(
        name="onnx",
        model_files=("model.onnx",),
        builder="pih2t_deploy.export.builders:build_onnx",
        backend="onnxruntime",
        runtime_module="onnxruntime",
        description="ONNX, fp32 or fp16, dynamic batch axis",
        options=_ONNX_OPTIONS | {"static_batch", "half", "simplify", "embed_preprocessing", "probs"},
        triton=TritonModel("onnx", {"model.onnx": "model.onnx"}, platform="onnxruntime_onnx"),
    )
)
register_format(
    FormatSpec(
        name="onnx-int8",
        model_files=("model.int8.onnx",),
        builder="pih2t_deploy.export.builders:build_onnx_int8",
        backend="onnxruntime",
        runtime_module="onnxruntime",
        description="ONNX with static INT8 quantization (QDQ, per-channel weights)",
        options=_INT8_OPTIONS,
        needs_calibration=True,
        triton=TritonModel("onnx", {"model.onnx": "model.int8.onnx"}, platform="onnxruntime_onnx"),
        precision="int8",
    )
)
register_format(
    FormatSpec(
        name="trt",
        model_files=("model.plan",),
        builder="pih2t_deploy.export.builders:build_tensorrt",
        backend="tensorrt",
        runtime_module="tensorrt",
        description="TensorRT plan (needs TensorRT and an NVIDIA GPU)",
        options=_INT8_OPTIONS - {"max_group_drop"} | {"half", "int8", "workspace_gb", "timing_cache", "opt_batch"},
        triton=TritonModel("trt", {"model.plan": "model.plan"}, platform="tensorrt_plan", kind="gpu"),
    )
)
register_format(
    FormatSpec(
        name="torch",
        model_files=("model.pt2",),
        builder="pih2t_deploy.export.builders:build_torch",
        backend="torch",
        runtime_module="torch",
        description="torch.export program of the folded model",
        options=frozenset({"static_batch"}),
        bench_label="torch-export",
    )
)
register_format(
    FormatSpec(
        name="openvino",
        model_files=("model.xml", "model.bin"),
        builder="pih2t_deploy.export.builders:build_openvino",
        backend="openvino",
        runtime_module="openvino",
        description="OpenVINO IR with fp32 weights; --bf16 runs it in bfloat16 (AVX512-BF16 / AMX CPUs)",
        options=_ONNX_OPTIONS | {"bf16", "max_group_drop"},
        triton=TritonModel(
            "openvino", {"model.xml": "model.xml", "model.bin": "model.bin"}, backend="openvino", kind="cpu"
        ),
        bench_variants={"openvino-bf16": {"bf16": True}},
    )
)
register_format(
    FormatSpec(
        name="openvino-int8",
        model_files=("model.xml", "model.bin"),
        builder="pih2t_deploy.export.builders:build_openvino_int8",
        backend="openvino",
        runtime_module="openvino",
        description="OpenVINO IR of the statically quantized INT8 (QDQ) model",
        options=_INT8_OPTIONS,
        needs_calibration=True,
        precision="int8",
        triton=TritonModel(
            "openvino", {"model.xml": "model.xml", "model.bin": "model.bin"}, backend="openvino", kind="cpu"
        ),
    )
)
