"""How much memory training takes, per part and per process, before anything is trained.

For a model with `parts()` (the video LLM): parameters and buffers in their dtype, gradients of the parts a stage
trains, AdamW's state, and the activations one micro-batch keeps for the backward pass, from the model's token
counts and widths. Then what each process holds under data parallelism, FSDP or ZeRO stage 1-3. The model may live
on the meta device: only shapes and dtypes are read. `omnimm build CONFIG --memory` prints it;
`benchmarks/bench_memory.py` compares it with peaks measured in real training steps.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from rich.markup import escape
from rich.table import Table
from torch import nn

MODES = ("single", "ddp", "fsdp", "zero1", "zero2", "zero3")
"""Ways to spread training over processes: what each shards (see `SHARDED`)."""
PRECISIONS = ("fp32", "bf16", "fp16")
SHARDED: dict[str, frozenset[str]] = {
    "single": frozenset(),
    "ddp": frozenset(),
    "zero1": frozenset({"optimizer"}),
    "zero2": frozenset({"gradients", "optimizer"}),
    "zero3": frozenset({"parameters", "gradients", "optimizer"}),
    "fsdp": frozenset({"parameters", "gradients", "optimizer"}),
}
"""What each mode divides by the number of processes; activations never are (each process has its own batch)."""
MIB = 2**20
LOGITS_BYTES = 4  # the loss reads the logits in fp32 whatever the precision
HALF_BYTES = 2
# Upstream-to-downstream order of a video LLM's parts: a backward pass that starts at a trainable part runs through
# every later one, so they keep activations even when frozen.
_FLOW = ("encoders", "connector", "delimiters", "llm")


@dataclass(frozen=True)
class PartMemory:
    """One part's memory, in bytes, before any sharding."""

    part: str
    parameters: int
    trainable: int
    parameter_bytes: int
    buffer_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    activation_bytes: int
    keeps_activations: bool
    """Whether the backward pass runs through it (it trains, or a part before it does)."""
    checkpointed: bool


@dataclass(frozen=True)
class MemoryEstimate:
    """Per-part memory of one training configuration, and what each process holds in it."""

    parts: tuple[PartMemory, ...]
    mode: str
    world_size: int
    batch_size: int
    precision: str
    frames: int
    visual_tokens: int
    text_tokens: int
    stage: str | None = None

    @property
    def sequence(self) -> int:
        """Tokens per sample in the LLM: visual positions (delimiters included) plus text."""
        return self.visual_tokens + self.text_tokens

    def totals(self) -> dict[str, int]:
        """Whole-model bytes of each kind (one process holding everything)."""
        sums = {
            "parameters": sum(p.parameter_bytes + p.buffer_bytes for p in self.parts),
            "gradients": sum(p.gradient_bytes for p in self.parts),
            "optimizer": sum(p.optimizer_bytes for p in self.parts),
            "activations": sum(p.activation_bytes for p in self.parts),
        }
        return {**sums, "total": sum(sums.values())}

    def per_rank(self, mode: str | None = None, world_size: int | None = None) -> dict[str, int]:
        """Bytes one process holds under `mode` with `world_size` processes (default: the estimate's own)."""
        mode = mode or self.mode
        world = world_size or self.world_size
        check_mode(mode, world)
        totals = self.totals()
        buffers = sum(p.buffer_bytes for p in self.parts)  # buffers are replicated, never sharded
        held = {
            "parameters": _share(totals["parameters"] - buffers, world, "parameters" in SHARDED[mode]) + buffers,
            "gradients": _share(totals["gradients"], world, "gradients" in SHARDED[mode]),
            "optimizer": _share(totals["optimizer"], world, "optimizer" in SHARDED[mode]),
            "activations": totals["activations"],
        }
        return {**held, "total": sum(held.values())}

    def to_dict(self) -> dict[str, Any]:
        """Plain data: the settings, each part, the totals and the per-process figures of every mode."""
        modes = ["single"] if self.world_size == 1 else [m for m in MODES if m != "single"]
        return {
            "mode": self.mode,
            "world_size": self.world_size,
            "batch_size": self.batch_size,
            "precision": self.precision,
            "stage": self.stage,
            "frames": self.frames,
            "visual_tokens": self.visual_tokens,
            "text_tokens": self.text_tokens,
            "parts": [asdict(part) for part in self.parts],
            "totals": self.totals(),
            "per_rank": {mode: self.per_rank(mode) for mode in modes},
        }


def check_mode(mode: str, world_size: int) -> None:
    """A `ValueError` naming the option when a mode or process count cannot be used."""
    if mode not in MODES:
        raise ValueError(f"--mode '{mode}' is not one of {', '.join(MODES)}")
    if world_size < 1:
        raise ValueError(f"--world-size must be at least 1, not {world_size}")
    if mode == "single" and world_size > 1:
        raise ValueError(f"--mode single is one process; --world-size {world_size} needs ddp, fsdp or zero1-3")
    if SHARDED[mode] and world_size < 2:
        raise ValueError(f"--mode {mode} shards over several processes: give --world-size 2 or more")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"--precision '{precision}' is not one of {', '.join(PRECISIONS)}")


def _share(nbytes: int, world: int, sharded: bool) -> int:
    return math.ceil(nbytes / world) if sharded else nbytes  # shards are padded to equal sizes


def distributed_mode(train: Any) -> str | None:
    """The mode a run's `train.distributed` section names (`ddp`, `fsdp`, `deepspeed` as its ZeRO stage: the
    stage the validated config holds, `zero_stage` or the file's), if any."""
    distributed = getattr(train, "distributed", None)
    mode = getattr(distributed, "mode", None)
    if mode == "deepspeed":
        stage = distributed.deepspeed_stage
        return f"zero{stage}" if stage else "ddp"  # ZeRO stage 0 is plain data parallelism
    return mode


def prepare_stage(model: Any, stage: Any) -> None:
    """Make the model look as it does during `stage`: its LoRA adapters added, only the parts it trains trainable."""
    from omnimm.training.parts import set_trainable

    if stage.lora is not None and not getattr(model, "has_lora", False):
        lora = stage.lora
        model.add_lora(rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout, target_modules=lora.target_modules)
    set_trainable(model, stage.train)


def estimate_memory(
    model: Any,
    *,
    mode: str = "single",
    world_size: int = 1,
    batch_size: int = 1,
    precision: str = "fp32",
    frames: int | None = None,
    text_tokens: int | None = None,
    checkpointed: Iterable[str] = (),
    stage: str | None = None,
) -> MemoryEstimate:
    """Estimate a video LLM's training memory; what trains is what has `requires_grad` (see `prepare_stage`).

    `frames` defaults to the model's frame sampling, `text_tokens` to the longest text that fits `max_length` next to
    the visual tokens; `checkpointed` names parts run with activation (gradient) checkpointing (`encoders` covers
    every `encoders.<key>`).
    """
    if mode == "ddp" and world_size == 1:
        mode = "single"  # one process averages nothing: what it holds is a single process's
    check_mode(mode, world_size)
    check_precision(precision)
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, not {batch_size}")
    if not hasattr(model, "parts") or not hasattr(model, "encoder_groups"):
        raise ValueError(
            f"a memory estimate needs a video LLM (with parts() and token groups), not {type(model).__name__}"
        )
    frames = frames or model.config.frames.num_frames or model.config.frames.max_frames
    visual = model.num_visual_tokens(frames)
    text = _text_tokens(model, visual, text_tokens)
    rows = part_rows(model)
    trained = {name for name, module in rows.items() if any(p.requires_grad for p in module.parameters())}
    shape = _Shape(batch_size, frames, visual, visual + text, precision)
    parts = []
    for name, module in rows.items():
        keeps = _keeps_activations(name, trained)
        # checkpointing recomputes only what the backward pass runs through (a frozen encoder runs without autograd)
        check = keeps and (name in checkpointed or name.split(".")[0] in checkpointed)
        activations = _activation_bytes(model, name, module, shape, trained=name in trained, keeps=keeps, check=check)
        parts.append(_part_memory(name, module, precision, activations, keeps=keeps, checkpointed=check))
    parts += _leftover(model, rows)
    return MemoryEstimate(tuple(parts), mode, world_size, batch_size, precision, frames, visual, text, stage)


@dataclass(frozen=True)
class _Shape:
    batch: int
    frames: int
    visual: int
    sequence: int
    precision: str


def _text_tokens(model: Any, visual: int, text_tokens: int | None) -> int:
    if text_tokens is not None:
        if text_tokens < 0:
            raise ValueError(f"--text-tokens must be 0 or more, not {text_tokens}")
        return text_tokens
    if not model.max_length:
        raise ValueError("the model has no max_length: give --text-tokens")
    if model.max_length <= visual:
        raise ValueError(f"max_length {model.max_length} leaves no room for text next to {visual} visual tokens")
    return int(model.max_length) - visual


def part_rows(model: Any) -> dict[str, nn.Module]:
    """The parts that split the model's parameters without overlap: top-level parts, a part replaced by its
    sub-parts when they hold all its parameters (`encoders` -> `encoders.<key>`)."""
    parts = model.parts()
    rows: dict[str, nn.Module] = {}
    for name, module in parts.items():
        if "." in name:
            continue
        children = {child: m for child, m in parts.items() if child.startswith(f"{name}.")}
        own = {id(p) for p in module.parameters()}
        covered = {id(p) for m in children.values() for p in m.parameters()}
        if children and own <= covered:
            rows.update({child: m for child, m in children.items() if _has_tensors(m)})
        elif _has_tensors(module):
            rows[name] = module
    return rows


def _has_tensors(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def _keeps_activations(name: str, trained: set[str]) -> bool:
    if name in trained:
        return True
    if name.startswith("encoders"):  # encoders run side by side, first: nothing upstream of them trains
        return False
    position = _FLOW.index(name.split(".")[0]) if name.split(".")[0] in _FLOW else len(_FLOW)
    return any(_FLOW.index(t.split(".")[0]) < position for t in trained if t.split(".")[0] in _FLOW)


def _part_memory(
    name: str, module: nn.Module, precision: str, activations: int, *, keeps: bool, checkpointed: bool
) -> PartMemory:
    params = list(module.parameters())
    trainable = [p for p in params if p.requires_grad]
    return PartMemory(
        part=name,
        parameters=sum(p.numel() for p in params),
        trainable=sum(p.numel() for p in trainable),
        parameter_bytes=_bytes(params),
        buffer_bytes=_bytes(module.buffers()) if not isinstance(module, _NoBuffers) else 0,
        gradient_bytes=_bytes(trainable),
        optimizer_bytes=sum(adamw_state_bytes(p, precision) for p in trainable),
        activation_bytes=activations,
        keeps_activations=keeps,
        checkpointed=checkpointed,
    )


class _NoBuffers(nn.Module):
    """Marks a leftover row that holds only the buffers outside every part."""


def _leftover(model: Any, rows: dict[str, nn.Module]) -> list[PartMemory]:
    """Parameters and buffers outside every part (e.g. feature standardisers' statistics), as one row."""
    seen_params = {id(p) for m in rows.values() for p in m.parameters()}
    seen_buffers = {id(b) for m in rows.values() for b in m.buffers()}
    params = [p for p in model.parameters() if id(p) not in seen_params]
    buffers = [b for b in model.buffers() if id(b) not in seen_buffers]
    if not params and not buffers:
        return []
    trainable = [p for p in params if p.requires_grad]
    return [
        PartMemory(
            part="(outside the parts)",
            parameters=sum(p.numel() for p in params),
            trainable=sum(p.numel() for p in trainable),
            parameter_bytes=_bytes(params),
            buffer_bytes=_bytes(buffers),
            gradient_bytes=_bytes(trainable),
            optimizer_bytes=sum(adamw_state_bytes(p, "fp32") for p in trainable),
            activation_bytes=0,
            keeps_activations=False,
            checkpointed=False,
        )
    ]


def _bytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def adamw_state_bytes(parameter: torch.Tensor, precision: str) -> int:
    """AdamW's state for one trainable parameter: two moments, in fp32 under mixed precision (plus an fp32 master
    copy of a parameter stored in 16 bits), else in the parameter's own dtype (as `torch.optim.AdamW` makes them)."""
    numel, size = parameter.numel(), parameter.element_size()
    if precision == "fp32":
        return 2 * numel * size
    return 2 * numel * 4 + (numel * 4 if size < 4 else 0)


# -- activations --------------------------------------------------------------------------------------------------


def _activation_bytes(
    model: Any, name: str, module: nn.Module, shape: _Shape, *, trained: bool, keeps: bool, check: bool
) -> int:
    if not keeps:
        return 0
    size = _activation_size(module, shape.precision)
    if name.startswith("encoders."):
        key = name.split(".", 1)[1]
        tokens = sum(g.tokens for ref, g in model.encoder_groups.items() if ref.split(".", 1)[0] == key)
        elements = shape.batch * shape.frames * tokens * encoder_elements_per_token(module, check)
        return elements * size + _amp_copies(module, shape.precision)
    if name == "llm":
        per_token, logits = llm_elements_per_token(module, trained=trained, checkpointed=check)
        tokens = shape.batch * shape.sequence
        return tokens * (per_token * size + logits * LOGITS_BYTES) + _amp_copies(module, shape.precision)
    if name.startswith("connector"):
        return shape.batch * shape.visual * linear_elements_per_token(module, trained) * size + _amp_copies(
            module, shape.precision
        )
    return 0


def _activation_size(module: nn.Module, precision: str) -> int:
    if precision != "fp32":
        return HALF_BYTES
    parameter = next((p for p in module.parameters() if p.is_floating_point()), None)
    return parameter.element_size() if parameter is not None else 4


def _amp_copies(module: nn.Module, precision: str) -> int:
    """Under autocast, fp32 linear weights on the backward path are kept as 16-bit copies until the backward."""
    if precision == "fp32":
        return 0
    linears = [m for m in module.modules() if isinstance(m, nn.Linear) and m.weight.element_size() == 4]
    return sum(m.weight.numel() * HALF_BYTES for m in linears)


def llm_elements_per_token(llm: nn.Module, *, trained: bool, checkpointed: bool) -> tuple[int, int]:
    """Values a decoder LLM keeps per token for the backward pass (in the activation dtype), and fp32 logits values.

    Per layer, with hidden size h, key/value width h_kv, MLP width I: trained, 9h + 2h_kv + 4I (norm inputs and
    outputs, every linear's input, attention's q, k, v and output, the gated MLP's three I-wide tensors); frozen with
    the backward passing through, 4h + 2h_kv + 3I (no linear needs its input); LoRA adds each adapted linear's input
    and rank per token. Checkpointed: the layer inputs (h per layer) plus one layer recomputed at a time. Then the
    final norm and the head's input (3h trained, h frozen) and three vocabulary-wide fp32 rows: the logits, their
    shifted copy and the log-softmax the loss keeps.
    """
    config = _text_config(llm)
    hidden = int(getattr(llm, "hidden_size", 0) or config.hidden_size)
    layers = int(config.num_hidden_layers)
    heads = int(getattr(config, "num_attention_heads", 1) or 1)
    kv = hidden * int(getattr(config, "num_key_value_heads", None) or heads) // heads
    mlp = int(getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden)
    lora = _lora_elements(llm)
    lora_trained = lora > 0 and not any(p.requires_grad for n, p in llm.named_parameters() if "lora_" not in n)
    if trained and not lora_trained:
        layer = 9 * hidden + 2 * kv + 4 * mlp
    else:
        layer = 4 * hidden + 2 * kv + 3 * mlp + lora // max(layers, 1)
    head = 3 * hidden if trained and not lora_trained else hidden
    body = layers * hidden + layer if checkpointed else layers * layer
    vocab = int(llm.model.get_output_embeddings().out_features) if hasattr(llm, "model") else int(config.vocab_size)
    return body + head, 3 * vocab


def _text_config(llm: nn.Module) -> Any:
    config = llm.model.config if hasattr(llm, "model") else llm.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _lora_elements(llm: nn.Module) -> int:
    """Per token, over the whole LLM: each LoRA-adapted linear keeps its (dropped-out) input and its rank-wide
    intermediate."""
    total = 0
    for module in llm.modules():
        lora_a = getattr(module, "lora_A", None)
        if isinstance(lora_a, nn.ModuleDict):
            for adapter in lora_a.values():
                total += adapter.in_features + adapter.out_features
    return total


def encoder_elements_per_token(encoder: nn.Module, checkpointed: bool) -> int:
    """Values a trained ViT keeps per token: per block of width d and MLP width m, 9d + 2m (two norm inputs, the
    linears' inputs, q, k, v and the attention output, the MLP's hidden before and after its activation);
    checkpointed, d per block plus one block recomputed. Blocks as `omnimm.training.distributed.encoder_blocks`
    finds them."""
    blocks = _blocks(encoder)
    if not blocks:
        return 0
    linears = [m for m in blocks[0].modules() if isinstance(m, nn.Linear)]
    width = min((m.in_features for m in linears), default=0)
    mlp = max((m.out_features for m in linears), default=4 * width)
    block = 9 * width + 2 * mlp
    return len(blocks) * width + block if checkpointed else len(blocks) * block


def _blocks(module: nn.Module) -> nn.Module | None:
    from omnimm.training.distributed import encoder_blocks

    return encoder_blocks(module)


def linear_elements_per_token(module: nn.Module, trained: bool) -> int:
    """A connector's values per visual token: each linear's input and output when it trains, the outputs (the
    inputs of the activations between them) when the backward only passes through. An approximation: it counts
    every linear once per output token."""
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    return sum(m.in_features + m.out_features if trained else m.out_features for m in linears)


# -- tables -------------------------------------------------------------------------------------------------------


def _mib(nbytes: int) -> str:
    return f"{nbytes / MIB:,.1f}"


def part_table(estimate: MemoryEstimate) -> Table:
    """Per part: parameters (count, MiB in their dtype, buffers included), gradients, AdamW state, activations."""
    stage = f", stage {estimate.stage}" if estimate.stage else ""
    title = (
        f"training memory per part (MiB){stage}: batch {estimate.batch_size} x {estimate.sequence} tokens "
        f"({estimate.visual_tokens} visual for {estimate.frames} frames + {estimate.text_tokens} text), "
        f"{estimate.precision}"
    )
    table = Table(title=title, title_justify="left")
    for column in ("part", "parameters", "trainable", "params", "grads", "optimizer", "activations", "total"):
        table.add_column(column, justify="left" if column == "part" else "right")
    for part in estimate.parts:
        note = " (checkpointed)" if part.checkpointed else ""
        values = [
            part.parameter_bytes + part.buffer_bytes,
            part.gradient_bytes,
            part.optimizer_bytes,
            part.activation_bytes,
        ]
        table.add_row(
            escape(part.part + note),
            f"{part.parameters:,}",
            f"{part.trainable:,}",
            *map(_mib, values),
            _mib(sum(values)),
        )
    totals = estimate.totals()
    table.add_section()
    table.add_row(
        "all",
        f"{sum(p.parameters for p in estimate.parts):,}",
        f"{sum(p.trainable for p in estimate.parts):,}",
        *(_mib(totals[k]) for k in ("parameters", "gradients", "optimizer", "activations", "total")),
    )
    return table


def rank_table(estimate: MemoryEstimate) -> Table:
    """What one process holds in each mode at the estimate's process count (its own mode marked)."""
    world = estimate.world_size
    table = Table(title=f"per process (MiB), {world} process{'es' if world > 1 else ''}", title_justify="left")
    for column in ("mode", "shards", "params", "grads", "optimizer", "activations", "total"):
        table.add_column(column, justify="left" if column in ("mode", "shards") else "right")
    modes = ["single"] if world == 1 else [m for m in MODES if m != "single"]
    for mode in modes:
        held = estimate.per_rank(mode, world)
        label = f"{mode} <" if mode == estimate.mode else mode
        shards = ", ".join(k for k in ("parameters", "gradients", "optimizer") if k in SHARDED[mode]) or "-"
        keys = ("parameters", "gradients", "optimizer", "activations", "total")
        table.add_row(label, shards, *(_mib(held[k]) for k in keys))
    return table


# -- the command ----------------------------------------------------------------------------------------------------


def memory_report(
    config: Any,
    *,
    registry: Any = None,
    mode: str | None = None,
    world_size: int | None = None,
    batch_size: int | None = None,
    precision: str | None = None,
    frames: int | None = None,
    text_tokens: int | None = None,
    stage: str | None = None,
) -> list[MemoryEstimate]:
    """`omnimm build CONFIG --memory`: an estimate per training stage of a run file (the model as each stage
    trains it; `stage` picks one), or one for a model file as configured. The model is built on the meta device:
    no weights are allocated or loaded, so a 7B configuration is estimated on a laptop.

    Defaults come from the run: `batch_size` from the stage, `precision` and gradient checkpointing from
    `train:`, `mode` from `train.distributed` (a sharded one needs `world_size`; `ddp` on one process is `single`),
    `world_size` 1. Without a run, `mode` is `single` on one process and `ddp` on several.
    """
    from omnimm.registry import models
    from omnimm.run import RunConfig

    train = config.train if isinstance(config, RunConfig) else None
    run_mode = distributed_mode(train)
    world = 1 if world_size is None else world_size
    if mode is None and run_mode is not None and SHARDED[run_mode] and world == 1:
        distributed = train.distributed
        named = f"mode: deepspeed, ZeRO-{distributed.deepspeed_stage}" if distributed.mode == "deepspeed" else None
        raise ValueError(
            f"the run's train.distributed ({named or f'mode: {distributed.mode}'}) shards over several processes: "
            "give --world-size N (the processes torchrun starts), or --mode single"
        )
    if mode is None:
        mode = run_mode or ("ddp" if world > 1 else "single")
    check_mode(mode, world)
    if precision is None:
        precision = train.precision if train is not None else "fp32"
    check_precision(precision)
    if frames is not None and frames < 1:
        raise ValueError(f"--frames must be at least 1, not {frames}")
    component, build = (config.model, models.build) if isinstance(config, RunConfig) else (config, registry.build)
    stages = list(train.stages) if train is not None else [None]
    if stage is not None:
        stages = [s for s in stages if s is not None and s.name == stage]
        if not stages:
            names = ", ".join(s.name for s in train.stages) if train is not None else "none: not a run file"
            raise ValueError(f"--stage '{stage}' is not a stage of this run (stages: {names})")
    estimates = []
    for chosen in stages:
        with torch.device("meta"):
            model = build(component.without_weights())
        if chosen is not None:
            prepare_stage(model, chosen)
        patterns = train.gradient_checkpointing if train is not None else []
        checkpointed = _resolve(model, patterns) if patterns else []
        estimates.append(
            estimate_memory(
                model,
                mode=mode,
                world_size=world,
                batch_size=batch_size if batch_size is not None else (chosen.batch_size if chosen else 1),
                precision=precision,
                frames=frames,
                text_tokens=text_tokens,
                checkpointed=checkpointed,
                stage=chosen.name if chosen is not None else None,
            )
        )
    return estimates


def _resolve(model: Any, patterns: Iterable[str]) -> list[str]:
    from omnimm.training.parts import resolve_parts

    return resolve_parts(model, list(patterns)) if hasattr(model, "parts") else []
