"""Attention kernels for transformers models: torch SDPA everywhere, xformers on CUDA.

`register_xformers()` adds an `xformers` implementation to transformers' `AttentionInterface`, so any model that
supports custom attention can use it (`attn_implementation="xformers"`). On the CPU, where xformers has no kernels,
the same implementation runs torch SDPA, so a config that asks for xformers still runs everywhere.

On CUDA the implementation follows transformers' `sdpa_attention_forward` case by case, with
`xformers.ops.memory_efficient_attention` as the kernel:

- masks: transformers' `sdpa_mask` convention (registered for `xformers` too). A boolean mask (True = attend) becomes
  an additive bias, a float mask is already one. No mask means causal when SDPA would pass `is_causal=True`
  (the module or caller asks for it and there is more than one query), and then with SDPA's top-left alignment:
  query i sees keys 0..i. That is what a static-cache prefill needs, where the keys beyond the queries are empty
  cache slots; like SDPA, those keys are cropped first. One query (decoding) or a non-causal module: no bias.
- dtypes: xformers refuses mixed query/key/value dtypes. Under autocast all three are cast to the autocast dtype,
  the output comes back in it, as SDPA does under autocast; otherwise they are cast to the value's dtype (the dtype
  of the value projection, hence of the module's weights), which is also the output's.
- grouped-query attention: without gradients, xformers' 5-D `[B, M, G, H, K]` layout shares each key/value head
  across its query heads with no copy; when gradients are needed (xformers' backward kernels do not take the 5-D
  layout) the key/value heads are repeated.
- dropout: applied with probability `dropout` in training only.
- query rows that see no key (padding queries: all False, or all -inf in a float mask) give zeros, as with SDPA.

`_xformers_call` holds all of this as a pure function of its inputs and a kernel taking xformers' layout, so the
same code runs on the CPU against a reference kernel.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

import torch

from omnimm.deps import is_available, missing_dependency

XFORMERS = "xformers"


class Causal(enum.Enum):
    """A causal mask the kernel builds itself (no tensor): xformers' `LowerTriangularMask` family.

    With `Mq` queries and `Mk` keys, query `i` may attend key `j` when
    - `TOP_LEFT`: `j <= i` (`xops.LowerTriangularMask`, SDPA's `is_causal=True`);
    - `BOTTOM_RIGHT`: `j <= i + Mk - Mq` (`xops.fmha.attn_bias.LowerTriangularFromBottomRightMask`).
    The two agree when `Mq == Mk`.
    """

    TOP_LEFT = "top-left"
    BOTTOM_RIGHT = "bottom-right"


AttentionBias = torch.Tensor | Causal | None
# kernel(query, key, value, attn_bias, p, scale) -> output, in xformers' layout: `[B, M, H, K]` tensors (or the 5-D
# `[B, M, G, H, K]` for grouped-query attention), a bias of shape `[B, H, Mq, Mk]` (`[B, G, H, Mq, Mk]`), output
# `[B, Mq, H, Kv]` (`[B, Mq, G, H, Kv]`).
Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, AttentionBias, float, float | None], torch.Tensor]


def resolve_attention(requested: str) -> str:
    """The transformers `attn_implementation` for a config's `attention` value."""
    if requested == "auto":
        requested = XFORMERS if torch.cuda.is_available() and is_available("xformers") else "sdpa"
    if requested == XFORMERS:
        if torch.cuda.is_available() and not is_available("xformers"):
            raise missing_dependency("xformers", extra="gpu", purpose="attention: xformers on CUDA")
        register_xformers()
    return requested


def mask_to_bias(
    mask: torch.Tensor, heads: int, dtype: torch.dtype, batch: int | None = None, groups: int | None = None
) -> torch.Tensor:
    """An attention mask `[B|1, 1|H, Q, K]` -> an additive bias `[batch, heads, Q, K]` for xformers, or with
    `groups` (query heads per key/value head) `[batch, heads // groups, groups, Q, K]` for its 5-D layout.

    A boolean mask (True = attend) gets 0 where it attends and the dtype's lowest value elsewhere (finite, so a
    fully masked row cannot turn into NaN); a float mask is taken as an additive bias already (clamped to the
    dtype's range). The bias is allocated once per distinct batch/head entry of the mask, with its last axis padded
    to a multiple of 8 and sliced back, so that every stride but the last is a multiple of 8 elements (the alignment
    xformers' kernels require, checked on every axis), then expanded (a view, no copy) to `batch` (default: the
    mask's) and the heads.
    """
    batch = mask.shape[0] if batch is None else batch
    queries, keys = mask.shape[-2:]
    if groups is None:
        shape: tuple[int, ...] = (batch, heads, queries, keys)
    else:
        mask = mask.unflatten(1, (heads // groups, groups)) if mask.shape[1] == heads else mask.unsqueeze(1)
        shape = (batch, heads // groups, groups, queries, keys)
    padded = (keys + 7) // 8 * 8
    bias = torch.zeros(*mask.shape[:-1], padded, dtype=dtype, device=mask.device)[..., :keys]
    lowest = torch.finfo(dtype).min
    if mask.dtype == torch.bool:
        bias.masked_fill_(~mask, lowest)
    else:
        bias.copy_(mask.clamp(min=max(lowest, torch.finfo(mask.dtype).min)))  # -inf/overflow -> lowest
    return bias.expand(shape)


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype in effect for `device_type`, or None outside autocast."""
    try:
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
        return None
    except TypeError:  # torch < 2.4: no device-generic autocast queries
        if device_type == "cuda" and torch.is_autocast_enabled():
            return torch.get_autocast_gpu_dtype()
        if device_type == "cpu" and torch.is_autocast_cpu_enabled():
            return torch.get_autocast_cpu_dtype()
        return None


def _add_position_bias(
    position_bias: torch.Tensor, mask: torch.Tensor | None, causal: bool, queries: int, keys: int
) -> torch.Tensor:
    """One additive float mask from a position bias and the mask or causality (as SDPA's `position_bias`)."""
    lowest = torch.finfo(position_bias.dtype).min
    if mask is None:
        if not causal:
            return position_bias
        positions = torch.arange(max(queries, keys), device=position_bias.device)
        mask = positions[:queries, None] >= positions[None, :keys]
    if mask.dtype == torch.bool:
        return torch.where(mask, position_bias, lowest)
    return position_bias + mask


def _xformers_call(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    dropout: float,
    scaling: float | None,
    is_causal: bool | None,
    module: torch.nn.Module,
    kernel: Kernel,
    position_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """transformers' attention call (`[B, H, L, D]` query/key/value, `sdpa_mask` masks) -> `[B, L, H, D]` output,
    through `kernel` in xformers' layout. See the module docstring for the rules; they follow
    `transformers.integrations.sdpa_attention.sdpa_attention_forward` case by case."""
    batch, heads, queries, _ = query.shape
    kv_heads = key.shape[1]
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads cannot share {kv_heads} key/value heads")
    groups = heads // kv_heads

    dtype = _autocast_dtype(query.device.type) or value.dtype
    query, key, value = (t.to(dtype) for t in (query, key, value))

    # Causal exactly when SDPA passes `is_causal=True`: asked for (the caller, else the module), no mask, and more
    # than one query. SDPA's causal mask is top-left aligned; keys beyond the queries (a static cache's empty slots
    # at prefill) are never attended, and are cropped as SDPA does.
    causal = (is_causal if is_causal is not None else getattr(module, "is_causal", True)) and mask is None
    causal = causal and queries > 1
    if causal and key.shape[2] > queries:
        key, value = key[:, :, :queries], value[:, :, :queries]
        if position_bias is not None:
            position_bias = position_bias[..., :queries]
    keys = key.shape[2]

    zero_rows = None
    if position_bias is not None:
        mask, causal = _add_position_bias(position_bias, mask, causal, queries, keys), False
    elif mask is not None:  # [B|1, 1|H, Q]: queries that see no key get zeros, as with SDPA
        zero_rows = ~mask.any(dim=-1) if mask.dtype == torch.bool else torch.isneginf(mask).all(dim=-1)
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # [B, M, H, K], last axis contiguous
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    five_d = groups > 1 and not needs_grad

    bias: AttentionBias = None
    if mask is not None:
        bias = mask_to_bias(mask, heads, dtype, batch=batch, groups=groups if five_d else None)
    elif causal:
        bias = Causal.TOP_LEFT

    if five_d:  # [B, M, G, H, K]: query heads g*groups .. (g+1)*groups-1 share key/value head g
        q = q.unflatten(2, (kv_heads, groups))
        k, v = (t.unsqueeze(3).expand(-1, -1, -1, groups, -1) for t in (k, v))
    elif groups > 1:
        k, v = (t.repeat_interleave(groups, dim=2) for t in (k, v))

    p = dropout if getattr(module, "training", True) else 0.0
    out = kernel(q, k, v, bias, p, scaling)
    if five_d:
        out = out.flatten(2, 3)
    if zero_rows is not None:
        out = out.masked_fill(zero_rows.transpose(1, 2).unsqueeze(-1), 0)
    return out.contiguous()


def _xformers_kernel(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_bias: AttentionBias,
    p: float,
    scale: float | None,
) -> torch.Tensor:
    """`xformers.ops.memory_efficient_attention`, with `Causal` markers mapped to xformers' bias classes."""
    from xformers import ops as xops

    bias: Any = attn_bias
    if attn_bias is Causal.TOP_LEFT:
        bias = xops.LowerTriangularMask()
    elif attn_bias is Causal.BOTTOM_RIGHT:
        from xformers.ops.fmha.attn_bias import LowerTriangularFromBottomRightMask

        bias = LowerTriangularFromBottomRightMask()
    return xops.memory_efficient_attention(query, key, value, attn_bias=bias, p=p, scale=scale)


def _runs_xformers(query: torch.Tensor) -> bool:
    """Whether xformers' kernels run for these tensors (CUDA only; elsewhere the implementation is SDPA)."""
    return query.is_cuda


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

    if not _runs_xformers(query):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    if kwargs.get("softcap") is not None:
        raise ValueError("`xformers` attention does not support `softcap`; use `eager` or `flex_attention`")
    out = _xformers_call(
        query,
        key,
        value,
        attention_mask,
        dropout,
        scaling,
        is_causal,
        module,
        _xformers_kernel,
        position_bias=kwargs.get("position_bias"),
    )
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
