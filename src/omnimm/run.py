"""The root of a run file: the model to build and, optionally, how to train it."""

from __future__ import annotations

from pydantic import model_validator

from omnimm.configbase import Config, check_part_patterns
from omnimm.refs import ModelRef
from omnimm.training.configs import TrainConfig


class RunConfig(Config):
    """A run file: the model to build, and optionally its training stages. A file with a top-level `name` is a
    single component's config instead."""

    model: ModelRef
    """The composed model (a name from the `models` registry with its options)."""
    train: TrainConfig | None = None
    """Training stages; `omnimm train RUN.yaml` runs them."""

    @model_validator(mode="after")
    def _stages_name_real_parts(self) -> RunConfig:
        part_names = getattr(self.model, "part_names", None)
        if self.train is None or part_names is None:
            return self
        parts = part_names()
        for index, stage in enumerate(self.train.stages):
            check_part_patterns(stage.train, parts, ("train", "stages", index, "train"))
            check_part_patterns(stage.part_learning_rates, parts, ("train", "stages", index, "part_learning_rates"))
        check_part_patterns(self.train.gradient_checkpointing, parts, ("train", "gradient_checkpointing"))
        return self
