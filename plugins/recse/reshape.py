"""`recse/reshape`: the token-interaction matrix of a sentence and the tower that turns it into a second view.

For token features `x` (`[batch, n, d]`) and their mask, `interaction_matrix` builds `G = x x^T` (scaled by
`1/sqrt(d)`, entries passed through a sign-preserving square root, rows normalised, padding zeroed): row `i` says how
token `i` relates to every other token, i.e. that token's global information. A tower embeds `G`:

- `cnn`: `G` as a one-channel pseudo-image (padded to `max_length x max_length`) through two 3x3 convolutions, an
  adaptive average pool and a linear projection (the second tower of MCSE-style multi-view training);
- `aggregate`: `softmax(G) x`, each token re-mixed by its interaction row, mean-pooled over the tokens and projected.

With `shuffle` (a control) each sentence's entries are permuted at random before the tower.

The view costs one small tower, not another pass through the encoder: it reuses the features of the first view.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from omnimm_plugins.recse.configs import ReshapeConfig


def interaction_matrix(features: torch.Tensor, mask: torch.Tensor, config: ReshapeConfig) -> torch.Tensor:
    """`[batch, n, n]` token interactions; symmetric before row normalisation; zero on padding rows and columns."""
    if features.dim() != 3:
        raise ValueError(f"token features: expected [batch, tokens, dim], got {list(features.shape)}")
    if mask.shape != features.shape[:2]:
        raise ValueError(f"mask: expected {list(features.shape[:2])}, got {list(mask.shape)}")
    valid = mask.to(features.dtype)
    pair = valid.unsqueeze(2) * valid.unsqueeze(1)
    matrix = features @ features.transpose(1, 2)
    if config.scale:
        matrix = matrix / math.sqrt(features.shape[-1])
    if config.signed_sqrt:
        matrix = torch.sign(matrix) * torch.sqrt(matrix.abs() + 1e-8)
    if config.normalize == "row-l2":
        matrix = nn.functional.normalize(matrix * pair, dim=-1)
    elif config.normalize == "softmax":
        matrix = torch.softmax(matrix.masked_fill(pair == 0, float("-inf")), dim=-1).nan_to_num(0.0)
    return matrix * pair


def shuffle_entries(matrix: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each sentence's `n x n` block of real-token entries permuted at random (padding stays zero): the control view."""
    shuffled = matrix.clone()
    for row, length in enumerate(mask.sum(dim=1).tolist()):
        block = matrix[row, :length, :length].reshape(-1)
        order = torch.randperm(block.numel(), generator=generator).to(matrix.device)
        shuffled[row, :length, :length] = block[order].view(length, length)
    return shuffled


class ReshapeView(nn.Module):
    """Token features + mask -> one view embedding per sentence (`[batch, out_dim]`)."""

    def __init__(self, config: ReshapeConfig, *, hidden_size: int) -> None:
        super().__init__()
        self.config = config
        out_dim = config.out_dim or hidden_size
        self.out_dim = out_dim
        if config.tower == "cnn":
            self.tower = nn.Sequential(
                nn.Conv2d(1, config.channels, kernel_size=3, padding=1),
                nn.GELU(),
                nn.Conv2d(config.channels, config.channels, kernel_size=3, padding=1),
                nn.GELU(),
                nn.AdaptiveAvgPool2d(config.pool),
                nn.Flatten(),
                nn.Linear(config.channels * config.pool * config.pool, out_dim),
            )
        else:
            self.tower = nn.Linear(hidden_size, out_dim)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        length = features.shape[1]
        if length > self.config.max_length:
            raise ValueError(f"{length} tokens exceed reshape.max_length ({self.config.max_length})")
        if self.config.tower == "aggregate":
            weights = interaction_matrix(features, mask, self.config.model_copy(update={"normalize": "softmax"}))
            if self.config.shuffle:
                weights = shuffle_entries(weights, mask)
            mixed = weights @ features
            valid = mask.to(features.dtype).unsqueeze(-1)
            pooled = (mixed * valid).sum(1) / valid.sum(1).clamp(min=1)
            return self.tower(pooled)
        matrix = interaction_matrix(features, mask, self.config)
        if self.config.shuffle:
            matrix = shuffle_entries(matrix, mask)
        pad = self.config.max_length - length
        image = nn.functional.pad(matrix, (0, pad, 0, pad)).unsqueeze(1)
        return self.tower(image)
