"""Configs of the vision encoders (pydantic only: validating them imports neither torch nor the model libraries)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from omnimm.config import ComponentConfig


class VisionEncoderConfig(ComponentConfig):
    """Options every vision encoder shares."""

    select_layer: int = -2
    """Which transformer block's output to return, counted from 0 (the first block); negative counts from the end
    (-2: the penultimate, as LLaVA and Valley use). Every vision encoder counts the same way. Gives the token groups
    `cls` and `patches`."""
    select_layers: list[int] | None = Field(None, min_length=1)
    """Several blocks at once (e.g. `[-2, 6, 3]`), instead of `select_layer`: groups `cls_0`, `patches_0`,
    `cls_1`, `patches_1`, ... in the order listed."""
    pretrained: str | None = None
    """Local weights (a file or folder, depending on the library); `null` builds the architecture with random
    weights (tests, demos)."""
    resize: Literal["shortest", "squash"] = "shortest"
    """Preprocessing: scale the shorter side and centre-crop (CLIP), or squash to a square."""
    resize_to: int | None = Field(None, ge=1)
    """With `resize: shortest`, scale the shorter side to this before the centre crop to the encoder's size
    (Valley: 256, then a 224 crop); unset: straight to the encoder's size (CLIP)."""

    def without_weights(self) -> VisionEncoderConfig:
        return super().without_weights().model_copy(update={"pretrained": None})

    def layers(self) -> list[int]:
        """The blocks whose tokens the encoder returns, in group order."""
        return list(self.select_layers) if self.select_layers is not None else [self.select_layer]

    def group_names(self) -> list[str]:
        """The token groups the encoder returns (known before it is built)."""
        if self.select_layers is None:
            return ["cls", "patches"]
        return [f"{kind}_{index}" for index in range(len(self.select_layers)) for kind in ("cls", "patches")]


class OpenCLIPVisionConfig(VisionEncoderConfig):
    """The vision tower of an open_clip model (ViT architectures)."""

    arch: str = "ViT-B-32"
    """An open_clip model name (`open_clip.list_models()`), e.g. `ViT-B-32`, `ViT-L-14`."""
    overrides: dict[str, Any] = Field(default_factory=dict)
    """Changes to the architecture's `vision_cfg` (e.g. `{width: 64, layers: 2, image_size: 32, patch_size: 8}`
    for a tiny test model)."""


class HFCLIPVisionConfig(VisionEncoderConfig):
    """transformers' `CLIPVisionModel`: from a local folder (`pretrained`), or a random one from `config`."""

    config: dict[str, Any] = Field(default_factory=dict)
    """`CLIPVisionConfig` options for a random model (ignored when `pretrained` is set), e.g.
    `{hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 128, image_size: 32,
    patch_size: 8}`."""


class TimmViTConfig(VisionEncoderConfig):
    """A timm vision transformer."""

    arch: str = "vit_base_patch16_224"
    """A timm model name with a ViT body, e.g. `vit_base_patch16_224`, `vit_tiny_patch16_224`."""
    overrides: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments for `timm.create_model` (e.g. `{img_size: 32, patch_size: 8, depth: 2}`)."""
