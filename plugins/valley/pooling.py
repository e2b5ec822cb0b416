"""Valley's connectors: frame tokens of a clip -> pooled visual tokens in the LLM's width.

`valley/stpool` reads two token groups of an encoder, the patches `[B, T, N, d]` and the CLS tokens `[B, T, 1, d]`,
and gives `N + T` tokens; `valley/vcgpt-pool` gives Video-ChatGPT's `T + N`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from omnimm.registry import adapters
from omnimm.videollm.connector import Connector
from omnimm.videollm.groups import ConnectorOutput, TokenGroup
from omnimm_plugins.valley.configs import STPoolConfig, VCGPTPoolConfig


def _check(tokens: torch.Tensor, who: str, what: str) -> None:
    if tokens.ndim != 4:
        raise ValueError(
            f"connector '{who}' expects {what} tokens [batch, frames, tokens, dim], got {list(tokens.shape)}"
        )


class TemporalPool(nn.Module):
    """Pools patch tokens over time. With `x[t, j]` patch `j` of frame `t`:

    - v1: `p_j = mean_t x[t, j]` (or max);
    - v2: `p_j = sum_t a_t x[t, j]` with `a = softmax_t(w . flatten(x[t]))` (Valley's importance pooling);
    - v3 (Valley's): `p_j = mean_t x[t, j] + TL(x[1..T, j] + s_t)[T]`, a one-layer post-norm transformer over time
      per patch position with fixed sinusoidal time positions `s_t`, read out at the last time step;
    - v3-zero: `p_j = mean_t x[t, j] + W_o mean_t TL(x[1..T, j] + e_t)` with learned time embeddings `e_t`, a
      pre-norm layer and `W_o` starting at zero, so it starts as v1.
    """

    def __init__(self, config: STPoolConfig, *, dim: int, num_patches: int) -> None:
        super().__init__()
        self.config = config
        self.dim = dim
        self.num_patches = num_patches
        variant = config.variant
        if variant == "v2":
            self.importance = nn.Linear(dim * num_patches, 1)
        elif variant in ("v3", "v3-zero"):
            valley = variant == "v3"
            heads = config.heads or (8 if valley else 4)
            if dim % heads:
                raise ValueError(
                    f"connector 'valley/stpool' {variant}: heads ({heads}) must divide the pooled width ({dim})"
                )
            feed_forward = config.ff_dim or (2048 if valley else 4 * dim)
            dropout = config.dropout if config.dropout is not None else (0.1 if valley else 0.0)
            if valley:
                self.register_buffer("time_positions", sinusoidal_positions(config.max_frames, dim), persistent=False)
            else:
                self.time_embedding = nn.Parameter(torch.zeros(config.max_frames, dim))
                nn.init.trunc_normal_(self.time_embedding, std=0.02)
            self.temporal = nn.TransformerEncoderLayer(
                dim, heads, feed_forward, dropout, batch_first=True, norm_first=not valley
            )
            if not valley:
                self.out = nn.Linear(dim, dim)
                nn.init.zeros_(self.out.weight)
                nn.init.zeros_(self.out.bias)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """`[B, T, N, D]` -> `[B, N, D]`."""
        variant = self.config.variant
        if variant == "v1" and self.config.reduce == "max":
            return patches.max(dim=1).values
        if variant == "v2":
            return self._importance_pool(patches)
        pooled = patches.mean(dim=1)
        if variant in ("v3", "v3-zero"):
            pooled = pooled + self._temporal(patches)
        return pooled

    def _importance_pool(self, patches: torch.Tensor) -> torch.Tensor:
        # Two batched matrix-vector products on the contiguous [B, T, N * D] view: no [B, T, N, D] product tensor.
        batch, frames, count, dim = patches.shape
        flat = patches.reshape(batch, frames, count * dim)
        scores = (flat @ self.importance.weight.view(-1).to(flat.dtype) + self.importance.bias).softmax(dim=1)
        return torch.bmm(scores.unsqueeze(1).to(flat.dtype), flat).view(batch, count, dim)

    def _temporal(self, patches: torch.Tensor) -> torch.Tensor:
        batch, frames, count, dim = patches.shape
        if frames > self.config.max_frames:
            raise ValueError(
                f"connector 'valley/stpool' {self.config.variant} covers up to {self.config.max_frames} frames "
                f"(max_frames), got {frames}"
            )
        per_position = patches.permute(0, 2, 1, 3).reshape(-1, frames, dim)  # one sequence over time per patch
        if self.config.variant == "v3":
            encoded = self.temporal(per_position + self.time_positions[:frames].to(per_position.dtype))
            return encoded[:, -1].reshape(batch, count, dim)
        encoded = self.temporal(per_position + self.time_embedding[:frames])
        return self.out(encoded.mean(dim=1).reshape(batch, count, dim))


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """The transformer's fixed positions: `sin` on even channels, `cos` on odd ones, wavelengths up to 10000."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    rates = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * rates)
    table[:, 1::2] = torch.cos(position * rates)[:, : dim // 2]
    return table


class _PatchAndCLSConnector(Connector):
    """Shared set-up: one patch group and one single-token CLS group of the same width, and a projector."""

    def __init__(self, config: STPoolConfig | VCGPTPoolConfig, *, inputs: Mapping[str, TokenGroup], out_dim: int):
        super().__init__(config, inputs=inputs, out_dim=out_dim)
        self.patches_ref = self._single(config.patches, "patches")
        self.cls_ref = self._single(config.cls, "cls")
        patches, cls = self.inputs[self.patches_ref], self.inputs[self.cls_ref]
        if cls.tokens != 1:
            raise ValueError(
                f"connector '{config.name}': cls '{self.cls_ref}' has {cls.tokens} tokens per frame; "
                f"it needs one (a CLS token)"
            )
        if cls.dim != patches.dim:
            raise ValueError(
                f"connector '{config.name}': '{self.patches_ref}' is {patches.dim} wide but '{self.cls_ref}' "
                f"{cls.dim}; take both groups from one encoder"
            )
        self.num_patches = patches.tokens
        self.projector = adapters.build(config.projector, in_dim=patches.dim, out_dim=out_dim)
        self.pool_width = out_dim if config.project_first else patches.dim

    def _single(self, pattern: str, field: str) -> str:
        chosen = self.select(pattern, field)
        if len(chosen) != 1:
            raise ValueError(f"connector '{self.config.name}': {field} '{pattern}' must name one group, got {chosen}")
        return chosen[0]

    def _inputs(self, groups: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        patches, cls = groups[self.patches_ref], groups[self.cls_ref]
        _check(patches, self.config.name or "", "patch")
        _check(cls, self.config.name or "", "CLS")
        if self.config.project_first:
            patches, cls = self.projector(patches), self.projector(cls)
        return patches, cls[:, :, 0]

    def _out(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens if self.config.project_first else self.projector(tokens)


class SpatioTemporalPool(_PatchAndCLSConnector):
    """`valley/stpool`: `[p_1 .. p_N, cls_1 .. cls_T]` (see `TemporalPool` for `p_j`), N + T tokens (N without the
    temporal tokens), as one output group `video` or, with `split`, two: `patches` and `temporal`."""

    config: STPoolConfig

    def __init__(self, config: STPoolConfig, *, inputs: Mapping[str, TokenGroup], out_dim: int) -> None:
        super().__init__(config, inputs=inputs, out_dim=out_dim)
        self.pool = TemporalPool(config, dim=self.pool_width, num_patches=self.num_patches)

    def output_groups(self, frames: int) -> dict[str, TokenGroup]:
        patches = TokenGroup(self.num_patches, self.out_dim, "patch tokens pooled over time")
        temporal = TokenGroup(frames, self.out_dim, "one CLS token per frame")
        if not self.config.temporal_tokens:
            return {"patches" if self.config.split else "video": patches}
        if self.config.split:
            return {"patches": patches, "temporal": temporal}
        return {"video": TokenGroup(self.num_patches + frames, self.out_dim, "pooled patches, then temporal tokens")}

    def forward(
        self, groups: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None = None
    ) -> ConnectorOutput:
        patches, cls = self._inputs(groups)
        pooled = self._out(self.pool(patches))
        if not self.config.temporal_tokens:
            return ConnectorOutput({"patches" if self.config.split else "video": pooled})
        temporal = self._out(cls)
        if self.config.split:
            return ConnectorOutput({"patches": pooled, "temporal": temporal})
        return ConnectorOutput({"video": torch.cat([pooled, temporal], dim=1)})


class VideoChatGPTPool(_PatchAndCLSConnector):
    """`valley/vcgpt-pool`: `[mean_j x[1, j] .. mean_j x[T, j], mean_t x[t, 1] .. mean_t x[t, N]]`, T + N tokens
    (T + N + 1 with the CLS token pooled as a position too)."""

    config: VCGPTPoolConfig

    def output_groups(self, frames: int) -> dict[str, TokenGroup]:
        spatial = self.num_patches + (0 if self.config.drop_cls else 1)
        return {"video": TokenGroup(frames + spatial, self.out_dim, "temporal means, then spatial means")}

    def forward(
        self, groups: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None = None
    ) -> ConnectorOutput:
        patches, cls = self._inputs(groups)
        features = patches if self.config.drop_cls else torch.cat([cls[:, :, None], patches], dim=2)
        temporal = features.mean(dim=2)  # [B, T, D]
        spatial = features.mean(dim=1)  # [B, N, D]
        return ConnectorOutput({"video": self._out(torch.cat([temporal, spatial], dim=1))})
