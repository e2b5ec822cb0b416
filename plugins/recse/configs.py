"""Configs of the recse plugin (pydantic only).

Several choices are not fixed by the paper (its code holds no implementation); every such choice is an option here,
marked "open choice" in its description, with the value used in the benchmarks as the default.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from omnimm.config import ComponentConfig, EncoderRef, field_error


class ReshapeConfig(ComponentConfig):
    """`recse/reshape`: token features -> token-interaction matrix -> a second view of the sentence."""

    source: Literal["embeddings", "last"] = "embeddings"
    """Open choice: which token features are reshaped: the encoder's input features (embedding layer output, the
    paper's "input features") or its last hidden states."""
    scale: bool = True
    """Divide x x^T by sqrt(d), as attention logits are."""
    signed_sqrt: bool = True
    """Open choice: sign(g) * sqrt(|g|) on each entry (tames the few large self-similarities)."""
    normalize: Literal["none", "row-l2", "softmax"] = "none"
    """Open choice: normalise each token's row of interactions (padding excluded). With `row-l2` the CNN tower
    hardly learns to tell sentences apart (its inter-view loss stays near ln(batch)); hence `none`."""
    tower: Literal["cnn", "aggregate"] = "cnn"
    """Open choice: how the matrix becomes a vector. `cnn`: the matrix as a one-channel pseudo-image through a small
    CNN (MCSE-style second tower); `aggregate`: each token's features re-mixed by its (softmax) interaction row, then
    mean-pooled and projected."""
    channels: int = Field(16, ge=1)
    """CNN tower: channels of its two 3x3 convolutions."""
    pool: int = Field(4, ge=1)
    """CNN tower: adaptive average pooling to pool x pool before the projection."""
    max_length: int = Field(32, ge=2)
    """Token matrices are padded to this size (the training max length)."""
    out_dim: int | None = Field(None, ge=1)
    """Size of the view embedding; unset: the encoder's hidden size."""
    shuffle: bool = False
    """Control experiment: permute each sentence's matrix entries at random (within its tokens), so the view keeps
    the values but loses which token relates to which. A gain that survives this is not due to the structure."""


class ContrastiveConfig(ComponentConfig):
    """`recse/contrastive`: a sentence encoder trained with a contrastive framework, optionally plus recse's view."""

    encoder: EncoderRef = Field(
        default_factory=lambda: {"name": "hf/sentence-encoder", "pooling": "cls"},  # type: ignore[arg-type,return-value]
        validate_default=True,
    )
    """The encoder being trained (`hf/sentence-encoder`; its `pooling` is used at evaluation and export)."""
    framework: Literal["simcse", "repeat"] = "simcse"
    """`simcse`: unsupervised SimCSE, two dropout views of each sentence. `repeat`: a discrete augmentation
    (ESimCSE-style word repetition): `views - 1` augmented copies, each its own forward pass."""
    views: int = Field(2, ge=2)
    """Forward passes per sentence (the anchor included). SimCSE uses 2."""
    repeat_rate: float = Field(0.32, ge=0, le=1)
    """`repeat`: up to this share of the tokens is duplicated in each augmented copy."""
    temperature: float = Field(0.05, gt=0)
    """InfoNCE temperature tau (cosine / tau)."""
    train_mlp: bool = True
    """SimCSE's MLP over the sentence embedding during training only (dropped at evaluation and export)."""
    reshape: ReshapeConfig | None = None
    """recse's reshaped view; unset: the plain framework."""
    reshape_weight: float = Field(0.1, ge=0)
    """lambda: weight of the inter-view loss (sentence embedding vs reshaped view). Open choice of value."""
    reshape_projection: Literal["linear", "linear-tanh"] = "linear"
    """The projection of the sentence embedding that meets the reshaped view (to `reshape.out_dim`): a linear map,
    or Linear + Tanh (SimCSE's MLP shape; the second configuration of the benchmarks)."""
    reshape_temperature: float | None = Field(None, gt=0)
    """tau of the inter-view loss; unset: `temperature`."""

    @model_validator(mode="after")
    def _views(self) -> ContrastiveConfig:
        if self.framework == "simcse" and self.views != 2:
            raise field_error("views", "simcse uses exactly 2 dropout views; use framework: repeat for more views")
        return self


class SentenceSource(ComponentConfig):
    """Unlabelled training sentences."""

    stsb: str | None = None
    """An STS-B folder: the sentences of its train split (never dev/test pairs)."""
    script: str | None = None
    """A `SPEAKER:` script (e.g. tinyshakespeare): each speech line of 4+ words."""
    text: str | None = None
    """A text file, one sentence per line."""
    limit: int | None = Field(None, ge=1)
    """Keep at most this many sentences (a seeded sample)."""


class RecseTrainConfig(ComponentConfig):
    """`omnimm recse train CONFIG`: model, data, SimCSE's conventions as defaults."""

    model: ContrastiveConfig = Field(default_factory=ContrastiveConfig)
    data: SentenceSource
    output_dir: str
    """Checkpoints go to `output_dir/checkpoints`, the best model (sentence-transformers format) to
    `output_dir/model`."""
    eval_stsb: str | None = None
    """An STS-B folder: evaluate Spearman on its dev split every `eval_steps` and keep the best checkpoint."""
    batch_size: int = Field(64, ge=2)
    learning_rate: float = Field(3e-5, gt=0)
    head_learning_rate: float = Field(1e-3, gt=0)
    """Learning rate of the randomly initialised reshape tower and its projection (open choice: at the encoder's
    3e-5 the tower barely moves within a SimCSE-length run)."""
    max_length: int = Field(32, ge=4)
    max_steps: int = Field(1000, ge=1)
    eval_steps: int = Field(125, ge=1)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    seed: int = 42

    @model_validator(mode="after")
    def _data(self) -> RecseTrainConfig:
        if not (self.data.stsb or self.data.script or self.data.text):
            raise field_error("data", "give at least one of stsb, script, text")
        if self.model.reshape is not None and self.model.reshape.max_length < self.max_length:
            raise field_error("model.reshape.max_length", f"must be >= max_length ({self.max_length})")
        return self


class STSBEvaluatorConfig(ComponentConfig):
    """`recse/stsb`: Spearman and Pearson correlation of cosine similarities with STS-B gold scores."""

    folder: str
    """The STS-B folder (`sts-train.csv`, `sts-dev.csv`, `sts-test.csv`)."""
    split: Literal["train", "dev", "test"] = "dev"
    """Select on train/dev; report on test."""
    batch_size: int = Field(128, ge=1)


class STSCSVEvaluatorConfig(ComponentConfig):
    """`recse/sts-csv`: the same correlations for any CSV/TSV of `sentence1, sentence2, score`."""

    path: str
    batch_size: int = Field(128, ge=1)
