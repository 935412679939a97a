"""Static INT8 quantization with onnxruntime.quantization: QDQ format, per-channel weights, real calibration."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process


class ArrayReader(CalibrationDataReader):
    """Feeds calibration batches of ``batch`` images to the calibrator."""

    def __init__(self, input_name: str, data: np.ndarray, batch: int = 16) -> None:
        self.batches = iter([{input_name: data[i : i + batch]} for i in range(0, len(data), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


class _QuantizationChatter(logging.Filter):
    """Drops onnxruntime.quantization's own info/warning records logged straight to the root logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        inside = f"onnxruntime{os.sep}quantization" in record.pathname
        return record.levelno >= logging.ERROR or not inside


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """While active, onnxruntime.quantization's root-logger chatter is filtered; no level is changed."""
    chatter = _QuantizationChatter()
    root = logging.getLogger()
    root.addFilter(chatter)
    try:
        yield
    finally:
        root.removeFilter(chatter)


def quantize_int8(
    fp32_path: Path,
    int8_path: Path,
    calibration: np.ndarray,
    input_name: str = "input",
    *,
    symmetric: bool = False,
) -> None:
    """Write ``int8_path``: ``fp32_path`` with INT8 weights (per channel, symmetric) and activations (MinMax
    calibration on ``calibration``) in QDQ form.

    ``symmetric=False`` (onnxruntime): UINT8 activations with zero points, the fastest form on CPUs.
    ``symmetric=True`` (TensorRT): signed INT8 activations and weights whose zero points are all 0, the only
    Q/DQ form TensorRT accepts; biases stay float (TensorRT has no INT32 DequantizeLinear and fuses the bias
    into the INT8 convolution itself).
    """
    with tempfile.TemporaryDirectory() as work, _quiet_quantizer():
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(int8_path),
            ArrayReader(input_name, calibration.astype(np.float32)),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True, "QuantizeBias": not symmetric},
        )
