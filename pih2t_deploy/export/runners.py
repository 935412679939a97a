"""Runners: the one way export, verification and benchmarks call a model, numpy batch in, numpy batch out."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

Runner = Callable[[np.ndarray], np.ndarray]


def torch_runner(module: nn.Module, device: str = "cpu", *, exported: bool = False) -> Runner:
    """``module`` in eval mode on ``device`` under inference mode; outputs come back as float32 numpy arrays
    (after the GPU has finished, so timings of the call are complete). ``exported``: a torch.export program's
    module, already in inference form (it refuses ``eval()``)."""
    if not exported:
        module = module.to(device).eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = module(torch.from_numpy(x).to(device))
        if device == "cuda":
            torch.cuda.synchronize()
        return out.float().cpu().numpy()

    return run


def onnx_runner(path: Path) -> Runner:
    """The ONNX model at ``path`` on onnxruntime's CPU provider (the session keeps the model in memory, so the
    file may be deleted afterwards)."""
    import onnxruntime as ort

    from pih2t_deploy.export.onnx_export import INPUT_NAME, OUTPUT_NAME

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def run_chunked(runner: Runner, inputs: np.ndarray, chunk: int) -> np.ndarray:
    """``runner`` over ``inputs`` in chunks of at most ``chunk`` rows, outputs concatenated."""
    return np.concatenate([runner(inputs[i : i + chunk]) for i in range(0, len(inputs), chunk)])
