"""Synthetic face videos whose attributes are known and change over time: the favchat demo's data.

Each clip shows one drawn face in a larger frame: one of four identities (skin, hair, face shape), with or without
glasses, an expression at the start and another at the end, maybe a blink, maybe a head turn. The renderer knows
where the eyes, nose and mouth corners are, so it writes them beside each video (`<video>.landmarks.npy`): drawn
faces are not what real detectors were trained on, and the generator's landmarks stand in for a detector.

The details that tell the attributes apart (thin glasses frames, closed eyes, the mouth's curve) span a pixel or
two in the whole frame, which a general encoder sees at low resolution, and many pixels in the 112 x 112 aligned
face crop the face encoder sees.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from omnimm.files import atomic_write_text, file_fingerprint

IDENTITIES = {  # skin (RGB), hair (RGB), face width / height
    "anna": ((236, 200, 170), (120, 70, 30), 0.82),
    "bruno": ((198, 140, 100), (30, 25, 20), 0.95),
    "chen": ((226, 186, 140), (15, 15, 15), 0.88),
    "dara": ((150, 100, 70), (200, 170, 60), 0.78),
}
EMOTIONS = ("neutral", "happy", "sadness", "surprise")  # CelebV-HQ's names
TURNS = ("none", "left", "right")
QUESTIONS = {
    "identity": ("who is the person?", list(IDENTITIES)),
    "glasses": ("is the person wearing glasses?", ["yes", "no"]),
    "start": ("what emotion does the person show at the start?", list(EMOTIONS)),
    "end": ("what emotion does the person show at the end?", list(EMOTIONS)),
    "blink": ("does the person close their eyes?", ["yes", "no"]),
    "turn": ("which way does the person turn their head?", list(TURNS)),
}
SUMMARY_PROMPT = "describe the person in the video."


@dataclass(frozen=True)
class FaceClip:
    """What one synthetic clip shows."""

    id: str
    video: str
    split: str
    identity: str
    glasses: bool
    start: str
    end: str
    blink: bool
    turn: str

    def answer(self, kind: str) -> str:
        values = {
            "identity": self.identity,
            "glasses": "yes" if self.glasses else "no",
            "start": self.start,
            "end": self.end,
            "blink": "yes" if self.blink else "no",
            "turn": self.turn,
        }
        return values[kind]

    def summary(self) -> str:
        feeling = self.start if self.start == self.end else f"{self.start} then {self.end}"
        parts = [
            self.identity,
            "wearing glasses" if self.glasses else "no glasses",
            f"looks {feeling}",
            "blinks" if self.blink else "eyes open",
            f"turns {self.turn}" if self.turn != "none" else "faces forward",
        ]
        return ", ".join(parts) + "."

    def record(self, frames: int, fps: float) -> dict[str, Any]:
        """The clip in favchat's record format (CelebV-HQ attribute names)."""
        half = frames / fps / 2
        actions = (
            [{"name": "close_eyes", "start_sec": half - 0.5 / fps, "end_sec": half + 0.5 / fps}] if self.blink else []
        )
        if self.turn != "none":
            actions.append({"name": "turn", "start_sec": 0.0, "end_sec": frames / fps})
        return {
            "id": self.id,
            "video": self.video,
            "summary": self.summary(),
            "qa": [
                {"question": question, "answer": self.answer(kind), "kind": kind, "choices": choices}
                for kind, (question, choices) in QUESTIONS.items()
            ],
            "attributes": {
                "appearance": ["eyeglasses"] if self.glasses else [],
                "action": actions,
                "emotion": [
                    {"emotion": self.start, "start_sec": 0.0, "end_sec": half},
                    {"emotion": self.end, "start_sec": half, "end_sec": frames / fps},
                ],
            },
        }


def _ellipse(
    canvas: np.ndarray, centre: tuple[float, float], axes: tuple[float, float], colour: Any, **kw: Any
) -> None:
    import cv2

    scale = 16  # sub-pixel precision for OpenCV's integer coordinates
    cv2.ellipse(
        canvas,
        (round(centre[0] * scale), round(centre[1] * scale)),
        (max(1, round(axes[0] * scale)), max(1, round(axes[1] * scale))),
        kw.pop("angle", 0),
        kw.pop("start", 0),
        kw.pop("end", 360),
        colour,
        kw.pop("thickness", -1),
        cv2.LINE_AA,
        shift=4,
    )


def render_face(
    clip: FaceClip, frame: int, frames: int, *, size: int, centre: tuple[float, float], radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """One RGB frame `[size, size, 3]` and its five landmarks `[5, 2]` (eyes, nose, mouth corners; image order)."""
    skin, hair, aspect = IDENTITIES[clip.identity]
    canvas = np.full((size, size, 3), 70, dtype=np.uint8)
    canvas[:, :, 2] = 90
    x, y = centre
    progress = frame / max(frames - 1, 1)
    yaw = {"none": 0.0, "left": -1.0, "right": 1.0}[clip.turn] * progress * 0.28 * radius
    emotion = clip.start if frame < frames / 2 else clip.end
    closed = clip.blink and frame in (frames // 2 - 1, frames // 2)
    width, height = radius * aspect, radius
    _ellipse(canvas, (x, y - 0.35 * height), (width * 1.05, height * 0.75), hair)
    _ellipse(canvas, (x + 0.3 * yaw, y), (width, height), skin)
    eye_y, eye_dx = y - 0.2 * height, 0.38 * width
    eyes = [(x - eye_dx + yaw, eye_y), (x + eye_dx + yaw, eye_y)]
    brow = {"surprise": -0.16, "sadness": -0.08}.get(emotion, -0.11) * height
    for ex, ey in eyes:
        if closed:
            _ellipse(canvas, (ex, ey), (0.16 * width, 0.02 * height), (60, 40, 30))
        else:
            _ellipse(canvas, (ex, ey), (0.15 * width, 0.09 * height), (250, 250, 250))
            _ellipse(canvas, (ex, ey), (0.06 * width, 0.07 * height), (30, 30, 60))
        _ellipse(canvas, (ex, ey + brow - 0.04 * height), (0.17 * width, 0.02 * height), hair)
        if clip.glasses:
            _ellipse(canvas, (ex, ey), (0.24 * width, 0.16 * height), (20, 20, 20), thickness=1)
    if clip.glasses:
        _ellipse(canvas, (x + yaw, eye_y), (0.06 * width, 0.01 * height), (20, 20, 20))
    nose = (x + 1.2 * yaw, y + 0.12 * height)
    _ellipse(canvas, nose, (0.06 * width, 0.08 * height), tuple(int(c * 0.8) for c in skin))
    mouth_y, mouth_dx = y + 0.45 * height, 0.3 * width
    mouth = (x + yaw, mouth_y)
    lips = (170, 60, 60)
    if emotion == "happy":  # an open smile: teeth under an upturned lip
        _ellipse(canvas, (mouth[0], mouth_y - 0.06 * height), (mouth_dx, 0.16 * height), lips, start=0, end=180)
        _ellipse(
            canvas,
            (mouth[0], mouth_y - 0.06 * height),
            (0.8 * mouth_dx, 0.09 * height),
            (250, 250, 240),
            start=0,
            end=180,
        )
    elif emotion == "sadness":  # a downturned mouth
        _ellipse(
            canvas, (mouth[0], mouth_y + 0.05 * height), (mouth_dx, 0.1 * height), lips, start=180, end=360, thickness=3
        )
    elif emotion == "surprise":  # a wide open mouth
        _ellipse(canvas, mouth, (0.16 * width, 0.17 * height), (90, 20, 30))
    else:
        _ellipse(canvas, mouth, (mouth_dx, 0.025 * height), lips)
    marks = np.array(
        [eyes[0], eyes[1], nose, (mouth[0] - mouth_dx, mouth_y), (mouth[0] + mouth_dx, mouth_y)], dtype=np.float32
    )
    return canvas, marks


def write_clip(path: Path, frames: np.ndarray, fps: int) -> None:
    from omnimm_plugins.valley.shapes import write_video

    write_video(path, frames, fps=fps)


def generate_faces(
    root: str | Path, *, train: int, test: int, frames: int = 6, size: int = 96, fps: int = 6, seed: int = 0
) -> Path:
    """Write `train + test` clips, their landmarks, `records.jsonl` (favchat's format) and `index.json` under `root`
    (skipped if an index with these settings, written by this renderer, exists)."""
    folder = Path(root)
    index = folder / "index.json"
    settings = {
        "train": train,
        "test": test,
        "frames": frames,
        "size": size,
        "fps": fps,
        "seed": seed,
        "renderer": file_fingerprint(__file__),  # kept clips of an older renderer are rewritten
    }
    if index.is_file() and json.loads(index.read_text()).get("settings") == settings:
        return folder
    (folder / "clips").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    clips = []
    for number in range(train + test):
        clip = FaceClip(
            id=f"{number:05d}",
            video=f"clips/{number:05d}.mkv",
            split="train" if number < train else "test",
            identity=str(rng.choice(list(IDENTITIES))),
            glasses=bool(rng.integers(2)),
            start=str(rng.choice(EMOTIONS)),
            end=str(rng.choice(EMOTIONS)),
            blink=bool(rng.integers(2)),
            turn=str(rng.choice(TURNS)),
        )
        radius = float(rng.uniform(0.2, 0.26) * size)
        centre = (float(rng.uniform(0.35, 0.65) * size), float(rng.uniform(0.4, 0.6) * size))
        rendered = [render_face(clip, t, frames, size=size, centre=centre, radius=radius) for t in range(frames)]
        write_clip(folder / clip.video, np.stack([r[0] for r in rendered]), fps)
        np.save(folder / clip.video.replace(".mkv", ".landmarks.npy"), np.stack([r[1] for r in rendered]))
        clips.append(clip)
    for split in ("train", "test"):
        lines = [json.dumps(c.record(frames, fps)) for c in clips if c.split == split]
        atomic_write_text(folder / f"{split}.jsonl", "\n".join(lines) + "\n")
    atomic_write_text(index, json.dumps({"settings": settings, "clips": [asdict(c) for c in clips]}, indent=1))
    return folder


def load_clips(root: str | Path, split: str) -> list[FaceClip]:
    data = json.loads((Path(root) / "index.json").read_text())
    return [FaceClip(**c) for c in data["clips"] if c["split"] == split]


def corpus() -> list[str]:
    """Every text of the demo (for training its tokenizer)."""
    words = [*IDENTITIES, *EMOTIONS, *TURNS, "yes", "no", "wearing", "glasses", "looks", "then", "blinks", "eyes"]
    words += ["open", "turns", "faces", "forward", ",", "."]
    return [" ".join(words), SUMMARY_PROMPT, *(question for question, _ in QUESTIONS.values())]
