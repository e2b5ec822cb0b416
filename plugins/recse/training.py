"""Training on HF's Trainer with SimCSE's conventions, STS-B dev evaluation every N steps, best model kept.

The best (or last) model is exported in the sentence-transformers format (`SentenceTransformer(folder)` loads it;
so does `hf/sentence-encoder` with `path: folder`), together with `recse.json` (the config and the dev scores).
"""

from __future__ import annotations

import json
import random
import shutil
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omnimm.deps import require
from omnimm.errors import ConfigError, ConfigIssue
from omnimm.files import atomic_write_text, read_utf8
from omnimm_plugins.recse.configs import RecseTrainConfig, SentenceSource

BEST = "model"
CHECKPOINTS = "checkpoints"
METRIC = "stsb_spearman"


def normalise(text: str) -> str:
    """The form sentences are compared in for pool hygiene: NFKC, lowercase, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def held_out_sentences(folder: str | Path) -> set[str]:
    """Normalised sentences of an STS-B folder's dev and test splits (the splits that must stay unseen)."""
    from omnimm.sentence.sts import read_stsb

    held: set[str] = set()
    for split in ("dev", "test"):
        if (Path(folder) / f"sts-{split}.csv").is_file():
            held |= {normalise(s) for p in read_stsb(folder, split) for s in (p.sentence1, p.sentence2)}
    return held


def load_sentences(source: SentenceSource, *, seed: int = 0, exclude_stsb: Sequence[str | Path] = ()) -> list[str]:
    """Unlabelled sentences: STS-B train sentences, script speech lines, text lines; de-duplicated, in order.

    Every sentence of the dev and test splits of `source.stsb` and of each `exclude_stsb` folder is dropped (compared
    normalised): STS-B's splits share sentences, and the script or text may quote them too.
    """
    sentences: list[str] = []
    if source.stsb:
        from omnimm.sentence.sts import read_stsb

        sentences += [s for p in read_stsb(source.stsb, "train") for s in (p.sentence1, p.sentence2)]
    if source.script:
        sentences += script_lines(source.script)
    if source.text:
        text = read_utf8(source.text)
        sentences += [line.strip() for line in text.splitlines() if line.strip()]
    held: set[str] = set()
    for folder in {str(f) for f in (source.stsb, *exclude_stsb) if f}:
        held |= held_out_sentences(folder)
    unique = [s for s in dict.fromkeys(sentences) if normalise(s) not in held]
    if source.limit is not None and len(unique) > source.limit:
        unique = random.Random(seed).sample(unique, source.limit)
    if len(unique) < 2:
        raise ValueError("the training data holds fewer than 2 distinct sentences")
    return unique


def script_lines(path: str | Path, *, min_words: int = 4) -> list[str]:
    """Speech lines of a `SPEAKER:` script (speaker lines and short lines left out)."""
    lines = (line.strip() for line in read_utf8(path).splitlines())
    return [line for line in lines if line and not line.endswith(":") and len(line.split()) >= min_words]


@dataclass
class TrainResult:
    model_dir: Path
    best_spearman: float | None
    history: list[dict[str, Any]] = field(default_factory=list)


def train(config: RecseTrainConfig, *, progress: bool = True) -> TrainResult:
    transformers = require("transformers", extra="recse", purpose="recse training")
    import torch

    from omnimm.training.trainer import TrainerView, safetensors_trainer_class
    from omnimm_plugins.recse.model import ContrastiveModel, RecseCollator

    transformers.set_seed(config.seed)
    exclude = [config.eval_stsb] if config.eval_stsb else []
    sentences = load_sentences(config.data, seed=config.seed, exclude_stsb=exclude)
    if len(sentences) < config.batch_size:  # full batches only (in-batch negatives): not one step would run
        message = f"{len(sentences)} training sentences, fewer than one batch ({config.batch_size}): lower batch_size"
        raise ConfigError([ConfigIssue("batch_size", message)], title="recse training")
    contrastive = ContrastiveModel(config.model)
    output = Path(config.output_dir)
    evaluator = None
    if config.eval_stsb:
        from omnimm_plugins.recse.configs import STSBEvaluatorConfig
        from omnimm_plugins.recse.evaluate import STSBEvaluator

        evaluator = STSBEvaluator(STSBEvaluatorConfig(folder=config.eval_stsb, split="dev"))

    class STSTrainer(safetensors_trainer_class()):  # type: ignore[misc]
        def create_optimizer(self, model: Any = None) -> Any:
            if self.optimizer is None:
                heads = {id(p) for p in contrastive.head_parameters()}
                groups = [
                    {"params": [p for p in contrastive.parameters() if id(p) not in heads], "lr": config.learning_rate},
                    {"params": contrastive.head_parameters(), "lr": config.head_learning_rate},
                ]
                self.optimizer = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=0.0)
            return self.optimizer

        def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval") -> dict:
            assert evaluator is not None
            scores = evaluator.evaluate(contrastive.encoder)
            metrics = {
                f"{metric_key_prefix}_{METRIC}": scores["spearman"],
                f"{metric_key_prefix}_stsb_pearson": scores["pearson"],
            }
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

    evaluating = evaluator is not None
    arguments = transformers.TrainingArguments(
        output_dir=str(output / CHECKPOINTS),
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        max_steps=config.max_steps,
        lr_scheduler_type="linear",
        warmup_steps=config.warmup_ratio,
        logging_steps=max(1, min(config.eval_steps, 25)),
        eval_strategy="steps" if evaluating else "no",
        eval_steps=config.eval_steps,
        save_strategy="steps",
        save_steps=config.eval_steps,
        save_total_limit=1,
        load_best_model_at_end=evaluating,
        metric_for_best_model=METRIC if evaluating else None,
        greater_is_better=True,
        seed=config.seed,
        dataloader_drop_last=True,  # in-batch negatives: every batch full
        remove_unused_columns=False,
        use_cpu=not torch.cuda.is_available(),
        report_to="none",
        disable_tqdm=not progress,
    )
    collator = RecseCollator(contrastive.tokenizer, config.model, max_length=config.max_length, seed=config.seed)
    trainer = STSTrainer(
        model=TrainerView(contrastive),
        args=arguments,
        train_dataset=[{"text": s} for s in sentences],
        eval_dataset=[{"text": ""}] if evaluating else None,  # our evaluate() reads STS-B itself
        data_collator=collator,
    )
    trainer.train()
    best = None
    if evaluating:
        best = trainer.state.best_metric
        if best is None:  # no evaluation happened before the end: evaluate the final model
            best = trainer.evaluate()[f"eval_{METRIC}"]
    model_dir = export_sentence_transformer(contrastive.encoder, output / BEST, max_length=config.max_length)
    summary = {"config": config.model_dump(mode="json"), "best_dev_spearman": best, "sentences": len(sentences)}
    atomic_write_text(model_dir / "recse.json", json.dumps(summary, indent=1) + "\n")
    return TrainResult(model_dir, best, list(trainer.state.log_history))


def export_sentence_transformer(encoder: Any, folder: Path, *, max_length: int) -> Path:
    """Write `encoder` (an `hf/sentence-encoder`) as a sentence-transformers model folder, replacing `folder` whole."""
    st = require("sentence_transformers", extra="recse", purpose="exporting in the sentence-transformers format")
    try:  # sentence-transformers >= 6 moved the modules here
        from sentence_transformers.sentence_transformer import modules
    except ImportError:
        modules = st.models
    pooling = {"cls": "cls", "mean": "mean"}.get(encoder.config.pooling)
    if pooling is None:
        raise ValueError(f"pooling '{encoder.config.pooling}' has no sentence-transformers equivalent; use cls or mean")
    staging = folder.with_name(f".{folder.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    raw = staging / "transformer"
    encoder.model.save_pretrained(raw)
    encoder.tokenizer.save_pretrained(raw)
    word = modules.Transformer(str(raw), max_seq_length=max_length)
    parts = [word, modules.Pooling(word.get_embedding_dimension(), pooling_mode=pooling)]
    if encoder.config.normalize:
        parts.append(modules.Normalize())
    st.SentenceTransformer(modules=parts, device="cpu").save(str(staging / "model"))
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    (staging / "model").rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)
    return folder
