"""ArcFace's IResNet-50 / IResNet-100 (the "improved" pre-activation ResNet of insightface's `arcface_torch`).

Written from the architecture's description, with the parameter names of insightface's PyTorch checkpoints
(`backbone.pth` of e.g. `ms1mv3_arcface_r50_fp16`), so those files load with a strict key check:

- stem: `conv1` (3 x 3, 64, stride 1), `bn1`, `prelu`;
- `layer1`..`layer4` (64, 128, 256, 512 channels; 3/4/14/3 blocks for r50, 3/13/30/3 for r100), each starting with
  stride 2; a block is `bn1 -> conv1 (3 x 3) -> bn2 -> prelu -> conv2 (3 x 3, stride) -> bn3`, plus the shortcut
  (`downsample.0` 1 x 1 conv and `downsample.1` batch norm when the shape changes);
- head: `bn2`, dropout, `fc` (512 x 7 x 7 -> 512), `features` (batch norm of the embedding).

Batch norms use eps 1e-5. Input: aligned 112 x 112 RGB crops scaled to [-1, 1] (`(pixel / 255 - 0.5) / 0.5`).
Stages for a 112 px input: `stage1` 64 x 56², `stage2` 128 x 28², `stage3` 256 x 14², `stage4` 512 x 7².
"""

from __future__ import annotations

import os
from typing import ClassVar

import torch
from torch import nn

from omnimm_plugins.favchat.face.checkpoints import load_checked, read_state_dict

LAYERS = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
}
"""Blocks per layer of insightface's depths (r18, r34, r50, r100); the face encoder offers r50 and r100."""
WIDTHS = (64, 128, 256, 512)
EMBEDDING_DIM = 512
_EPS = 1e-5


class IBasicBlock(nn.Module):
    """IResNet's residual block (pre-norm, PReLU between the two 3 x 3 convolutions)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=_EPS)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=_EPS)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=_EPS)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes, eps=_EPS)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class IResNet(nn.Module):
    """`forward(x [B, 3, 112, 112]) -> [B, 512]`; `forward_features(x)` -> `stage1`..`stage4` maps and
    `embedding`."""

    embedding_dim = EMBEDDING_DIM
    input_size = 112
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)
    stage_info: ClassVar[dict[str, tuple[int, int]]] = {f"stage{i + 1}": (w, 56 >> i) for i, w in enumerate(WIDTHS)}

    def __init__(self, depth: str = "iresnet50", dropout: float = 0.0) -> None:
        super().__init__()
        if depth not in LAYERS:
            raise ValueError(f"unknown IResNet depth '{depth}'; choose one of: {', '.join(LAYERS)}")
        self.depth = depth
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=_EPS)
        self.prelu = nn.PReLU(64)
        inplanes = 64
        for index, (blocks, width) in enumerate(zip(LAYERS[depth], WIDTHS, strict=True)):
            layer = [IBasicBlock(inplanes, width, stride=2)]
            layer += [IBasicBlock(width, width) for _ in range(blocks - 1)]
            setattr(self, f"layer{index + 1}", nn.Sequential(*layer))
            inplanes = width
        self.bn2 = nn.BatchNorm2d(512, eps=_EPS)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(512 * 7 * 7, EMBEDDING_DIM)
        self.features = nn.BatchNorm1d(EMBEDDING_DIM, eps=_EPS)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False  # as in insightface: the embedding's scale is not learned
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0, 0.1)

    def forward_features(self, x: torch.Tensor, stages: set[str] | None = None) -> dict[str, torch.Tensor]:
        """Stage maps (all, or those in `stages`) and `embedding` (skipped when `stages` leaves it out)."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, 112, 112):
            raise ValueError(f"IResNet expects aligned crops of shape [batch, 3, 112, 112], got {list(x.shape)}")
        wanted = set(self.stage_info) | {"embedding"} if stages is None else set(stages)
        out: dict[str, torch.Tensor] = {}
        x = self.prelu(self.bn1(self.conv1(x)))
        for index in range(1, 5):
            x = getattr(self, f"layer{index}")(x)
            if f"stage{index}" in wanted:
                out[f"stage{index}"] = x
            if wanted <= out.keys():
                return out
        out["embedding"] = self.features(self.fc(self.dropout(torch.flatten(self.bn2(x), 1))))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x, {"embedding"})["embedding"]


def load_iresnet(depth: str, weights: str | os.PathLike[str] | None) -> IResNet:
    """An IResNet in eval mode; with `weights`, loaded from an insightface checkpoint (`.pth` read with
    `weights_only=True`, or `.safetensors`) after a strict key check (`CheckpointKeysError` names the missing and
    unexpected keys; only `num_batches_tracked` counters may be absent)."""
    net = IResNet(depth)
    if weights is not None:
        state = read_state_dict(weights)
        load_checked(net, state, f"{depth} checkpoint {weights}", optional=("num_batches_tracked",))
    return net.eval()
