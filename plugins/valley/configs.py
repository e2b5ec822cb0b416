"""Configs of valley's components (pydantic only)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from omnimm.config import AdapterRef, ComponentConfig
from omnimm.videollm.configs import ConnectorConfig

_LINEAR = {"name": "omnimm/mlp", "depth": 1}


class STPoolConfig(ConnectorConfig):
    """Valley's spatio-temporal pooling as a connector: each patch position pooled over the T frames, plus the T
    CLS tokens of the frames (the temporal tokens), projected into the LLM: `N + T` visual tokens."""

    variant: Literal["v1", "v2", "v3", "v3-zero"] = "v1"
    """`v1`: mean (or max) over frames; `v2`: learned importance weights over frames; `v3`: Valley's, the mean plus
    a one-layer temporal transformer per patch position read out at the last time step (fixed sinusoidal time
    positions, post-norm); `v3-zero`: omnimm's variant of v3 that starts as v1 (learned time embeddings, mean
    readout, pre-norm, a zero-initialised output projection)."""
    reduce: Literal["mean", "max"] = "mean"
    """Reduction over frames for `v1`."""
    temporal_tokens: bool = True
    """Append the T per-frame CLS tokens (Valley's temporal tokens). `false` gives N tokens only (an ablation)."""
    patches: str = "vision.patches"
    """The token group pooled over time."""
    cls: str = "vision.cls"
    """The token group whose per-frame tokens become the temporal tokens (one token per frame)."""
    projector: AdapterRef = Field(default_factory=lambda: dict(_LINEAR))
    """Maps tokens to the LLM's width; Valley uses a linear layer (`depth: 1`), LLaVA-1.5 style `depth: 2`."""
    project_first: bool = True
    """Project every frame's tokens, then pool (as Valley does); `false` pools in the encoder's width first."""
    split: bool = False
    """Two output groups, `patches` (N) and `temporal` (T), each with its own placeholder and delimiters (Valley's
    `mm_use_im_start_end`: `<im_start> ... <im_end> <vi_start> ... <vi_end>`); `false`: one group `video`."""
    heads: int | None = Field(None, ge=1)
    """Attention heads of the v3 temporal transformer (must divide its width). Default: 8 (`v3`), 4 (`v3-zero`)."""
    ff_dim: int | None = Field(None, ge=1)
    """Feed-forward width of the v3 temporal transformer. Default: 2048 (`v3`), 4 x width (`v3-zero`)."""
    dropout: float | None = Field(None, ge=0.0, lt=1.0)
    """Dropout of the v3 temporal transformer. Default: 0.1 (`v3`), 0 (`v3-zero`)."""
    max_frames: int = Field(64, ge=1)
    """Longest clip the v3 time positions cover."""

    def group_patterns(self) -> dict[str, list[str]]:
        return {"patches": [self.patches], "cls": [self.cls]}

    def part_names(self) -> list[str]:
        return ["projector", "pool"]


class VCGPTPoolConfig(ConnectorConfig):
    """Video-ChatGPT's pooling as a connector: T temporal tokens (mean over space), then N spatial tokens (mean over
    time), projected into the LLM."""

    patches: str = "vision.patches"
    """The patch token group."""
    cls: str = "vision.cls"
    """The CLS token group (pooled with the patches only with `drop_cls: false`)."""
    drop_cls: bool = True
    """Pool patch tokens only, as Video-ChatGPT does (CLIP patch features without the CLS token)."""
    projector: AdapterRef = Field(default_factory=lambda: dict(_LINEAR))
    """Maps the pooled tokens to the LLM's width (Video-ChatGPT: a linear layer)."""
    project_first: bool = False
    """Pool in the encoder's width, then project (as Video-ChatGPT does); `true` projects first."""

    def group_patterns(self) -> dict[str, list[str]]:
        return {"patches": [self.patches], "cls": [self.cls]}

    def part_names(self) -> list[str]:
        return ["projector"]


class ShapesDataConfig(ComponentConfig):
    """The synthetic moving-shapes videos of the demo (see `omnimm_plugins.valley.shapes`)."""

    root: str
    """Folder with `index.json` and the clips (written by `generate_shapes`)."""
    split: Literal["train", "test"] = "train"
    """Which split of the index to use."""
    task: Literal["caption", "qa"] = "qa"
    """`caption`: one caption per clip (stage 1); `qa`: questions and answers, some multi-turn (stage 2)."""
    followups: bool = True
    """With `task: qa`, every fourth conversation asks a follow-up question (training); `false` asks each question
    on its own (evaluation)."""
    limit: int | None = Field(None, ge=1)
    """Use only the first `limit` clips."""
    cache: bool = True
    """Keep decoded clips and their preprocessed frames in memory after their first read."""
