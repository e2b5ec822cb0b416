"""Training configs (pydantic only): a list of stages, each saying what trains, on which data, how fast."""

from __future__ import annotations

import copy
import fnmatch
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

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
    """DeepSpeed: your own JSON file instead of `zero_stage` (HF fills its `"auto"` values from the stage). It needs a
    `zero_optimization` object whose `stage` is 0-3 (default 0, as in DeepSpeed), and no `optimizer` or `scheduler`
    block (the Trainer builds both from the stage); it decides offloading itself (no `cpu_offload`)."""

    _deepspeed_file: dict[str, Any] | None = PrivateAttr(None)  # the file as read by the validator, stage an int

    @property
    def deepspeed_file(self) -> dict[str, Any] | None:
        """The `deepspeed_config` file's contents as validated (a copy), its `zero_optimization.stage` an int."""
        return copy.deepcopy(self._deepspeed_file)

    @property
    def deepspeed_stage(self) -> int | None:
        """The ZeRO stage of mode `deepspeed`: `zero_stage`, else the stage the `deepspeed_config` file names, else
        2 (omnimm's default); None for the other modes."""
        if self.mode != "deepspeed":
            return None
        if self.zero_stage is not None:
            return self.zero_stage
        if self._deepspeed_file is not None:
            return int(self._deepspeed_file["zero_optimization"]["stage"])
        return 2

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
        if self.cpu_offload and self.deepspeed_config is not None:
            raise field_error(
                "cpu_offload",
                "with deepspeed_config your own file decides offloading (zero_optimization.offload_optimizer and "
                "offload_param): remove cpu_offload or set it in the file",
            )
        self._deepspeed_file = read_deepspeed_file(self.deepspeed_config) if self.deepspeed_config else None
        return self


_GATHER_KEYS = ("stage3_gather_16bit_weights_on_model_save", "stage3_gather_fp16_weights_on_model_save")
"""DeepSpeed's switch that gathers ZeRO-3's full weights for a save, and its older name (still read)."""


def read_deepspeed_file(path: str) -> dict[str, Any]:
    """A user's DeepSpeed JSON, checked for what omnimm relies on; its `zero_optimization.stage` as an int (DeepSpeed
    reads `"3"` as 3, HF and accelerate compare the value with 3). A `field_error` at `deepspeed_config` otherwise."""
    file = Path(path)
    if not file.is_file():
        raise field_error("deepspeed_config", f"no such file: {path}", path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, OSError) as error:
        raise field_error("deepspeed_config", f"{path} is not readable JSON ({error})", path) from None
    if not isinstance(data, dict):
        raise field_error("deepspeed_config", f"{path} holds {_json_kind(data)}, not a JSON object", path)
    taken = [key for key in ("optimizer", "scheduler") if key in data]
    if taken:
        blocks = " and ".join(f'"{key}"' for key in taken)
        raise field_error(
            "deepspeed_config",
            f"{path} sets {blocks}: omnimm's Trainer builds the optimizer (AdamW with the stage's per-part learning "
            f"rates) and the scheduler (the stage's scheduler); remove {'them' if len(taken) > 1 else 'it'} from the "
            "file",
            path,
        )
    if "zero_optimization" not in data:
        message = f'{path} has no "zero_optimization" object (accelerate needs one, e.g. {{"stage": 2}})'
        raise field_error("deepspeed_config", message, path)
    zero = data["zero_optimization"]
    if not isinstance(zero, dict):
        message = f'{path}: "zero_optimization" is {_json_kind(zero)}, not a JSON object (e.g. {{"stage": 2}})'
        raise field_error("deepspeed_config", message, path)
    stage = _zero_stage(zero.get("stage", 0))
    if stage is None:
        message = f'{path}: "zero_optimization.stage" is {json.dumps(zero["stage"])}; give 0, 1, 2 or 3'
        raise field_error("deepspeed_config", message, path)
    if stage == 3 and not any(zero.get(key) is True for key in _GATHER_KEYS):
        # without it ZeRO-3 cannot hand the full weights over for model.safetensors
        message = (
            f"{path}: ZeRO-3 needs stage3_gather_16bit_weights_on_model_save: true (checkpoints save the full weights)"
        )
        raise field_error("deepspeed_config", message, path)
    data["zero_optimization"] = {**zero, "stage": stage}
    return data


def _zero_stage(value: Any) -> int | None:
    """0-3 from an int or an int-like string (as DeepSpeed coerces it), else None."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 3:
        return value
    return None


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    kinds = {str: "a string", list: "a list", int: "a number", float: "a number", dict: "an object"}
    return kinds.get(type(value), type(value).__name__)


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
    """Parts that recompute their activations in the backward pass instead of keeping them: `llm` (transformers' own
    activation checkpointing: `activation_checkpointing_enable`, or `gradient_checkpointing_enable` where a model has
    only that), `encoders` or `encoders.<key>` (the encoder library's switch, else each of its blocks under
    `torch.utils.checkpoint`). Less memory, about one more forward pass of those parts per step; it only acts where
    a part is on the backward path (a frozen encoder runs without autograd and is not recomputed)."""

    @model_validator(mode="after")
    def _checkpointable(self) -> TrainConfig:
        for index, pattern in enumerate(self.gradient_checkpointing):
            if not any(fnmatch.fnmatch(pattern, allowed) for allowed in CHECKPOINTABLE):
                message = f"'{pattern}' cannot be checkpointed: use llm, encoders or encoders.<key>"
                raise field_error(("gradient_checkpointing", index), message, pattern)
        return self

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
