"""H2TF, head-to-tail fusion: a pure tensor function used in stage-2 training only (docs METHOD.md)."""

from __future__ import annotations

import math

import torch


def fusion_channel_count(channels: int, ratio: float) -> int:
    """floor(ratio * channels): how many channels one fusion step replaces."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"fusion ratio must lie in [0, 1], got {ratio}")
    return math.floor(ratio * channels + 1e-9)


def draw_fusion_channels(channels: int, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """One random subset of floor(ratio*channels) channel indices (sorted, int64, on the CPU)."""
    count = fusion_channel_count(channels, ratio)
    return torch.randperm(channels, generator=generator)[:count].sort().values


def h2t_fuse(
    receiver: torch.Tensor,
    donor: torch.Tensor,
    ratio: float,
    *,
    generator: torch.Generator | None = None,
    channels: torch.Tensor | None = None,
    inplace: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace one shared random subset S of the receiver's channels by the donor's, position by position.

    ``receiver`` and ``donor`` are [B, C, H, W] feature maps of the same shape. Every sample of the batch gets
    the same S of floor(ratio*C) channels (or ``channels`` when given). Returns ``(fused, S)``. The inputs are
    left untouched unless ``inplace=True``, in which case ``receiver`` itself is written and returned.
    The labels of the fused batch are the receiver's: this function never sees labels.
    """
    if receiver.shape != donor.shape:
        raise ValueError(f"receiver {tuple(receiver.shape)} and donor {tuple(donor.shape)} differ in shape")
    if receiver.dim() != 4:
        raise ValueError(f"expected [B, C, H, W] feature maps, got {receiver.dim()} dimensions")
    if channels is None:
        channels = draw_fusion_channels(receiver.shape[1], ratio, generator)
    channels = channels.to(receiver.device)
    fused = receiver if inplace else receiver.clone()
    fused[:, channels] = donor[:, channels].to(fused.dtype)
    return fused, channels
