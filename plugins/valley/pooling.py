"""Temporal pooling adapters: `[B, T, 1+N, D]` frame tokens (CLS first) -> `[B, K, D]` visual tokens."""

from __future__ import annotations

import torch
from torch import nn

from omnimm_plugins.valley.configs import STPoolConfig, VCGPTPoolConfig


def _check(tokens: torch.Tensor, who: str) -> None:
    if tokens.ndim != 4:
        raise ValueError(
            f"adapter '{who}' expects frame tokens [batch, frames, 1 + patches, dim], got {list(tokens.shape)}"
        )


class SpatioTemporalPool(nn.Module):
    """Valley's pooling. With `x[t, 0]` the CLS token and `x[t, j]` patch `j` of frame `t`:

    - v1: `p_j = mean_t x[t, j]` (or max);
    - v2: `p_j = sum_t a_t x[t, j]` with `a = softmax_t(w . flatten(x[t, 1:]))`;
    - v3: `p_j = mean_t x[t, j] + W_o mean_t TL(x[1..T, j] + e_t)`, a one-layer transformer over time per patch
      position with learned time embeddings `e_t`; `W_o` starts at zero, so v3 starts as v1;

    then `[p_1 .. p_N, x[1, 0] .. x[T, 0]]`: N + T tokens (N without the temporal tokens).
    """

    def __init__(self, config: STPoolConfig, *, dim: int, num_patches: int) -> None:
        super().__init__()
        self.config = config
        self.dim = dim
        self.out_dim = dim
        self.num_patches = num_patches
        if config.variant == "v2":
            self.importance = nn.Linear(dim * num_patches, 1)
        elif config.variant == "v3":
            if dim % config.heads:
                raise ValueError(f"adapter 'valley/stpool' v3: heads ({config.heads}) must divide the width ({dim})")
            self.time_embedding = nn.Parameter(torch.zeros(config.max_frames, dim))
            nn.init.trunc_normal_(self.time_embedding, std=0.02)
            self.temporal = nn.TransformerEncoderLayer(
                dim, config.heads, 4 * dim, 0.0, batch_first=True, norm_first=True
            )
            self.out = nn.Linear(dim, dim)
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def num_tokens(self, frames: int, patches: int) -> int:
        return patches + (frames if self.config.temporal_tokens else 0)

    def _importance_pool(self, tokens: torch.Tensor) -> torch.Tensor:
        # Work on the contiguous [B, T, (1+N) D] view: two batched matrix-vector products, no copy of the patches
        # and no [B, T, N, D] product tensor (the CLS slot gets a zero weight and is dropped at the end).
        batch, frames, width, dim = tokens.shape
        flat = tokens.reshape(batch, frames, width * dim)
        weight = torch.cat([self.importance.weight.new_zeros(1, dim), self.importance.weight.view(-1, dim)]).view(-1)
        scores = (flat @ weight.to(flat.dtype) + self.importance.bias).softmax(dim=1)  # [B, T]
        pooled = torch.bmm(scores.unsqueeze(1).to(flat.dtype), flat).view(batch, width, dim)
        return pooled[:, 1:]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        _check(tokens, "valley/stpool")
        batch, frames, _, dim = tokens.shape
        cls, patches = tokens[:, :, 0], tokens[:, :, 1:]
        variant = self.config.variant
        if variant == "v1" and self.config.reduce == "max":
            pooled = patches.max(dim=1).values
        elif variant == "v2":
            pooled = self._importance_pool(tokens)
        else:
            pooled = patches.mean(dim=1)
        if variant == "v3":
            if frames > self.config.max_frames:
                raise ValueError(
                    f"adapter 'valley/stpool' v3 covers up to {self.config.max_frames} frames, got {frames}"
                )
            per_position = patches.permute(0, 2, 1, 3).reshape(-1, frames, dim) + self.time_embedding[:frames]
            temporal = self.temporal(per_position).mean(dim=1).reshape(batch, -1, dim)
            pooled = pooled + self.out(temporal)
        if not self.config.temporal_tokens:
            return pooled
        return torch.cat([pooled, cls], dim=1)


class VideoChatGPTPool(nn.Module):
    """Video-ChatGPT's pooling: `[mean_j x[1, j] .. mean_j x[T, j], mean_t x[t, 1] .. mean_t x[t, N]]`, T + N tokens."""

    def __init__(self, config: VCGPTPoolConfig, *, dim: int, num_patches: int) -> None:
        super().__init__()
        self.config = config
        self.out_dim = dim
        self.num_patches = num_patches

    def num_tokens(self, frames: int, patches: int) -> int:
        return frames + patches + (0 if self.config.drop_cls else 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        _check(tokens, "valley/vcgpt-pool")
        features = tokens[:, :, 1:] if self.config.drop_cls else tokens
        temporal = features.mean(dim=2)  # [B, T, D]
        spatial = features.mean(dim=1)  # [B, N, D]
        return torch.cat([temporal, spatial], dim=1)
