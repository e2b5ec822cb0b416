"""xformers vs SDPA vs eager attention in Llama-shaped models with random weights, on a CUDA device.

    python benchmarks/gpu_attention.py             # correctness + timings -> benchmarks/results/gpu_attention.json
    python benchmarks/gpu_attention.py --quick     # fewer layers and repetitions, for a smoke run
    python benchmarks/gpu_attention.py --only timing --unpooled

Correctness, each implementation against SDPA on the same weights and inputs (tiny, tiny without grouped-query
heads, SmolLM2-135M-shaped and 1B-shaped models; fp32, bf16, and fp32 weights under bf16 autocast):
- forward logits, with no mask (the causal path) and with a left-padded batch (the mask path), at real tokens;
- gradients of every parameter from one training step on the padded batch (relative L2 difference);
- greedy `generate` with a static cache (prefill with no mask and empty cache slots, then one query a step):
  the fraction of new tokens equal to SDPA's up to the first difference.
Eager's difference from SDPA is reported next to xformers': the gap between two exact implementations.

Timing (median of CUDA-event-timed repetitions after warm-up, peak memory in the notes), SmolLM2-135M-shaped
(hidden 576, 30 layers, 9 heads, 3 key/value heads) and 1B-shaped (hidden 2048, 16 layers, 32 heads, 8 key/value
heads) models, at the prompt lengths of a Valley video LLM: T = 8, 16, 32 frames pooled to N + T visual tokens
(N = 256 patches) plus 64 text tokens; `--unpooled` adds the T * (N + 1) + 64 lengths without pooling.
- prefill: a no-grad forward of `inputs_embeds`, logits for the last position only, bf16 weights;
- training step: forward + backward of the LM loss, fp32 weights under bf16 autocast (no optimizer step, which
  does not depend on attention).

Without a CUDA device (exit status 0) or without xformers (status 1) it says so and exits: it never reports a
figure it did not measure. A measurement that fails (out of memory, no xformers operator) is a row that says so.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

IMPLEMENTATIONS = ("xformers", "sdpa", "eager")
PATCHES = 256  # N: ViT-L/14 at 224 px, a 16 x 16 grid
TEXT_TOKENS = 64
FRAMES = (8, 16, 32)
PRECISIONS = ("fp32", "bf16", "autocast")


@dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int


SHAPES = {
    "tiny": Shape("tiny", 128, 2, 8, 2, 256, 512),
    "tiny-mha": Shape("tiny, no GQA", 128, 2, 8, 8, 256, 512),
    "smollm2-135m": Shape("SmolLM2-135M shape", 576, 30, 9, 3, 1536, 49152),
    "1b": Shape("1B shape", 2048, 16, 32, 8, 8192, 128256),
}


def build(shape: Shape, dtype: Any, device: Any, layers: int | None = None) -> Any:
    """A Llama of `shape` with random weights (seeded), SDPA attention to start with."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=layers or shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=16384,
        tie_word_embeddings=True,
        attention_dropout=0.0,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    return model.to(device=device, dtype=dtype).eval()


def precision_setup(precision: str, device: Any) -> tuple[Any, Callable[[], contextlib.AbstractContextManager]]:
    """(weight dtype, context) for a precision: fp32, bf16 weights, or fp32 weights under bf16 autocast."""
    import torch

    if precision == "autocast":
        return torch.float32, lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return (torch.bfloat16 if precision == "bf16" else torch.float32), contextlib.nullcontext


@contextlib.contextmanager
def attention(model: Any, implementation: str) -> Iterator[None]:
    model.set_attn_implementation(implementation)
    try:
        yield
    finally:
        model.set_attn_implementation("sdpa")


def padded_batch(vocab: int, device: Any, batch: int = 2, length: int = 96, pad: int = 17) -> tuple[Any, Any]:
    import torch

    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (batch, length), generator=generator).to(device)
    mask = torch.ones_like(ids)
    mask[1, :pad] = 0
    return ids, mask


def forward_differences(model: Any, context: Callable, padded: bool) -> dict[str, float]:
    """max |logit - SDPA's logit| at real tokens, per implementation."""
    import torch

    ids, mask = padded_batch(model.config.vocab_size, model.device)
    if not padded:
        mask = torch.ones_like(mask)
    logits = {}
    for implementation in IMPLEMENTATIONS:
        with attention(model, implementation), torch.no_grad(), context():
            logits[implementation] = model(input_ids=ids, attention_mask=mask if padded else None).logits.float()
    keep = mask.bool()
    return {name: (value - logits["sdpa"])[keep].abs().max().item() for name, value in logits.items()}


def gradient_differences(model: Any, context: Callable) -> tuple[dict[str, float], dict[str, float]]:
    """Relative L2 difference of all parameter gradients from SDPA's, and |loss - SDPA's loss|."""
    import torch

    ids, mask = padded_batch(model.config.vocab_size, model.device)
    # No loss on padding, nor on the first real token: its prediction comes from a padding position, whose output
    # is a convention (zeros for SDPA and xformers, a uniform average for eager), not a result.
    follows_padding = torch.nn.functional.pad(mask[:, :-1], (1, 0), value=1) == 0
    labels = ids.masked_fill((mask == 0) | follows_padding, -100)
    grads, losses = {}, {}
    model.train()
    try:
        for implementation in IMPLEMENTATIONS:
            model.zero_grad(set_to_none=True)
            with attention(model, implementation), context():
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            losses[implementation] = loss.item()
            grads[implementation] = torch.cat([p.grad.float().flatten() for p in model.parameters()])
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
    reference = grads["sdpa"]
    relative = {name: ((g - reference).norm() / reference.norm()).item() for name, g in grads.items()}
    return relative, {name: abs(loss - losses["sdpa"]) for name, loss in losses.items()}


def generate_agreement(
    model: Any, context: Callable, new_tokens: int, padded: bool, compile: bool = False
) -> tuple[dict, dict]:
    """Greedy static-cache generation: fraction of new tokens equal to SDPA's up to the first difference, and the
    first step's max |logit difference|. Without padding the prefill has no mask (causal, with empty cache slots
    beyond the prompt); with a left-padded row it has one."""
    import torch

    ids, mask = padded_batch(model.config.vocab_size, model.device, length=24, pad=5 if padded else 0)
    options = {
        "attention_mask": mask,
        "max_new_tokens": new_tokens,
        "min_new_tokens": new_tokens,
        "do_sample": False,
        "cache_implementation": "static",
        "disable_compile": not compile,
        "return_dict_in_generate": True,
        "output_logits": True,
        "pad_token_id": 0,
    }
    outputs = {}
    for implementation in IMPLEMENTATIONS:
        with attention(model, implementation), torch.no_grad(), context():
            outputs[implementation] = model.generate(ids, **options)
    reference = outputs["sdpa"]
    agreement, first_logits = {}, {}
    for name, output in outputs.items():
        same = (output.sequences[:, ids.shape[1] :] == reference.sequences[:, ids.shape[1] :]).all(dim=0)
        matched = int(same.long().cumprod(0).sum())
        agreement[name] = matched / new_tokens
        first_logits[name] = (output.logits[0].float() - reference.logits[0].float()).abs().max().item()
    return agreement, first_logits


def _row(benchmark: str, unit: str, values: dict[str, float], notes: str, ratio: bool = True) -> dict[str, Any]:
    ours, reference = values["xformers"], values["eager"]
    return {
        "benchmark": benchmark,
        "ours_label": "xformers",
        "reference_label": "eager",
        "ours": ours,
        "reference": reference,
        "ratio": ours / reference if ratio and reference else None,
        "unit": unit,
        "notes": notes,
    }


def correctness(quick: bool, device: Any, compile: bool, log: Callable[[str], None]) -> list[dict[str, Any]]:
    rows = []
    for key in ("tiny", "tiny-mha", "smollm2-135m", "1b"):
        shape = SHAPES[key]
        layers = min(shape.layers, 4) if quick else None
        label = f"{shape.name}, {layers or shape.layers} layers, {shape.heads}/{shape.kv_heads} heads"
        precisions = PRECISIONS if key.startswith("tiny") or not quick else ("bf16",)
        for precision in precisions:
            log(f"correctness: {label}, {precision}")
            try:
                rows += _correctness_rows(shape, layers, label, precision, quick, device, compile)
            except Exception as error:  # report it and go on: the row says what failed, with no figure
                log(traceback.format_exc())
                rows.append(
                    {
                        "benchmark": f"correctness, {label}, {precision}",
                        "ours_label": "xformers",
                        "reference_label": "eager",
                        "ours": math.nan,
                        "reference": math.nan,
                        "ratio": None,
                        "unit": "-",
                        "notes": f"failed: {error!r}"[:300],
                    }
                )
            _free(device)
    return rows


def _correctness_rows(
    shape: Shape, layers: int | None, label: str, precision: str, quick: bool, device: Any, compile: bool
) -> list[dict[str, Any]]:
    rows = []
    dtype, context = precision_setup(precision, device)
    model = build(shape, dtype, device, layers)
    note = "vs SDPA; eager's gap from SDPA is the noise between exact implementations"
    for padded in (False, True):
        what = "left-padded batch (mask)" if padded else "no mask (causal)"
        values = forward_differences(model, context, padded)
        rows.append(_row(f"forward logits, {label}, {precision}, {what}", "max |Δ logit|", values, note))
    relative, loss_gaps = gradient_differences(model, context)
    loss_note = f"|Δ loss| xformers {loss_gaps['xformers']:.2g}, eager {loss_gaps['eager']:.2g}"
    rows.append(_row(f"gradients, {label}, {precision}", "rel. L2 Δ grad", relative, loss_note))
    new_tokens = 8 if quick else 32
    for padded in (False, True):
        agreement, first = generate_agreement(model, context, new_tokens, padded)
        rows.append(
            _row(
                f"static-cache greedy generate, {label}, {precision}, {new_tokens} tokens, "
                + ("left-padded batch" if padded else "no padding"),
                "fraction = SDPA's",
                agreement,
                f"first step max |Δ logit|: xformers {first['xformers']:.2g}, eager {first['eager']:.2g}",
                ratio=False,
            )
        )
    if compile and precision == "bf16":
        try:
            agreement, first = generate_agreement(model, context, new_tokens, padded=False, compile=True)
            notes = f"first step max |Δ logit|: xformers {first['xformers']:.2g}"
        except Exception as error:  # report, never fake: the row says what failed
            agreement, notes = {"xformers": math.nan, "eager": math.nan}, f"failed: {error!r}"[:300]
        benchmark = f"compiled static-cache generate, {label}, {precision}"
        rows.append(_row(benchmark, "fraction = SDPA's", agreement, notes, ratio=False))
    return rows


def _free(device: Any) -> None:
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _median_ms(function: Callable[[], Any], repeat: int, warmup: int = 2) -> tuple[float, float]:
    """(median milliseconds, peak GB) of `function`, CUDA-event timed after `warmup` calls."""
    import torch

    for _ in range(warmup):
        function()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        function()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), torch.cuda.max_memory_allocated() / 1e9


def _measure(function: Callable[[], Any], repeat: int, device: Any) -> tuple[float, float, str]:
    import torch

    try:
        ms, peak = _median_ms(function, repeat)
        return ms, peak, ""
    except torch.cuda.OutOfMemoryError:
        _free(device)
        return math.nan, math.nan, "OOM"
    except Exception as error:  # e.g. no xformers operator for these inputs: reported in the row, no figure
        _free(device)
        return math.nan, math.nan, f"failed: {error!r}"[:200]


def lengths(unpooled: bool) -> list[tuple[int, str, int]]:
    """(frames, description, prompt length) for the Valley prompts."""
    out = [(t, f"N+T = {PATCHES + t} visual", PATCHES + t + TEXT_TOKENS) for t in FRAMES]
    if unpooled:
        out += [(t, f"T(N+1) = {t * (PATCHES + 1)} visual", t * (PATCHES + 1) + TEXT_TOKENS) for t in FRAMES]
    return out


def timing(
    quick: bool, device: Any, batch: int, train_batch: int, unpooled: bool, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    import torch

    repeat = 3 if quick else 10
    rows = []
    for key in ("smollm2-135m", "1b"):
        shape = SHAPES[key]
        layers = min(shape.layers, 4) if quick else shape.layers
        label = f"{shape.name} ({layers} layers, {shape.heads}/{shape.kv_heads} heads)"
        for phase in ("prefill", "training step"):
            precision = "bf16" if phase == "prefill" else "autocast"
            dtype, context = precision_setup(precision, device)
            model = build(shape, dtype, device, layers)
            rows_batch = batch if phase == "prefill" else train_batch
            for frames, tokens, length in lengths(unpooled):
                log(f"timing: {phase}, {label}, L={length}")
                generator = torch.Generator().manual_seed(frames)
                embeds = (torch.randn(rows_batch, length, shape.hidden, generator=generator) * 0.02).to(device, dtype)
                labels = torch.randint(0, shape.vocab, (rows_batch, length), generator=generator).to(device)
                results = {}
                for implementation in IMPLEMENTATIONS:
                    model.set_attn_implementation(implementation)
                    if phase == "prefill":

                        def step(model=model, embeds=embeds, context=context):
                            with torch.no_grad(), context():
                                return model(inputs_embeds=embeds, use_cache=False, logits_to_keep=1).logits

                    else:

                        def step(model=model, embeds=embeds, labels=labels, context=context):
                            model.zero_grad(set_to_none=True)
                            with context():
                                loss = model(inputs_embeds=embeds, labels=labels, use_cache=False).loss
                            loss.backward()

                    model.train(phase != "prefill")
                    results[implementation] = _measure(step, repeat, device)
                    model.zero_grad(set_to_none=True)
                    _free(device)
                model.set_attn_implementation("sdpa")
                (x_ms, x_gb, _), (s_ms, s_gb, _), (e_ms, e_gb, _) = (results[name] for name in IMPLEMENTATIONS)
                failed = ", ".join(f"{name}: {results[name][2]}" for name in IMPLEMENTATIONS if results[name][2])
                rows.append(
                    {
                        "benchmark": f"{phase}, {label}, T={frames}: L={length} ({tokens} + {TEXT_TOKENS} text), "
                        f"batch {rows_batch}, {precision}",
                        "ours_label": "xformers",
                        "reference_label": "sdpa",
                        "ours": x_ms,
                        "reference": s_ms,
                        "ratio": x_ms / s_ms,
                        "unit": "ms",
                        "notes": f"eager {e_ms:.4g} ms; peak GB xformers {x_gb:.3g}, sdpa {s_gb:.3g}, eager {e_gb:.3g}"
                        + (f"; {failed}" if failed else ""),
                    }
                )
            del model
            _free(device)
    return rows


def environment_with_gpu() -> dict[str, Any]:
    from importlib import metadata

    import torch

    from run import environment

    info = environment()
    for package in ("transformers", "xformers"):
        try:
            info["versions"][package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info["versions"][package] = None
    info["cuda"] = torch.version.cuda
    info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def unavailable() -> str | None:
    """Why this benchmark cannot run here (no CUDA device, no xformers), or None."""
    import torch

    from omnimm.deps import is_available

    if not torch.cuda.is_available():
        return "no CUDA device here; this benchmark needs one"
    if not is_available("xformers"):
        return 'xformers is not installed (pip install "omnimm[gpu]")'
    return None


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Every row with the default options, in the format of benchmarks/run.py (RuntimeError where it cannot run)."""
    import torch

    from omnimm.llm.attention import register_xformers

    if reason := unavailable():
        raise RuntimeError(f"gpu_attention: {reason}")
    register_xformers()
    device = torch.device("cuda")
    return correctness(quick, device, False, print) + timing(quick, device, 1, 4, False, print)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="at most 4 layers, fewer repetitions and tokens")
    parser.add_argument("--only", choices=("correctness", "timing"), help="run one half")
    parser.add_argument("--batch", type=int, default=1, help="prefill batch size (default 1: one video)")
    parser.add_argument("--train-batch", type=int, default=4, help="training-step batch size (default 4)")
    parser.add_argument("--unpooled", action="store_true", help="also time the T*(N+1)+64 unpooled lengths")
    parser.add_argument("--compile", action="store_true", help="also check generate with torch.compile (slow)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "gpu_attention.json", help="JSON output")
    args = parser.parse_args()

    reason = unavailable()
    if reason:
        print(f"gpu_attention: {reason}. Nothing was measured or written.")
        return 0 if reason.startswith("no CUDA") else 1

    import json

    import torch
    from rich.console import Console

    from omnimm.files import atomic_write_text
    from omnimm.llm.attention import register_xformers
    from run import print_table

    register_xformers()
    device = torch.device("cuda")
    console = Console(width=None if sys.stdout.isatty() else 160)

    def log(message: str) -> None:
        console.print(message, style="dim", markup=False, highlight=False)

    started = time.perf_counter()
    rows = []
    if args.only != "timing":
        rows += correctness(args.quick, device, args.compile, log)
    if args.only != "correctness":
        rows += timing(args.quick, device, args.batch, args.train_batch, args.unpooled, log)
    result = {
        "suite": "gpu_attention",
        "environment": environment_with_gpu(),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "seconds": time.perf_counter() - started,
        "rows": rows,
    }
    print_table("gpu_attention", rows, console)
    path = atomic_write_text(args.out, json.dumps(_json_safe(result), indent=2) + "\n")
    console.print(f"wrote {path}", markup=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
