"""Configs of valley's components (pydantic only)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from omnimm.config import ComponentConfig


class STPoolConfig(ComponentConfig):
    """Valley's spatio-temporal pooling: each patch position pooled over the frames, plus the T CLS tokens."""

    variant: Literal["v1", "v2", "v3"] = "v1"
    """`v1`: mean (or max) over frames; `v2`: learned importance weights over frames; `v3`: the mean plus a
    one-layer temporal transformer per patch position."""
    reduce: Literal["mean", "max"] = "mean"
    """Reduction over frames for `v1`."""
    temporal_tokens: bool = True
    """Append the T per-frame CLS tokens (Valley's temporal tokens). `false` gives N tokens only (an ablation)."""
    heads: int = Field(4, ge=1)
    """Attention heads of the `v3` temporal transformer (must divide the feature width)."""
    max_frames: int = Field(64, ge=1)
    """Longest clip the `v3` temporal position embedding covers."""


class VCGPTPoolConfig(ComponentConfig):
    """Video-ChatGPT's pooling: T temporal tokens (mean over space) then N spatial tokens (mean over time)."""

    drop_cls: bool = True
    """Pool patch tokens only, as Video-ChatGPT does (CLIP patch features without the CLS token)."""


class ShapesDataConfig(ComponentConfig):
    """The synthetic moving-shapes videos of the demo (see `omnimm_plugins.valley.shapes`)."""

    root: str
    """Folder with `index.json` and the clips (written by `generate_shapes`)."""
    split: Literal["train", "test"] = "train"
    """Which split of the index to use."""
    task: Literal["caption", "qa"] = "qa"
    """`caption`: one caption per clip (stage 1); `qa`: questions and answers, some multi-turn (stage 2)."""
    limit: int | None = Field(None, ge=1)
    """Use only the first `limit` clips."""
    cache: bool = True
    """Keep decoded clips in memory after their first read."""
