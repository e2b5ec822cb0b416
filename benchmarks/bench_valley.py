"""Valley's costs: tokens into the LLM and prefill time with and without pooling, pooling throughput against the
machine's memory bandwidth, and video decode + preprocessing against a per-frame PIL loader."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
PANCAKE = REPO.parent / "shared" / "data" / "video" / "flipping_a_pancake.mkv"

PATCHES = 256  # ViT-L/14 at 224 px: a 16 x 16 grid, as Valley uses
TEXT_TOKENS = 32


def _median_seconds(function: Any, repeat: int) -> float:
    function()  # warm-up: allocator, kernels, caches
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _llm(quick: bool) -> Any:
    from transformers import AutoConfig, AutoModelForCausalLM

    # SmolLM2-135M's architecture (random weights: prefill time does not depend on them).
    layers = 6 if quick else 30
    config = AutoConfig.for_model(
        "llama",
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=layers,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        max_position_embeddings=16384,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval(), layers


def bench_prefill(quick: bool) -> list[dict[str, Any]]:
    model, layers = _llm(quick)
    rows = []
    for frames in (8, 16, 32):
        pooled = PATCHES + frames + TEXT_TOKENS
        full = frames * (PATCHES + 1) + TEXT_TOKENS
        seconds = {}
        for label, length in (("pooled", pooled), ("full", full)):
            embeds = torch.randn(1, length, 576)
            with torch.no_grad():
                repeat = 1 if length > 3000 else 3
                seconds[label] = _median_seconds(lambda e=embeds: model.model(inputs_embeds=e), repeat)
        rows.append(
            {
                "benchmark": f"LLM prefill, T={frames} frames, N={PATCHES} patches (+{TEXT_TOKENS} text tokens)",
                "ours_label": f"valley/stpool: N+T = {pooled - TEXT_TOKENS} visual tokens",
                "reference_label": f"no pooling: T*(N+1) = {full - TEXT_TOKENS} visual tokens",
                "ours": seconds["pooled"] * 1000,
                "reference": seconds["full"] * 1000,
                "ratio": seconds["pooled"] / seconds["full"],
                "unit": "ms",
                "notes": f"SmolLM2-135M shape, {layers} layers, CPU, SDPA; token ratio {pooled / full:.3f}",
            }
        )
    return rows


def bench_pool_bandwidth(quick: bool) -> list[dict[str, Any]]:
    from omnimm import connectors
    from omnimm.videollm.groups import TokenGroup

    batch, frames, dim = (2, 8, 512) if quick else (8, 16, 1024)
    patches = torch.randn(batch, frames, PATCHES, dim)  # the patch group an encoder gives (the CLS group apart)
    copy_target = torch.empty_like(patches)
    size = patches.numel() * patches.element_size()
    copy_seconds = _median_seconds(lambda: copy_target.copy_(patches), 10)
    copy_bandwidth = 2 * size / copy_seconds  # read + write
    inputs = {"vision.cls": TokenGroup(1, dim), "vision.patches": TokenGroup(PATCHES, dim)}
    rows = []
    for variant in ("v1", "v2"):
        config = {"name": "valley/stpool", "variant": variant, "project_first": False}
        pool = connectors.build(config, inputs=inputs, out_dim=dim).pool.eval()  # the pooling alone
        with torch.no_grad():
            seconds = _median_seconds(lambda p=pool: p(patches), 10)
            out = pool(patches)
        moved = size + out.numel() * out.element_size()  # every input byte read once, the output written once
        rows.append(
            {
                "benchmark": f"stpool {variant}, patches {[batch, frames, PATCHES, dim]} fp32, {size / 1e6:.0f} MB",
                "ours_label": f"valley/stpool {variant} (bytes moved / time)",
                "reference_label": "tensor copy of the same input (read + write)",
                "ours": moved / seconds / 1e9,
                "reference": copy_bandwidth / 1e9,
                "ratio": moved / seconds / copy_bandwidth,
                "unit": "GB/s",
                "notes": "ratio = fraction of the memory bandwidth a copy reaches; higher is better",
            }
        )
    return rows


def _pil_reference(path: Path, indices: list[int] | None, size: int) -> torch.Tensor:
    """A straightforward loader: decode every frame to a PIL image, resize and crop each, stack."""
    import av
    from PIL import Image

    from omnimm.vision.preprocess import CLIP_MEAN, CLIP_STD

    wanted = set(indices) if indices is not None else None
    tensors = []
    mean = torch.tensor(CLIP_MEAN)[:, None, None]
    std = torch.tensor(CLIP_STD)[:, None, None]
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            image = frame.to_image()
            if wanted is not None and index not in wanted:
                continue
            width, height = image.size
            scale = size / min(width, height)
            image = image.resize((max(size, round(width * scale)), max(size, round(height * scale))), Image.BICUBIC)
            left, top = (image.width - size) // 2, (image.height - size) // 2
            image = image.crop((left, top, left + size, top + size))
            tensors.append((torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255 - mean) / std)
    return torch.stack(tensors)


def bench_decode(quick: bool) -> list[dict[str, Any]]:
    from omnimm.video import read_video
    from omnimm.vision.preprocess import ImageTransform

    if not PANCAKE.is_file():
        return []
    transform = ImageTransform(224)
    rows = []
    for label, num_frames in (("8 sampled frames", 8), ("every frame", None)):
        clip = read_video(PANCAKE, num_frames=num_frames)
        repeat = 3 if quick else 5
        ours = _median_seconds(lambda n=num_frames: transform(read_video(PANCAKE, num_frames=n).frames), repeat)
        indices = clip.indices if num_frames else None
        reference = _median_seconds(lambda i=indices: _pil_reference(PANCAKE, i, 224), repeat)
        delivered = clip.num_frames
        rows.append(
            {
                "benchmark": f"decode + preprocess to 224 px, {label} of a 10 s 426x240 H.264 clip",
                "ours_label": "omnimm.video.read_video + batched torch transform",
                "reference_label": "PyAV frame.to_image() + per-frame PIL resize/crop",
                "ours": delivered / ours,
                "reference": delivered / reference,
                "ratio": reference / ours,
                "unit": "frames/s",
                "notes": "ratio = speed-up (ours frames/s over the reference's)",
            }
        )
    return rows


def run(quick: bool = False) -> list[dict[str, Any]]:
    return [*bench_decode(quick), *bench_pool_bandwidth(quick), *bench_prefill(quick)]
