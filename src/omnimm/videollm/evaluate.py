"""Answer every item of a dataset with a video LLM and score the replies: what `omnimm eval` runs.

Each dataset item is a conversation whose last assistant turn is the reference; the turns before it are the prompt.
Unreadable media are skipped and counted, never fatal.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from omnimm.errors import MediaError
from omnimm.evaluation import AnswerEvaluator, Prediction
from omnimm.files import atomic_write_text

log = logging.getLogger("omnimm.eval")

PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.json"


@dataclass
class EvalResult:
    predictions: list[Prediction]
    metrics: dict[str, Any]
    skipped: dict[str, str] = field(default_factory=dict)


def _split_reference(turns: Sequence[tuple[str, str]]) -> tuple[list[tuple[str, str]], str]:
    from omnimm.llm.templates import normalise_role

    turns = list(turns)
    last = max((i for i, (role, _) in enumerate(turns) if normalise_role(role) == "assistant"), default=None)
    if last is None:
        raise ValueError("an evaluation item needs an assistant turn with the reference answer")
    if not any(normalise_role(role) == "user" for role, _ in turns[:last]):
        raise ValueError("an evaluation item needs a question (a user turn) before its reference answer")
    return turns[:last], turns[last][1]


def _question(prompt: Sequence[tuple[str, str]]) -> str:
    from omnimm.llm.templates import normalise_role

    return next(text for role, text in reversed(prompt) if normalise_role(role) == "user")


def predict(
    model: Any,
    dataset: Any,
    *,
    batch_size: int = 16,
    max_new_tokens: int = 64,
    limit: int | None = None,
    progress: bool = True,
    on_batch: Callable[[int, int], None] | None = None,
    **generate_options: Any,
) -> tuple[list[Prediction], dict[str, str]]:
    """Generate a reply for every item of `dataset` (a `MediaDataset`); returns the predictions and the skipped
    items (path -> reason)."""
    processor = model.processor
    count = len(dataset) if limit is None else min(limit, len(dataset))
    predictions: list[Prediction] = []
    skipped: dict[str, str] = {}
    model.eval()
    with _progress(progress, count) as advance, torch.no_grad():
        for start in range(0, count, batch_size):
            pending = []
            for index in range(start, min(start + batch_size, count)):
                media, turns = dataset.item(index)
                try:
                    prompt, reference = _split_reference(turns)
                    clip = dataset.read_clip(media) if media is not None else None
                    pixels = dataset.pixel_values(media, clip)
                    example = processor.encode(prompt, clip, for_generation=True, pixel_values=pixels)
                except (MediaError, ValueError) as error:
                    skipped[media or f"item {index}"] = str(error)
                    continue
                meta = dataset.meta(index) if hasattr(dataset, "meta") else {}
                item_id = str(meta.get("id", index))
                question = _question(prompt)
                pending.append((Prediction(item_id, question, "", reference, media, meta), example))
            if pending:
                batch = processor.collate([example for _, example in pending], padding_side="left")
                batch.pop("labels")
                generated = model.generate(**batch, max_new_tokens=max_new_tokens, **generate_options)
                for (prediction, _), ids in zip(pending, generated, strict=True):
                    prediction.reply = model.decode(ids)
                    predictions.append(prediction)
            done = min(start + batch_size, count)
            advance(done - start)
            if on_batch is not None:
                on_batch(done, count)
    if skipped:
        log.warning("%d item(s) skipped (unreadable media or too long): %s", len(skipped), sorted(skipped)[:5])
    return predictions, skipped


def score(predictions: Sequence[Prediction], evaluators: Mapping[str, AnswerEvaluator]) -> dict[str, Any]:
    """Each evaluator's metrics, by its name."""
    return {name: evaluator.evaluate(predictions) for name, evaluator in evaluators.items()}


def evaluate(
    model: Any,
    dataset: Any,
    evaluators: Mapping[str, AnswerEvaluator],
    *,
    output: str | Path | None = None,
    **options: Any,
) -> EvalResult:
    """Predict, score, and (with `output`) write `predictions.jsonl` and `metrics.json` there, atomically. The
    predictions are written before scoring, so an evaluator that fails loses none of the generated answers."""
    predictions, skipped = predict(model, dataset, **options)
    folder = Path(output) if output is not None else None
    if folder is not None:
        _write_predictions(folder / PREDICTIONS_FILE, predictions)
    metrics = score(predictions, evaluators)
    metrics["_run"] = {"predictions": len(predictions), "skipped": len(skipped)}
    if folder is not None:
        _write_predictions(folder / PREDICTIONS_FILE, predictions)  # again: with what the evaluators parsed
        atomic_write_text(folder / METRICS_FILE, json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    return EvalResult(predictions, metrics, skipped)


def _write_predictions(path: Path, predictions: Sequence[Prediction]) -> None:
    atomic_write_text(path, "".join(json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in predictions))


class _progress:
    """A rich progress bar over items (or nothing when `enabled` is false)."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled = enabled
        self.total = total

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda _: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self.bar = Progress("answering", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True)
        self.bar.__enter__()
        task = self.bar.add_task("answering", total=self.total)
        return lambda steps: self.bar.advance(task, steps)

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)
