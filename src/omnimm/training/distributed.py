"""Training over several processes from the run config, on existing engines: the `TrainingArguments` each
`train.distributed` mode becomes (DDP, PyTorch FSDP2 through accelerate, DeepSpeed ZeRO), gradient checkpointing
per part, and the full weights of a sharded model gathered for `save_pretrained` and loaded back for a resume.

FSDP on CPU: accelerate turns an FSDP plugin into `DistributedType.FSDP` only for GPU-like devices
(`AcceleratorState.__init__` handles `fsdp_plugin` inside its `MULTI_GPU`/`MULTI_XPU`/... branch); with
`use_cpu` the state is `MULTI_CPU` and the plugin is dropped without a word, so the Trainer would run plain DDP.
`use_fsdp_on_cpu` sets the state accelerate would have set on a GPU; everything after it (`fsdp2_prepare_model`,
`fully_shard` on a CPU mesh over gloo, the sharded optimizer, full state dicts) is accelerate's and torch's own.
That step reads accelerate's internals (`PartialState._shared_state`, `ParallelismConfig._validate_accelerator`):
when they change, the run stops with one line naming the versions (`check_engine` also checks, after the Trainer
is built, that it runs the engine `train.distributed.mode` names).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from omnimm.deps import require
from omnimm.errors import OmnimmError
from omnimm.training.configs import DistributedConfig, TrainConfig

ACCELERATE_FOR_FSDP = "1.12"
"""The oldest accelerate for `mode: fsdp`: FSDP2 plugin arguments, `accelerate.ParallelismConfig` (1.10) and the
Trainer passing it on for `sharding: hybrid` (transformers asks for accelerate 1.12 there)."""

SHARDING_RESHARD = {"full": True, "hybrid": True, "grad_op": False}
"""FSDP2's `reshard_after_forward` for each `sharding`: `grad_op` keeps the gathered parameters until the
backward pass (FSDP1's SHARD_GRAD_OP)."""


class DistributedSetupError(OmnimmError, ValueError):
    """A distributed setting that cannot run here; the message starts with the config field it comes from."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


def world_size() -> int:
    """Processes in this run (`torchrun` sets `WORLD_SIZE`)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_setup(train: TrainConfig, *, use_cpu: bool) -> None:
    """A `DistributedSetupError` (or `MissingDependencyError`) for settings this machine and launch cannot run."""
    distributed = train.distributed
    where = "train.distributed"
    if distributed.mode == "fsdp" and world_size() < 2:
        raise DistributedSetupError(
            f"{where}.mode",
            "fsdp shards over several processes: launch with torchrun --nproc_per_node N "
            "(or use mode: ddp for one process)",
        )
    if distributed.mode == "fsdp":
        require("accelerate", extra="video", min_version=ACCELERATE_FOR_FSDP, purpose="train.distributed.mode: fsdp")
    if distributed.mode == "deepspeed":
        require("deepspeed", extra="deepspeed", purpose="train.distributed.mode: deepspeed")
        if use_cpu:
            raise DistributedSetupError(
                f"{where}.mode", "DeepSpeed runs only on GPUs (accelerate refuses it on CPU); use fsdp"
            )
    if distributed.cpu_offload and use_cpu:
        raise DistributedSetupError(f"{where}.cpu_offload", "offloads GPU memory; this run has no GPU")
    if train.precision == "fp16" and use_cpu:
        raise DistributedSetupError("train.precision", "fp16 runs only on GPUs; on CPU use bf16 or fp32")
    if distributed.sharding == "hybrid" and distributed.mode == "fsdp":
        hybrid_mesh_shape(distributed)  # raises when the processes do not split into groups


def hybrid_mesh_shape(distributed: DistributedConfig) -> tuple[int, int]:
    """(replicas, processes per shard group) for `sharding: hybrid`."""
    world = world_size()
    group = distributed.shard_group_size or int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if group < 1 or world % group:
        raise DistributedSetupError(
            "train.distributed.shard_group_size", f"{group} does not divide the {world} processes into equal groups"
        )
    return world // group, group


def training_arguments(train: TrainConfig, model: Any, *, use_cpu: bool) -> dict[str, Any]:
    """The `TrainingArguments` keywords of the run's distributed mode (none for DDP: the Trainer's default)."""
    distributed = train.distributed
    if distributed.mode == "fsdp":
        return fsdp_arguments(distributed, model, use_cpu=use_cpu)
    if distributed.mode == "deepspeed":
        return {"deepspeed": deepspeed_config(distributed)}
    return {}


def fsdp_arguments(distributed: DistributedConfig, model: Any, *, use_cpu: bool = False) -> dict[str, Any]:
    """`fsdp` / `fsdp_config` (and, for `hybrid` on GPUs, accelerate's `parallelism_config`) for FSDP2.

    The full state dict is the checkpoint format: checkpoints and `final/` hold `model.safetensors` exactly as one
    process writes it. Under bf16/fp16 accelerate keeps trainable parameters in fp32 and its mixed-precision
    policy casts the gathered weights for compute.
    """
    config: dict[str, Any] = {
        "version": 2,
        "reshard_after_forward": SHARDING_RESHARD[distributed.sharding],
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "transformer_layer_cls_to_wrap": list(distributed.wrap or wrap_classes(model)),
        "cpu_offload": distributed.cpu_offload,
        "state_dict_type": "FULL_STATE_DICT",
    }
    arguments: dict[str, Any] = {"fsdp": True, "fsdp_config": config}
    if distributed.sharding == "hybrid" and not use_cpu:
        accelerate = require("accelerate", extra="video", purpose="FSDP hybrid sharding")
        replicas, group = hybrid_mesh_shape(distributed)
        arguments["parallelism_config"] = accelerate.ParallelismConfig(dp_replicate_size=replicas, dp_shard_size=group)
    return arguments


def wrap_classes(model: Any) -> list[str]:
    """Class names FSDP wraps on their own: the LLM's decoder layers (as its `_no_split_modules` name them) and
    the blocks of each encoder (see `encoder_blocks`)."""
    names: list[str] = []
    present = {type(module).__name__ for module in model.modules()}
    hf_model = getattr(getattr(model, "llm", None), "model", None)
    for name in getattr(_base_hf_model(hf_model), "_no_split_modules", None) or []:
        if name in present and name not in names:
            names.append(name)
    for encoder in getattr(model, "encoders", {}).values():
        blocks = encoder_blocks(encoder)
        for block in blocks or []:
            if type(block).__name__ not in names:
                names.append(type(block).__name__)
    return names


def _base_hf_model(model: Any) -> Any:
    """The transformers model under a peft wrapper."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def check_wrap(distributed: DistributedConfig, model: Any) -> None:
    """A `DistributedSetupError` when `wrap` names a class the model does not have."""
    present = sorted({type(module).__name__ for module in model.modules()})
    for index, name in enumerate(distributed.wrap or []):
        if name not in present:
            raise DistributedSetupError(
                f"train.distributed.wrap[{index}]", f"the model has no module of class '{name}'"
            )


def deepspeed_config(distributed: DistributedConfig) -> dict[str, Any]:
    """A user's JSON file as validated (its stage a number: HF and accelerate compare it with 3), else a ZeRO config
    whose `"auto"` values HF fills from the TrainingArguments (batch sizes, accumulation, clipping, bf16/fp16).
    Neither has an optimizer or scheduler block: the Trainer's AdamW (per-part learning rates) and schedule run."""
    if distributed.deepspeed_config is not None:
        file = distributed.deepspeed_file
        if file is None:  # the config was built without validation
            raise DistributedSetupError("train.distributed.deepspeed_config", "was not read: validate the config")
        return file
    stage = distributed.zero_stage or 2
    zero: dict[str, Any] = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True}
    if distributed.cpu_offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True  # the full weights for model.safetensors
    return {
        "zero_optimization": zero,
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
    }


# -- FSDP on CPU ----------------------------------------------------------------------------------------------------


def use_fsdp_on_cpu(trainer: Any, distributed: DistributedConfig) -> bool:
    """Give a CPU Trainer the FSDP state accelerate gives a GPU one (see the module's docstring); True if set.

    Must run right after the Trainer made its `Accelerator` and before `train()` prepares the model. accelerate's
    private state it relies on, when missing, gives one `DistributedSetupError` naming the installed versions.
    """
    try:
        return _use_fsdp_on_cpu(trainer, distributed)
    except AttributeError as error:
        raise DistributedSetupError(
            "train.distributed.mode",
            f"FSDP on CPU processes relies on accelerate internals this version lacks ({error}; {versions()}); "
            "run on GPUs or use mode: ddp",
        ) from error


def versions() -> str:
    """The installed accelerate and transformers, for messages about their behaviour."""
    from importlib import metadata

    found = []
    for name in ("accelerate", "transformers"):
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} not installed")
    return ", ".join(found)


def check_engine(trainer: Any, distributed: DistributedConfig) -> None:
    """A `DistributedSetupError` when the Trainer does not run the engine `mode` names (accelerate or transformers
    dropped a plugin without a word): FSDP or DeepSpeed enabled exactly when asked for."""
    asked = {"fsdp": (True, False), "deepspeed": (False, True)}.get(distributed.mode, (False, False))
    enabled = (bool(trainer.is_fsdp_enabled), bool(trainer.is_deepspeed_enabled))
    if enabled == asked:
        return
    running = "FSDP" if enabled[0] else "DeepSpeed" if enabled[1] else "neither FSDP nor DeepSpeed"
    raise DistributedSetupError(
        "train.distributed.mode",
        f"{distributed.mode} was asked for but the Trainer runs {running}: accelerate or transformers did not "
        f"take the settings ({versions()}, {world_size()} process{'es' if world_size() > 1 else ''})",
    )


def _use_fsdp_on_cpu(trainer: Any, distributed: DistributedConfig) -> bool:
    accelerate_utils = require("accelerate.utils", extra="video", purpose="FSDP")
    state = trainer.accelerator.state
    if trainer.is_fsdp_enabled or trainer.args.fsdp_plugin_args is None:
        return False
    if state.distributed_type != accelerate_utils.DistributedType.MULTI_CPU:
        return False
    plugin = accelerate_utils.FullyShardedDataParallelPlugin(**trainer.args.fsdp_plugin_args)
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.fsdp_plugin = plugin
    # Both states, as AcceleratorState.__init__ leaves them on a GPU: each later AcceleratorState() copies the
    # PartialState's type back. Gathers, barriers and RNG syncs in accelerate handle gloo under FSDP too.
    state.distributed_type = accelerate_utils.DistributedType.FSDP
    accelerate_state = require("accelerate.state", extra="video", purpose="FSDP")
    accelerate_state.PartialState._shared_state["distributed_type"] = state.distributed_type
    if distributed.sharding == "hybrid":
        accelerate = require("accelerate", extra="video", purpose="FSDP hybrid sharding")
        replicas, group = hybrid_mesh_shape(distributed)
        config = accelerate.ParallelismConfig(dp_replicate_size=replicas, dp_shard_size=group)
        state.parallelism_config = config
        state.device_mesh = config.get_device_mesh("cpu")
        config._validate_accelerator(trainer.accelerator)
    trainer.is_fsdp_enabled = True
    return True


# -- full weights of a sharded model ----------------------------------------------------------------------------------


def full_state_dict(trainer: Any) -> dict[str, torch.Tensor]:
    """The whole model's weights, gathered from every process onto the first one's CPU (other processes get an
    empty dict); keys as the omnimm model names them. Every process must call it."""
    state = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    return {strip_view(name): compact(tensor) for name, tensor in state.items()}


def compact(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor in storage of its own size: gathered weights can be views into one buffer, which safetensors
    refuses to save (it would store the whole buffer)."""
    tensor = tensor.detach().contiguous()
    if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
        tensor = tensor.clone()
    return tensor


def strip_view(name: str) -> str:
    # TrainerView holds the model as `.model`; checkpoint wrappers add their own level
    name = name.replace("._checkpoint_wrapped_module", "")
    return name.removeprefix("model.")


def load_full_state_dict(wrapped: nn.Module, state: dict[str, torch.Tensor], *, from_rank0: bool = False) -> None:
    """Load whole-model weights into a model FSDP2 has sharded: each process keeps its shards. Keys as the omnimm
    model names them; a tied weight may be there under either of its names. With `from_rank0` only the first process
    holds the weights (the others pass an empty dict) and sends each tensor to the others in turn, so one process,
    not every one, holds the whole model at once."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    prefixed = {f"model.{name}": tensor for name, tensor in state.items()}
    for name, first in _shared_names(wrapped).items() if prefixed else ():
        if name not in prefixed and first in prefixed:
            prefixed[name] = prefixed[first]
        elif first not in prefixed and name in prefixed:
            prefixed[first] = prefixed[name]
    options = StateDictOptions(full_state_dict=True, strict=True, broadcast_from_rank0=from_rank0)
    set_model_state_dict(wrapped, prefixed, options=options)


def _shared_names(model: nn.Module) -> dict[str, str]:
    """Each parameter name that shares its tensor with an earlier one, mapped to that first name."""
    first: dict[int, str] = {}
    twins: dict[str, str] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        owner = first.setdefault(id(parameter), name)
        if owner != name:
            twins[name] = owner
    return twins


def without_shared(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with each tied weight once (safetensors refuses shared tensors), contiguous."""
    twins = _shared_names(model)
    return {name: compact(tensor) for name, tensor in state.items() if name not in twins}


def unsharded_copy(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """A plain (unsharded) model of the same config holding `state`, built without allocating random weights:
    on the meta device, then the weights assigned; buffers outside the state dict (rotary frequencies) are copied
    from `model`, whose buffers FSDP never shards.

    Each tensor takes the dtype the config gives it (fp32 unless the config says otherwise): DeepSpeed under
    bf16/fp16 keeps the model itself in 16 bits and hands over 16-bit weights, which the copy casts back, so the
    saved folder has the dtypes one process saves (the values are the 16-bit weights; DeepSpeed's fp32 master
    copies stay in its checkpoint shards)."""
    from omnimm.registry import models

    config = model.config.without_weights()
    if "feature_cache" in type(config).model_fields:  # a copy only to save: it never encodes
        config = config.model_copy(update={"feature_cache": None})
    with torch.device("meta"):
        copy = models.build(config)
    shared = _shared_names(copy)
    dtypes = {name: tensor.dtype for name, tensor in copy.state_dict(keep_vars=True).items()}
    complete = {name: _as(tensor, dtypes.get(name)) for name, tensor in state.items()}
    for name, twin in shared.items():
        if name not in complete and twin in complete:
            complete[name] = complete[twin]
    copy.load_state_dict(complete, strict=True, assign=True)
    for name, twin in shared.items():  # assign=True broke the ties: make them one tensor again
        _set_parameter(copy, name, copy.get_parameter(twin))
    buffers = dict(model.named_buffers())
    for name, buffer in list(copy.named_buffers()):
        if buffer.is_meta:
            source = buffers.get(name)
            if source is None:
                raise ValueError(f"buffer {name} is in neither the gathered weights nor the model")
            _set_buffer(copy, name, _as(source.detach().to("cpu"), buffer.dtype).clone())
    copy.train(model.training)
    return copy


def _as(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """`tensor` in `dtype` when both are floating point (a 16-bit gathered weight back to fp32)."""
    if dtype is None or tensor.dtype == dtype or not (tensor.is_floating_point() and dtype.is_floating_point):
        return tensor
    return tensor.to(dtype)


def first_process_outcome(error: BaseException | None) -> None:
    """After work only the first process did (saving `final/`): every process learns whether it failed. The first
    re-raises its own error; the others raise one naming it, instead of waiting forever at the next barrier.
    Every process must call it (it is a collective, and the barrier after the work)."""
    message = None if error is None else f"{type(error).__name__}: {error}"
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        shared = [message]
        torch.distributed.broadcast_object_list(shared, src=0)
        message = shared[0]
    if error is not None:
        raise error
    if message is not None:
        raise RuntimeError(f"the first process failed to save the stage ({message})")


def _set_parameter(model: nn.Module, name: str, parameter: nn.Parameter) -> None:
    owner, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(owner) if owner else model, leaf, parameter)


def _set_buffer(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner, _, leaf = name.rpartition(".")
    module = model.get_submodule(owner) if owner else model
    persistent = leaf not in module._non_persistent_buffers_set
    module.register_buffer(leaf, tensor, persistent=persistent)


# -- gradient checkpointing ------------------------------------------------------------------------------------------


def enable_gradient_checkpointing(model: Any, patterns: Sequence[str]) -> list[str]:
    """Recompute the activations of the named parts in the backward pass; returns the parts it acts on.

    The LLM through transformers' own switch (`hf_checkpointing`); an encoder through its library's switch when
    it has one (timm's and open_clip's `set_grad_checkpointing`, transformers'), else each of its blocks under
    `torch.utils.checkpoint`. It acts only while autograd records: a frozen encoder (run under `no_grad`) is
    unaffected.

    Under FSDP2: transformers and `checkpoint_module` checkpoint a block's `forward`, inside its hooks; timm and
    open_clip checkpoint the block's call, so the recomputation runs FSDP2's hooks again, and FSDP2 expects that
    (its pre-forward hook gathers nothing then: the pre-backward hook has gathered the block already).
    """
    from omnimm.training.parts import resolve_parts

    parts = model.parts()
    chosen = resolve_parts(model, patterns)
    done: list[str] = []
    for name in chosen:
        if name == "encoders":
            continue  # its sub-parts `encoders.<key>` match too
        module = parts[name]
        if name == "llm":
            hf_checkpointing(module.model)
        elif name.startswith("encoders."):
            checkpoint_encoder(module, name)
        else:
            continue
        done.append(name)
    if "encoders" in chosen:
        for name in parts:
            if name.startswith("encoders.") and name not in done:
                checkpoint_encoder(parts[name], name)
                done.append(name)
    return done


def checkpoint_encoder(encoder: nn.Module, name: str = "encoder") -> str:
    """Turn on activation checkpointing in one encoder; returns how (for the log)."""
    for module in encoder.modules():
        if module is encoder:
            continue
        switch = getattr(module, "set_grad_checkpointing", None)
        if callable(switch):
            switch(True)
            return f"{type(module).__name__}.set_grad_checkpointing"
        if getattr(module, "supports_gradient_checkpointing", False):
            hf_checkpointing(module)
            return f"{type(module).__name__} (transformers)"
    blocks = encoder_blocks(encoder)
    if not blocks:
        raise DistributedSetupError(
            "train.gradient_checkpointing", f"{name} has no blocks to checkpoint (no nn.ModuleList of layers)"
        )
    for block in blocks:
        checkpoint_module(block)
    return f"torch.utils.checkpoint over {len(blocks)} blocks"


def hf_checkpointing(model: Any) -> None:
    """A transformers model's own activation checkpointing, non-reentrant (frozen inputs and DDP need no
    workaround); `activation_checkpointing_enable` from transformers 5.x, `gradient_checkpointing_enable` before."""
    options = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)


def encoder_blocks(encoder: nn.Module) -> nn.ModuleList | nn.Sequential | None:
    """An encoder's blocks: its longest `nn.ModuleList` or `nn.Sequential` of modules of one class (timm's
    `blocks`, open_clip's `resblocks`, transformers' `layers`, `nn.TransformerEncoder.layers`)."""
    lists = [
        m
        for m in encoder.modules()
        if isinstance(m, (nn.ModuleList, nn.Sequential)) and len(m) and len({type(child) for child in m}) == 1
    ]
    return max(lists, key=len, default=None)


def checkpoint_module(module: nn.Module) -> None:
    """Run `module` under non-reentrant `torch.utils.checkpoint` whenever autograd records; its parameter names
    and state dict stay as they are (the wrapper is the instance's `forward`, not a new module level)."""
    if getattr(module, "_omnimm_checkpointed", False):
        return
    forward = module.forward

    def checkpointed(*args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    module.forward = checkpointed  # type: ignore[method-assign]
    module._omnimm_checkpointed = True  # type: ignore[assignment]
