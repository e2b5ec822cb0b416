"""Run training stages with HF's `Trainer`: progress bars, gradient accumulation, schedules, checkpoints, resume
and data parallelism come from it; this module decides what trains and how it is saved.

Works for models that expose `parts()`, `processor` (the collate function), `save_pretrained`/`from_pretrained`
and, for LoRA stages, `add_lora`/`merge_lora`/`has_lora` (the video LLM does).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from omnimm.deps import require
from omnimm.files import restore_folder, safetensors_problem
from omnimm.registry import datasets, models
from omnimm.run import RunConfig
from omnimm.training.configs import StageConfig, TrainConfig

log = logging.getLogger("omnimm.training")

WEIGHTS_FILE = "model.safetensors"
FINAL = "final"
CHECKPOINT = re.compile(r"checkpoint-([0-9]+)")  # the folders HF's Trainer writes, as its get_last_checkpoint reads
TRAINER_STATE_FILE = "trainer_state.json"  # written last by Trainer._save_checkpoint: the checkpoint's end mark
CHECKPOINT_FILES = (WEIGHTS_FILE, "optimizer.pt", "scheduler.pt", TRAINER_STATE_FILE)


def resolve_parts(model: Any, patterns: Sequence[str]) -> list[str]:
    """Part names matching the patterns (wildcards allowed), in the model's order."""
    parts = list(model.parts())
    return [part for part in parts if any(fnmatch.fnmatch(part, pattern) for pattern in patterns)]


def set_trainable(model: Any, patterns: Sequence[str]) -> list[str]:
    """Make exactly the parameters of the matching parts trainable (with LoRA on the LLM, only its adapters).

    Returns the names of the trainable parameters.
    """
    model.requires_grad_(False)
    named = model.parts()
    lora = bool(getattr(model, "has_lora", False))
    for part in resolve_parts(model, patterns):
        module = named[part]
        if part == "llm" and lora:
            for name, parameter in module.named_parameters():
                parameter.requires_grad_("lora_" in name)
        else:
            module.requires_grad_(True)
    return [name for name, parameter in model.named_parameters() if parameter.requires_grad]


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
            folder = Path(output_dir or self.args.output_dir)
            folder.mkdir(parents=True, exist_ok=True)
            safetensors_torch.save_model(_inner(self.accelerator.unwrap_model(self.model)), str(folder / WEIGHTS_FILE))

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
            target = _inner(self.accelerator.unwrap_model(model if model is not None else self.model))
            safetensors_torch.load_model(target, str(Path(resume_from_checkpoint) / WEIGHTS_FILE))

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

        def __init__(self, *args: Any, stage: StageConfig, **kwargs: Any) -> None:
            self.stage = stage
            self._extra_logs: dict[str, list[float]] = {}
            super().__init__(*args, **kwargs)

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


def _arguments(train: TrainConfig, stage: StageConfig, output: Path, progress: bool) -> Any:
    transformers = require("transformers", extra="video", purpose="training")
    use_cpu = train.device == "cpu" or (train.device == "auto" and not torch.cuda.is_available())
    return transformers.TrainingArguments(
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
        ddp_backend="gloo" if use_cpu and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        dataloader_num_workers=train.dataloader_workers,
        train_sampling_strategy="random" if stage.shuffle else "sequential",
        remove_unused_columns=False,
        report_to="none",
        disable_tqdm=not progress,
    )


def train_stage(
    model: Any, train: TrainConfig, stage: StageConfig, *, resume: bool = False, progress: bool = True
) -> Any:
    """Train one stage in place; returns the HF trainer (its `state.log_history` holds the losses)."""
    output = Path(train.output_dir) / stage.name
    if stage.lora is not None and not getattr(model, "has_lora", False):
        lora = stage.lora
        model.add_lora(rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout, target_modules=lora.target_modules)
    trainable = set_trainable(model, stage.train)
    log.info("stage %s: %d trainable tensors in %s", stage.name, len(trainable), resolve_parts(model, stage.train))
    dataset = datasets.build(stage.data, processor=model.processor)
    trainer = _stage_trainer_class()(
        model=TrainerView(model),
        args=_arguments(train, stage, output, progress),
        train_dataset=dataset,
        data_collator=model.processor,
        stage=stage,
    )
    checkpoint = last_complete_checkpoint(output, stage.name) if resume else None
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
        if stage.lora is not None and stage.lora.merge:
            model.merge_lora()
        if trainer.is_world_process_zero():
            model.save_pretrained(final)
        trainer.accelerator.wait_for_everyone()
    return model


def last_complete_checkpoint(output: Path, stage: str = "") -> str | None:
    """The newest `checkpoint-N` in `output` that holds everything a resume reads; the newer, incomplete ones (a
    run killed while saving) are skipped with a warning saying why. None when there is none."""
    found = []
    for path in output.iterdir() if output.is_dir() else []:
        match = CHECKPOINT.fullmatch(path.name)
        if match and path.is_dir():
            found.append((int(match[1]), path))
    where = f"stage {stage}: " if stage else ""
    for step, path in sorted(found, reverse=True):
        problem = checkpoint_problem(path, step)
        if problem is None:
            log.info("%sresuming from %s", where, path)
            return str(path)
        log.warning("%sskipping %s, incomplete (a save cut short?): %s", where, path, problem)
    if found:
        log.warning("%sno complete checkpoint in %s: the stage starts from its beginning", where, output)
    return None


def checkpoint_problem(folder: Path, step: int) -> str | None:
    """What a Trainer checkpoint lacks for a resume (missing or cut-short files, a wrong step), or None."""
    missing = [name for name in CHECKPOINT_FILES if not (folder / name).is_file()]
    if missing:
        return f"{', '.join(missing)} missing"
    weights = safetensors_problem(folder / WEIGHTS_FILE)
    if weights is not None:
        return weights
    for name in ("optimizer.pt", "scheduler.pt"):  # torch.save writes a zip: cut short, it has no end record
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
