"""Video and image input: decode with PyAV, sample frames uniformly or by rate, report bad files clearly.

```python
from omnimm.video import read_visual

clip = read_visual("pancake.mkv", num_frames=8)   # or fps=1.0, or neither for every frame
clip.frames.shape        # (8, 240, 426, 3) uint8 RGB
clip.indices, clip.timestamps
read_visual("photo.jpg").frames.shape   # (1, H, W, 3): an image is a video with T=1
```

A missing, empty or undecodable file raises `MediaError` naming the file and the reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from omnimm.deps import require
from omnimm.errors import MediaError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


@dataclass
class VideoClip:
    """Sampled frames of one video (or image) and where they came from."""

    frames: np.ndarray
    """RGB frames, uint8, shape [T, H, W, 3]."""
    indices: list[int]
    """Index of each sampled frame in the source video (0 for an image)."""
    timestamps: list[float]
    """Time of each sampled frame in seconds."""
    source: str
    """The file the frames come from."""
    fps: float = 0.0
    """The source's average frame rate (0 for an image)."""
    duration: float = 0.0
    """The source's duration in seconds (0 for an image)."""
    total_frames: int = 1
    """Frames in the source (estimated from duration and rate when the container does not say)."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def repeated(self) -> list[int]:
        """Positions of sampled frames that repeat the frame before them: the video has fewer frames than were
        asked for, or decoding ended early. Empty for a clip of distinct frames."""
        return [i for i in range(1, len(self.indices)) if self.indices[i] == self.indices[i - 1]]


def uniform_indices(total: int, count: int) -> list[int]:
    """`count` frame indices spread evenly over `[0, total)`, first and last frame included, rounded down (as
    Valley does: `np.linspace(0, total - 1, count).astype(int)`). With `count > total` indices repeat."""
    if total <= 0 or count <= 0:
        return []
    return [int(i) for i in np.linspace(0, total - 1, count).astype(np.int64)]


def check_media_file(path: Path) -> None:
    """Raise a one-line `MediaError` for a path that is missing, not a file, or empty: before any slow work."""
    if not path.exists():
        raise MediaError(str(path), "file not found")
    if not path.is_file():
        raise MediaError(str(path), "not a file")
    if path.stat().st_size == 0:
        raise MediaError(str(path), "file is empty")


def read_image(path: str | os.PathLike[str]) -> VideoClip:
    """Read an image as a one-frame clip."""
    from PIL import Image, UnidentifiedImageError

    file = Path(path)
    check_media_file(file)
    try:
        with Image.open(file) as image:
            frame = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as error:
        raise MediaError(str(file), f"cannot decode image ({error})") from None
    return VideoClip(frame[None], [0], [0.0], str(file))


def _target_times(
    fps: float, duration: float, total: int, num_frames: int | None, rate: float | None, max_frames: int | None
) -> tuple[list[int], list[float]]:
    """Frame indices and times to sample, from the stream's rate and length."""
    if rate is not None:
        times = list(np.arange(0.0, max(duration, 1e-9), 1.0 / rate))
        indices = [min(total - 1, round(t * fps)) for t in times]
    elif num_frames is not None:
        indices = uniform_indices(total, num_frames)
        times = [i / fps for i in indices]
    else:
        indices = list(range(total))
        times = [i / fps for i in indices]
    if max_frames is not None and len(indices) > max_frames:
        keep = uniform_indices(len(indices), max_frames)
        indices, times = [indices[k] for k in keep], [times[k] for k in keep]
    return indices, [float(t) for t in times]


def read_video(
    path: str | os.PathLike[str],
    *,
    num_frames: int | None = None,
    fps: float | None = None,
    max_frames: int | None = None,
) -> VideoClip:
    """Decode a video and sample frames.

    Args:
        path: any container PyAV (FFmpeg) reads: mp4, mkv, webm, avi, ...
        num_frames: sample this many frames spread evenly over the video.
        fps: or sample at this rate (frames per second of video time).
        max_frames: cap on the number of frames (evenly thinned), for `fps` or all-frames sampling.

    With neither `num_frames` nor `fps` (nor `max_frames`), every frame is returned. Only the sampled frames are
    converted to RGB, and decoding stops after the last one. Indices and timestamps are those of the frames actually
    returned. When a container overstates its length and decoding ends early, the last decoded frame fills the
    remaining samples (`clip.extra["padded"]` counts those more than a frame away from it).
    """
    if num_frames is not None and fps is not None:
        raise ValueError("give num_frames or fps, not both")
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if fps is not None and fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    av = require("av", extra="video", purpose="video decoding")
    file = Path(path)
    check_media_file(file)
    try:
        with av.open(str(file)) as container:
            if not container.streams.video:
                raise MediaError(str(file), "no video stream in the file")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # frame-threaded decoding: several times faster on multi-core machines
            return _decode(container, stream, file, num_frames, fps, max_frames)
    except av.error.FFmpegError as error:
        raise MediaError(str(file), f"cannot decode video ({_reason(error)})") from None


def _reason(error: Exception) -> str:
    text = getattr(error, "strerror", None) or str(error)
    return text.split(": '", 1)[0]


def _decode(
    container: Any, stream: Any, file: Path, num_frames: int | None, rate: float | None, max_frames: int | None
) -> VideoClip:
    fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / 1_000_000
    else:
        duration = 0.0
    total = int(stream.frames) or max(1, round(duration * fps))
    duration = duration or total / fps
    every_frame = num_frames is None and rate is None and max_frames is None
    times = [] if every_frame else _target_times(fps, duration, total, num_frames, rate, max_frames)[1]
    half_frame = 0.5 / fps
    frames: list[np.ndarray] = []
    indices: list[int] = []
    stamps: list[float] = []
    last: tuple[int, float, Any] | None = None
    reached_end = True
    for count, frame in enumerate(container.decode(stream)):
        frame_time = float(frame.time) if frame.time is not None else count / fps
        last = (count, frame_time, frame)
        if every_frame:
            frames.append(frame.to_ndarray(format="rgb24"))
            indices.append(count)
            stamps.append(frame_time)
            continue
        array = None
        while len(frames) < len(times) and frame_time >= times[len(frames)] - half_frame:
            array = frame.to_ndarray(format="rgb24") if array is None else array  # one conversion per frame
            frames.append(array)
            indices.append(count)
            stamps.append(frame_time)
        if len(frames) == len(times):
            reached_end = False
            break
    if last is None:
        raise MediaError(str(file), "no frames could be decoded")
    # The container's length was an estimate: targets past the real end take the last frame. Only those more than
    # a frame away from it count as padding.
    padded = sum(1 for t in times[len(frames) :] if t - last[1] > 1.0 / fps)
    if len(frames) < len(times):
        tail = last[2].to_ndarray(format="rgb24")
        for _ in range(len(times) - len(frames)):
            frames.append(tail)
            indices.append(last[0])
            stamps.append(last[1])
    return VideoClip(
        np.stack(frames),
        indices,
        stamps,
        str(file),
        fps=fps,
        duration=duration,
        total_frames=last[0] + 1 if reached_end else total,
        extra={"padded": padded} if padded else {},
    )


def read_visual(
    path: str | os.PathLike[str],
    *,
    num_frames: int | None = None,
    fps: float | None = None,
    max_frames: int | None = None,
) -> VideoClip:
    """Read an image (by suffix) as a one-frame clip, anything else as a video (see `read_video`)."""
    if Path(path).suffix.lower() in IMAGE_SUFFIXES:
        return read_image(path)
    return read_video(path, num_frames=num_frames, fps=fps, max_frames=max_frames)
