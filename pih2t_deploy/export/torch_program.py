"""The ``torch`` format: a torch.export program (``model.pt2``) loadable without this library's model code."""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from pih2t_deploy.export.onnx_export import MAX_DYNAMIC_BATCH


def export_program(
    module: nn.Module, example: torch.Tensor, path: Path, static_batch: int | None
) -> torch.export.ExportedProgram:
    """Export ``module`` (eval mode) with a dynamic batch axis unless ``static_batch``; save to ``path``."""
    dynamic = None if static_batch else ({0: torch.export.Dim("batch", min=1, max=MAX_DYNAMIC_BATCH)},)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(module.eval(), (example,), dynamic_shapes=dynamic)
    torch.export.save(program, str(path))
    return program


def program_op_counts(program: torch.export.ExportedProgram) -> dict[str, int]:
    """Calls per ATen operator in the exported graph."""
    calls = Counter(str(node.target) for node in program.graph.nodes if node.op == "call_function")
    return dict(sorted(calls.items()))
