"""The encoder's config: plain pydantic on top of omnimm.ComponentConfig."""

from pydantic import Field

from omnimm import ComponentConfig


class TinyCNNConfig(ComponentConfig):
    """A small CNN that turns an image into a grid of feature tokens."""

    in_channels: int = Field(3, ge=1)
    """Channels of the input images."""
    channels: list[int] = Field(default=[32, 64], min_length=1)
    """Output channels of each stride-2 convolution; the last one is the token width."""
