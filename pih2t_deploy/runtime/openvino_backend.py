"""OpenVINO backend (CPU): runs an IR (``model.xml`` + ``model.bin``) in the precision its artifact records.

fp32 and INT8 IRs run with the ``f32`` inference precision; an artifact exported with ``--bf16`` runs with
``bf16`` (AVX512-BF16 or AMX), and loading it on a CPU that OpenVINO says cannot do bf16 is refused with one
line rather than silently falling back. The ``latency`` performance hint (the default) runs each batch on all
inference threads; ``throughput`` splits them into OpenVINO's streams, each running a batch of its own on fewer
threads, and the classifier says how many batches it runs at once (``parallel_batches``). Torch-free.
"""

from __future__ import annotations

import queue
from pathlib import Path
from typing import Any

import numpy as np

from pih2t_deploy.errors import UserError, first_line
from pih2t_deploy.runtime.classifier import Classifier, ModelInfo

PRECISIONS = {"f32": "FP32", "bf16": "BF16"}  # inference precision hint -> OPTIMIZATION_CAPABILITIES entry
HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}  # --performance-hint -> OpenVINO's PERFORMANCE_HINT


def import_openvino() -> Any:
    """The ``openvino`` module, or a UserError naming the extra to install."""
    try:
        import openvino
    except ImportError:
        raise UserError("the OpenVINO backend needs openvino: pip install 'pih2t-deploy[openvino]'") from None
    return openvino


def cpu_description() -> dict[str, Any]:
    """OpenVINO's name and precision capabilities of this machine's CPU, with OpenVINO's version."""
    ov = import_openvino()
    core = ov.Core()
    return {
        "openvino": ov.__version__,
        "cpu": str(core.get_property("CPU", "FULL_DEVICE_NAME")),
        "capabilities": [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")],
    }


def compile_ir(path: Path, precision: str = "f32", threads: int | None = None, hint: str = "latency") -> Any:
    """The IR at ``path`` compiled for the CPU with inference precision ``precision`` (f32 or bf16),
    ``threads`` inference threads in all and OpenVINO's performance hint ``hint`` (latency or throughput); a
    UserError when the CPU cannot run that precision or the IR is unreadable."""
    ov = import_openvino()
    if precision not in PRECISIONS:
        raise UserError(f"unknown OpenVINO inference precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if hint not in HINTS:
        raise UserError(f"unknown OpenVINO performance hint {hint!r}; choose one of: {', '.join(HINTS)}")
    core = ov.Core()
    capabilities = [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
    if PRECISIONS[precision] not in capabilities:
        raise UserError(
            f"this CPU cannot run OpenVINO in {precision} (it offers {', '.join(capabilities)}); use an fp32 or INT8 "
            "artifact here, or a CPU with AVX512-BF16 or AMX"
        )
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": HINTS[hint]}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    try:
        return core.compile_model(str(path), "CPU", config)
    except RuntimeError as exc:
        raise UserError(f"OpenVINO cannot load {path}: {first_line(exc)}") from None


class IRRunner:
    """A thread-safe ``batch -> outputs`` callable over a compiled IR: as many calls run at once as OpenVINO
    has streams (``parallel``, one infer request each); further calls wait for a free one."""

    def __init__(self, path: Path, precision: str = "f32", threads: int | None = None, hint: str = "latency") -> None:
        compiled = compile_ir(path, precision, threads, hint)
        self.parallel = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.requests: queue.Queue[Any] = queue.Queue()
        for _ in range(self.parallel):
            self.requests.put(compiled.create_infer_request())

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        request = self.requests.get()
        try:
            request.infer({0: np.ascontiguousarray(batch)})
            return request.get_output_tensor(0).data.copy()
        finally:
            self.requests.put(request)


class OpenVINOClassifier(Classifier):
    """An OpenVINO compiled model over the artifact's ``model.xml``."""

    backend = "openvino"

    def __init__(
        self, path: Path, info: ModelInfo, *, device: str = "cpu", threads: int | None = None, hint: str = "latency"
    ) -> None:
        super().__init__(info)
        if device != "cpu":
            raise UserError("the OpenVINO backend runs on --device cpu")
        details = (info.manifest.openvino if info.manifest else None) or {}
        self.precision, self.hint = details.get("inference_precision", "f32"), hint
        self.run = IRRunner(path, self.precision, threads, hint)
        self.parallel_batches = self.run.parallel
        self.path = path

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.run(np.asarray(batch, self.input_dtype))

    def describe(self) -> dict[str, Any]:
        about = {"backend": self.backend, "precision": self.precision, "file": self.path.name}
        return about if self.hint == "latency" else {**about, "hint": self.hint, "streams": self.parallel_batches}
