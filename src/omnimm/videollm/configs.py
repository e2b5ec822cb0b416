"""Configs of the video LLM, its frame sampling and its conversation dataset (pydantic only)."""

from __future__ import annotations

import fnmatch
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from omnimm.config import (
    AdapterRef,
    ComponentConfig,
    Config,
    ConnectorRef,
    EncoderRef,
    LLMRef,
    check_identifier_keys,
    check_part_patterns,
    field_error,
)
from omnimm.training.configs import LoRASettings


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


class ConnectorConfig(ComponentConfig):
    """Options every connector shares; a connector's own config subclasses it."""

    loss_weights: dict[str, float] = Field(default_factory=dict)
    """Weight of each auxiliary loss the connector returns (e.g. `{balance: 0.01, z: 0.001}`); unset ones take the
    connector's defaults. The model adds `weight x loss` to the LM loss and logs each loss on its own."""

    def group_patterns(self) -> dict[str, list[str]]:
        """Config field -> the token group references (wildcards allowed) it reads, for checks at validation."""
        return {}

    def part_names(self) -> list[str]:
        """Sub-modules that `freeze`, stage `train:` lists and learning rates can name as `connector.<name>`."""
        return []


class ProjectorConnectorConfig(ConnectorConfig):
    """Every token of the chosen groups, projected to the LLM's width (no pooling): `T * (n_1 + n_2 + ...)`."""

    inputs: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    """Token groups to pass on (`vision.cls`, `vision.*`, `*`), joined per frame in this order."""
    projector: AdapterRef = Field(default_factory=lambda: {"name": "omnimm/mlp", "depth": 2})
    """Maps each token to the LLM's width (`omnimm/mlp`: `depth: 1` linear, `2` mlp2x_gelu)."""
    merge: Literal["tokens", "features"] = "tokens"
    """`tokens`: groups side by side in each frame; `features`: groups of equal length concatenated channel-wise."""
    shared: bool = True
    """One projector for every group (they must have one width), or one per group."""
    output: str = "video"
    """Name of the output group."""

    def group_patterns(self) -> dict[str, list[str]]:
        return {"inputs": list(self.inputs)}

    def part_names(self) -> list[str]:
        return ["projector" if self.shared or self.merge == "features" else "projectors"]


class VisualGroupTokens(Config):
    """The tokens around one output group of the connector in the LLM's sequence."""

    placeholder: str | None = None
    """The token whose positions receive the group's features. Default: the prompt marker (`visual_token`) when
    the connector has one output group, else `<{group}>`."""
    start: str | None = None
    """A delimiter token in front of the group (e.g. Valley's `<im_start>`, Qwen2-VL's `<|vision_start|>`)."""
    end: str | None = None
    """A delimiter token after the group (e.g. `<im_end>`)."""


_REPLACED = {
    "adapter": "the pooling adapter is now the connector",
    "projector": "the projector now sits inside the connector",
    "fuser": "a connector reads every encoder's token groups itself",
    "project_first": "it is an option of the connector (e.g. valley/stpool's project_first)",
}


class VideoLLMConfig(ComponentConfig):
    """A video LLM: per-frame encoders giving named token groups, a connector, a causal LM."""

    encoders: dict[str, EncoderRef] = Field(min_length=1)
    """Encoders by key, e.g. `{vision: {name: openclip/vit, ...}, face: {...}}`; each sees every sampled frame and
    returns named token groups (`vision.cls`, `vision.patches`, ...)."""
    connector: ConnectorRef
    """Maps the clip's token groups to the LLM's visual tokens, e.g. `valley/stpool` (pooled patches + temporal
    CLS tokens), `omnimm/projector` (every token, no pooling) or a mixture-of-experts connector."""
    standardize: bool = False
    """Standardise each token group per position and channel with running statistics gathered while training (like
    the BatchNorm of MAE's linear probing). Off for pretrained encoders; on for randomly initialised ones, whose
    features barely differ from one video to the next."""
    llm: LLMRef
    """The language model (e.g. `hf/causal-lm`)."""
    template: str = "omnimm/llava-v0"
    """Conversation template (registry `templates`)."""
    frames: FrameSampling = Field(default_factory=FrameSampling)
    """Frame sampling for videos; an image is a one-frame video."""
    visual_token: str = "<video>"
    """Marker in prompts where the visual tokens go (added to the tokenizer if missing); it expands to every output
    group of the connector, each with its own placeholder and delimiters."""
    visual_groups: dict[str, VisualGroupTokens] = Field(default_factory=dict)
    """Per output group of the connector: its placeholder and delimiter tokens. Delimiter embeddings are a trainable
    part (`delimiters`), initialised to the mean of the LLM's embeddings."""
    max_length: int | None = Field(None, ge=8)
    """Longest token sequence; longer training examples are cut (with a warning and a count). Default: the LLM's
    `max_position_embeddings`."""
    freeze: list[str] = Field(default_factory=lambda: ["encoders"])
    """Parts built frozen: `encoders`, `encoders.<key>`, `connector`, `connector.<part>`, `delimiters`, `llm`
    (wildcards ok). Training stages set trainability themselves."""
    lora: LoRASettings | None = None
    """LoRA adapters on the LLM that travel with the model (set by training with `lora.merge: false`)."""
    feature_cache: str | None = None
    """A folder for the outputs of frozen encoders (one safetensors file per clip and encoder setting), so that a
    stage where they do not learn runs them once per video, not once per epoch. Not saved with the model."""

    @model_validator(mode="before")
    @classmethod
    def _renamed_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, why in _REPLACED.items():
                if key in data:
                    raise field_error(
                        key,
                        f"'{key}' was replaced by 'connector' ({why}); e.g. connector: {{name: valley/stpool, "
                        f"variant: v1, projector: {{name: omnimm/mlp, depth: 2}}}}",
                        data[key],
                    )
        return data

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
        self._check_group_refs()
        for group in self.visual_groups:
            check_identifier_keys({group: None}, "an output group name")
        check_part_patterns(self.freeze, self.part_names(), ("freeze",))
        return self

    def _check_group_refs(self) -> None:
        connector = self.connector
        if not isinstance(connector, ConnectorConfig):
            return
        known = self.known_group_refs()
        for field_name, patterns in connector.group_patterns().items():
            for index, pattern in enumerate(patterns):
                encoder, dot, _ = pattern.partition(".")
                where = ("connector", field_name) if len(patterns) == 1 else ("connector", field_name, index)
                if pattern != "*" and not dot:
                    raise field_error(where, f"'{pattern}' is not '<encoder key>.<group>' (e.g. vision.patches)")
                if not any(fnmatch.fnmatchcase(key, encoder) for key in self.encoders) and pattern != "*":
                    raise field_error(
                        where, f"'{pattern}': no encoder '{encoder}' (encoders: {', '.join(self.encoders)})"
                    )
                if known is not None and not fnmatch.filter(known, pattern):
                    raise field_error(where, f"'{pattern}' matches no token group (groups: {', '.join(known)})")

    def known_group_refs(self) -> list[str] | None:
        """Every `<encoder>.<group>` reference, when each encoder's config can tell its group names."""
        refs: list[str] = []
        for key, encoder in self.encoders.items():
            names = getattr(encoder, "group_names", None)
            groups = names() if callable(names) else None
            if groups is None:
                return None
            refs += [f"{key}.{group}" for group in groups]
        return refs

    def part_names(self) -> list[str]:
        """Names training stages and `freeze` can use."""
        parts = ["encoders", *(f"encoders.{key}" for key in self.encoders), "connector"]
        sub = self.connector.part_names() if isinstance(self.connector, ConnectorConfig) else []
        parts += [f"connector.{name}" for name in sub]
        if any(g.start is not None or g.end is not None for g in self.visual_groups.values()):
            parts.append("delimiters")
        return [*parts, "llm"]


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
    """Keep decoded clips and their preprocessed frames in memory after their first read (small datasets, many
    epochs; preprocessing must be deterministic, as every encoder's own is)."""
