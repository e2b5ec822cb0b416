"""The xformers attention path, checked against transformers' SDPA attention on the CPU.

xformers has no CPU kernels, so `_xformers_call` (everything the CUDA path does around the kernel: layout, masks,
dtypes, grouped-query heads, dropout) runs here with a torch reference kernel that takes xformers' layout and bias
conventions and refuses what xformers refuses. The real kernel is compared with SDPA on CUDA machines only.
"""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import eager_mask as _transformers_eager_mask
from transformers.masking_utils import sdpa_mask as _transformers_sdpa_mask

from omnimm.deps import is_available
from omnimm.llm import attention
from omnimm.llm.attention import Causal, _xformers_call, _xformers_kernel, mask_to_bias, register_xformers

HAS_XFORMERS_CUDA = torch.cuda.is_available() and is_available("xformers")


def _mask_call(function, batch_size, q_length, kv_length, q_offset=0, **options):
    """Call one of transformers' mask functions, whichever signature the installed release has (5.2 takes the
    query positions as `cache_position`, later releases a length and an offset)."""
    if "q_length" in inspect.signature(function).parameters:
        return function(batch_size, q_length, kv_length, q_offset=q_offset, **options)
    return function(batch_size, torch.arange(q_offset, q_offset + q_length), kv_length, **options)


def sdpa_mask(*args, **options):
    """transformers' boolean mask for SDPA."""
    return _mask_call(_transformers_sdpa_mask, *args, **options)


def eager_mask(*args, **options):
    """transformers' additive float mask for eager attention."""
    return _mask_call(_transformers_eager_mask, *args, **options)


SDPA_TAKES_POSITION_BIAS = "position_bias" in inspect.getsource(sdpa_attention_forward)
"""transformers 5.2's SDPA function ignores a position bias; later releases fold it into the mask."""


@dataclasses.dataclass
class Call:
    shape: tuple[int, ...]
    dtypes: tuple[torch.dtype, ...]
    bias: object
    p: float
    scale: float | None
    key_shape: tuple[int, ...]
    key_strides: tuple[int, ...]


class ReferenceKernel:
    """`xformers.ops.memory_efficient_attention` written with torch, from xformers' documentation.

    Tensors are `[B, M, H, K]`, or `[B, M, G, H, K]` for grouped-query attention; a tensor bias must have exactly
    the shape `[B, H, Mq, Mk]` (`[B, G, H, Mq, Mk]`) and every stride but the last a multiple of 128 bits. Causal
    markers: top-left (`LowerTriangularMask`) lets query i see keys j <= i, bottom-right
    (`LowerTriangularFromBottomRightMask`) keys j <= i + Mk - Mq. Mixed dtypes are refused, and so are gradients in
    the 5-D layout (xformers' backward kernels do not take it). Every call is recorded.
    """

    def __init__(self) -> None:
        self.calls: list[Call] = []

    def __call__(self, q, k, v, attn_bias, p, scale):
        if not (q.ndim == k.ndim == v.ndim and q.ndim in (4, 5)):
            raise ValueError(f"expected 4-D or 5-D query/key/value, got {q.shape}, {k.shape}, {v.shape}")
        if not q.dtype == k.dtype == v.dtype:
            raise ValueError(f"query/key/value should all have the same dtype: {q.dtype}, {k.dtype}, {v.dtype}")
        if q.ndim == 5 and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
            raise NotImplementedError("the 5-D (BMGHK) layout has no backward kernel")
        if any(t.stride(-1) != 1 for t in (q, k, v)):
            raise ValueError("the last axis must be contiguous")
        if q.shape[:1] != k.shape[:1] or k.shape[:-1] != v.shape[:-1] or q.shape[2:-1] != k.shape[2:-1]:
            raise ValueError(f"incompatible shapes (no broadcasting): {q.shape}, {k.shape}, {v.shape}")
        if isinstance(attn_bias, torch.Tensor):
            expected = (q.shape[0], *q.shape[2:-1], q.shape[1], k.shape[1])
            if attn_bias.shape != expected:
                raise ValueError(f"invalid bias shape {tuple(attn_bias.shape)}, expected {expected}")
            alignment = 128 // torch.finfo(attn_bias.dtype).bits
            if any(s % alignment for s in attn_bias.stride()[:-1]) or attn_bias.stride(-1) != 1:
                raise ValueError(f"attn_bias is not aligned: strides {attn_bias.stride()}")
        self.calls.append(
            Call(tuple(q.shape), (q.dtype, k.dtype, v.dtype), _describe(attn_bias), p, scale, k.shape, k.stride())
        )

        five_d = q.ndim == 5
        if five_d:
            groups, per_group = q.shape[2:4]
            q, k, v = (t.flatten(2, 3) for t in (q, k, v))
            if isinstance(attn_bias, torch.Tensor):
                attn_bias = attn_bias.flatten(1, 2)
        with torch.autocast(q.device.type, enabled=False):  # a custom kernel: autocast does not reach inside
            qf, kf, vf = (t.transpose(1, 2).float() for t in (q, k, v))  # [B, H, M, K]
            scores = qf @ kf.transpose(-2, -1) * (q.shape[-1] ** -0.5 if scale is None else scale)
            mq, mk = scores.shape[-2:]
            if isinstance(attn_bias, Causal):
                shift = mk - mq if attn_bias is Causal.BOTTOM_RIGHT else 0
                allowed = torch.ones(mq, mk, dtype=torch.bool, device=q.device).tril(diagonal=shift)
                scores = scores.masked_fill(~allowed, float("-inf"))
            elif attn_bias is not None:
                scores = scores + attn_bias.float()
            weights = torch.nn.functional.dropout(scores.softmax(-1), p)
            out = (weights @ vf).transpose(1, 2).to(q.dtype)  # [B, Mq, H, Kv]
        return out.unflatten(2, (groups, per_group)) if five_d else out


def _describe(bias: object) -> object:
    if isinstance(bias, torch.Tensor):
        return ("tensor", tuple(bias.shape), bias.dtype, tuple(bias.stride()))
    return bias


class Attention(torch.nn.Module):
    """What an attention function reads from its module: causality, key/value groups, training."""

    def __init__(self, groups: int = 1, is_causal: bool = True) -> None:
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = is_causal


def qkv(batch=2, heads=4, kv_heads=4, queries=7, keys=7, dim=16, dtype=torch.float32, grad=False, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shapes = [(batch, heads, queries, dim), (batch, kv_heads, keys, dim), (batch, kv_heads, keys, dim)]
    return [torch.randn(s, generator=generator).to(dtype).requires_grad_(grad) for s in shapes]


def padding(batch: int, length: int, left: int = 0, filled: int | None = None) -> torch.Tensor:
    """A 2-D padding mask: row 1 left-padded by `left`; every row filled up to `filled` (a static cache's slots)."""
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[1, :left] = False
    if filled is not None:
        mask[:, filled:] = False
    return mask


# (name, queries, keys, mask builder, is_causal): the calls transformers makes, with the masks `sdpa_mask` builds.
CASES = [
    ("causal, no mask", 7, 7, None, None),
    ("causal, is_causal=True given", 7, 7, None, True),
    ("padding mask", 7, 7, lambda b: sdpa_mask(b, 7, 7, attention_mask=padding(b, 7, left=3)), None),
    ("static-cache prefill, no mask", 5, 12, None, None),
    ("static-cache prefill, no mask, is_causal=True", 5, 12, None, True),
    (
        "static-cache prefill, padding mask",
        5,
        12,
        lambda b: sdpa_mask(b, 5, 12, attention_mask=padding(b, 12, left=2, filled=5)),
        None,
    ),
    ("decode, one query, no mask", 1, 9, None, None),
    (
        "static-cache decode, one query, mask over the filled slots",
        1,
        12,
        lambda b: sdpa_mask(b, 1, 12, q_offset=6, attention_mask=padding(b, 12, left=2, filled=7)),
        None,
    ),
    ("chunked prefill after 4 cached tokens", 3, 7, lambda b: sdpa_mask(b, 3, 7, q_offset=4), None),
    ("bidirectional, is_causal=False", 7, 7, None, False),
    (
        "float additive mask (eager_mask)",
        7,
        7,
        lambda b: eager_mask(b, 7, 7, attention_mask=padding(b, 7, left=3), dtype=torch.float32),
        None,
    ),
]
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("heads", [(4, 4), (8, 2)], ids=["MHA", "GQA-8/2"])
@pytest.mark.parametrize("grad", [False, True], ids=["no-grad", "grad"])
@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_matches_sdpa_attention_forward(case, heads, dtype, grad):
    _, queries, keys, build_mask, is_causal = case
    q, k, v = qkv(heads=heads[0], kv_heads=heads[1], queries=queries, keys=keys, dtype=dtype, grad=grad)
    mask = None if build_mask is None else build_mask(2)
    assert (mask is None) == (build_mask is None)  # the builders must really give a mask
    if mask is not None and mask.is_floating_point():
        mask = mask.to(dtype)  # float32's lowest becomes -inf in bfloat16: rows that see nothing, as SDPA reads them
    module = Attention(groups=heads[0] // heads[1]).eval()
    kernel = ReferenceKernel()
    ours = _xformers_call(q, k, v, mask, 0.0, None, is_causal, module, kernel)
    reference, _ = sdpa_attention_forward(module, q, k, v, mask, is_causal=is_causal)
    assert ours.shape == reference.shape == (2, queries, heads[0], 16) and ours.dtype == reference.dtype
    torch.testing.assert_close(ours, reference, atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])
    if grad:
        torch.manual_seed(0)
        upstream = torch.randn_like(ours)
        if mask is not None:  # what a loss that ignores padding sends back: nothing from queries that see no key
            sees_nothing = (mask.bool() if mask.dtype == torch.bool else mask > torch.finfo(dtype).min).any(-1)
            upstream = upstream * sees_nothing.transpose(1, 2).unsqueeze(-1)
        ours_grads = torch.autograd.grad(ours, (q, k, v), upstream)
        reference_grads = torch.autograd.grad(reference, (q, k, v), upstream)
        for a, b in zip(ours_grads, reference_grads, strict=True):
            torch.testing.assert_close(a, b, atol=4 * TOLERANCE[dtype], rtol=4 * TOLERANCE[dtype])
    (call,) = kernel.calls
    assert call.dtypes == (dtype,) * 3


def test_the_mask_each_case_hands_the_kernel():
    """No mask + causal -> top-left causal marker, with a static cache's empty key slots cropped; one query or a
    non-causal module -> no bias; a given mask -> a tensor bias (whatever `is_causal` says)."""

    def bias_for(queries, keys, mask=None, is_causal=None, module_causal=True):
        q, k, v = qkv(queries=queries, keys=keys)
        kernel = ReferenceKernel()
        _xformers_call(q, k, v, mask, 0.0, None, is_causal, Attention(is_causal=module_causal).eval(), kernel)
        (call,) = kernel.calls
        return call.bias, call.key_shape, call.key_strides

    assert bias_for(7, 7)[0] is Causal.TOP_LEFT
    bias, key_shape, key_strides = bias_for(5, 12)  # static-cache prefill: the keys beyond the queries are cropped
    assert bias is Causal.TOP_LEFT and key_shape == (2, 5, 4, 16) and key_strides[2] == 12 * 16  # a view
    assert bias_for(5, 12, is_causal=True)[0] is Causal.TOP_LEFT
    assert bias_for(1, 9)[0] is None  # decoding: one query sees every key
    assert bias_for(7, 7, is_causal=False)[0] is None
    assert bias_for(7, 7, module_causal=False)[0] is None
    assert bias_for(7, 7, is_causal=True, module_causal=False)[0] is Causal.TOP_LEFT  # the caller wins
    mask = sdpa_mask(2, 5, 12, attention_mask=padding(2, 12, left=2, filled=5))
    bias, _, _ = bias_for(5, 12, mask=mask, is_causal=True)
    assert bias[0] == "tensor" and bias[1] == (2, 4, 5, 12)


def test_bottom_right_causal_is_wrong_for_a_static_cache_prefill():
    """Why the causal marker is top-left: bottom-right alignment lets the prefill queries see the empty slots of a
    static cache (here zeros), which SDPA's `is_causal=True` never does."""
    q, k, v = qkv(queries=5, keys=12)
    k[:, :, 5:], v[:, :, 5:] = 0, 0  # unfilled cache slots
    module = Attention().eval()
    reference, _ = sdpa_attention_forward(module, q, k, v, None)
    layout = [t.transpose(1, 2) for t in (q, k, v)]
    top_left = ReferenceKernel()(*layout, Causal.TOP_LEFT, 0.0, None)
    bottom_right = ReferenceKernel()(*layout, Causal.BOTTOM_RIGHT, 0.0, None)
    torch.testing.assert_close(top_left, reference)
    assert not torch.allclose(bottom_right, reference, atol=1e-3)


def test_reference_kernel_masks_follow_xformers_definitions():
    """xformers materialises its causal masks as `tril(ones, diagonal=shift)` with shift 0 (top-left) or Mk - Mq
    (bottom-right); the no-bias case is its documented equivalent code."""
    q, k, v = (t.transpose(1, 2) for t in qkv(batch=1, heads=1, kv_heads=1, queries=3, keys=5))
    scores = (q.transpose(1, 2) @ k.transpose(1, 2).transpose(-2, -1)) * 16**-0.5
    for marker, shift in ((Causal.TOP_LEFT, 0), (Causal.BOTTOM_RIGHT, 2)):
        allowed = torch.ones(3, 5, dtype=torch.bool).tril(diagonal=shift)
        expected = (scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v.transpose(1, 2)).transpose(1, 2)
        torch.testing.assert_close(ReferenceKernel()(q, k, v, marker, 0.0, None), expected)
    plain = (scores.softmax(-1) @ v.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(ReferenceKernel()(q, k, v, None, 0.0, None), plain)
    with pytest.raises(ValueError, match="same dtype"):
        ReferenceKernel()(q, k, v.bfloat16(), None, 0.0, None)
    with pytest.raises(ValueError, match="not aligned"):
        ReferenceKernel()(q, k, v, torch.zeros(1, 1, 3, 5), 0.0, None)


def test_mixed_dtypes_under_autocast_compute_and_return_the_autocast_dtype():
    """Under autocast, rotary embeddings leave query/key in float32 while the value projection gives bfloat16.
    xformers refuses mixed dtypes; like SDPA under autocast, all three run in bfloat16 and so does the output."""
    q, k, _ = qkv(heads=8, kv_heads=2)
    v = qkv(heads=8, kv_heads=2, seed=1)[2].bfloat16()
    module = Attention(groups=4).eval()
    with pytest.raises(RuntimeError, match="same dtype"):  # what SDPA does with mixed dtypes outside autocast
        sdpa_attention_forward(module, q, k, v, None)
    kernel = ReferenceKernel()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = _xformers_call(q, k, v, None, 0.0, None, None, module, kernel)
        reference, _ = sdpa_attention_forward(module, q, k, v, None)
    assert ours.dtype == reference.dtype == torch.bfloat16
    assert kernel.calls[0].dtypes == (torch.bfloat16,) * 3
    torch.testing.assert_close(ours, reference, atol=2e-2, rtol=2e-2)

    kernel = ReferenceKernel()  # float32 throughout, under autocast: bfloat16, as SDPA
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = _xformers_call(q, k, v.float(), None, 0.0, None, None, module, kernel)
    assert ours.dtype == torch.bfloat16 and kernel.calls[0].dtypes == (torch.bfloat16,) * 3

    kernel = ReferenceKernel()  # outside autocast: the value's dtype, the module's compute dtype
    ours = _xformers_call(q, k, v, None, 0.0, None, None, module, kernel)
    assert ours.dtype == torch.bfloat16 and kernel.calls[0].dtypes == (torch.bfloat16,) * 3
    reference, _ = sdpa_attention_forward(module, q.bfloat16(), k.bfloat16(), v, None)
    torch.testing.assert_close(ours, reference, atol=2e-2, rtol=2e-2)


def test_grouped_query_heads_share_key_value_heads_without_copies_when_no_gradient_is_needed():
    q, k, v = qkv(heads=8, kv_heads=2)
    module = Attention(groups=4).eval()
    kernel = ReferenceKernel()
    with torch.no_grad():
        _xformers_call(q, k, v, None, 0.0, None, None, module, kernel)
    call = kernel.calls[0]
    assert call.shape == (2, 7, 2, 4, 16)  # [B, M, G, H, K]
    assert call.key_strides[3] == 0  # the key heads are expanded, not copied

    q, k, v = qkv(heads=8, kv_heads=2, grad=True)
    kernel = ReferenceKernel()
    _xformers_call(q, k, v, None, 0.0, None, None, module, kernel)  # the 5-D layout would raise here
    assert kernel.calls[0].shape == (2, 7, 8, 16)

    mask = sdpa_mask(2, 7, 7, attention_mask=padding(2, 7, left=3))
    q, k, v = qkv(heads=8, kv_heads=2)
    kernel = ReferenceKernel()
    with torch.no_grad():
        _xformers_call(q, k, v, mask, 0.0, None, None, module, kernel)
    assert kernel.calls[0].bias[1] == (2, 2, 4, 7, 7)  # [B, G, H, Mq, Mk], one copy per batch row


def test_dropout_only_in_training_and_scaling_is_passed_through():
    q, k, v = qkv()
    module = Attention()
    kernel = ReferenceKernel()
    _xformers_call(q, k, v, None, 0.3, 0.125, None, module.train(), kernel)
    _xformers_call(q, k, v, None, 0.3, 0.125, None, module.eval(), kernel)
    assert [(c.p, c.scale) for c in kernel.calls] == [(0.3, 0.125), (0.0, 0.125)]
    ours = _xformers_call(q, k, v, None, 0.3, 0.125, None, module.eval(), kernel)
    reference, _ = sdpa_attention_forward(module, q, k, v, None, dropout=0.0, scaling=0.125)
    torch.testing.assert_close(ours, reference)
    torch.manual_seed(0)
    dropped = _xformers_call(q, k, v, None, 0.5, None, None, module.train(), ReferenceKernel())
    assert torch.isfinite(dropped).all() and not torch.allclose(dropped, ours, atol=1e-3)


def test_fully_masked_queries_give_zeros_as_with_sdpa():
    q, k, v = qkv(queries=3, keys=3)
    mask = torch.tensor([[True, False, False], [True, True, False], [False, False, False]]).expand(2, 1, 3, 3)
    module = Attention().eval()
    ours = _xformers_call(q, k, v, mask, 0.0, None, None, module, ReferenceKernel())
    reference, _ = sdpa_attention_forward(module, q, k, v, mask)
    torch.testing.assert_close(ours, reference)
    assert (ours[:, 2] == 0).all()


def test_a_float_mask_is_an_additive_bias_not_a_boolean():
    """0 means attend in an additive mask: reading it as a boolean (nonzero = attend) would invert it."""
    additive = eager_mask(2, 7, 7, attention_mask=padding(2, 7, left=3), dtype=torch.float32)
    bias = mask_to_bias(additive, heads=4, dtype=torch.bfloat16)
    expected = mask_to_bias(sdpa_mask(2, 7, 7, attention_mask=padding(2, 7, left=3)), heads=4, dtype=torch.bfloat16)
    assert torch.equal(bias, expected) and torch.isfinite(bias).all()
    assert bias.shape == (2, 4, 7, 7) and bias.stride()[1:] == (0, 8, 1)  # heads share one aligned copy


@pytest.mark.skipif(not SDPA_TAKES_POSITION_BIAS, reason="this transformers' SDPA function ignores a position bias")
def test_position_bias_is_folded_into_the_bias_like_sdpa():
    q, k, v = qkv(queries=5, keys=12)
    position_bias = torch.randn(2, 4, 5, 12)
    module = Attention().eval()
    for mask in (None, sdpa_mask(2, 5, 12, attention_mask=padding(2, 12, left=2, filled=5))):
        ours = _xformers_call(q, k, v, mask, 0.0, None, None, module, ReferenceKernel(), position_bias=position_bias)
        reference, _ = sdpa_attention_forward(module, q, k, v, mask, position_bias=position_bias)
        torch.testing.assert_close(ours, reference)


LAYERS = 2
LLAMA = {
    "vocab_size": 96,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
}


def tiny_llama(attn_implementation: str, like: torch.nn.Module | None = None) -> torch.nn.Module:
    """A tiny Llama (a config of its own: transformers records the attention implementation in it), with the
    weights of `like` when given."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**LLAMA), attn_implementation=attn_implementation)
    if like is not None:
        model.load_state_dict(like.state_dict())
    assert model.config._attn_implementation == attn_implementation
    return model.eval()


@pytest.fixture
def llamas(monkeypatch):
    """A tiny Llama with SDPA, and the same weights with `attn_implementation="xformers"` whose registered
    attention function takes its CUDA path on the CPU, with the reference kernel."""
    register_xformers()
    kernel = ReferenceKernel()
    monkeypatch.setattr(attention, "_runs_xformers", lambda query: True)
    monkeypatch.setattr(attention, "_xformers_kernel", kernel)
    sdpa = tiny_llama("sdpa")
    xformers = tiny_llama("xformers", like=sdpa)
    assert sdpa.config._attn_implementation == "sdpa"
    return sdpa, xformers, kernel


def test_tiny_llama_forward_and_backward_match_sdpa(llamas):
    sdpa, xformers, kernel = llamas
    ids = torch.randint(0, 96, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    with torch.no_grad():
        for attention_mask in (None, mask):
            a = sdpa(input_ids=ids, attention_mask=attention_mask).logits
            b = xformers(input_ids=ids, attention_mask=attention_mask).logits
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert len(kernel.calls) == 2 * LAYERS  # the xformers path really ran
    assert kernel.calls[0].bias is Causal.TOP_LEFT and kernel.calls[-1].bias[0] == "tensor"

    losses = []
    for model in (sdpa.train(), xformers.train()):
        model.zero_grad()
        loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1])
    for (name, a), b in zip(sdpa.named_parameters(), xformers.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("padded", [False, True], ids=["no-padding", "left-padding"])
def test_tiny_llama_static_cache_generate_matches_sdpa(llamas, padded):
    sdpa, xformers, kernel = llamas
    ids = torch.randint(0, 96, (2, 6), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    if padded:
        mask[1, :2] = 0
    options = dict(
        attention_mask=mask,
        max_new_tokens=8,
        do_sample=False,
        cache_implementation="static",
        return_dict_in_generate=True,
        output_logits=True,
        pad_token_id=0,
    )
    a, b = sdpa.generate(ids, **options), xformers.generate(ids, **options)
    assert torch.equal(a.sequences, b.sequences)
    torch.testing.assert_close(torch.stack(a.logits), torch.stack(b.logits), atol=1e-5, rtol=1e-5)
    prefill = kernel.calls[0]
    if not padded and prefill.bias is Causal.TOP_LEFT:
        # Newer transformers give no mask at a static-cache prefill: top-left causal, empty cache slots cropped.
        assert prefill.shape[1] == 6 and prefill.key_shape[1] == 6
    else:  # transformers 5.2 (and any padding) give a mask tensor over the whole static cache
        assert prefill.bias[0] == "tensor" and prefill.bias[1][-2:] == (6, prefill.key_shape[1])
    assert all(call.shape[1] == 1 for call in kernel.calls[LAYERS:])  # then one query a step


@pytest.mark.skipif(not HAS_XFORMERS_CUDA, reason="needs a CUDA device and xformers")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("heads", [(4, 4), (8, 2)], ids=["MHA", "GQA-8/2"])
@pytest.mark.parametrize("grad", [False, True], ids=["no-grad", "grad"])
@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_xformers_kernel_on_cuda_matches_sdpa(case, heads, dtype, grad):  # pragma: no cover - GPU machines only
    _, queries, keys, build_mask, is_causal = case
    inputs = qkv(heads=heads[0], kv_heads=heads[1], queries=queries, keys=keys, dim=64, dtype=dtype)
    q, k, v = (t.cuda().requires_grad_(grad) for t in inputs)
    mask = None if build_mask is None else build_mask(2).cuda()
    if mask is not None and mask.is_floating_point():
        mask = mask.to(dtype)
    module = Attention(groups=heads[0] // heads[1]).eval()
    ours = _xformers_call(q, k, v, mask, 0.0, None, is_causal, module, _xformers_kernel)
    reference, _ = sdpa_attention_forward(module, q, k, v, mask, is_causal=is_causal)
    tolerance = {torch.float32: 2e-4, torch.bfloat16: 3e-2}[dtype]
    torch.testing.assert_close(ours, reference, atol=tolerance, rtol=tolerance)
    if grad:
        upstream = torch.randn_like(ours)
        ours_grads = torch.autograd.grad(ours, (q, k, v), upstream)
        for a, b in zip(ours_grads, torch.autograd.grad(reference, (q, k, v), upstream), strict=True):
            torch.testing.assert_close(a, b, atol=10 * tolerance, rtol=10 * tolerance)


@pytest.mark.skipif(not HAS_XFORMERS_CUDA, reason="needs a CUDA device and xformers")
def test_xformers_on_cuda_mixed_dtypes_under_autocast():  # pragma: no cover - GPU machines only
    q, k, _ = (t.cuda() for t in qkv(heads=8, kv_heads=2, dim=64))
    v = qkv(heads=8, kv_heads=2, dim=64, seed=1)[2].cuda().bfloat16()
    module = Attention(groups=4).eval()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ours = _xformers_call(q, k, v, None, 0.0, None, None, module, _xformers_kernel)
        reference, _ = sdpa_attention_forward(module, q, k, v, None)
    assert ours.dtype == reference.dtype == torch.bfloat16
    torch.testing.assert_close(ours, reference, atol=3e-2, rtol=3e-2)


@pytest.mark.skipif(not HAS_XFORMERS_CUDA, reason="needs a CUDA device and xformers")
def test_tiny_llama_on_cuda_static_cache_generate_matches_sdpa():  # pragma: no cover - GPU machines only
    register_xformers()
    sdpa = tiny_llama("sdpa").cuda()
    xformers = tiny_llama("xformers", like=sdpa).cuda()
    ids = torch.randint(0, 96, (2, 6), device="cuda")
    options = dict(max_new_tokens=8, do_sample=False, cache_implementation="static", disable_compile=True)
    options.update(return_dict_in_generate=True, output_logits=True, pad_token_id=0)
    a, b = sdpa.generate(ids, **options), xformers.generate(ids, **options)
    assert torch.equal(a.sequences, b.sequences)
    torch.testing.assert_close(torch.stack(a.logits), torch.stack(b.logits), atol=1e-4, rtol=1e-4)
