"""Static INT8 quantization with onnxruntime.quantization: QDQ format, per-channel weights, real calibration."""

from __future__ import annotations

import logging
import tempfile
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


def quantize_int8(fp32_path: Path, int8_path: Path, calibration: np.ndarray, input_name: str = "input") -> None:
    """Write ``int8_path``: ``fp32_path`` with INT8 weights (per channel) and activations (U8, MinMax
    calibration on ``calibration``), in QDQ form so every runtime (onnxruntime, TensorRT) can read it."""
    logging.getLogger("root").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as work:
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(int8_path),
            ArrayReader(input_name, calibration.astype(np.float32)),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
