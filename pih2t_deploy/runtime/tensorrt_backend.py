"""TensorRT backend: imported lazily; without TensorRT and a GPU it refuses with one clear line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pih2t_deploy.errors import UserError
from pih2t_deploy.runtime.classifier import Classifier, ModelInfo

MISSING = (
    "TensorRT is not available here: it needs the tensorrt Python package and an NVIDIA GPU; "
    "use --format onnx to export and --backend onnxruntime to serve, which work everywhere"
)


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or a UserError saying what is needed."""
    try:
        import tensorrt
    except ImportError:
        raise UserError(MISSING) from None
    return tensorrt


def io_tensor_names(trt: Any, engine: Any) -> tuple[str, str]:
    """(input, output) tensor names of ``engine``, chosen by each tensor's I/O mode (never by position: a
    plan may list its output first); a UserError unless there is exactly one of each."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    if len(inputs) != 1 or len(outputs) != 1:
        raise UserError(f"the plan has inputs {inputs} and outputs {outputs}; a classifier plan has one of each")
    return inputs[0], outputs[0]


class TensorRTClassifier(Classifier):
    """Runs a serialized TensorRT plan (``model.plan``) on the GPU."""

    backend = "tensorrt"

    def __init__(self, path: Path, info: ModelInfo, *, device: str = "cuda") -> None:
        super().__init__(info)
        if device != "cuda":
            raise UserError("the TensorRT backend runs on --device cuda only")
        trt = import_tensorrt()
        import torch

        if not torch.cuda.is_available():
            raise UserError(MISSING)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        # a version-compatible plan can carry host code (a lean runtime) that would run on deserialisation:
        # never allowed for a plan from an artifact folder
        runtime.engine_host_code_allowed = False
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise UserError(f"TensorRT could not deserialize {path} (built with another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        self.input_name, self.output_name = io_tensor_names(trt, self.engine)
        self.torch = torch

    def predict(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        inputs = torch.from_numpy(np.ascontiguousarray(batch, self.input_dtype)).cuda()
        self.context.set_input_shape(self.input_name, tuple(inputs.shape))
        outputs = torch.empty((len(batch), self.info.num_classes), dtype=torch.float32, device="cuda")
        self.context.set_tensor_address(self.input_name, inputs.data_ptr())
        self.context.set_tensor_address(self.output_name, outputs.data_ptr())
        stream = torch.cuda.current_stream()
        self.context.execute_async_v3(stream.cuda_stream)
        stream.synchronize()
        return outputs.cpu().numpy()
