"""Training configs (pydantic only): a list of stages, each saying what trains, on which data, how fast."""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from omnimm.configbase import ComponentConfig, Config, field_error
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


class DistributedConfig(Config):
    """How training spreads over the processes `torchrun` starts; each mode is an existing engine driven by HF's
    `Trainer` (see `omnimm.training.distributed` for the arguments each one becomes)."""

    mode: Literal["ddp", "fsdp", "deepspeed"] = "ddp"
    """`ddp`: every process holds the whole model and its optimizer, gradients are averaged. `fsdp`: PyTorch FSDP2
    (`fully_shard`, through accelerate) shards parameters, gradients and optimizer state. `deepspeed`: a ZeRO stage."""
    sharding: Literal["full", "hybrid", "grad_op"] = "full"
    """FSDP: `full` shards over every process and gathers each wrapped block's parameters for its forward and again
    for its backward; `grad_op` keeps them gathered from the forward to the backward (less communication, more
    memory, like ZeRO-2); `hybrid` shards within groups of `shard_group_size` processes and replicates across
    groups (shard inside a node, replicate across nodes)."""
    shard_group_size: int | None = Field(None, ge=1)
    """FSDP `hybrid`: processes per shard group; default the processes of one node (`LOCAL_WORLD_SIZE`)."""
    wrap: list[str] | None = Field(None, min_length=1)
    """FSDP: module class names that each become a unit sharded and gathered on its own; default the LLM's decoder
    layers (its `_no_split_modules`) and each encoder's blocks. The rest of the model is one more unit."""
    cpu_offload: bool = False
    """FSDP: keep parameters, gradients and the optimizer step in CPU memory between uses; DeepSpeed: the optimizer
    state (and, at ZeRO-3, the parameters). Only on GPUs."""
    zero_stage: Literal[1, 2, 3] | None = None
    """DeepSpeed: 1 shards the optimizer state, 2 also the gradients, 3 also the parameters; default 2."""
    deepspeed_config: str | None = None
    """DeepSpeed: your own JSON file instead of `zero_stage` (HF fills its `"auto"` values from the stage)."""

    @model_validator(mode="after")
    def _options_of_the_mode(self) -> DistributedConfig:
        fsdp = ("sharding", "shard_group_size", "wrap")
        deepspeed = ("zero_stage", "deepspeed_config")
        owned = {name: "fsdp" for name in fsdp} | {name: "deepspeed" for name in deepspeed}
        defaults = {name: type(self).model_fields[name].default for name in owned}
        for name, mode in owned.items():
            value = getattr(self, name)
            if mode != self.mode and value != defaults[name]:
                raise field_error(name, f"is an option of mode: {mode}, not of mode: {self.mode}", value)
        if self.shard_group_size is not None and self.sharding != "hybrid":
            raise field_error("shard_group_size", "only with sharding: hybrid", self.shard_group_size)
        if self.zero_stage is not None and self.deepspeed_config is not None:
            raise field_error("zero_stage", "give zero_stage or deepspeed_config, not both", self.zero_stage)
        if self.mode == "ddp" and self.cpu_offload:
            raise field_error("cpu_offload", "needs mode: fsdp or deepspeed (ddp keeps everything on each device)")
        if self.deepspeed_config is not None:
            _check_deepspeed_file(self.deepspeed_config)
        return self


def _check_deepspeed_file(path: str) -> None:
    file = Path(path)
    if not file.is_file():
        raise field_error("deepspeed_config", f"no such file: {path}", path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, OSError) as error:
        raise field_error("deepspeed_config", f"{path} is not readable JSON ({error})", path) from None
    if not isinstance(data, dict):
        raise field_error("deepspeed_config", f"{path} holds a {type(data).__name__}, not a JSON object", path)
    zero = data.get("zero_optimization") or {}
    if zero.get("stage") == 3 and zero.get("stage3_gather_16bit_weights_on_model_save") is not True:
        # without it ZeRO-3 cannot hand the full weights over for model.safetensors
        message = "ZeRO-3 needs stage3_gather_16bit_weights_on_model_save: true (checkpoints save the full weights)"
        raise field_error("deepspeed_config", message, path)


CHECKPOINTABLE = ("llm", "encoders", "encoders.*")
"""Parts whose activations can be recomputed in the backward pass instead of kept (`gradient_checkpointing`)."""


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
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    """How the processes `torchrun --nproc_per_node N` starts share the work (`fsdp` needs at least two)."""
    gradient_checkpointing: list[str] = Field(default_factory=list)
    """Parts that recompute their activations in the backward pass instead of keeping them: `llm` (HF's
    `gradient_checkpointing_enable`), `encoders` or `encoders.<key>` (each block of the encoder). Less memory,
    about one more forward pass of those parts per step; it only acts where a part is on the backward path."""

    @field_validator("gradient_checkpointing")
    @classmethod
    def _checkpointable(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            if not any(fnmatch.fnmatch(pattern, allowed) for allowed in CHECKPOINTABLE):
                raise ValueError(f"'{pattern}' cannot be checkpointed: use llm, encoders or encoders.<key>")
        return patterns

    @model_validator(mode="after")
    def _precision_fits_the_device(self) -> TrainConfig:
        if self.precision == "fp16" and self.device == "cpu":
            # accelerate has no fp16 autocast on CPU: the run would silently be fp32
            raise field_error("precision", "fp16 runs only on GPUs; on CPU use bf16 or fp32", self.precision)
        if self.distributed.mode == "deepspeed" and self.device == "cpu":
            raise field_error(
                ("distributed", "mode"), "DeepSpeed runs only on GPUs (accelerate refuses it on CPU); use fsdp", "cpu"
            )
        if self.distributed.cpu_offload and self.device == "cpu":
            raise field_error(("distributed", "cpu_offload"), "offloads GPU memory; with device: cpu there is none")
        return self

    @field_validator("stages")
    @classmethod
    def _unique_names(cls, stages: list[StageConfig]) -> list[StageConfig]:
        seen: set[str] = set()
        for stage in stages:
            if stage.name in seen:
                raise ValueError(f"two stages are called '{stage.name}'")
            seen.add(stage.name)
        return stages
