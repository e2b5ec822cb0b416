"""Retrieval quality on a real task: a held-out line of a character must bring back its own scene.

For a character in a script, each of its lines (of `min_words`+ words) is held out in turn: the line is removed
from its scene, which keeps the neighbouring turns, and used as the query. A ranker scores well when that scene comes
back in its top k. Every other scene stays complete (leave-one-out), so all rankers see the same corpus per query.
Rankers: dense retrieval (exact inner product of unit vectors, as the `flat` index computes it) with any encoder,
on each scene's first `max_length` tokens or on overlapping windows of the whole scene (a scene scores as its best
window, as `SceneMemory` ranks them), BM25 (`bm25s`), and random order. `recall_interval` gives percentile
bootstrap intervals over the held-out lines.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from omnimm.deps import require
from omnimm_plugins.haruhi.embeddings import SceneWindows, window_spans
from omnimm_plugins.haruhi.scripts import Turn, character_scenes, read_turns

Ranker = Callable[["HeldOutTask"], list[list[int]]]


@dataclass(frozen=True)
class HeldOutTask:
    character: str
    scenes: list[str]
    queries: list[str]
    targets: list[int]
    """For each query, the index of the scene its line was taken from."""
    reduced: list[str]
    """For each query, its target scene without the held-out line (what the corpus holds for that query)."""

    def corpus(self, query: int) -> list[str]:
        texts = list(self.scenes)
        texts[self.targets[query]] = self.reduced[query]
        return texts


def held_out_task(
    turns: Sequence[Turn] | str | os.PathLike[str],
    character: str,
    *,
    window: int = 6,
    min_words: int = 5,
    max_queries: int | None = None,
    seed: int = 0,
) -> HeldOutTask:
    """Hold out each line of `character` with `min_words`+ words whose scene keeps other turns (a seeded sample of
    `max_queries` when set)."""
    if not isinstance(turns, Sequence):
        turns = read_turns(turns)
    name = character.casefold()
    scenes = character_scenes(turns, character, window=window)
    position_of = {scene.first_turn // window: position for position, scene in enumerate(scenes)}
    queries, targets, reduced = [], [], []
    for turn in turns:
        if turn.speaker.casefold() != name or len(turn.speech.split()) < min_words:
            continue
        position = position_of[turn.index // window]
        rest = [t for t in turns[turn.index // window * window :][:window] if t.index != turn.index]
        if not rest:
            continue
        queries.append(turn.speech)
        targets.append(position)
        reduced.append("\n\n".join(t.render() for t in rest))
    if not queries:
        raise ValueError(f"{character!r} has no line of {min_words}+ words to hold out")
    if max_queries is not None and len(queries) > max_queries:
        keep = sorted(random.Random(seed).sample(range(len(queries)), max_queries))
        queries, targets, reduced = ([xs[i] for i in keep] for xs in (queries, targets, reduced))
    return HeldOutTask(character, [s.text for s in scenes], queries, targets, reduced)


def recall_at_k(rankings: Sequence[Sequence[int]], targets: Sequence[int], ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Share of queries whose target is among the first k of its ranking, per k."""
    if len(rankings) != len(targets):
        raise ValueError(f"{len(rankings)} rankings for {len(targets)} targets")
    if not targets:
        return {f"recall@{k}": float("nan") for k in ks}
    return {f"recall@{k}": float(np.mean([t in r[:k] for r, t in zip(rankings, targets, strict=True)])) for k in ks}


def dense_ranker(encoder: Any, *, depth: int = 10, windows: SceneWindows | None = None) -> Ranker:
    """Rank scenes by cosine similarity of `encoder` embeddings (each text embedded once).

    `windows` unset: one embedding per scene (the encoder keeps its first `max_length` tokens). Set: every window of
    every scene is embedded and a scene scores as its best window."""
    if windows is not None:
        return _windowed_ranker(encoder, windows, depth)

    def rank(task: HeldOutTask) -> list[list[int]]:
        scenes = _unit(encoder.encode(task.scenes))
        reduced = _unit(encoder.encode(task.reduced))
        queries = _unit(encoder.encode(task.queries))
        rankings = []
        for i, query in enumerate(queries):
            scores = scenes @ query
            scores[task.targets[i]] = reduced[i] @ query
            rankings.append(np.argsort(-scores, kind="stable")[:depth].tolist())
        return rankings

    return rank


def _windowed_ranker(encoder: Any, windows: SceneWindows, depth: int) -> Ranker:
    def rank(task: HeldOutTask) -> list[list[int]]:
        window, stride, _ = windows.resolve(encoder)
        texts = [*task.scenes, *task.reduced]
        pieces = [[text[a:b] for a, b in window_spans(text, encoder, window, stride)] for text in texts]
        unique = sorted({piece for group in pieces for piece in group})
        vectors = _unit(encoder.encode(unique))
        row = {piece: i for i, piece in enumerate(unique)}
        groups = [vectors[[row[p] for p in group]] for group in pieces]
        scene_matrix = np.concatenate(groups[: len(task.scenes)])
        starts = np.cumsum([0] + [len(g) for g in groups[: len(task.scenes) - 1]])
        queries = _unit(encoder.encode(task.queries))
        rankings = []
        for i, query in enumerate(queries):
            scores = np.maximum.reduceat(scene_matrix @ query, starts)
            scores[task.targets[i]] = (groups[len(task.scenes) + i] @ query).max()
            rankings.append(np.argsort(-scores, kind="stable")[:depth].tolist())
        return rankings

    return rank


def hits_at_k(rankings: Sequence[Sequence[int]], targets: Sequence[int], k: int) -> np.ndarray:
    """Per query, 1.0 when its target is among the first k of its ranking."""
    return np.asarray([t in r[:k] for r, t in zip(rankings, targets, strict=True)], dtype=np.float64)


def recall_interval(
    hits: np.ndarray, *, samples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """Mean of per-query `hits` (or of paired differences) and its percentile bootstrap interval over queries."""
    values = np.asarray(hits, dtype=np.float64)
    if not len(values):
        return float("nan"), float("nan"), float("nan")
    draws = np.random.default_rng(seed).integers(0, len(values), (samples, len(values)))
    means = values[draws].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return float(values.mean()), float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def bm25_ranker(*, depth: int = 10, stopwords: str = "en") -> Ranker:
    """Okapi BM25 over the scene texts (`bm25s`, its tokenizer with English stop words), indexed per query."""
    bm25s = require("bm25s", extra="haruhi", purpose="the BM25 baseline")

    def rank(task: HeldOutTask) -> list[list[int]]:
        rankings = []
        for i, query in enumerate(task.queries):
            corpus = task.corpus(i)
            retriever = bm25s.BM25()
            retriever.index(bm25s.tokenize(corpus, stopwords=stopwords, show_progress=False), show_progress=False)
            tokens = bm25s.tokenize([query], stopwords=stopwords, show_progress=False)
            found, _ = retriever.retrieve(tokens, k=min(depth, len(corpus)), show_progress=False)
            rankings.append(list(map(int, found[0])))
        return rankings

    return rank


def _unit(vectors: Any) -> np.ndarray:
    matrix = np.asarray(vectors, dtype=np.float32)
    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)


def random_ranker(*, seed: int = 0, depth: int = 10) -> Ranker:
    def rank(task: HeldOutTask) -> list[list[int]]:
        generator = random.Random(seed)
        return [generator.sample(range(len(task.scenes)), min(depth, len(task.scenes))) for _ in task.queries]

    return rank


def evaluate_rankers(task: HeldOutTask, rankers: dict[str, Ranker], ks: Sequence[int] = (1, 5, 10)) -> dict:
    """`{ranker: {recall@k: ...}}` plus the task's size, all on the same held-out lines."""
    results: dict[str, Any] = {
        "character": task.character,
        "scenes": len(task.scenes),
        "queries": len(task.queries),
    }
    for name, ranker in rankers.items():
        results[name] = recall_at_k(ranker(task), task.targets, ks)
    return results
