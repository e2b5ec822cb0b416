"""Configs of the video LLM, its frame sampling and its conversation dataset (pydantic only)."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from omnimm.config import (
    AdapterRef,
    ComponentConfig,
    Config,
    EncoderRef,
    FuserRef,
    LLMRef,
    check_identifier_keys,
    check_part_patterns,
    field_error,
)


class FrameSampling(Config):
    """Which frames of a video the model sees. Neither option set means `num_frames: 8`."""

    num_frames: int | None = Field(None, ge=1)
    """Sample this many frames spread evenly over the video."""
    fps: float | None = Field(None, gt=0)
    """Or sample at this rate (frames per second of video)."""
    max_frames: int = Field(32, ge=1)
    """Cap for rate-based sampling (long videos are thinned evenly)."""

    @model_validator(mode="after")
    def _one_rule(self) -> FrameSampling:
        if self.num_frames is not None and self.fps is not None:
            raise field_error("fps", "give num_frames or fps, not both")
        if self.num_frames is None and self.fps is None:
            self.num_frames = 8
        return self


class VideoLLMConfig(ComponentConfig):
    """A video LLM: per-frame encoders, optional fuser, temporal adapter, projector, causal LM."""

    encoders: dict[str, EncoderRef] = Field(min_length=1)
    """Vision encoders by key, e.g. `{vision: {name: openclip/vit, ...}}`; each sees every sampled frame."""
    fuser: FuserRef | None = None
    """Combines the encoders' per-frame tokens; required with more than one encoder."""
    adapter: AdapterRef | None = None
    """Turns `[T, 1+N, D]` frame tokens into the visual tokens (e.g. `valley/stpool`); unset keeps all T*(1+N)."""
    projector: AdapterRef
    """Maps visual features to the LLM's width (e.g. `omnimm/mlp` with `depth: 1` (linear) or `2` (mlp2x_gelu));
    its `out_dim` defaults to the LLM's hidden size."""
    project_first: bool = True
    """Project each frame's tokens before the adapter pools them (as Valley does); `false` pools first."""
    standardize: bool = False
    """Standardise frame tokens per position and channel with running statistics gathered while training (like
    the BatchNorm of MAE's linear probing). Off for pretrained encoders; on for randomly initialised ones, whose
    features barely differ from one video to the next."""
    llm: LLMRef
    """The language model (e.g. `hf/causal-lm`)."""
    template: str = "omnimm/llava-v0"
    """Conversation template (registry `templates`)."""
    frames: FrameSampling = Field(default_factory=FrameSampling)
    """Frame sampling for videos; an image is a one-frame video."""
    visual_token: str = "<video>"
    """Placeholder in prompts where the visual tokens go (added to the tokenizer if missing)."""
    freeze: list[str] = Field(default_factory=lambda: ["encoders"])
    """Parts built frozen: `encoders`, `encoders.<key>`, `fuser`, `adapter`, `projector`, `llm` (wildcards ok).
    Training stages set trainability themselves."""

    @field_validator("encoders")
    @classmethod
    def _keys(cls, encoders: dict[str, ComponentConfig]) -> dict[str, ComponentConfig]:
        check_identifier_keys(encoders, "an encoder key")
        return encoders

    @field_validator("template")
    @classmethod
    def _known_template(cls, template: str) -> str:
        from omnimm.registry import templates

        if template not in templates:
            raise ValueError(templates.unknown_message(template))
        return template

    @model_validator(mode="after")
    def _parts(self) -> VideoLLMConfig:
        if len(self.encoders) > 1 and self.fuser is None:
            raise field_error("fuser", f"required with more than one encoder ({', '.join(self.encoders)})")
        check_part_patterns(self.freeze, self.part_names(), ("freeze",))
        return self

    def part_names(self) -> list[str]:
        """Names training stages and `freeze` can use."""
        parts = ["encoders", *(f"encoders.{key}" for key in self.encoders)]
        parts += [p for p, present in (("fuser", self.fuser), ("adapter", self.adapter)) if present is not None]
        return [*parts, "projector", "llm"]


class ConversationDataConfig(ComponentConfig):
    """Conversations about videos or images in Valley's / LLaVA's JSON format (a list, or JSON Lines).

    Each record: `{"id": ..., "video": "clip.mp4" (or "image": ...), "conversations": [{"from": "human", "value":
    "<video>\\nWhat happens?"}, {"from": "gpt", "value": "..."}]}`; several turns allowed.
    """

    path: str
    """The JSON or JSONL file."""
    media_root: str | None = None
    """Folder that video/image paths are relative to (default: the file's folder)."""
    limit: int | None = Field(None, ge=1)
    """Use only the first `limit` records."""
    cache: bool = False
    """Keep decoded clips in memory after their first read (small datasets, many epochs)."""
