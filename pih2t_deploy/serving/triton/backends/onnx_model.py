"""Triton Python-backend model: onnxruntime (CPU) on the ``model.onnx`` beside this file.

The variant of ``<name>_onnx`` for Triton builds without the onnxruntime backend (such as the server shipped
with nvidia-pytriton): same inputs, outputs and labels.
"""

import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """One onnxruntime session; the requests Triton batches together run as one call."""

    def initialize(self, args):
        folder = os.path.join(args["model_repository"], args["model_version"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("PIH2T_TRITON_THREADS", "1"))
        self.session = ort.InferenceSession(
            os.path.join(folder, "model.onnx"), options, providers=["CPUExecutionProvider"]
        )

    def execute(self, requests):
        batches = [pb_utils.get_input_tensor_by_name(request, "input").as_numpy() for request in requests]
        (logits,) = self.session.run(["logits"], {"input": np.concatenate(batches)})
        responses, offset = [], 0
        for batch in batches:
            rows = logits[offset : offset + len(batch)]
            offset += len(batch)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("logits", rows)]))
        return responses
