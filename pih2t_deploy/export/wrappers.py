"""What is exported around the folded classifier: embedded preprocessing, fp16 compute, softmax."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pih2t_deploy.data.preprocessing import Preprocessing


class ExportModule(nn.Module):
    """``model`` with optional uint8 NHWC input scaled and normalised in the graph, fp16 compute (float32
    input and output), and softmax probabilities instead of logits."""

    def __init__(
        self,
        model: nn.Module,
        prep: Preprocessing,
        *,
        embed_preprocessing: bool = False,
        half: bool = False,
        probs: bool = False,
    ) -> None:
        super().__init__()
        self.model = model.half() if half else model
        self.embed, self.in_half, self.probs = embed_preprocessing, half, probs
        self.mean: torch.Tensor
        self.inv_std: torch.Tensor
        self.register_buffer("mean", torch.tensor(prep.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("inv_std", 1.0 / torch.tensor(prep.std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embed:
            x = (x.permute(0, 3, 1, 2).to(torch.float32) * (1.0 / 255.0) - self.mean) * self.inv_std
        out = self.model(x.half()).float() if self.in_half else self.model(x)
        return F.softmax(out, dim=1) if self.probs else out


def example_input(
    prep: Preprocessing, batch: int, embed_preprocessing: bool, generator: torch.Generator
) -> torch.Tensor:
    """A random input of the exported graph's type: uint8 [N, H, W, C] pixels or float32 [N, C, H, W]."""
    c, h, w = prep.input_shape
    if embed_preprocessing:
        return torch.randint(0, 256, (batch, h, w, c), dtype=torch.uint8, generator=generator)
    return torch.randn(batch, c, h, w, generator=generator)
