"""Stage-1 training step (only the connector learns) with the frozen encoder's features read from the feature cache,
against the same step running the frozen encoder every time (no cache: what a user has without it).

Two encoders: the valley demo's tiny one (the tiny model: open_clip ViT of width 64, 2 blocks, 32 px, 8 frames, a
3-layer 128-wide Llama, batch 16) and a ViT-B/16 at 224 px with the same tiny LLM (batch 2 clips of 8 frames), where
the encoder dominates the step as it does with a real CLIP. A step is forward, backward and an AdamW update on
batches collated once beforehand (decoding is the same with and without the cache, so it is left out). "warm" reads
every clip from the cache (the second epoch on); "filling" is a first epoch, into an empty cache folder (the frames
hashed, the encoder run, one safetensors file written per clip). Timings interleave the variants round by round.

    python benchmarks/run.py feature_cache       # writes benchmarks/results/feature_cache.json
"""

from __future__ import annotations

import itertools
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from omnimm.videollm.feature_cache import FeatureCache

TINY = {
    "name": "openclip/vit",
    "overrides": {"width": 64, "layers": 2, "head_width": 32, "image_size": 32, "patch_size": 8},
}
VIT_B = {"name": "openclip/vit", "arch": "ViT-B-16"}


def _interleaved_seconds(functions: dict[str, Any], repeat: int) -> dict[str, float]:
    for function in functions.values():
        function()  # warm-up (and, for the warm cache, its filling)
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeat):
        for name, function in functions.items():
            started = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def _setup(workdir: Path, encoder: dict[str, Any], clips: int) -> tuple[Any, Any, Any]:
    """Two identical stage-1 models (one to be given a cache) and one collated batch of caption examples."""
    from omnimm.registry import datasets, models
    from omnimm.training.trainer import set_trainable
    from omnimm_plugins.valley.demo import demo_config, prepare

    prepare(workdir, quick=True)
    config = demo_config(workdir, "bench").model.model_copy(update={"encoders": {"vision": encoder}})
    config = type(config).from_dict(config.to_dict())  # validated again: the encoder config is built from the dict
    built = []
    for _ in range(2):
        torch.manual_seed(0)
        model = models.build(config).train()
        set_trainable(model, ["connector"])
        built.append(model)
    data = datasets.build(
        {"name": "valley/shapes", "root": str(workdir / "shapes"), "task": "caption"}, processor=built[0].processor
    )
    batch = built[0].processor([data[index] for index in range(clips)])
    return built[0], built[1], batch


def _stepper(model: Any, batch: dict[str, Any]) -> Any:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        loss = model(**batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def bench(label: str, encoder: dict[str, Any], clips: int, repeat: int) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        plain, cached, batch = _setup(root / "work", encoder, clips)
        cache = cached.use_feature_cache(root / "warm")
        cached_step = _stepper(cached, batch)
        fresh = itertools.count()

        def filling() -> None:  # the same cache object (its weights fingerprint kept, as within a run), empty folder
            cache.folder = root / f"cold-{next(fresh)}"
            cached_step()
            cache.folder = root / "warm"

        functions = {"plain": _stepper(plain, batch), "warm": cached_step, "filling": filling}
        seconds = _interleaved_seconds(functions, repeat)
        started = time.perf_counter()
        FeatureCache(root / "other").weights_fingerprint(cached.encoders["vision"])
        fingerprint = time.perf_counter() - started
    frames = batch["pixel_values"]["vision"][0].shape[0]
    rows = []
    for variant, meaning in (
        ("warm", "every clip read from the cache"),
        ("filling", "empty cache: hash, encode, write"),
    ):
        rows.append(
            {
                "benchmark": f"stage-1 step, {label}, {clips} clips x {frames} frames ({variant} cache)",
                "ours_label": f"feature cache, {meaning}",
                "reference_label": "no cache (frozen encoder run every step, under no_grad)",
                "ours": seconds[variant] * 1000,
                "reference": seconds["plain"] * 1000,
                "ratio": seconds[variant] / seconds["plain"],
                "unit": "ms/step",
                "notes": "ratio < 1 is faster"
                + (
                    ""
                    if variant == "warm"
                    else f"; plus {fingerprint * 1000:.0f} ms once per run (weights fingerprint)"
                ),
            }
        )
    return rows


def run(quick: bool = False) -> list[dict[str, Any]]:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = bench("tiny model (valley demo: 64-wide 2-block ViT, 32 px)", TINY, 16, 5 if quick else 20)
    rows += bench("ViT-B/16 at 224 px + tiny LLM", VIT_B, 2, 2 if quick else 5)
    return rows
