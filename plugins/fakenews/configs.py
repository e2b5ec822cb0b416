"""Configs of the fakenews plugin (pydantic only)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from omnimm.config import ComponentConfig, EncoderRef, Ref, field_error

DetectorRef = Annotated[ComponentConfig, Ref("detectors")]


class EmbeddingDetectorConfig(ComponentConfig):
    """`fakenews/embedding`: frozen sentence embeddings of title + description + text, then a fast classifier."""

    encoder: EncoderRef = Field(
        default_factory=lambda: {"name": "hf/sentence-encoder", "max_length": 256},  # type: ignore[arg-type,return-value]
        validate_default=True,
    )
    """Any encoder with `encode(texts)`; default: the packaged all-MiniLM-L6-v2 reading the first 256 tokens."""
    classifier: Literal["lightgbm", "logistic"] = "logistic"
    """LightGBM (early stopping on the validation split) or L2-regularised logistic regression."""
    max_chars: int = Field(4000, ge=100)
    """Characters of each article passed to the encoder."""


class CharNgramDetectorConfig(ComponentConfig):
    """`fakenews/char-ngram`: TF-IDF of character n-grams (within word boundaries, case kept) + logistic regression.

    It sees how an article is written (punctuation, spelling, word endings), not only what it is about."""

    ngram_range: tuple[int, int] = (2, 5)
    """Shortest and longest character n-gram."""
    max_features: int | None = Field(200_000, ge=1)
    """Most frequent n-grams kept (unset: all that occur in at least two training articles)."""
    C: float = Field(10.0, gt=0)
    """Inverse L2 strength of the logistic regression (fixed: no model selection on the small validation mixture)."""
    max_chars: int = Field(4000, ge=100)
    """Characters of each article read."""

    @model_validator(mode="after")
    def _range(self) -> CharNgramDetectorConfig:
        low, high = self.ngram_range
        if not 1 <= low <= high:
            raise field_error("ngram_range", f"expected 1 <= low <= high, got {list(self.ngram_range)}")
        return self


class TransformerDetectorConfig(ComponentConfig):
    """`fakenews/transformer`: a transformers encoder fine-tuned as a real/fake classifier (HF Trainer)."""

    path: str | None = None
    """A local encoder folder; unset: the packaged all-MiniLM-L6-v2 (with a fresh classification head)."""
    max_length: int = Field(256, ge=16)
    epochs: int = Field(6, ge=1)
    batch_size: int = Field(16, ge=1)
    learning_rate: float = Field(5e-5, gt=0)
    patience: int = Field(2, ge=1)
    """Early stopping: epochs without a better validation loss before training stops (best epoch restored); the
    sweep validates on a mixture of the same phase and share as the training mixture."""


class SubclassAccuracyConfig(ComponentConfig):
    """`fakenews/subclass-accuracy`: accuracy per subclass, macro-F1, and the human-vs-machine confusion."""

    threshold: float = Field(0.5, gt=0, lt=1)
    """P(fake) at or above this is a "fake" prediction."""


class SweepConfig(ComponentConfig):
    """`omnimm fakenews sweep CONFIG`: the phase x machine-fake-share grid, several seeds, several detectors."""

    data: str
    """A folder of `{HR,HF,MR,MF}.json` (PolitiFact++ format) or a CSV/JSONL of records with `subclass`."""
    output_dir: str
    phases: list[Literal["human-legacy", "coexistence", "machine-dominance"]] = Field(
        default_factory=lambda: ["human-legacy", "coexistence", "machine-dominance"]
    )
    machine_fake_shares: list[float] = Field(default_factory=lambda: [0.0, 0.1, 0.25, 0.33, 0.5, 0.75, 1.0])
    """Shares of the fake class written by machines (0.33: the paper's one-third point)."""
    seeds: list[int] = Field(default_factory=lambda: list(range(10)))
    """Each seed draws its own group split and subclass orders (mixtures are nested prefixes of those) and seeds its
    detectors; every setting sees the same seeds, so settings are compared paired over seeds."""
    detectors: dict[str, DetectorRef] = Field(
        default_factory=lambda: {"embedding": {"name": "fakenews/embedding"}},  # type: ignore[dict-item]
        validate_default=True,
    )
    """Name -> detector config (`fakenews/embedding`, `fakenews/char-ngram` or `fakenews/transformer`)."""
    test_fraction: float = Field(0.3, gt=0, lt=1)
    validation_fraction: float = Field(0.15, ge=0, lt=1)
    real_size: int | None = Field(None, ge=1)
    """Real items per training mixture; unset: the largest every phase can fill in every seed's split."""
    fake_size: int | None = Field(None, ge=1)
    """Fake items per training mixture; unset: likewise."""
    drop_contradictions: bool = True
    """Drop every id whose normalised text carries both labels (they are listed in sweep.json)."""
    bootstrap_resamples: int = Field(10_000, ge=100)
    """Resamples of the paired bootstrap over seeds (95% percentile intervals)."""

    @model_validator(mode="after")
    def _grid(self) -> SweepConfig:
        for index, share in enumerate(self.machine_fake_shares):
            if not 0 <= share <= 1:
                raise field_error(f"machine_fake_shares.{index}", f"expected a fraction in [0, 1], got {share}")
        if not self.detectors:
            raise field_error("detectors", "name at least one detector")
        return self
