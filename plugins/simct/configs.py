"""Configs of the simct components (pydantic only)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from omnimm.config import ComponentConfig, EncoderRef, field_error


class GateConfig(ComponentConfig):
    """The consistency gate between two development stages of an LLM service."""

    alpha: float = Field(0.05, gt=0, lt=0.5)
    """Significance level of the difference test and of each one-sided test of the equivalence test."""
    margin: float = Field(0.05, gt=0, lt=1)
    """Equivalence margin, in score units: a mean cross-minus-within difference inside `±margin` counts as the same."""
    score: Literal["auto", "classifier", "rouge1", "rouge2", "rougeL", "bleu", "chrf", "meteor", "embedding_cosine"] = (
        "auto"
    )
    """How two responses are compared: the classifier's P(consistent), or one feature. `auto`: the classifier if one
    is given, else chrF."""
    classifier: str | None = None
    """Folder of a trained response-wise classifier (`omnimm simct train`)."""
    encoder: EncoderRef | None = None
    """A sentence encoder for the `embedding_cosine` feature (e.g. `hf/sentence-encoder`)."""
    segmentation: Literal["char", "jieba"] = "char"
    """Chinese word units for the word-level features: characters, or jieba words."""
    min_prompts: int = Field(5, ge=2)
    """Fewer prompts in common than this gives INCONCLUSIVE."""
    max_pairs_per_prompt: int = Field(16, ge=1)
    """Cap on compared sample pairs per prompt (cross and within each)."""
    top_pairs: int = Field(10, ge=0)
    """How many of the least consistent response pairs the report shows."""
    workers: int | None = Field(None, ge=1)
    """Processes for feature extraction (default: the CPU count)."""
    seed: int = 0
    """Seeds the choice of sample pairs when a prompt has more than `max_pairs_per_prompt`, and the bootstrap."""

    @model_validator(mode="after")
    def _sources(self) -> GateConfig:
        if self.score == "classifier" and self.classifier is None:
            raise field_error("classifier", "score 'classifier' needs a classifier folder")
        if self.score == "embedding_cosine" and self.encoder is None:
            raise field_error("encoder", "score 'embedding_cosine' needs a sentence encoder")
        return self
