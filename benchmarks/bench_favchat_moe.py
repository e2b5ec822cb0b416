"""favchat's mixture-of-experts adapter: throughput of the sparse dispatch against computing every expert on every
token and masking, at E = 4, 8, 16 experts and top-1 / top-2 routing. The ideal ratio is E / k (the expert FLOPs
saved); the router, the sort and the gather/scatter are what keeps the sparse path below it."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

NAME = "favchat/moe-adapter"
WIDTH, HIDDEN, OUT = 1024, 2048, 2048  # e.g. a ViT-L/CLIP-L-wide input into a 2048-wide LLM (mlp2x_gelu shape)


def _interleaved_seconds(functions: dict[str, Any], repeat: int) -> dict[str, float]:
    """Median seconds of each function, timed in turn within every round, so that a shared machine's load changes
    affect all of them alike."""
    for function in functions.values():
        function()  # warm-up: allocator, kernels, caches
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeat):
        for name, function in functions.items():
            started = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def _adapter(experts: int, top_k: int) -> Any:
    from omnimm.registry import connectors
    from omnimm.videollm.groups import TokenGroup
    from omnimm_plugins.favchat.configs import MoEAdapterConfig
    from omnimm_plugins.favchat.moe import MoEAdapter

    if NAME not in connectors:
        connectors.register(NAME, MoEAdapter, config=MoEAdapterConfig)
    torch.manual_seed(0)
    config = {
        "name": NAME,
        "scene": None,
        "face": ["face.tokens"],
        "width": WIDTH,
        "num_experts": experts,
        "top_k": top_k,
        "expert_hidden": HIDDEN,
    }
    return connectors.build(config, inputs={"face.tokens": TokenGroup(1, WIDTH)}, out_dim=OUT).eval()


def dense_mix(adapter: Any, tokens: torch.Tensor) -> torch.Tensor:
    """The reference: every expert on every token, then the top-k gate (zero off the chosen experts)."""
    routing = adapter.route(tokens)
    gate = torch.zeros_like(routing.probs).scatter(1, routing.experts, routing.weights)
    out = tokens.new_zeros(len(tokens), adapter.out_dim)
    for index, expert in enumerate(adapter.experts):
        out += gate[:, index : index + 1] * expert(tokens)
    return out


def bench_dispatch(quick: bool) -> list[dict[str, Any]]:
    count = 1024 if quick else 2048
    repeat = 1 if quick else 3
    tokens = torch.randn(count, WIDTH, generator=torch.Generator().manual_seed(1))
    rows = []
    with torch.no_grad():
        for experts in (4, 8, 16):
            adapters = {top_k: _adapter(experts, top_k) for top_k in (1, 2)}  # the same weights (same seed)
            for top_k, adapter in adapters.items():
                check = (adapter.mix(tokens).tokens - dense_mix(adapter, tokens)).abs().max().item()
                assert check < 1e-3, f"E={experts}, k={top_k}: sparse and dense outputs differ by {check}"
            seconds = _interleaved_seconds(
                {
                    "k=1": lambda one=adapters[1]: one.mix(tokens),
                    "k=2": lambda two=adapters[2]: two.mix(tokens),
                    "dense": lambda two=adapters[2]: dense_mix(two, tokens),  # the dense cost does not depend on k
                },
                repeat,
            )
            for top_k, adapter in adapters.items():
                ours, reference = count / seconds[f"k={top_k}"], count / seconds["dense"]
                ratio = ours / reference
                ideal = experts / top_k
                loads = adapter.mix(tokens).stats["load_max"]
                rows_per_expert = count * top_k / experts
                rows.append(
                    {
                        "benchmark": f"MoE {WIDTH}->{HIDDEN}->{OUT}, E={experts}, k={top_k}, {count} tokens, fp32",
                        "ours_label": "sparse dispatch (sort by expert, slices, index_add_)",
                        "reference_label": "every expert on every token, masked",
                        "ours": ours,
                        "reference": reference,
                        "ratio": ratio,
                        "unit": "tokens/s",
                        "notes": f"ideal E/k = {ideal:g}; {ratio / ideal:.0%} of it; ~{rows_per_expert:.0f} rows per "
                        f"expert GEMM; max load {loads:.2f}; CPU, {torch.get_num_threads()} threads",
                    }
                )
    return rows


def run(quick: bool = False) -> list[dict[str, Any]]:
    return bench_dispatch(quick)
