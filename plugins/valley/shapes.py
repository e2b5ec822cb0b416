"""Synthetic videos of moving coloured shapes, with captions and questions: the valley demo's data.

Each clip shows 1-3 shapes of one colour and one kind, all moving the same way. Questions ask for the colour,
the shape, the count and the direction of motion. Colour, shape and count can be read from any frame; the
direction only from the order of the frames, which Valley's temporal (CLS) tokens carry.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from omnimm.deps import require
from omnimm.files import atomic_write_text, file_fingerprint
from omnimm.videollm.data import MediaDataset
from omnimm.videollm.processor import VideoLLMProcessor
from omnimm_plugins.valley.configs import ShapesDataConfig

COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 240), "yellow": (240, 220, 40)}
SHAPES = ("square", "circle", "triangle")
COUNTS = {1: "one", 2: "two", 3: "three"}
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}

QUESTIONS = {
    "colour": "what colour are the shapes?",
    "shape": "what kind of shape is it?",
    "count": "how many shapes are there?",
    "direction": "which way are the shapes moving?",
}
CHOICES = {
    "colour": list(COLOURS),
    "shape": list(SHAPES),
    "count": list(COUNTS.values()),
    "direction": list(DIRECTIONS),
}
CAPTION_PROMPT = "describe the video."


@dataclass(frozen=True)
class Clip:
    id: str
    file: str
    split: str
    colour: str
    shape: str
    count: int
    direction: str

    def answer(self, kind: str) -> str:
        return {"colour": self.colour, "shape": self.shape, "count": COUNTS[self.count], "direction": self.direction}[
            kind
        ]

    def caption(self) -> str:
        noun = self.shape + ("s" if self.count > 1 else "")
        return f"{COUNTS[self.count]} {self.colour} {noun} moving {self.direction}."


def _mask(shape: str, size: int, grid: np.ndarray) -> np.ndarray:
    y, x = grid
    half = size / 2
    if shape == "square":
        return (np.abs(x) <= half) & (np.abs(y) <= half)
    if shape == "circle":
        return x**2 + y**2 <= half**2
    return (y <= half) & (y >= -half) & (np.abs(x) <= (y + half) / 2)  # triangle, apex up


def render_clip(clip: Clip, *, frames: int, size: int, rng: np.random.Generator, travel: float = 0.6) -> np.ndarray:
    """RGB frames `[frames, size, size, 3]` of the clip: shapes cross `travel` of the frame in its direction."""
    video = np.full((frames, size, size, 3), 24, dtype=np.uint8)
    shape_size = size // 5
    dx, dy = DIRECTIONS[clip.direction]
    travel = size * travel
    ys, xs = np.mgrid[0:size, 0:size]
    # Lanes perpendicular to the motion keep shapes apart.
    lanes = np.linspace(size * 0.2, size * 0.8, clip.count) + rng.uniform(-2, 2, clip.count)
    start = size / 2 - (dx + dy) * travel / 2 + rng.uniform(-2, 2)
    colour = np.array(COLOURS[clip.colour], dtype=np.uint8)
    for t in range(frames):
        along = start + (dx + dy) * travel * t / max(frames - 1, 1)
        for lane in lanes:
            cx, cy = (along, lane) if dx else (lane, along)
            mask = _mask(clip.shape, shape_size, np.stack([ys - cy, xs - cx]))
            video[t][mask] = colour
    return video


def write_video(path: Path, frames: np.ndarray, fps: int = 8) -> None:
    """Losslessly encode frames (FFV1 in Matroska), so colours and edges survive exactly."""
    av = require("av", extra="valley", purpose="writing videos")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("ffv1", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "bgr0"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def generate_shapes(
    root: str | Path, *, train: int, test: int, frames: int = 8, size: int = 64, travel: float = 0.6, seed: int = 0
) -> Path:
    """Write `train + test` clips and `index.json` under `root` (skipped if an index with these settings, written by
    this renderer, exists)."""
    folder = Path(root)
    index = folder / "index.json"
    settings = {"train": train, "test": test, "frames": frames, "size": size, "travel": travel, "seed": seed}
    settings["renderer"] = file_fingerprint(__file__)  # kept clips of an older renderer are written again
    if index.is_file() and json.loads(index.read_text()).get("settings") == settings:
        return folder
    (folder / "clips").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    clips = []
    for number in range(train + test):
        clip = Clip(
            id=f"{number:05d}",
            file=f"clips/{number:05d}.mkv",
            split="train" if number < train else "test",
            colour=str(rng.choice(list(COLOURS))),
            shape=str(rng.choice(SHAPES)),
            count=int(rng.integers(1, 4)),
            direction=str(rng.choice(list(DIRECTIONS))),
        )
        write_video(folder / clip.file, render_clip(clip, frames=frames, size=size, rng=rng, travel=travel))
        clips.append(asdict(clip))
    atomic_write_text(index, json.dumps({"settings": settings, "clips": clips}, indent=1))
    return folder


def load_clips(root: str | Path, split: str) -> list[Clip]:
    data = json.loads((Path(root) / "index.json").read_text())
    return [Clip(**c) for c in data["clips"] if c["split"] == split]


def corpus() -> list[str]:
    """Every word the demo's texts use (for training its tokenizer)."""
    words = [*COLOURS, *SHAPES, *(s + "s" for s in SHAPES), *COUNTS.values(), *DIRECTIONS, "moving", "."]
    return [" ".join(words), *QUESTIONS.values(), CAPTION_PROMPT]


class ShapesDataset(MediaDataset):
    """`valley/shapes`: captions (stage 1) or questions (stage 2; every fourth item asks a follow-up)."""

    def __init__(self, config: ShapesDataConfig, *, processor: VideoLLMProcessor) -> None:
        super().__init__(processor, cache=config.cache)
        self.config = config
        self.root = Path(config.root)
        self.clips = load_clips(self.root, config.split)[: config.limit]
        self.kinds = list(QUESTIONS)

    def __len__(self) -> int:
        return len(self.clips) * (1 if self.config.task == "caption" else len(self.kinds))

    def item(self, index: int) -> tuple[str | None, Sequence[tuple[str, str]]]:
        if self.config.task == "caption":
            clip = self.clips[index]
            return str(self.root / clip.file), [("user", CAPTION_PROMPT), ("assistant", clip.caption())]
        clip = self.clips[index // len(self.kinds)]
        kind = self.kinds[index % len(self.kinds)]
        turns: list[tuple[str, str]] = [("user", QUESTIONS[kind]), ("assistant", clip.answer(kind))]
        if self.config.followups and index % 4 == 3:  # multi-turn: a follow-up about another attribute
            other = self.kinds[(index + 1) % len(self.kinds)]
            turns += [("user", QUESTIONS[other]), ("assistant", clip.answer(other))]
        return str(self.root / clip.file), turns

    def meta(self, index: int) -> dict[str, Any]:
        if self.config.task == "caption":
            return {"id": self.clips[index].id}
        clip = self.clips[index // len(self.kinds)]
        kind = self.kinds[index % len(self.kinds)]
        return {"id": f"{clip.id}-{kind}", "kind": kind, "choices": CHOICES[kind]}


def evaluation_data(root: str | Path, *, split: str = "test", limit: int | None = None) -> dict[str, Any]:
    """The dataset config that asks every question about every clip of `split` once (for `omnimm eval`)."""
    config: dict[str, Any] = {"name": "valley/shapes", "root": str(root), "split": split, "task": "qa"}
    return {**config, "followups": False, **({"limit": limit} if limit else {})}


def evaluate(
    model: Any,
    root: str | Path,
    *,
    split: str = "test",
    batch_size: int = 32,
    limit: int | None = None,
    output: str | Path | None = None,
) -> dict[str, Any]:
    """Ask every question about every clip of `split` (through `omnimm eval`'s machinery, with
    `omnimm/choice-accuracy`); accuracy per question type, its chance level and the unparsed replies."""
    from omnimm.registry import datasets, evaluators
    from omnimm.videollm.evaluate import evaluate as evaluate_answers

    data = datasets.build(evaluation_data(root, split=split, limit=limit), processor=model.processor)
    scorer = evaluators.build({"name": "omnimm/choice-accuracy", "group_by": "kind"})
    result = evaluate_answers(
        model,
        data,
        {"omnimm/choice-accuracy": scorer},
        output=output,
        batch_size=batch_size,
        max_new_tokens=4,
        progress=False,
    )
    groups = result.metrics["omnimm/choice-accuracy"]["groups"]
    return {kind: groups[kind] for kind in QUESTIONS if kind in groups}
