"""TensorRT plan building against a stand-in ``tensorrt`` module.

TensorRT cannot be installed on these machines (no GPU, no NVIDIA libraries), so these tests drive the
builder functions with a small fake module that records every call and mimics the API of TensorRT 10
(builder flags, entropy calibrator) and TensorRT 11 (strongly typed networks only). What they check is our
logic: flags, profiles, caches, errors, and that the plan bytes are written untouched.
"""

from __future__ import annotations

import types

import numpy as np
import pytest

from pih2t_deploy.export.tensorrt_build import (
    PlanBuildError,
    PlanSettings,
    api_generation,
    build_plan,
    make_calibrator,
    onnx_precision_for,
)


def fake_tensorrt(version: str, *, parse_ok: bool = True, plan: bytes | None = b"\x00PLAN-BYTES"):
    calls: list[tuple] = []
    generation = int(version.split(".")[0])

    class Logger:
        WARNING = "warning"

        def __init__(self, level):
            calls.append(("logger", level))

    class Cache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return b"cache:" + self.data

    class Profile:
        def set_shape(self, name, low, opt, high):
            calls.append(("profile", name, low, opt, high))

    class Config:
        int8_calibrator = None

        def set_memory_pool_limit(self, pool, size):
            calls.append(("workspace", pool, size))

        def add_optimization_profile(self, profile):
            calls.append(("add_profile",))

        def set_flag(self, flag):
            calls.append(("flag", flag))

        def set_calibration_profile(self, profile):
            calls.append(("calibration_profile",))

        def create_timing_cache(self, data):
            self.cache = Cache(data)
            return self.cache

        def set_timing_cache(self, cache, ignore_mismatch):
            calls.append(("timing_cache", cache.data, ignore_mismatch))

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls.append(("network", flags))
            return object()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calls.append(("build", config.int8_calibrator is not None))
            return plan

    class OnnxParser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network, logger):
            pass

        def parse(self, data):
            calls.append(("parse", len(data)))
            return parse_ok

        def get_error(self, index):
            return "Unsupported ONNX op: Einsum"

    module = types.SimpleNamespace(
        __version__=version,
        Logger=Logger,
        Builder=Builder,
        OnnxParser=OnnxParser,
        MemoryPoolType=types.SimpleNamespace(WORKSPACE="workspace"),
        NetworkDefinitionCreationFlag=types.SimpleNamespace(STRONGLY_TYPED=5),
    )
    if generation < 11:
        module.BuilderFlag = types.SimpleNamespace(FP16="fp16", INT8="int8")
        module.IInt8EntropyCalibrator2 = type("IInt8EntropyCalibrator2", (), {"__init__": lambda self: None})
    return module, calls


def settings(**kwargs) -> PlanSettings:
    return PlanSettings(input_name="input", input_shape=(3, 32, 32), max_batch=64, opt_batch=16, **kwargs)


def test_tensorrt10_fp16_uses_builder_flags_and_one_profile(tmp_path):
    trt, calls = fake_tensorrt("10.9.0")
    cache = tmp_path / "timing.cache"
    plan = build_plan(trt, b"onnx-bytes", settings(half=True, timing_cache=cache, workspace_bytes=1 << 30))
    assert plan == b"\x00PLAN-BYTES"
    assert ("network", 0) in calls and ("flag", "fp16") in calls
    assert ("profile", "input", (1, 3, 32, 32), (16, 3, 32, 32), (64, 3, 32, 32)) in calls
    assert ("workspace", "workspace", 1 << 30) in calls
    assert cache.read_bytes() == b"cache:"
    build_plan(trt, b"onnx-bytes", settings(half=True, timing_cache=cache))
    assert ("timing_cache", b"cache:", False) in calls, "an existing timing cache is read back"


def test_tensorrt10_int8_sets_the_flag_and_an_entropy_calibrator(tmp_path):
    trt, calls = fake_tensorrt("10.3.0")
    details = settings(int8=True, calibration=np.zeros((40, 3, 32, 32), np.float32), calibration_cache=tmp_path / "c")
    build_plan(trt, b"onnx", details)
    assert ("flag", "int8") in calls and ("calibration_profile",) in calls and ("build", True) in calls
    assert details.details["precision"] == "int8" and details.details["api_generation"] == 10
    calibrator = make_calibrator(trt, np.zeros((40, 3, 32, 32), np.float32), tmp_path / "c", batch=16)
    assert isinstance(calibrator, trt.IInt8EntropyCalibrator2) and calibrator.get_batch_size() == 16
    assert calibrator.read_calibration_cache() is None
    calibrator.write_calibration_cache(b"scales")
    assert calibrator.read_calibration_cache() == b"scales"
    assert onnx_precision_for(trt, details) == "fp32"


def test_tensorrt11_builds_strongly_typed_networks_without_precision_flags():
    trt, calls = fake_tensorrt("11.0.1")
    assert api_generation(trt) == 11
    half = settings(half=True)
    assert onnx_precision_for(trt, half) == "fp16" and onnx_precision_for(trt, settings(int8=True)) == "qdq"
    build_plan(trt, b"fp16-onnx", half)
    assert ("network", 1 << 5) in calls
    assert not [c for c in calls if c[0] == "flag"], "TensorRT 11 has no precision builder flags"


def test_parse_and_build_failures_are_clear():
    trt, _ = fake_tensorrt("10.9.0", parse_ok=False)
    with pytest.raises(PlanBuildError, match="Unsupported ONNX op: Einsum"):
        build_plan(trt, b"onnx", settings())
    trt, _ = fake_tensorrt("10.9.0", plan=None)
    with pytest.raises(PlanBuildError, match="failed to build"):
        build_plan(trt, b"onnx", settings())


def _zero_points(path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {
        node.input[2]: initializers[node.input[2]]
        for node in model.graph.node
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2
    }


def _context(tmp_path, net):
    """A BuildInputs for ``net`` (digits_net, 7 classes) and 32 calibration inputs in the input's range."""
    import torch

    from pih2t_deploy.checkpoint import build_meta
    from pih2t_deploy.data.preprocessing import Preprocessing
    from pih2t_deploy.export.builders import BuildInputs
    from pih2t_deploy.export.options import ExportOptions
    from pih2t_deploy.fold import fold
    from pih2t_deploy.models import create_arch

    prep = Preprocessing.from_dict(build_meta(net.config)["preprocessing"])
    folded, _ = fold(net, input_shape=prep.input_shape)
    images = (torch.rand(32, *prep.input_shape, generator=torch.Generator().manual_seed(0)) * 4 - 2).numpy()
    return BuildInputs(
        folded=folded,
        vanilla=create_arch("digits_net", 7, 1).eval(),
        num_classes=7,
        prep=prep,
        options=ExportOptions(output=tmp_path / "out", format="trt", int8=True),
        metadata={},
        calibration=lambda: images,
        log=lambda _m: None,
    )


@pytest.mark.parametrize(("for_tensorrt", "dtype"), [(True, np.int8), (False, np.uint8)])
def test_the_qdq_graph_for_tensorrt_is_symmetric_signed_int8(tmp_path, digits_net, for_tensorrt, dtype):
    """The graph handed to TensorRT's parser (TensorRT 11 INT8): every Q/DQ zero point is signed INT8 and 0, and
    no INT32 (bias) Q/DQ is left. The onnxruntime INT8 artifact keeps UINT8 activations with their zero points
    (faster on CPUs)."""
    from pih2t_deploy.export.builders import tensorrt_onnx
    from pih2t_deploy.export.quantize import quantize_int8

    ctx = _context(tmp_path, digits_net)
    images = ctx.calibration()
    if for_tensorrt:
        path = tensorrt_onnx(ctx, "qdq", images, tmp_path)
    else:
        path = tmp_path / "ort.onnx"
        quantize_int8(tensorrt_onnx(ctx, "fp32", None, tmp_path), path, images)
    points = _zero_points(path)
    assert len(points) >= 10
    activation = [v for v in points.values() if v.ndim == 0]
    assert {v.dtype for v in activation} == {np.dtype(dtype)}
    if for_tensorrt:
        assert {v.dtype for v in points.values()} == {np.dtype(np.int8)}
        assert all(not v.any() for v in points.values()), "TensorRT needs zero points of 0"
    else:
        assert any(v.any() for v in activation), "onnxruntime's UINT8 activations use non-zero zero points"


def test_plan_tensors_are_chosen_by_io_mode_not_position():
    from pih2t_deploy.errors import UserError
    from pih2t_deploy.runtime.tensorrt_backend import io_tensor_names

    trt = types.SimpleNamespace(TensorIOMode=types.SimpleNamespace(INPUT="in", OUTPUT="out"))

    class Engine:
        def __init__(self, modes):
            self.modes = modes
            self.num_io_tensors = len(modes)

        def get_tensor_name(self, index):
            return list(self.modes)[index]

        def get_tensor_mode(self, name):
            return self.modes[name]

    assert io_tensor_names(trt, Engine({"logits": "out", "input": "in"})) == ("input", "logits")
    with pytest.raises(UserError, match="one of each"):
        io_tensor_names(trt, Engine({"a": "in", "b": "in", "logits": "out"}))


def test_quantizing_leaves_the_global_logging_configuration_alone(tmp_path, digits_net):
    import logging

    from pih2t_deploy.export.builders import tensorrt_onnx

    root = logging.getLogger()
    before = (root.level, list(root.filters))
    ctx = _context(tmp_path, digits_net)
    tensorrt_onnx(ctx, "qdq", ctx.calibration(), tmp_path)
    assert (root.level, list(root.filters)) == before
