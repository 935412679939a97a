"""ONNX conversion of a folded (plain) classifier with a dynamic or fixed batch axis."""

from __future__ import annotations

import io
import json
import logging
import warnings
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from pih2t_deploy.export.options import DEFAULT_OPSET

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MAX_DYNAMIC_BATCH = 4096


def export_onnx(
    module: nn.Module,
    path: Path,
    example: torch.Tensor,
    *,
    opset: int = DEFAULT_OPSET,
    static_batch: int | None = None,
    metadata: dict[str, Any] | None = None,
) -> onnx.ModelProto:
    """Write ``module`` (eval mode) to ``path`` as ONNX and return the saved model.

    The graph has one input ``input`` shaped and typed like ``example`` and one output ``logits`` [N, K];
    N is dynamic (1 to 4096) unless ``static_batch`` fixes it. ``metadata`` values (JSON-encoded unless they
    are strings) go into the model's metadata_props.
    """
    module = module.eval()
    dynamic = None if static_batch else ({0: torch.export.Dim("batch", min=1, max=MAX_DYNAMIC_BATCH)},)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            dynamic_shapes=dynamic,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            verbose=False,
        )
    if program is None:  # torch returns None only for the legacy exporter, which is not used here
        raise RuntimeError("torch.onnx.export returned no program")
    model = program.model_proto
    if static_batch is None:
        model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    set_metadata(model, metadata or {})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return model


def set_metadata(model: onnx.ModelProto, metadata: dict[str, Any]) -> None:
    """Replace ``model``'s metadata_props with ``metadata`` (strings as is, other values as JSON)."""
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value)


def read_metadata(path: Path) -> dict[str, str]:
    """The metadata_props of the ONNX file at ``path`` as a dict of strings."""
    model = onnx.load(str(path), load_external_data=False)
    return {entry.key: entry.value for entry in model.metadata_props}
