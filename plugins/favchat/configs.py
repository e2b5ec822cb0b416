"""Configs of favchat's connector (pydantic only): the mixture-of-experts adapter that fuses scene and face tokens."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from omnimm.config import ConnectorRef, field_error
from omnimm.videollm.configs import ConnectorConfig


class MoEAdapterConfig(ConnectorConfig):
    """`favchat/moe-adapter`: scene tokens (a nested connector over the general encoder) and multi-granularity face
    tokens (one group per face-encoder depth), projected to one width and passed through a sparse mixture of experts
    into the LLM's width. `num_experts: 1` is the dense ablation (one MLP, no router, no auxiliary losses)."""

    scene: ConnectorRef | None = Field(default_factory=lambda: {"name": "valley/stpool", "variant": "v1"})
    """The connector applied to the general encoder's groups, built with `out_dim = width` (its projector maps into
    the mixture's input width); e.g. `{name: valley/stpool, variant: v1}` (pooled patches + temporal tokens) or
    `{name: omnimm/projector, inputs: [vision.patches]}`. Its output groups enter the LLM as `scene_<group>`.
    `null`: no scene tokens."""
    face: list[str] = Field(default_factory=lambda: ["face.stage2", "face.stage3", "face.stage4"])
    """The face encoder's depth groups (wildcards allowed, e.g. `face.stage*`), one granularity level each, in this
    order; each `[B, T, n_l, d_l]`. `[]`: no face tokens."""
    face_mask: str | None = None
    """The encoder key whose frame mask (True: a face was found) applies to the face levels. Default: each level's
    own encoder key. Without a mask for that key every frame counts as a face frame."""
    face_time: Literal["mean", "frames"] = "mean"
    """`mean`: each level averaged over the frames where a face was found (`n_l` tokens per level; a clip without
    any face gives zero tokens, left out of routing statistics and losses); `frames`: every frame's tokens kept
    (`T * n_l` per level; frames without a face give zero tokens, left out the same way)."""
    face_groups: Literal["one", "per_level"] = "one"
    """`one`: the levels side by side in one output group `face`; `per_level`: one group per level,
    `face_0`, `face_1`, ... (each with its own placeholder and delimiters in the LLM's sequence)."""
    width: int | None = Field(None, ge=1)
    """Input width of the mixture: the scene connector's output width and the face projectors' output width.
    Default: the widest input group (scene connector inputs and face levels)."""
    num_experts: int = Field(4, ge=1)
    """Experts in the mixture; `1` is the dense ablation (no router, no auxiliary losses)."""
    top_k: int = Field(2, ge=1)
    """Experts per token (ignored with `num_experts: 1`). With `top_k > 1` the chosen probabilities are
    renormalised to sum to 1; with `top_k: 1` the token's output is scaled by the raw softmax probability of its
    expert (as Switch Transformer does)."""
    expert_hidden: int | None = Field(None, ge=1)
    """Hidden width of every expert (`width -> expert_hidden -> out_dim`, GELU, like mlp2x_gelu). Default: the
    LLM's width (out_dim), as LLaVA's projector."""
    shared_expert: bool = False
    """An always-on expert of the same shape added to every token's output (with weight 1)."""
    capacity_factor: float | None = Field(None, gt=0)
    """Each expert takes at most `ceil(capacity_factor * tokens * top_k / num_experts)` assignments per forward;
    the rest are dropped (their weight lost; the token keeps its other slots and the shared expert) and counted in
    the `dropped` statistic. First choices are served before second choices, then tokens in order.
    Default: no limit."""
    router_noise: float = Field(0.0, ge=0.0, lt=1.0)
    """Multiplicative jitter in training: the router reads its input times `U(1 - eps, 1 + eps)` noise (Switch
    Transformer's input jitter; the experts see the clean tokens). 0: off."""
    init_experts_from: str | None = None
    """A safetensors file with a trained `omnimm/mlp` projector (depth 2, `width -> expert_hidden -> out_dim`) copied
    into every expert and the shared expert when the connector is built (sparse upcycling). It may hold a whole
    model: the projector is found by its `layers.0.weight` key (see `init_experts_key`)."""
    init_experts_key: str | None = None
    """Prefix of the projector's keys in `init_experts_from`, e.g. `connector.projector.` for a saved valley video
    LLM. Default: the only prefix in the file with keys `<prefix>layers.0.weight` and `<prefix>layers.2.weight`."""

    @model_validator(mode="after")
    def _consistent(self) -> MoEAdapterConfig:
        if self.scene is None and not self.face:
            raise field_error("face", "no inputs: set face levels, a scene connector, or both")
        if self.num_experts > 1 and self.top_k > self.num_experts:
            raise field_error("top_k", f"must be <= num_experts ({self.num_experts})", self.top_k)
        return self

    def without_weights(self) -> MoEAdapterConfig:
        return super().without_weights().model_copy(update={"init_experts_from": None, "init_experts_key": None})

    def group_patterns(self) -> dict[str, list[str]]:
        patterns: dict[str, list[str]] = {"face": list(self.face)} if self.face else {}
        if isinstance(self.scene, ConnectorConfig):
            for field_name, refs in self.scene.group_patterns().items():
                patterns[f"scene.{field_name}"] = list(refs)
        return patterns

    def part_names(self) -> list[str]:
        parts = ["router", "experts"] if self.num_experts > 1 else ["experts"]
        if self.shared_expert:
            parts.append("shared_expert")
        if self.scene is not None:
            parts.append("scene")
        if self.face:
            parts += ["face_projectors", "level_embeddings"]
        return parts
