"""The encoder itself, imported only when a config that names it is built."""

import torch
from torch import nn

from omnimm_thirdparty_encoder.config import TinyCNNConfig


class TinyCNN(nn.Module):
    """`images [B, C, H, W] -> tokens [B, (H/2^k) * (W/2^k), channels[-1]]`."""

    def __init__(self, config: TinyCNNConfig) -> None:
        super().__init__()
        self.config = config
        self.out_dim = config.channels[-1]  # omnimm's composite models read this to size what comes next
        layers: list[nn.Module] = []
        width = config.in_channels
        for channels in config.channels:
            layers += [nn.Conv2d(width, channels, kernel_size=3, stride=2, padding=1), nn.GELU()]
            width = channels
        self.body = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images).flatten(2).transpose(1, 2)
