"""Run training stages with HF's `Trainer`: progress bars, gradient accumulation, schedules, checkpoints, resume
and data parallelism (DDP, FSDP2 through accelerate, DeepSpeed) come from it; this module decides what trains and
how it is saved (`omnimm.training.distributed` maps `train.distributed` onto the Trainer's arguments).

Works for models that expose `parts()`, `processor` (the collate function), `save_pretrained`/`from_pretrained`
and, for LoRA stages, `add_lora`/`merge_lora`/`has_lora` (the video LLM does).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from omnimm.deps import require
from omnimm.files import restore_folder, safetensors_problem
from omnimm.registry import datasets, models
from omnimm.run import RunConfig
from omnimm.training import distributed
from omnimm.training.configs import StageConfig, TrainConfig
from omnimm.training.parts import resolve_parts, set_trainable

log = logging.getLogger("omnimm.training")

WEIGHTS_FILE = "model.safetensors"
FINAL = "final"
CHECKPOINT = re.compile(r"checkpoint-([0-9]+)")  # the folders HF's Trainer writes, as its get_last_checkpoint reads
TRAINER_STATE_FILE = "trainer_state.json"  # written last by Trainer._save_checkpoint: the checkpoint's end mark
CHECKPOINT_FILES = (WEIGHTS_FILE, "optimizer.pt", "scheduler.pt", TRAINER_STATE_FILE)
FSDP_OPTIMIZER_FILE = "optimizer.bin"  # accelerate's save_fsdp_optimizer: the full optimizer state, from rank 0
DEEPSPEED_OPTIMIZER_FILE = "latest"  # DeepSpeed's save_checkpoint names its shard folder there, once written
OPTIMIZER_FILES = {"ddp": "optimizer.pt", "fsdp": FSDP_OPTIMIZER_FILE, "deepspeed": DEEPSPEED_OPTIMIZER_FILE}
"""The optimizer's file in a checkpoint each `train.distributed.mode` writes (one process writes ddp's); a checkpoint
written under one mode cannot be resumed under another."""


class TrainerView(torch.nn.Module):
    """What HF's Trainer sees: the model minus its pydantic `config`, where Trainer would write HF-only flags."""

    accepts_loss_kwargs = True

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, **batch: Any) -> Any:
        return self.model(**batch)


def _inner(model: Any) -> Any:
    """The omnimm model inside Trainer's wrappers (DistributedDataParallel, the view above)."""
    model = getattr(model, "module", model)
    return model.model if isinstance(model, TrainerView) else model


def safetensors_trainer_class() -> type:
    """HF's `Trainer`, saving and resuming any `nn.Module` as `model.safetensors` (no pickled files of ours)."""
    transformers = require("transformers", extra="video", purpose="training")
    safetensors_torch = require("safetensors.torch", extra="torch", purpose="training checkpoints")

    class SafetensorsTrainer(transformers.Trainer):
        def _save(self, output_dir: str | None = None, state_dict: dict[str, Any] | None = None) -> None:
            # Shared tensors (tied embeddings) are written once; no pickled training_args.bin.
            if not self.args.should_save:  # sharded saves gather on every process, the first one writes
                return
            folder = Path(output_dir or self.args.output_dir)
            folder.mkdir(parents=True, exist_ok=True)
            inner = _inner(self.accelerator.unwrap_model(self.model))
            if state_dict is None:
                safetensors_torch.save_model(inner, str(folder / WEIGHTS_FILE))
                return
            # FSDP / DeepSpeed: the whole model gathered by the Trainer, named as one process names it
            state = {distributed.strip_view(name): tensor for name, tensor in state_dict.items()}
            state = distributed.without_shared(inner, state)
            safetensors_torch.save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
            weights = str(Path(resume_from_checkpoint) / WEIGHTS_FILE)
            if self.is_fsdp_enabled:  # the first process reads the file and sends each tensor to the others' shards
                first = self.accelerator.process_index == 0
                state = safetensors_torch.load_file(weights) if first else {}
                distributed.load_full_state_dict(model or self.model_wrapped, state, from_rank0=True)
                return
            target = _inner(self.accelerator.unwrap_model(model if model is not None else self.model))
            safetensors_torch.load_model(target, weights)

        def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
            if not self.is_fsdp_enabled:
                super()._save_optimizer_and_scheduler(output_dir)
                return
            # The weights are in model.safetensors already: accelerate's save_fsdp_model would write a second
            # (pickled) copy. The optimizer's full state as accelerate saves it, the scheduler as the Trainer does.
            accelerate_utils = require("accelerate.utils", extra="video", purpose="FSDP checkpoints")
            plugin = self.accelerator.state.fsdp_plugin
            accelerate_utils.save_fsdp_optimizer(plugin, self.accelerator, self.optimizer, self.model, output_dir)
            if self.args.should_save:
                torch.save(self.lr_scheduler.state_dict(), Path(output_dir) / "scheduler.pt")

        def _load_best_model(self) -> None:
            # Trainer's own version loads non-strictly into the wrapper: keys would not match and nothing would load.
            self._load_from_checkpoint(self.state.best_model_checkpoint)

    return SafetensorsTrainer


def _is_number(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _stage_trainer_class() -> type:
    class StageTrainer(safetensors_trainer_class()):  # type: ignore[misc]
        """HF Trainer with per-part learning rates and safetensors checkpoints of any `nn.Module`."""

        def __init__(self, *args: Any, stage: StageConfig, train: TrainConfig | None = None, **kwargs: Any) -> None:
            self.stage = stage
            self.train_config = train
            self._extra_logs: dict[str, list[float]] = {}
            super().__init__(*args, **kwargs)

        def create_accelerator_and_postprocess(self) -> None:
            super().create_accelerator_and_postprocess()
            if self.train_config is not None and distributed.use_fsdp_on_cpu(self, self.train_config.distributed):
                log.info("stage %s: FSDP2 on CPU processes (gloo)", self.stage.name)

        def compute_loss(
            self, model: Any, inputs: Any, return_outputs: bool = False, num_items_in_batch: Any = None
        ) -> Any:
            loss, outputs = super().compute_loss(
                model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
            )
            aux = outputs.get("aux_loss") if isinstance(outputs, dict) else None
            if aux is not None and num_items_in_batch is not None and self.model_accepts_loss_kwargs and model.training:
                # The LM loss is already a token mean over the whole accumulated (and, scaled by Trainer, the whole
                # multi-process) batch, so Trainer divides it by nothing. The auxiliary losses are means over this
                # micro-batch: average them over the accumulation steps instead, and leave the averaging across
                # processes to DDP. `scale` is the factor Trainer.compute_loss applied to the whole loss.
                scale = 1
                if self.args.average_tokens_across_devices:
                    n_gpu = self.args.n_gpu
                    scale = self.accelerator.num_processes // self.get_tp_size() if n_gpu <= 1 else n_gpu
                loss = loss + aux * (1.0 / self.current_gradient_accumulation_steps - scale)
            if isinstance(outputs, dict) and model.training:
                self._remember(outputs)
            return (loss, outputs) if return_outputs else loss

        def _remember(self, outputs: dict[str, Any]) -> None:
            values = {f"aux_{name}": value for name, value in (outputs.get("aux_losses") or {}).items()}
            if "lm_loss_mean" in outputs:
                values["lm_loss"] = outputs["lm_loss_mean"]
            stats = outputs.get("connector_stats") or {}
            values.update({f"connector_{name}": value for name, value in stats.items() if _is_number(value)})
            for name, value in values.items():
                number = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
                self._extra_logs.setdefault(name, []).append(number)

        def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
            if "loss" in logs and self._extra_logs:  # a training log: add the means since the last one
                logs.update({name: sum(v) / len(v) for name, v in self._extra_logs.items()})
                self._extra_logs = {}
            super().log(logs, *args, **kwargs)

        def create_optimizer(self, model: Any = None) -> Any:
            if self.optimizer is None:
                self.optimizer = torch.optim.AdamW(
                    _parameter_groups(self.model, self.stage), lr=self.stage.learning_rate, weight_decay=0.0
                )
            return self.optimizer

    return StageTrainer


def _parameter_groups(model: Any, stage: StageConfig) -> list[dict[str, Any]]:
    """One optimizer group per learning rate; parameters take the rate of the most specific matching part."""
    model = _inner(model)
    owners: dict[int, str] = {}
    for part, module in sorted(model.parts().items(), key=lambda item: item[0].count(".")):
        for parameter in module.parameters():
            owners[id(parameter)] = part  # deeper parts come later and win
    groups: dict[float, list[torch.nn.Parameter]] = {}
    for parameter in model.parameters():
        if not parameter.requires_grad:
            continue
        part = owners.get(id(parameter), "")
        rate = stage.learning_rate
        for pattern, override in stage.part_learning_rates.items():
            if fnmatch.fnmatch(part, pattern) or fnmatch.fnmatch(part.split(".")[0], pattern):
                rate = override
        groups.setdefault(rate, []).append(parameter)
    if not groups:
        raise ValueError(f"stage '{stage.name}' trains {stage.train} but no parameter there can learn")
    weight_decay = stage.weight_decay
    return [{"params": params, "lr": rate, "weight_decay": weight_decay} for rate, params in groups.items()]


def uses_cpu(train: TrainConfig) -> bool:
    """Whether the run trains on CPU (`device: cpu`, or `auto` without a GPU)."""
    return train.device == "cpu" or (train.device == "auto" and not torch.cuda.is_available())


def _arguments(train: TrainConfig, stage: StageConfig, output: Path, progress: bool, model: Any = None) -> Any:
    transformers = require("transformers", extra="video", purpose="training")
    use_cpu = uses_cpu(train)
    return transformers.TrainingArguments(**training_arguments(train, stage, output, progress, model, use_cpu=use_cpu))


def training_arguments(
    train: TrainConfig, stage: StageConfig, output: Path, progress: bool, model: Any = None, *, use_cpu: bool
) -> dict[str, Any]:
    """The keywords of the stage's `TrainingArguments`, distributed mode included (without building them: a
    DeepSpeed config builds only where DeepSpeed is installed)."""
    world = distributed.world_size()
    mode = distributed.training_arguments(train, model, use_cpu=use_cpu) if model is not None else {}
    return dict(
        output_dir=str(output),
        per_device_train_batch_size=stage.batch_size,
        gradient_accumulation_steps=stage.grad_accum,
        learning_rate=stage.learning_rate,
        num_train_epochs=stage.epochs,
        max_steps=stage.max_steps,
        lr_scheduler_type=stage.scheduler,
        warmup_steps=stage.warmup_ratio,  # a float below 1 is a fraction of the total steps
        weight_decay=stage.weight_decay,
        logging_steps=stage.logging_steps,
        save_strategy="steps",
        save_steps=stage.save_steps,
        save_total_limit=train.save_total_limit,
        seed=train.seed,
        bf16=train.precision == "bf16",
        fp16=train.precision == "fp16",
        use_cpu=use_cpu,
        ddp_backend="gloo" if use_cpu and world > 1 else None,
        dataloader_num_workers=train.dataloader_workers,
        train_sampling_strategy="random" if stage.shuffle else "sequential",
        remove_unused_columns=False,
        report_to="none",
        disable_tqdm=not progress,
        **mode,
    )


def train_stage(
    model: Any, train: TrainConfig, stage: StageConfig, *, resume: bool = False, progress: bool = True
) -> Any:
    """Train one stage in place; returns the HF trainer (its `state.log_history` holds the losses)."""
    output = Path(train.output_dir) / stage.name
    if stage.lora is not None and not getattr(model, "has_lora", False):
        lora = stage.lora
        # The adapters' random start depends on the seed alone, not on what ran before (a sharded run reloads
        # its model between stages, which draws random numbers a single process does not)
        torch.manual_seed(train.seed)
        model.add_lora(rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout, target_modules=lora.target_modules)
    trainable = set_trainable(model, stage.train)
    log.info("stage %s: %d trainable tensors in %s", stage.name, len(trainable), resolve_parts(model, stage.train))
    checkpointed = distributed.enable_gradient_checkpointing(model, train.gradient_checkpointing)
    if checkpointed:
        log.info("stage %s: gradient checkpointing in %s", stage.name, ", ".join(checkpointed))
    use_cpu = uses_cpu(train)
    distributed.check_setup(train, use_cpu=use_cpu)
    distributed.check_wrap(train.distributed, model)
    dataset = datasets.build(stage.data, processor=model.processor)
    trainer = _stage_trainer_class()(
        model=TrainerView(model),
        args=_arguments(train, stage, output, progress, model),
        train_dataset=dataset,
        data_collator=model.processor,
        stage=stage,
        train=train,
    )
    distributed.check_engine(trainer, train.distributed)  # the engine the mode names, not a silent fallback
    optimizer = OPTIMIZER_FILES[train.distributed.mode]
    checkpoint = last_complete_checkpoint(output, stage.name, optimizer=optimizer) if resume else None
    trainer.train(resume_from_checkpoint=checkpoint)
    # The collator runs in the main process whatever the number of data-loading workers, so its counts are complete.
    for line in model.processor.report() if hasattr(model.processor, "report") else []:
        log.warning("stage %s: %s", stage.name, line)
    return trainer


def run_training(run: RunConfig, *, resume: bool = False, progress: bool = True, model: Any = None) -> Any:
    """Build the run's model (unless given) and train it stage by stage; returns the trained model.

    Each stage ends with `<output_dir>/<stage>/final` (config JSON + safetensors). With `resume`, finished stages
    are loaded from there and skipped, and an unfinished one continues from its last checkpoint.
    """
    if run.train is None:
        raise ValueError("the run has no `train:` section")
    distributed.check_setup(run.train, use_cpu=uses_cpu(run.train))  # before building a model that cannot train
    if model is None:
        torch.manual_seed(run.train.seed)  # the same initial weights on every run and every process
        model = models.build(run.model)
    for stage in run.train.stages:
        final = Path(run.train.output_dir) / stage.name / FINAL
        if resume and _finished(final):
            log.info("stage %s is done (%s): loading it", stage.name, final)
            model = type(model).from_pretrained(final)
            continue
        trainer = train_stage(model, run.train, stage, resume=resume, progress=progress)
        if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
            model = _save_sharded(trainer, model, stage, final)
            continue
        if stage.lora is not None and stage.lora.merge:
            model.merge_lora()
        failed = None
        if trainer.is_world_process_zero():
            try:
                model.save_pretrained(final)
            except Exception as error:  # every process learns it below, instead of waiting at a barrier
                failed = error
        distributed.first_process_outcome(failed)
    return model


def _save_sharded(trainer: Any, model: Any, stage: StageConfig, final: Path) -> Any:
    """Save a sharded stage's `final/` exactly as one process would, and return the model for what follows.

    The weights are gathered onto the first process, which puts them in an unsharded copy of the model (LoRA
    merged there) and saves it; then every process loads that folder, since a sharded model cannot be trained
    again by another Trainer nor saved by `save_pretrained`.
    """
    state = distributed.full_state_dict(trainer)
    failed = None
    if trainer.is_world_process_zero():
        try:
            plain = distributed.unsharded_copy(model, state)
            if stage.lora is not None and stage.lora.merge:
                plain.merge_lora()
            plain.save_pretrained(final)
            del plain
        except Exception as error:  # every process learns it below, instead of waiting at a barrier
            failed = error
    del state
    distributed.first_process_outcome(failed)
    cache = getattr(model, "feature_cache", None)
    model = type(model).from_pretrained(final)
    if cache is not None:  # the saved config leaves the cache folder out
        model.use_feature_cache(cache.folder)
    return model


def last_complete_checkpoint(output: Path, stage: str = "", *, optimizer: str = "optimizer.pt") -> str | None:
    """The newest `checkpoint-N` in `output` that holds everything a resume reads; the newer, incomplete ones (a
    run killed while saving) are skipped with a warning saying why. None when there is none. `optimizer` names
    the optimizer's file (`optimizer.bin` under FSDP, DeepSpeed's `latest` under DeepSpeed); a checkpoint that
    holds another mode's instead stops the resume with a `DistributedSetupError` (started afresh, the stage would
    overwrite it and rotation would delete it)."""
    found = []
    for path in output.iterdir() if output.is_dir() else []:
        match = CHECKPOINT.fullmatch(path.name)
        if match and path.is_dir():
            found.append((int(match[1]), path))
    where = f"stage {stage}: " if stage else ""
    for step, path in sorted(found, reverse=True):
        problem = checkpoint_problem(path, step, optimizer=optimizer)
        if problem is None:
            log.info("%sresuming from %s", where, path)
            return str(path)
        _check_written_under(path, optimizer, where)
        log.warning("%sskipping %s, incomplete (a save cut short?): %s", where, path, problem)
    if found:
        log.warning("%sno complete checkpoint in %s: the stage starts from its beginning", where, output)
    return None


def _check_written_under(folder: Path, optimizer: str, where: str) -> None:
    """A `DistributedSetupError` when `folder` lacks this mode's optimizer file but holds another mode's."""
    if (folder / optimizer).exists():
        return
    modes = {file: mode for mode, file in OPTIMIZER_FILES.items()}
    for file, mode in modes.items():
        if file != optimizer and (folder / file).exists():
            this = modes.get(optimizer, optimizer)
            raise distributed.DistributedSetupError(
                "train.distributed.mode",
                f"{where}{folder} was written under mode {mode} (it holds {file}), this run uses {this}: resume "
                f"with mode: {mode}, or move the stage's checkpoints away to train it from the start",
            )


def checkpoint_problem(folder: Path, step: int, *, optimizer: str = "optimizer.pt") -> str | None:
    """What a Trainer checkpoint lacks for a resume (missing or cut-short files, a wrong step), or None."""
    files = [optimizer if name == "optimizer.pt" else name for name in CHECKPOINT_FILES]
    missing = [name for name in files if not (folder / name).is_file()]
    if missing:
        return f"{', '.join(missing)} missing"
    weights = safetensors_problem(folder / WEIGHTS_FILE)
    if weights is not None:
        return weights
    saved_by_torch = [name for name in (optimizer, "scheduler.pt") if name.endswith((".pt", ".bin"))]
    for name in saved_by_torch:  # torch.save writes a zip: cut short, it has no end record
        if not zipfile.is_zipfile(folder / name):
            return f"{name} is cut short or damaged (not a complete torch file)"
    try:
        state = json.loads((folder / TRAINER_STATE_FILE).read_text(encoding="utf-8"))
    except (ValueError, OSError) as error:
        return f"{TRAINER_STATE_FILE} is not readable JSON ({type(error).__name__})"
    if not isinstance(state, dict) or state.get("global_step") != step:
        got = state.get("global_step") if isinstance(state, dict) else None
        return f"{TRAINER_STATE_FILE} says global_step {got!r}, the folder's name {step}"
    return None


def _finished(final: Path) -> bool:
    """Whether a stage's final model is saved (put back first if a save was killed between its two renames)."""
    restored = restore_folder(final, _saved_model_problem)
    if restored is not None:
        log.warning("%s", restored[1])
    problem = _saved_model_problem(final)
    if problem is not None and final.is_dir():
        log.warning("%s is incomplete (%s): training the stage again", final, problem)
    return problem is None


def _saved_model_problem(folder: Path) -> str | None:
    if not (folder / "config.json").is_file():
        return "config.json is missing"
    return safetensors_problem(folder / WEIGHTS_FILE)
