"""Batched image preprocessing in torch: resize, centre crop, scale and normalise a stack of frames at once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class ImageTransform:
    """uint8 RGB frames `[F, H, W, 3]` -> float `[F, 3, size, size]`, the way CLIP-style encoders expect them.

    `resize="shortest"` scales the shorter side to `resize_to` (default `size`) and centre-crops `size x size`
    (CLIP; Valley scales to 256 and crops 224); `"squash"` resizes to `size x size` directly. Interpolation is
    antialiased, so downscaling matches PIL closely.
    """

    size: int
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    resize: Literal["shortest", "squash"] = "shortest"
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    resize_to: int | None = None

    def __call__(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        if isinstance(
            frames, np.ndarray
        ):  # contiguous and writable (PIL's arrays are read-only) without a needless copy
            frames = np.require(frames, requirements=["C", "W"])
        tensor = torch.as_tensor(frames)
        if tensor.ndim == 3:
            tensor = tensor[None]
        if tensor.ndim != 4 or tensor.shape[-1] != 3:
            raise ValueError(f"expected RGB frames of shape [frames, height, width, 3], got {list(tensor.shape)}")
        pixels = tensor.permute(0, 3, 1, 2).float()
        height, width = pixels.shape[-2:]
        if self.resize == "squash":
            target = (self.size, self.size)
        else:
            short = max(self.resize_to or self.size, self.size)
            scale = short / min(height, width)
            target = (max(short, round(height * scale)), max(short, round(width * scale)))
        if (height, width) != target:
            pixels = F.interpolate(pixels, size=target, mode=self.interpolation, align_corners=False, antialias=True)
        if self.resize == "shortest":
            top = (pixels.shape[-2] - self.size) // 2
            left = (pixels.shape[-1] - self.size) // 2
            pixels = pixels[..., top : top + self.size, left : left + self.size]
        pixels = pixels.clamp_(0, 255).div_(255.0)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (pixels - mean) / std

    def describe(self) -> dict[str, Any]:
        described = {"size": self.size, "mean": self.mean, "std": self.std, "resize": self.resize}
        return {**described, "resize_to": self.resize_to} if self.resize_to else described
