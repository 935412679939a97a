"""torch backend: a ``model.pt2`` (torch.export program) or a ``model.pt`` checkpoint folded on load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pih2t_deploy.errors import UserError
from pih2t_deploy.runtime.classifier import Classifier, ModelInfo
from pih2t_deploy.runtime.program_archive import read_program


class TorchClassifier(Classifier):
    """A PyTorch module in eval mode on CPU or CUDA."""

    backend = "torch"

    def __init__(self, module: nn.Module, info: ModelInfo, *, device: str, threads: int | None, source: str) -> None:
        super().__init__(info)
        if device == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda was requested but PyTorch sees no CUDA GPU; use --device cpu")
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.module = module.to(self.device)
        self.source = source

    @classmethod
    def from_program(cls, path: Path, info: ModelInfo, *, device: str, threads: int | None) -> TorchClassifier:
        """Load a ``torch.export`` program (``model.pt2``) after checking that nothing in it is unpickled
        unrestricted (``program_archive``): a crafted archive is refused before torch reads it."""
        program = read_program(path)
        return cls(program.module(), info, device=device, threads=threads, source=path.name)

    @classmethod
    def from_checkpoint(cls, path: Path, *, device: str, threads: int | None, name: str | None) -> TorchClassifier:
        """Fold a ``model.pt`` checkpoint (verified) and serve the plain module."""
        from pih2t_deploy.checkpoint import load_checkpoint
        from pih2t_deploy.fold import fold

        ckpt = load_checkpoint(path)
        folded, _ = fold(ckpt.net, input_shape=ckpt.preprocessing.input_shape, class_counts=ckpt.class_counts)
        info = ModelInfo(
            name=name or ckpt.meta.get("recipe") or "pih2t",
            version="1",
            labels=ckpt.class_names,
            class_counts=ckpt.class_counts,
            preprocessing=ckpt.preprocessing,
            meta=ckpt.meta,
        )
        return cls(folded.eval(), info, device=device, threads=threads, source=path.name)

    @torch.inference_mode()
    def predict(self, batch: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(np.ascontiguousarray(batch, self.input_dtype)).to(self.device)
        return self.module(tensor).float().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "device": str(self.device), "file": self.source}
