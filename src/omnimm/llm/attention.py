"""Attention kernels for transformers models: torch SDPA everywhere, xformers on CUDA.

`register_xformers()` adds an `xformers` implementation to transformers' `AttentionInterface`, so any model that
supports custom attention can use it (`attn_implementation="xformers"`). On the CPU, where xformers has no kernels,
the same implementation runs torch SDPA, so a config that asks for xformers still runs everywhere.
"""

from __future__ import annotations

from typing import Any

import torch

from omnimm.deps import is_available, missing_dependency

XFORMERS = "xformers"


def resolve_attention(requested: str) -> str:
    """The transformers `attn_implementation` for a config's `attention` value."""
    if requested == "auto":
        requested = XFORMERS if torch.cuda.is_available() and is_available("xformers") else "sdpa"
    if requested == XFORMERS:
        if torch.cuda.is_available() and not is_available("xformers"):
            raise missing_dependency("xformers", extra="gpu", purpose="attention: xformers on CUDA")
        register_xformers()
    return requested


def mask_to_bias(mask: torch.Tensor, heads: int, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask `[B, 1|H, Q, K]` (True = attend) -> an additive bias `[B, H, Q, K]` for xformers.

    The bias is allocated with its last axis padded to a multiple of 8 and sliced back, the alignment xformers'
    kernels require. Masked positions get the dtype's lowest value rather than -inf, so a fully masked row (a
    padding query) yields zeros instead of NaN.
    """
    batch, _, queries, keys = mask.shape
    padded = (keys + 7) // 8 * 8
    bias = torch.zeros(batch, heads, queries, padded, dtype=dtype, device=mask.device)[..., :keys]
    bias.masked_fill_(~mask.expand(batch, heads, queries, keys), torch.finfo(dtype).min)
    return bias


def xformers_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function backed by `xformers.ops.memory_efficient_attention`.

    Takes `[B, H, L, D]` query/key/value like every transformers attention function and returns `[B, L, H, D]`.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not query.is_cuda:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    from xformers import ops as xops

    heads = query.shape[1]
    if key.shape[1] != heads:  # grouped-query attention: share each key/value head across its query heads
        repeat = heads // key.shape[1]
        key = key.repeat_interleave(repeat, dim=1)
        value = value.repeat_interleave(repeat, dim=1)
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))
    if attention_mask is not None:
        bias: Any = mask_to_bias(attention_mask.bool(), heads, q.dtype)
    elif (is_causal if is_causal is not None else getattr(module, "is_causal", True)) and q.shape[1] > 1:
        bias = xops.LowerTriangularFromBottomRightMask()
    else:
        bias = None
    out = xops.memory_efficient_attention(q, k, v, attn_bias=bias, p=dropout if module.training else 0.0, scale=scaling)
    return out, None


_registered = False


def register_xformers() -> None:
    """Register `xformers` with transformers' attention and mask interfaces (once)."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(XFORMERS, xformers_attention_forward)
    AttentionMaskInterface.register(XFORMERS, sdpa_mask)  # boolean masks, None when purely causal
    _registered = True
