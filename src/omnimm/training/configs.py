"""Training configs (pydantic only): a list of stages, each saying what trains, on which data, how fast."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator

from omnimm.configbase import ComponentConfig, Config
from omnimm.refs import Ref

DatasetRef = Annotated[ComponentConfig, Ref("datasets")]
"""A field holding a dataset's config."""

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_NAME_LENGTH = 100  # file systems take 255 bytes per name; checkpoint folders nest below it


class LoRASettings(Config):
    """LoRA adapters on the LLM (peft). With LoRA, a stage that trains `llm` trains only the adapters."""

    rank: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Module names to adapt (e.g. `[q_proj, v_proj]`), or every linear layer."""
    merge: bool = True
    """Fold the adapters into the LLM's weights at the end of the stage."""


class StageConfig(Config):
    """One training stage."""

    name: str
    """A short name; the stage's checkpoints go to `<output_dir>/<name>/`."""
    train: list[str] = Field(min_length=1)
    """Parts that learn (e.g. `[projector]`, `[projector, llm]`, wildcards ok); everything else is frozen."""
    data: DatasetRef
    """The stage's data (a name from the `datasets` registry with its options)."""
    lora: LoRASettings | None = None
    """Train the LLM through LoRA adapters instead of all its weights."""
    learning_rate: float = Field(2e-5, gt=0)
    part_learning_rates: dict[str, float] = Field(default_factory=dict)
    """Per-part overrides, e.g. `{projector: 1e-3}`."""
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, ge=-1)
    """Stop after this many optimizer steps (overrides `epochs`); -1 for none."""
    batch_size: int = Field(8, ge=1)
    """Per-device batch size."""
    grad_accum: int = Field(1, ge=1)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.03, ge=0, le=1)
    scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    shuffle: bool = True
    """`false` reads the data in order (reproducible comparisons across process counts)."""
    save_steps: int = Field(500, ge=1)
    logging_steps: int = Field(10, ge=1)

    @field_validator("name")
    @classmethod
    def _file_name(cls, name: str) -> str:
        if not _NAME.match(name) or name in (".", ".."):
            raise ValueError("use letters, digits, '.', '_' or '-', and not just '.' or '..' (it names a folder)")
        if len(name) > _NAME_LENGTH:
            raise ValueError(f"at most {_NAME_LENGTH} characters (it names a folder)")
        return name


class TrainConfig(Config):
    """Staged training of the run's model."""

    output_dir: str
    """Where each stage writes its checkpoints (`<name>/checkpoint-*`) and final model (`<name>/final`)."""
    stages: list[StageConfig] = Field(min_length=1)
    seed: int = 0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    save_total_limit: int = Field(2, ge=1)
    """Checkpoints kept per stage."""
    dataloader_workers: int = Field(0, ge=0)

    @field_validator("stages")
    @classmethod
    def _unique_names(cls, stages: list[StageConfig]) -> list[StageConfig]:
        seen: set[str] = set()
        for stage in stages:
            if stage.name in seen:
                raise ValueError(f"two stages are called '{stage.name}'")
            seen.add(stage.name)
        return stages
