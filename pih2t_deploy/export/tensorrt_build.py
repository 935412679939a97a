"""TensorRT plan building for both API generations, with the ``tensorrt`` module passed in.

TensorRT 10 builds fp16/INT8 with builder flags, INT8 calibrated by an entropy calibrator with a cache file.
TensorRT 11 removed those: precision comes from the network itself (a strongly typed network parsed from an
fp16 ONNX or a Q/DQ INT8 ONNX). The functions take the module as an argument so they can be tested with a
stand-in on machines without TensorRT; nothing is prepended to the plan.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pih2t_deploy.errors import UserError

logger = logging.getLogger(__name__)


class PlanBuildError(UserError):
    """TensorRT could not parse the ONNX file or build the plan."""


@dataclass
class PlanSettings:
    """One optimisation profile (min 1, opt, max), precision, workspace and caches."""

    input_name: str
    input_shape: tuple[int, int, int]
    max_batch: int
    opt_batch: int
    half: bool = False
    int8: bool = False
    workspace_bytes: int = 4 << 30
    timing_cache: Path | None = None
    calibration: np.ndarray | None = None
    calibration_cache: Path | None = None
    details: dict[str, Any] = field(default_factory=dict)


def api_generation(trt: Any) -> int:
    """TensorRT's major version (10 or 11 change how precision is chosen)."""
    return int(str(trt.__version__).split(".")[0])


def onnx_precision_for(trt: Any, settings: PlanSettings) -> str:
    """What the ONNX fed to the builder must be: 'fp32', 'fp16' or 'qdq' (TensorRT 11 reads precision from it)."""
    if api_generation(trt) < 11:
        return "fp32"
    return "fp16" if settings.half else "qdq" if settings.int8 else "fp32"


def make_calibrator(trt: Any, batches: np.ndarray, cache: Path | None, batch: int = 16) -> Any:
    """An IInt8EntropyCalibrator2 over ``batches`` (float32 [N, C, H, W]) reading/writing ``cache``."""
    import torch

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self.chunks = [batches[i : i + batch] for i in range(0, len(batches), batch)]
            self.device: torch.Tensor | None = None

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: Sequence[str]) -> list[int] | None:
            if not self.chunks:
                return None
            device = torch.from_numpy(np.ascontiguousarray(self.chunks.pop(0))).cuda()
            self.device = device  # kept alive until TensorRT has read it
            return [int(device.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache is not None and cache.is_file() else None

        def write_calibration_cache(self, data: bytes) -> None:
            if cache is not None:
                cache.write_bytes(bytes(data))

    return EntropyCalibrator()


def build_plan(trt: Any, onnx_bytes: bytes, settings: PlanSettings, log: Callable[[str], None] = logger.info) -> bytes:
    """Parse ``onnx_bytes`` and build a serialized plan with one optimisation profile; PlanBuildError on failure."""
    generation = api_generation(trt)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if generation >= 11:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise PlanBuildError(f"TensorRT could not parse the ONNX model: {errors or 'unknown error'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
    c, h, w = settings.input_shape
    profile = builder.create_optimization_profile()
    profile.set_shape(settings.input_name, (1, c, h, w), (settings.opt_batch, c, h, w), (settings.max_batch, c, h, w))
    config.add_optimization_profile(profile)
    if generation < 11:
        if settings.half:
            config.set_flag(trt.BuilderFlag.FP16)
        if settings.int8:
            config.set_flag(trt.BuilderFlag.INT8)
            if settings.calibration is None:
                raise UserError("an INT8 TensorRT plan needs calibration images (--calib-data)")
            config.int8_calibrator = make_calibrator(trt, settings.calibration, settings.calibration_cache)
            config.set_calibration_profile(profile)
    cache_bytes = (
        settings.timing_cache.read_bytes() if settings.timing_cache and settings.timing_cache.is_file() else b""
    )
    timing_cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(timing_cache, False)
    log(f"building TensorRT {trt.__version__} plan (profile 1/{settings.opt_batch}/{settings.max_batch})")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise PlanBuildError("TensorRT failed to build the plan (see its log above)")
    if settings.timing_cache is not None:
        settings.timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    settings.details.update(
        tensorrt=str(trt.__version__),
        api_generation=generation,
        precision="int8" if settings.int8 else "fp16" if settings.half else "fp32",
        profile={"min": 1, "opt": settings.opt_batch, "max": settings.max_batch},
        workspace_bytes=settings.workspace_bytes,
    )
    return bytes(plan)
