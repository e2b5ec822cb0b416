"""Vision encoders as torch modules: frames `[F, 3, S, S]` -> tokens `[F, 1 + N, D]`, CLS first."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from omnimm.deps import require
from omnimm.vision.configs import HFCLIPVisionConfig, OpenCLIPVisionConfig, TimmViTConfig, VisionEncoderConfig
from omnimm.vision.preprocess import CLIP_MEAN, CLIP_STD, ImageTransform


class VisionEncoder(nn.Module):
    """Shared behaviour: shape checks, `out_dim`, `num_patches`, `preprocess`."""

    config: VisionEncoderConfig
    out_dim: int
    num_patches: int
    image_size: int
    preprocess: ImageTransform

    def _check(self, frames: torch.Tensor) -> None:
        size = self.image_size
        if frames.ndim != 4 or tuple(frames.shape[1:]) != (3, size, size):
            raise ValueError(
                f"encoder '{self.config.name}' expects frames of shape [frames, 3, {size}, {size}] "
                f"(use its .preprocess), got {list(frames.shape)}"
            )

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        self._check(frames)
        return self.tokens(frames)

    def tokens(self, frames: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _square(value: Any) -> int:
    return int(value[0] if isinstance(value, (tuple, list)) else value)


class OpenCLIPVision(VisionEncoder):
    """open_clip's `VisionTransformer`, intermediate tokens via `forward_intermediates`."""

    def __init__(self, config: OpenCLIPVisionConfig) -> None:
        super().__init__()
        open_clip = require("open_clip", extra="valley", purpose="encoder 'openclip/vit'")
        self.config = config
        base = open_clip.get_model_config(config.arch)
        if base is None:
            raise ValueError(f"open_clip has no model '{config.arch}' (see open_clip.list_models())")
        vision_cfg = {**base["vision_cfg"], **config.overrides}
        with _quiet_root_logger():  # open_clip warns on the root logger whenever weights are random, as asked
            model = open_clip.create_model(
                config.arch,
                pretrained=config.pretrained,
                vision_cfg=vision_cfg,
                require_pretrained=config.pretrained is not None,
                weights_only=True,
            )
        self.visual = model.visual  # the text tower is dropped with `model`
        self.out_dim = int(self.visual.transformer.width)
        self.image_size = _square(self.visual.image_size)
        grid = self.visual.grid_size
        self.num_patches = int(grid[0] * grid[1])
        mean = getattr(self.visual, "image_mean", None) or CLIP_MEAN
        std = getattr(self.visual, "image_std", None) or CLIP_STD
        self.preprocess = ImageTransform(self.image_size, tuple(mean), tuple(std), resize=config.resize)

    def tokens(self, frames: torch.Tensor) -> torch.Tensor:
        out = self.visual.forward_intermediates(
            frames,
            indices=[self.config.select_layer],
            output_fmt="NLC",
            intermediates_only=True,
            output_extra_tokens=True,
        )
        patches = out["image_intermediates"][0]
        cls = out["image_intermediates_prefix"][0]
        return torch.cat([cls, patches], dim=1)


class HFCLIPVision(VisionEncoder):
    """transformers' `CLIPVisionModel`; `hidden_states[select_layer]` (index 0 is the embeddings)."""

    def __init__(self, config: HFCLIPVisionConfig) -> None:
        super().__init__()
        transformers = require("transformers", extra="valley", purpose="encoder 'hf/clip-vision'")
        self.config = config
        if config.pretrained is not None:
            self.model = transformers.CLIPVisionModel.from_pretrained(config.pretrained)
        else:
            self.model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**config.config))
        vision = self.model.config
        self.out_dim = int(vision.hidden_size)
        self.image_size = _square(vision.image_size)
        self.num_patches = (self.image_size // _square(vision.patch_size)) ** 2
        layers = int(vision.num_hidden_layers)
        if not -layers <= config.select_layer <= layers:
            raise ValueError(f"select_layer {config.select_layer} is out of range for a {layers}-layer model")
        self.preprocess = ImageTransform(self.image_size, resize=config.resize)

    def tokens(self, frames: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=frames, output_hidden_states=True)
        return out.hidden_states[self.config.select_layer]


class TimmViT(VisionEncoder):
    """A timm `VisionTransformer`, intermediate tokens via `forward_intermediates`."""

    def __init__(self, config: TimmViTConfig) -> None:
        super().__init__()
        timm = require("timm", extra="valley", purpose="encoder 'timm/vit'")
        self.config = config
        overrides: dict[str, Any] = {**config.overrides, "num_classes": 0}
        if config.pretrained is not None:
            overrides["pretrained_cfg_overlay"] = {"file": config.pretrained}
        self.model = timm.create_model(config.arch, pretrained=config.pretrained is not None, **overrides)
        if getattr(self.model, "num_prefix_tokens", 1) != 1:
            raise ValueError(
                f"timm model '{config.arch}' has {self.model.num_prefix_tokens} prefix tokens; need 1 (CLS)"
            )
        self.out_dim = int(self.model.embed_dim)
        self.num_patches = int(self.model.patch_embed.num_patches)
        self.image_size = _square(self.model.patch_embed.img_size)
        data = self.model.pretrained_cfg
        self.preprocess = ImageTransform(
            self.image_size, tuple(data.get("mean", CLIP_MEAN)), tuple(data.get("std", CLIP_STD)), resize=config.resize
        )

    def tokens(self, frames: torch.Tensor) -> torch.Tensor:
        patches, prefix = self.model.forward_intermediates(
            frames,
            indices=[self.config.select_layer],
            return_prefix_tokens=True,
            output_fmt="NLC",
            intermediates_only=True,
        )[0]
        return torch.cat([prefix, patches], dim=1)
