"""Vision encoders as torch modules: frames `[F, 3, S, S]` -> named token groups `{"cls": [F, 1, D], "patches":
[F, N, D]}` from one block, or `cls_i` / `patches_i` from several (`select_layers`)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from omnimm.deps import require
from omnimm.videollm.groups import TokenGroup
from omnimm.vision.configs import HFCLIPVisionConfig, OpenCLIPVisionConfig, TimmViTConfig, VisionEncoderConfig
from omnimm.vision.preprocess import CLIP_MEAN, CLIP_STD, ImageTransform


def image_transform(
    config: VisionEncoderConfig,
    size: int,
    mean: tuple[float, ...] = CLIP_MEAN,
    std: tuple[float, ...] = CLIP_STD,
) -> ImageTransform:
    """The encoder's preprocessing as its config asks (resize rule, Valley's 256 -> 224 crop)."""
    return ImageTransform(size, mean, std, resize=config.resize, resize_to=config.resize_to)  # type: ignore[arg-type]


class VisionEncoder(nn.Module):
    """Shared behaviour: shape checks, `out_dim`, `num_patches`, `token_groups`, `preprocess`.

    Subclasses implement `layer_tokens(frames) -> [(cls [F, 1, D], patches [F, N, D]) per selected block]`.
    """

    config: VisionEncoderConfig
    out_dim: int
    num_patches: int
    image_size: int
    preprocess: ImageTransform

    @property
    def token_groups(self) -> dict[str, TokenGroup]:
        """Tokens per frame of each group this encoder returns, in order."""
        groups = {}
        names = self.config.group_names()
        for index, layer in enumerate(self.config.layers()):
            cls_name, patches_name = names[2 * index], names[2 * index + 1]
            groups[cls_name] = TokenGroup(1, self.out_dim, f"CLS token of block {layer}")
            groups[patches_name] = TokenGroup(self.num_patches, self.out_dim, f"patch tokens of block {layer}")
        return groups

    def _check(self, frames: torch.Tensor) -> None:
        size = self.image_size
        if frames.ndim != 4 or tuple(frames.shape[1:]) != (3, size, size):
            raise ValueError(
                f"encoder '{self.config.name}' expects frames of shape [frames, 3, {size}, {size}] "
                f"(use its .preprocess), got {list(frames.shape)}"
            )

    def forward(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        self._check(frames)
        names = iter(self.config.group_names())
        groups = {}
        for cls, patches in self.layer_tokens(frames):
            groups[next(names)] = cls
            groups[next(names)] = patches
        return groups

    def layer_tokens(self, frames: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError

    def _check_layers(self, depth: int) -> None:
        for layer in self.config.layers():
            if not -depth <= layer < depth:
                raise ValueError(
                    f"encoder '{self.config.name}': layer {layer} is out of range for a {depth}-block model "
                    f"(use -{depth}..{depth - 1})"
                )


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
        open_clip = require("open_clip", extra="video", purpose="encoder 'openclip/vit'")
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
        self.preprocess = image_transform(config, self.image_size, tuple(mean), tuple(std))
        self._check_layers(int(self.visual.transformer.layers))

    def layer_tokens(self, frames: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        layers = self.config.layers()
        out = self.visual.forward_intermediates(
            frames, indices=layers, output_fmt="NLC", intermediates_only=True, output_extra_tokens=True
        )
        depth = int(self.visual.transformer.layers)
        by_block = dict(zip(sorted({layer % depth for layer in layers}), range(len(layers)), strict=False))
        picked = [by_block[layer % depth] for layer in layers]  # open_clip returns blocks in ascending order
        return [(out["image_intermediates_prefix"][i], out["image_intermediates"][i]) for i in picked]


class HFCLIPVision(VisionEncoder):
    """transformers' `CLIPVisionModel`; block `select_layer`'s output (`hidden_states[select_layer + 1]` for a block
    counted from 0, `hidden_states[select_layer]` for one counted from the end)."""

    def __init__(self, config: HFCLIPVisionConfig) -> None:
        super().__init__()
        transformers = require("transformers", extra="video", purpose="encoder 'hf/clip-vision'")
        self.config = config
        if config.pretrained is not None:
            self.model = transformers.CLIPVisionModel.from_pretrained(config.pretrained)
        else:
            self.model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**config.config))
        vision = self.model.config
        self.out_dim = int(vision.hidden_size)
        self.image_size = _square(vision.image_size)
        self.num_patches = (self.image_size // _square(vision.patch_size)) ** 2
        self._check_layers(int(vision.num_hidden_layers))
        self.preprocess = image_transform(config, self.image_size)

    def layer_tokens(self, frames: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out = self.model(pixel_values=frames, output_hidden_states=True)
        # hidden_states[0] is the embeddings, [i + 1] block i's output: index blocks as the other encoders do
        states = [out.hidden_states[layer + 1 if layer >= 0 else layer] for layer in self.config.layers()]
        return [(state[:, :1], state[:, 1:]) for state in states]


class TimmViT(VisionEncoder):
    """A timm `VisionTransformer`, intermediate tokens via `forward_intermediates`."""

    def __init__(self, config: TimmViTConfig) -> None:
        super().__init__()
        timm = require("timm", extra="video", purpose="encoder 'timm/vit'")
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
        mean, std = tuple(data.get("mean", CLIP_MEAN)), tuple(data.get("std", CLIP_STD))
        self.preprocess = image_transform(config, self.image_size, mean, std)
        self._check_layers(len(self.model.blocks))

    def layer_tokens(self, frames: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        layers = self.config.layers()
        out = self.model.forward_intermediates(
            frames, indices=layers, return_prefix_tokens=True, output_fmt="NLC", intermediates_only=True
        )
        depth = len(self.model.blocks)
        by_block = dict(zip(sorted({layer % depth for layer in layers}), range(len(layers)), strict=False))
        return [(out[by_block[layer % depth]][1], out[by_block[layer % depth]][0]) for layer in layers]
