"""Answer every item of a dataset with a video LLM and score the replies: what `omnimm eval` runs.

Each dataset item is a conversation whose last assistant turn is the reference; the turns before it are the prompt.
Unreadable media are skipped and counted, never fatal.

Under `torchrun` (a `torch.distributed` process group), the processes share the work by whole batches: batch `b`
(items `b * batch_size ...`) goes to process `b % world_size`, so every item is answered in the same batch, with the
same padding, as in one process. The answers are gathered in the dataset's order on every process; the first one
scores them and writes the files. The result is the one a single process gives.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
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
    """What `evaluate` returns: the predictions in the dataset's order, each evaluator's metrics by name (plus
    `_run`: counts), and the items skipped (media or item -> why)."""

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


def process_group() -> tuple[int, int]:
    """This process's rank and the number of processes of the `torch.distributed` group; `(0, 1)` without one."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextmanager
def distributed() -> Iterator[tuple[int, int]]:
    """Join the process group that `torchrun` describes (`WORLD_SIZE` > 1) for the duration, with gloo: only small
    Python objects travel between the processes, wherever the model runs. Yields `(rank, world_size)`; a group
    that already exists is used as it is and left open."""
    dist = torch.distributed
    started = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group("gloo")
        started = True
    try:
        yield process_group()
    finally:
        if started:
            dist.destroy_process_group()


def batch_starts(count: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """First item of each batch process `rank` answers: batch `b` of the `count` items goes to `b % world_size`."""
    return list(range(0, count, batch_size))[rank::world_size]


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
    items (path -> reason), in the dataset's order. Inside a `torch.distributed` group each process answers its
    share of the batches (see the module's docs) and every process returns the whole result; `on_batch(done,
    total)` then counts this process's items."""
    count = len(dataset) if limit is None else min(limit, len(dataset))
    rank, world_size = process_group()
    starts = batch_starts(count, batch_size, rank, world_size)
    total = sum(min(batch_size, count - start) for start in starts)
    answered: list[tuple[int, Prediction]] = []
    failed: list[tuple[int, str, str]] = []
    model.eval()
    done = 0
    with _progress(progress and rank == 0, total) as advance, torch.no_grad():
        for start in starts:
            indices = range(start, min(start + batch_size, count))
            answered += _answer_batch(model, dataset, indices, failed, max_new_tokens, generate_options)
            done += len(indices)
            advance(len(indices))
            if on_batch is not None:
                on_batch(done, total)
    if world_size > 1:
        answered, failed = _gather(answered, failed, world_size)
    predictions = [prediction for _, prediction in answered]
    skipped = {where: reason for _, where, reason in failed}
    if skipped and rank == 0:
        log.warning("%d item(s) skipped (unreadable media or too long): %s", len(skipped), sorted(skipped)[:5])
    return predictions, skipped


def _answer_batch(
    model: Any,
    dataset: Any,
    indices: range,
    failed: list[tuple[int, str, str]],
    max_new_tokens: int,
    generate_options: Mapping[str, Any],
) -> list[tuple[int, Prediction]]:
    """Replies to the items `indices` as one batch, with their positions; items that cannot be used go to
    `failed` as `(position, media, reason)`."""
    processor = model.processor
    pending = []
    for index in indices:
        media, turns = dataset.item(index)
        try:
            prompt, reference = _split_reference(turns)
            clip = dataset.read_clip(media) if media is not None else None
            pixels = dataset.pixel_values(media, clip)
            example = processor.encode(prompt, clip, for_generation=True, pixel_values=pixels)
        except (MediaError, ValueError) as error:
            failed.append((index, media or f"item {index}", str(error)))
            continue
        meta = dataset.meta(index) if hasattr(dataset, "meta") else {}
        prediction = Prediction(str(meta.get("id", index)), _question(prompt), "", reference, media, meta)
        pending.append((index, prediction, example))
    if not pending:
        return []
    batch = processor.collate([example for _, _, example in pending], padding_side="left")
    batch.pop("labels")
    generated = model.generate(**batch, max_new_tokens=max_new_tokens, **generate_options)
    for (_, prediction, _), ids in zip(pending, generated, strict=True):
        prediction.reply = model.decode(ids)
    return [(index, prediction) for index, prediction, _ in pending]


def _gather(
    answered: list[tuple[int, Prediction]], failed: list[tuple[int, str, str]], world_size: int
) -> tuple[list[tuple[int, Prediction]], list[tuple[int, str, str]]]:
    """Every process's answers and failures, merged in the dataset's order (positions are unique across
    processes: each batch belongs to one)."""
    shares: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(shares, (answered, failed))
    merged_answers = sorted((item for share, _ in shares for item in share), key=lambda item: item[0])
    merged_failures = sorted((item for _, share in shares for item in share), key=lambda item: item[0])
    return merged_answers, merged_failures


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
    predictions are written before scoring, so an evaluator that fails loses none of the generated answers.

    Inside a `torch.distributed` group, the processes share the answering; the first one scores and writes, and
    every process returns its result."""
    predictions, skipped = predict(model, dataset, **options)
    rank, world_size = process_group()
    metrics: dict[str, Any] = {}
    if rank == 0:
        metrics = _score_and_write(predictions, skipped, evaluators, Path(output) if output is not None else None)
    if world_size > 1:  # what the evaluators parsed and scored, for every process
        shared = [predictions, metrics]
        torch.distributed.broadcast_object_list(shared, src=0)
        predictions, metrics = shared
    return EvalResult(predictions, metrics, skipped)


def _score_and_write(
    predictions: Sequence[Prediction],
    skipped: Mapping[str, str],
    evaluators: Mapping[str, AnswerEvaluator],
    folder: Path | None,
) -> dict[str, Any]:
    if folder is not None:
        _write_predictions(folder / PREDICTIONS_FILE, predictions)
    metrics = score(predictions, evaluators)
    metrics["_run"] = {"predictions": len(predictions), "skipped": len(skipped)}
    if folder is not None:
        _write_predictions(folder / PREDICTIONS_FILE, predictions)  # again: with what the evaluators parsed
        atomic_write_text(folder / METRICS_FILE, json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    return metrics


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
