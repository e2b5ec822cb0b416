"""The face encoder of a video LLM: frames -> aligned faces -> multi-depth token groups plus a frame mask.

```python
from omnimm_plugins.favchat.face.configs import FaceEncoderConfig
from omnimm_plugins.favchat.face.encoder import FaceEncoder

encoder = FaceEncoder(FaceEncoderConfig(stages=["stage2", "stage3", "stage4"], grid=2))
encoder.token_groups     # {'stage2': TokenGroup(4, 256), 'stage3': TokenGroup(4, 512), 'stage4': TokenGroup(4, 1024),
                         #  'embedding': TokenGroup(1, 128)}   (tokens per frame, width)
inputs = encoder.preprocess(clip.frames)        # {"pixels": [F, 3, 112, 112], "mask": [F] bool}
out = encoder(inputs)                           # {"stage2": [F, 4, 256], ..., "embedding": [F, 1, 128], "mask": [F]}
```

`preprocess` detects (or, for a clip with `clip.extra["landmarks"]`, reads) the 5 landmarks of one face per frame,
aligns it to ArcFace's 112 x 112 template and normalises it for the backbone. Frames without a face follow
`no_face`; their tokens are zeros and, unless `no_face: whole_frame`, their mask is False so connectors leave them
out.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from omnimm.videollm.groups import MASK, TokenGroup
from omnimm_plugins.favchat.face.align import CROP_SIZE, align_face
from omnimm_plugins.favchat.face.backbones import build_backbone
from omnimm_plugins.favchat.face.configs import FaceEncoderConfig
from omnimm_plugins.favchat.face.detectors import Face, FaceDetector, build_detector


def as_frames(frames: Any) -> np.ndarray:
    """uint8 RGB frames `[F, H, W, 3]` (one `[H, W, 3]` frame becomes `[1, H, W, 3]`) from an array or tensor."""
    array = frames.numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"expected RGB frames of shape [frames, height, width, 3], got {list(array.shape)}")
    if array.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames (0-255), got {array.dtype}")
    return array


def choose_face(faces: list[Face], select: str = "largest", min_score: float | None = None) -> Face | None:
    """The face a frame is represented by: the largest (or best-scoring) one at or above `min_score`."""
    candidates = [face for face in faces if min_score is None or face.score >= min_score]
    if not candidates:
        return None
    key = (lambda face: face.area) if select == "largest" else (lambda face: face.score)
    return max(candidates, key=key)


LANDMARKS_SUFFIX = ".landmarks.npy"

_FEATURE_CACHES: dict[str, OrderedDict[bytes, dict[str, torch.Tensor]]] = {}
"""Face tokens by backbone fingerprint, then by the aligned face's pixels: shared by encoders with the same frozen
weights (e.g. the variants a demo trains one after the other)."""


def landmarks_from_file(clip: Any) -> np.ndarray:
    """The sampled frames' landmarks from `<video>.landmarks.npy` beside the video (`[frames of the video, 5, 2]`)."""
    from omnimm.errors import MediaError

    path = Path(clip.source).with_suffix(LANDMARKS_SUFFIX)
    if not path.is_file():
        raise MediaError(str(path), "no landmarks file beside the video (landmarks: file expects one per video)")
    try:
        marks = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise MediaError(str(path), f"cannot read landmarks ({error})") from None
    if marks.ndim != 3 or marks.shape[1:] != (5, 2) or max(clip.indices) >= len(marks):
        raise MediaError(
            str(path), f"landmarks must be [frames, 5, 2] covering frame {max(clip.indices)}, got {list(marks.shape)}"
        )
    return marks[np.asarray(clip.indices)]


def _bytes(tensor: torch.Tensor) -> bytes:
    """The raw bytes of any tensor (bf16 included), for hashing."""
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


class FacePreprocess:
    """uint8 RGB frames -> `{"pixels": float32 [F, 3, 112, 112], "mask": bool [F]}` (True: a face was aligned).

    `stats` counts `frames` seen, `faces` (frames where a face was found and aligned) and `no_face` frames.
    The detector is built on first use.
    """

    def __init__(self, config: FaceEncoderConfig, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.config = config
        self.size = CROP_SIZE
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._detector: FaceDetector | None = None
        self.stats = {"frames": 0, "faces": 0, "no_face": 0}

    @property
    def detector(self) -> FaceDetector:
        if self._detector is None:
            self._detector = build_detector(self.config.detector)
        return self._detector

    def __call__(self, frames: Any) -> dict[str, torch.Tensor]:
        array = as_frames(frames)
        return self.from_landmarks(array, self.landmarks(array))

    def clip_pixels(self, clip: Any) -> dict[str, torch.Tensor]:
        """The same from an `omnimm.video.VideoClip`; `clip.extra["landmarks"]` (`[F, 5, 2]`, a NaN row for a frame
        without a face) is used instead of the detector when present."""
        frames = as_frames(clip.frames)
        given = getattr(clip, "extra", {}).get("landmarks")
        if given is None and self.config.landmarks == "file":
            given = landmarks_from_file(clip)
        if given is None:
            return self.from_landmarks(frames, self.landmarks(frames))
        marks = np.asarray(given, dtype=np.float64)
        if marks.shape != (len(frames), 5, 2):
            raise ValueError(
                f"clip.extra['landmarks'] must be [{len(frames)}, 5, 2] (frames, points, xy), got {list(marks.shape)}"
            )
        return self.from_landmarks(frames, marks)

    def landmarks(self, frames: np.ndarray) -> np.ndarray:
        """`[F, 5, 2]` landmarks of the chosen face of each frame (NaN where none), from the detector."""
        marks = np.full((len(frames), 5, 2), np.nan)
        for index, faces in enumerate(self.detector.detect_many(frames)):
            face = choose_face(faces, self.config.select, self.config.min_score)
            if face is not None:
                marks[index] = face.landmarks
        return marks

    def crops(self, frames: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 crops `[F, 112, 112, 3]` and which frames hold an aligned face; frames without landmarks follow
        `no_face` (zeros for `zero`, the whole frame resized for `skip` and `whole_frame`). Updates `stats`."""
        import cv2

        crops = np.zeros((len(frames), self.size, self.size, 3), dtype=np.uint8)
        found = np.zeros(len(frames), dtype=bool)
        for index, (frame, marks) in enumerate(zip(frames, landmarks, strict=True)):
            if np.isfinite(marks).all():
                crops[index] = align_face(frame, marks, self.size)
                found[index] = True
            elif self.config.no_face != "zero":
                crops[index] = cv2.resize(frame, (self.size, self.size), interpolation=cv2.INTER_AREA)
        self.stats["frames"] += len(frames)
        self.stats["faces"] += int(found.sum())
        self.stats["no_face"] += int((~found).sum())
        return crops, found

    def from_landmarks(self, frames: np.ndarray, landmarks: np.ndarray) -> dict[str, torch.Tensor]:
        """Pixels and mask from `[F, 5, 2]` landmarks (NaN rows: no face)."""
        crops, found = self.crops(frames, landmarks)
        pixels = self.normalise(crops)
        if self.config.no_face == "zero":
            pixels[torch.from_numpy(~found)] = 0.0
        mask = np.ones_like(found) if self.config.no_face == "whole_frame" else found
        return {"pixels": pixels, MASK: torch.from_numpy(mask)}

    def normalise(self, crops: np.ndarray) -> torch.Tensor:
        """uint8 `[F, 112, 112, 3]` -> float32 `[F, 3, 112, 112]`, `(pixel / 255 - mean) / std`."""
        pixels = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return ((pixels - mean) / std).contiguous()

    def describe(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "mean": self.mean,
            "std": self.std,
            "detector": self.config.detector.name,
            "no_face": self.config.no_face,
        }


class FaceEncoder(nn.Module):
    """Aligned faces `[F, 3, 112, 112]` -> one token group per chosen stage (`grid x grid` tokens each) and the
    identity `embedding` (one token), plus the frame mask. Masked frames give zero tokens (the backbone skips them).
    """

    def __init__(self, config: FaceEncoderConfig | None = None, **_: Any) -> None:
        super().__init__()
        self.config = config = config or FaceEncoderConfig()
        self.backbone = build_backbone(config)
        info: dict[str, tuple[int, int]] = dict(self.backbone.stage_info)
        unknown = [stage for stage in config.stages if stage not in info]
        if unknown:
            raise ValueError(
                f"face backbone '{config.backbone}' has no stage(s) {unknown}; its stages: "
                + ", ".join(f"{name} ({c} x {s}²)" for name, (c, s) in info.items())
            )
        self.grids = {stage: config.grid_of(stage) for stage in config.stages}
        groups: dict[str, TokenGroup] = {}
        for stage in config.stages:
            channels, side = info[stage]
            grid = self.grids[stage]
            if grid > side:
                raise ValueError(f"grid {grid} for {stage} is larger than its {side} x {side} map")
            groups[stage] = TokenGroup(grid * grid, channels, f"{stage}: {channels} x {side}² pooled to {grid}x{grid}")
        if config.embedding:
            groups["embedding"] = TokenGroup(1, int(self.backbone.embedding_dim), "identity embedding")
        self.token_groups: dict[str, TokenGroup] = groups
        self.out_dim = max(group.dim for group in groups.values())
        self.preprocess = FacePreprocess(config, self.backbone.mean, self.backbone.std)
        self._wanted = set(config.stages) | ({"embedding"} if config.embedding else set())
        self._fingerprint: str | None = None

    def forward(self, inputs: dict[str, torch.Tensor] | torch.Tensor) -> dict[str, torch.Tensor]:
        if isinstance(inputs, torch.Tensor):
            pixels, mask = inputs, None
        else:
            pixels, mask = inputs["pixels"], inputs.get(MASK)
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, CROP_SIZE, CROP_SIZE):
            raise ValueError(
                f"face encoder expects aligned faces of shape [frames, 3, 112, 112] (use its .preprocess), "
                f"got {list(pixels.shape)}"
            )
        frames = len(pixels)
        mask = torch.ones(frames, dtype=torch.bool, device=pixels.device) if mask is None else mask.bool()
        if mask.shape != (frames,):
            raise ValueError(f"mask must be [{frames}] (one flag per frame), got {list(mask.shape)}")
        out: dict[str, torch.Tensor] = {}
        valid = torch.nonzero(mask.to(pixels.device), as_tuple=True)[0]
        everything = len(valid) == frames
        tokens: dict[str, torch.Tensor] = {}
        if len(valid):
            tokens = self._tokens(pixels if everything else pixels[valid])
        for name, group in self.token_groups.items():
            if everything:
                out[name] = tokens[name]
                continue
            zeros = pixels.new_zeros(frames, group.tokens, group.dim)
            out[name] = zeros.index_copy(0, valid, tokens[name].to(zeros.dtype)) if len(valid) else zeros
        out[MASK] = mask
        return out

    def _tokens(self, faces: torch.Tensor) -> dict[str, torch.Tensor]:
        """Token groups of aligned faces `[N, 3, 112, 112]`, from the cache where it has them."""
        frozen = not any(p.requires_grad for p in self.backbone.parameters())
        if not (self.config.feature_cache and frozen):
            return self._compute(faces)
        cache = _FEATURE_CACHES.setdefault(self.fingerprint(), OrderedDict())
        keys = [hashlib.sha1(_bytes(face)).digest() for face in faces]
        missing = [i for i, key in enumerate(keys) if key not in cache]
        if missing:
            computed = self._compute(faces[missing])
            for position, index in enumerate(missing):
                cache[keys[index]] = {name: t[position].detach().cpu() for name, t in computed.items()}
                if len(cache) > self.config.feature_cache:
                    cache.popitem(last=False)
        found = [cache.get(key) or self._compute(faces[i : i + 1], single=True) for i, key in enumerate(keys)]
        return {name: torch.stack([f[name] for f in found]).to(faces.device, faces.dtype) for name in self.token_groups}

    def fingerprint(self) -> str:
        """What the cached tokens depend on: the backbone's weights (hashed once, at first use) and the groups."""
        if self._fingerprint is None:
            digest = hashlib.sha1(repr((self.config.backbone, self.grids, self.config.embedding)).encode())
            for name, tensor in self.backbone.state_dict().items():
                digest.update(name.encode())
                digest.update(_bytes(tensor))
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def _compute(self, faces: torch.Tensor, single: bool = False) -> dict[str, torch.Tensor]:
        features = self.backbone.forward_features(faces, self._wanted)
        tokens = {}
        for stage in self.config.stages:
            tokens[stage] = F.adaptive_avg_pool2d(features[stage], self.grids[stage]).flatten(2).transpose(1, 2)
        if self.config.embedding:
            tokens["embedding"] = features["embedding"][:, None, :]
        return {name: t[0].detach().cpu() for name, t in tokens.items()} if single else tokens

    def embed_crops(self, crops: np.ndarray) -> torch.Tensor:
        """Identity embeddings `[N, d]` of aligned uint8 RGB crops `[N, 112, 112, 3]` (no grad)."""
        with torch.no_grad():
            pixels = self.preprocess.normalise(crops)
            return self.backbone.forward_features(pixels, {"embedding"})["embedding"]
