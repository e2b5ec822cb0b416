"""Torch modules of the core's components; imported on first build, never by `import omnimm`."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from itertools import pairwise

import torch
from torch import nn

from omnimm.builtin.configs import ConcatConfig, MLPConfig, MultimodalEncoderConfig, TinyViTConfig
from omnimm.registry import adapters, encoders, fusers
from omnimm.videollm.groups import TokenGroup
from omnimm.vision.preprocess import HALF, ImageTransform

_ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}


class TinyViT(nn.Module):
    """Patch embedding, a CLS token, learned positions and pre-norm transformer layers.

    `forward(images [B, C, H, W]) -> tokens [B, 1 + N, dim]` with the CLS token first (`token_groups` says so:
    `cls` then `patches`); `preprocess` turns uint8 RGB frames into its input (squashed to `image_size`, scaled to
    [-1, 1]).
    """

    def __init__(self, config: TinyViTConfig) -> None:
        super().__init__()
        self.config = config
        self.out_dim = config.dim
        grid = config.image_size // config.patch_size
        self.num_patches = grid * grid
        self.patch_embed = nn.Conv2d(config.in_channels, config.dim, config.patch_size, stride=config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.num_patches, config.dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        layer = nn.TransformerEncoderLayer(
            config.dim,
            config.heads,
            int(config.dim * config.mlp_ratio),
            config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, config.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.dim)
        self.image_size = config.image_size
        self.preprocess = ImageTransform(config.image_size, mean=HALF, std=HALF, resize="squash")
        self.token_groups = {
            "cls": TokenGroup(1, config.dim, "CLS token"),
            "patches": TokenGroup(self.num_patches, config.dim, f"{grid}x{grid} patch tokens"),
        }

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size, channels = self.config.image_size, self.config.in_channels
        if images.ndim != 4 or tuple(images.shape[1:]) != (channels, size, size):
            raise ValueError(
                f"encoder 'omnimm/tiny-vit' expects images of shape [batch, {channels}, {size}, {size}], "
                f"got {list(images.shape)}"
            )
        tokens = self.patch_embed(images).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1) + self.pos_embed
        return self.norm(self.blocks(tokens))


def _width(field: str, configured: int | None, given: int | None, who: str, role: str) -> int:
    if configured is None and given is None:
        raise ValueError(f"{who}: {field} is not set and nothing around it provides the width; set {field}")
    if configured is not None and given is not None and configured != given:
        raise ValueError(
            f"{who}: {field} is {configured} but {role} {given} features; set {field}: {given} or leave it unset"
        )
    return configured if configured is not None else given  # type: ignore[return-value]


class MLPProjector(nn.Module):
    """`depth` linear layers with an activation between them: `[..., in_dim] -> [..., out_dim]`."""

    def __init__(self, config: MLPConfig, *, in_dim: int | None = None, out_dim: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.in_dim = _width("in_dim", config.in_dim, in_dim, "adapter 'omnimm/mlp'", "its input has")
        self.out_dim = _width("out_dim", config.out_dim, out_dim, "adapter 'omnimm/mlp'", "the model expects")
        hidden = config.hidden_dim or self.out_dim
        widths = [self.in_dim, *([hidden] * (config.depth - 1)), self.out_dim]
        layers: list[nn.Module] = [nn.LayerNorm(self.in_dim)] if config.norm else []
        for index, (width_in, width_out) in enumerate(pairwise(widths)):
            layers.append(nn.Linear(width_in, width_out))
            if index < config.depth - 1:
                layers.append(_ACTIVATIONS[config.activation]())
                if config.dropout:
                    layers.append(nn.Dropout(config.dropout))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.shape[-1] != self.in_dim:
            raise ValueError(
                f"adapter 'omnimm/mlp' expects features of width {self.in_dim} in the last axis, "
                f"got shape {list(features.shape)}"
            )
        return self.layers(features)


class ConcatFuser(nn.Module):
    """Concatenates `[..., N_i, D_i]` features along tokens (equal D) or features (equal N)."""

    def __init__(self, config: ConcatConfig, *, in_dims: Sequence[int] | None = None) -> None:
        super().__init__()
        self.config = config
        self.out_dim: int | None = None
        if in_dims:
            if config.axis == "tokens" and len(set(in_dims)) > 1:
                raise ValueError(
                    f"fuser 'omnimm/concat' with axis 'tokens' needs inputs of one width, got widths {list(in_dims)}; "
                    f"use axis: features, or put an adapter behind each encoder"
                )
            self.out_dim = in_dims[0] if config.axis == "tokens" else sum(in_dims)

    def tokens_out(self, tokens_in: Sequence[int]) -> int:
        """Tokens per item after fusion, given each input's token count."""
        return sum(tokens_in) if self.config.axis == "tokens" else tokens_in[0]

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        if not features:
            raise ValueError("fuser 'omnimm/concat' got no inputs")
        axis = -2 if self.config.axis == "tokens" else -1
        keep = -1 if axis == -2 else -2  # the axis that must agree
        shapes = [list(f.shape) for f in features]
        same_rest = len({(*s[:-2], s[keep]) for s in shapes}) == 1
        if any(f.ndim < 3 for f in features) or not same_rest:
            what = "width" if axis == -2 else "length"
            raise ValueError(
                f"fuser 'omnimm/concat' ({self.config.axis}) needs [..., tokens, width] inputs of equal {what}, "
                f"got shapes {shapes}"
            )
        return torch.cat(list(features), dim=axis)


def _as_sequence(output: torch.Tensor | Mapping[str, torch.Tensor]) -> torch.Tensor:
    """An encoder's tokens as one sequence: named groups (`{"cls": ..., "patches": ...}`) joined in order."""
    if isinstance(output, Mapping):
        return torch.cat([tokens for name, tokens in output.items() if name != "mask"], dim=1)
    return output


class MultimodalEncoder(nn.Module):
    """Runs one encoder per named input, fuses their tokens, and projects them.

    `forward({"image": tensor, ...}) -> [B, N, out_dim]`. Parts named in `freeze` have `requires_grad=False`.
    """

    def __init__(self, config: MultimodalEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.encoders = nn.ModuleDict({key: encoders.build(cfg) for key, cfg in config.encoders.items()})
        widths = [int(getattr(encoder, "out_dim", 0)) or None for encoder in self.encoders.values()]
        self.fuser = fusers.build(config.fuser, in_dims=widths) if config.fuser is not None else None
        width = getattr(self.fuser, "out_dim", None) if self.fuser is not None else widths[0]
        self.adapter = adapters.build(config.adapter, in_dim=width) if config.adapter is not None else None
        self.out_dim = getattr(self.adapter, "out_dim", None) if self.adapter is not None else width
        self._freeze(config.freeze)

    def parts(self) -> dict[str, nn.Module]:
        """Named parts, as `freeze` names them."""
        found: dict[str, nn.Module] = {"encoders": self.encoders}
        found.update({f"encoders.{key}": module for key, module in self.encoders.items()})
        if self.fuser is not None:
            found["fuser"] = self.fuser
        if self.adapter is not None:
            found["adapter"] = self.adapter
        return found

    def _freeze(self, patterns: Sequence[str]) -> None:
        parts = self.parts()
        for pattern in patterns:
            for name in fnmatch.filter(parts, pattern):
                parts[name].requires_grad_(False)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        missing = [key for key in self.encoders if key not in inputs]
        if missing:
            raise ValueError(
                f"model 'omnimm/multimodal-encoder' is missing input(s) {missing}; "
                f"it takes {list(self.encoders)}, got {list(inputs)}"
            )
        features = [_as_sequence(encoder(inputs[key])) for key, encoder in self.encoders.items()]
        tokens = self.fuser(features) if self.fuser is not None else features[0]
        return self.adapter(tokens) if self.adapter is not None else tokens
