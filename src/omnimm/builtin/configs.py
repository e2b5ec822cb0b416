"""Configs of the core's components. Pydantic only, so validating them never imports torch."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from omnimm.config import (
    AdapterRef,
    ComponentConfig,
    EncoderRef,
    FuserRef,
    check_identifier_keys,
    check_part_patterns,
    field_error,
)


class TinyViTConfig(ComponentConfig):
    """A small ViT with random weights: tests, demos and shape checks, not accuracy."""

    image_size: int = Field(32, ge=4)
    """Height and width of the (square) input images, in pixels."""
    patch_size: int = Field(8, ge=1)
    """Side of the square patches; must divide `image_size`."""
    in_channels: int = Field(3, ge=1)
    """Channels of the input images."""
    dim: int = Field(64, ge=4)
    """Width of the tokens (the encoder's `out_dim`)."""
    depth: int = Field(2, ge=1)
    """Number of transformer layers."""
    heads: int = Field(4, ge=1)
    """Attention heads per layer; must divide `dim`."""
    mlp_ratio: float = Field(4.0, gt=0)
    """Hidden width of each layer's MLP, as a multiple of `dim`."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout inside the transformer layers."""

    def group_names(self) -> list[str]:
        """The token groups a video LLM sees: the CLS token and the patches."""
        return ["cls", "patches"]

    @field_validator("patch_size")
    @classmethod
    def _patch_divides_image(cls, patch_size: int, info: ValidationInfo) -> int:
        image_size = info.data.get("image_size")
        if image_size is not None and image_size % patch_size:
            raise ValueError(f"must divide image_size ({image_size})")
        return patch_size

    @field_validator("heads")
    @classmethod
    def _heads_divide_dim(cls, heads: int, info: ValidationInfo) -> int:
        dim = info.data.get("dim")
        if dim is not None and dim % heads:
            raise ValueError(f"must divide dim ({dim})")
        return heads


class MLPConfig(ComponentConfig):
    """Projector from features to a backbone's width: linear (`depth: 1`) or an MLP (`depth: 2` = mlp2x_gelu)."""

    out_dim: int | None = Field(None, ge=1)
    """Width of the output features (the backbone's hidden size); leave unset to take it from the model that uses
    the projector (a video LLM passes its LLM's width)."""
    in_dim: int | None = Field(None, ge=1)
    """Width of the input features; leave unset to take it from the component in front (the model passes it)."""
    depth: int = Field(2, ge=1, le=8)
    """Number of linear layers; 1 is a plain linear projection."""
    hidden_dim: int | None = Field(None, ge=1)
    """Width of the hidden layers (default: `out_dim`, as in LLaVA)."""
    activation: Literal["gelu", "relu", "silu", "tanh"] = "gelu"
    """Activation between layers."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout after each hidden activation."""
    norm: bool = False
    """LayerNorm the input first (as InternVL's projector does): steadier training on unnormalised features."""


class ConcatConfig(ComponentConfig):
    """Joins several encoders' features: along the token axis (same width) or the feature axis (same length)."""

    axis: Literal["tokens", "features"] = "tokens"
    """`tokens`: [B, N1+N2, D]; `features`: [B, N, D1+D2]."""


class MultimodalEncoderConfig(ComponentConfig):
    """Encoders -> optional fuser -> optional adapter: named inputs in, one token sequence out."""

    encoders: dict[str, EncoderRef] = Field(min_length=1)
    """One encoder per named input, e.g. `{image: {name: omnimm/tiny-vit}}`; the forward pass takes the same keys."""
    fuser: FuserRef | None = None
    """How to combine several encoders' outputs; required with more than one encoder."""
    adapter: AdapterRef | None = None
    """Projector applied after fusion (its `in_dim` is filled in from the encoders)."""
    freeze: list[str] = Field(default_factory=list)
    """Parts whose parameters do not train: `encoders`, `encoders.<key>`, `fuser`, `adapter` (wildcards ok)."""

    @field_validator("encoders")
    @classmethod
    def _keys_are_identifiers(cls, encoders: dict[str, ComponentConfig]) -> dict[str, ComponentConfig]:
        check_identifier_keys(encoders, "an input key")
        return encoders

    @model_validator(mode="after")
    def _check_parts(self) -> MultimodalEncoderConfig:
        if len(self.encoders) > 1 and self.fuser is None:
            keys = ", ".join(self.encoders)
            raise field_error("fuser", f"required with more than one encoder ({keys}); e.g. {{name: omnimm/concat}}")
        check_part_patterns(self.freeze, self.part_names(), ("freeze",))
        return self

    def part_names(self) -> list[str]:
        """The parts `freeze` may name."""
        parts = ["encoders", *(f"encoders.{key}" for key in self.encoders)]
        if self.fuser is not None:
            parts.append("fuser")
        if self.adapter is not None:
            parts.append("adapter")
        return parts
