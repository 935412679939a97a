"""The PI-H2T network: backbone -> PIF -> (H2TF in stage-2 training) -> global average pooling -> head."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import torch
from torch import nn

from pih2t_deploy.errors import ConfigError
from pih2t_deploy.fusion import h2t_fuse
from pih2t_deploy.models.heads import CosineHead, LinearHead
from pih2t_deploy.models.pif import PIF
from pih2t_deploy.models.registry import create_arch
from pih2t_deploy.settings import reject_unknown

MethodName = Literal["ce", "h2t", "pih2t"]
HeadName = Literal["linear", "cosine"]
METHODS: tuple[str, ...] = get_args(MethodName)
HEADS: tuple[str, ...] = get_args(HeadName)


@dataclass(frozen=True)
class NetworkConfig:
    """Everything needed to rebuild a PI-H2T network; stored in every checkpoint's meta."""

    arch: str
    num_classes: int
    in_channels: int = 3
    method: str = "pih2t"
    head: str = "linear"
    cosine_scale: float = 16.0
    lws: bool = False
    pif_activation: str | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose one of: {', '.join(METHODS)}")
        if self.head not in HEADS:
            raise ConfigError(f"unknown head {self.head!r}; choose one of: {', '.join(HEADS)}")
        if self.cosine_scale <= 0:
            raise ConfigError(f"cosine_scale must be positive, got {self.cosine_scale}")

    @property
    def uses_pif(self) -> bool:
        """PIF is part of the network for method ``pih2t`` only."""
        return self.method == "pih2t"

    @property
    def uses_h2tf(self) -> bool:
        """H2TF is applied in stage 2 for methods ``h2t`` and ``pih2t``."""
        return self.method in ("h2t", "pih2t")

    def to_dict(self) -> dict[str, Any]:
        """A plain dict of the settings (JSON- and weights_only-safe)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetworkConfig:
        """Build from a dict; unknown keys are an error naming them."""
        reject_unknown(cls, data)
        return cls(**data)


class PIH2TNet(nn.Module):
    """A PI-H2T classifier. ``forward(x)`` is inference; ``forward(x, donor=d, fusion_ratio=p)`` fuses."""

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = create_arch(config.arch, config.num_classes, config.in_channels)
        self.backbone.fc = nn.Identity()
        width = self.backbone.num_features
        self.pif = PIF(config.pif_activation) if config.uses_pif else None
        if config.head == "cosine":
            self.head: LinearHead | CosineHead = CosineHead(width, config.num_classes, config.cosine_scale, config.lws)
        else:
            self.head = LinearHead(width, config.num_classes, config.lws)

    @property
    def num_features(self) -> int:
        """Channels of the final feature map (C)."""
        return self.backbone.num_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The final feature map after PIF (when the method uses it), [B, C, H, W]."""
        fmap = self.backbone.forward_features(x)
        return self.pif(fmap) if self.pif is not None else fmap

    def classify(self, fmap: torch.Tensor) -> torch.Tensor:
        """The backbone's pooling (global average, + a norm for some timm heads) and the head: logits [B, K]."""
        return self.head(self.backbone.pool(fmap))

    def forward(
        self,
        x: torch.Tensor,
        donor: torch.Tensor | None = None,
        *,
        fusion_ratio: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Logits for ``x``. With a ``donor`` batch (stage-2 training), H2TF fuses donor channels into x's."""
        if donor is None:
            return self.classify(self.features(x))
        if not self.config.uses_h2tf:
            raise ValueError(f"method {self.config.method!r} does not use H2TF; do not pass a donor batch")
        both = self.features(torch.cat((x, donor)))
        receiver, donor_maps = both[: x.shape[0]], both[x.shape[0] :]
        fused, _ = h2t_fuse(receiver, donor_maps, fusion_ratio, generator=generator)
        return self.classify(fused)
