"""Response-pair features, batched: ROUGE-1/2/L, sentence BLEU, chrF, METEOR, length ratio, exact match.

Each feature compares a *reference* response (the old stage) with a *candidate* (the new one) and follows the
definition of a maintained package, so values are interchangeable with it (tests check agreement to 1e-6):

| feature | definition |
|---|---|
| `rouge1`, `rouge2`, `rougeL` | rouge-score's F-measure (no stemming) over `text.words` tokens |
| `bleu` | sacreBLEU's sentence BLEU (exp smoothing, effective order, `13a` / `zh` tokenizer), divided by 100 |
| `chrf` | sacreBLEU's sentence chrF (character 6-grams, beta 2, whitespace removed), divided by 100 |
| `meteor` | NLTK's METEOR (alpha 0.9, beta 3, gamma 0.5): exact and Porter-stem stages, no WordNet stage |
| `length_ratio` | shorter / longer response, in words |
| `exact_match` | 1 when the responses are equal up to surrounding and repeated whitespace |

Speed comes from doing each pair's work once (shared tokens and n-gram counts), a bit-parallel LCS, formulas
applied to whole arrays, and worker processes.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from typing import Any

import numpy as np

from omnimm_plugins.simct.text import Segmentation, bleu_tokenizer, has_cjk, words

FEATURES: tuple[str, ...] = ("rouge1", "rouge2", "rougeL", "bleu", "chrf", "meteor", "length_ratio", "exact_match")
"""Names of the text features, in column order."""

_BLEU_ORDER = 4
_CHRF_ORDER = 6
_CHRF_BETA = 2.0

# Per pair, the statistics the vectorised formulas need; one row each, columns below.
_STATS = (
    ["rouge1", "rouge2", "rougeL", "meteor", "length_ratio", "exact_match", "sys_len", "ref_len"]
    + [f"bleu_correct{n}" for n in range(1, _BLEU_ORDER + 1)]
    + [f"bleu_total{n}" for n in range(1, _BLEU_ORDER + 1)]
    + [f"chrf_{kind}{n}" for n in range(1, _CHRF_ORDER + 1) for kind in ("hyp", "ref", "match")]
)
_COLUMN = {name: index for index, name in enumerate(_STATS)}


def _f1(overlap: int, reference_count: int, candidate_count: int) -> float:
    precision = overlap / max(candidate_count, 1)
    recall = overlap / max(reference_count, 1)
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, bit-parallel (Hyyrö 2004): O(len(b)) big-integer steps."""
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for index, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << index)
    full = (1 << len(a)) - 1
    row = full
    for token in b:
        match = masks.get(token, 0)
        matched = row & match
        row = ((row + matched) | (row - matched)) & full
    return len(a) - row.bit_count()


@lru_cache(maxsize=200_000)
def _stem(word: str) -> str:
    return _porter().stem(word)


@lru_cache(maxsize=1)
def _porter() -> Any:
    from omnimm.deps import require

    require("nltk", extra="simct", purpose="METEOR's stem matching")
    from nltk.stem.porter import PorterStemmer

    return PorterStemmer()


def _greedy_matches(hypothesis: list[tuple[int, str]], reference: list[tuple[int, str]]) -> tuple[list, list, list]:
    """NLTK's matching stage: from the last hypothesis word backwards, each takes the last free equal reference word."""
    positions: dict[str, list[int]] = {}
    for j, (_, word) in enumerate(reference):
        positions.setdefault(word, []).append(j)
    matches, used_h, used_r = [], set(), set()
    for i in range(len(hypothesis) - 1, -1, -1):
        free = positions.get(hypothesis[i][1])
        if free:
            j = free.pop()
            used_h.add(i)
            used_r.add(j)
            matches.append((hypothesis[i][0], reference[j][0]))
    rest_h = [pair for i, pair in enumerate(hypothesis) if i not in used_h]
    rest_r = [pair for j, pair in enumerate(reference) if j not in used_r]
    return matches, rest_h, rest_r


def meteor(reference: Sequence[str], hypothesis: Sequence[str]) -> float:
    """METEOR as NLTK computes it, with the exact and stem stages (no WordNet synonyms)."""
    if not reference or not hypothesis:
        return 0.0
    exact, rest_h, rest_r = _greedy_matches(list(enumerate(hypothesis)), list(enumerate(reference)))
    stemmed, _, _ = _greedy_matches([(i, _stem(w)) for i, w in rest_h], [(j, _stem(w)) for j, w in rest_r])
    matches = sorted(exact + stemmed, key=lambda pair: pair[0])
    if not matches:
        return 0.0
    precision = len(matches) / len(hypothesis)
    recall = len(matches) / len(reference)
    fmean = precision * recall / (0.9 * precision + 0.1 * recall)
    chunks = 1
    for (h0, r0), (h1, r1) in itertools.pairwise(matches):
        if not (h1 == h0 + 1 and r1 == r0 + 1):
            chunks += 1
    return (1 - 0.5 * (chunks / len(matches)) ** 3) * fmean


_PRIME = np.uint64(0x100000001B3)
_PAIR_MIX = np.uint64(0x9E3779B97F4A7C15)


def _flatten(sequences: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate id sequences; return the flat ids, each position's sequence index and offset in its sequence."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    flat = np.concatenate(sequences).astype(np.uint64) if len(sequences) else np.zeros(0, np.uint64)
    owner = np.repeat(np.arange(len(sequences)), lengths)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return flat, owner, np.arange(len(flat)) - starts


def _ngram_keys(sequences: Sequence[np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    """For every n-gram of every sequence: (sequence index, 64-bit key mixing the n-gram's hash and that index)."""
    flat, owner, offset = _flatten(sequences)
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    valid = offset <= lengths[owner] - n if len(flat) else np.zeros(0, bool)
    positions = np.nonzero(valid)[0]
    padded = np.concatenate([flat, np.zeros(n, np.uint64)])
    with np.errstate(over="ignore"):
        digest = np.zeros(len(positions), np.uint64)
        for k in range(n):
            digest = digest * _PRIME + padded[positions + k] + np.uint64(1)
        pair = owner[positions]
        keys = digest ^ (pair.astype(np.uint64) * _PAIR_MIX)
    return pair, keys


def _overlaps(references: Sequence[np.ndarray], candidates: Sequence[np.ndarray], n: int) -> np.ndarray:
    """Per pair, the clipped n-gram overlap `sum_g min(count_ref(g), count_cand(g))`, for all pairs at once."""
    ref_pair, ref_keys = _ngram_keys(references, n)
    _, cand_keys = _ngram_keys(candidates, n)
    ref_unique, ref_first, ref_counts = np.unique(ref_keys, return_index=True, return_counts=True)
    cand_unique, cand_counts = np.unique(cand_keys, return_counts=True)
    _, in_ref, in_cand = np.intersect1d(ref_unique, cand_unique, assume_unique=True, return_indices=True)
    matched = np.minimum(ref_counts[in_ref], cand_counts[in_cand])
    return np.bincount(ref_pair[ref_first[in_ref]], weights=matched, minlength=len(references))


def _ids(tokens: Sequence[str], vocabulary: dict[str, int]) -> np.ndarray:
    return np.fromiter((vocabulary.setdefault(t, len(vocabulary)) for t in tokens), dtype=np.int64, count=len(tokens))


def _codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)


def _stats_chunk(args: tuple[list[tuple[str, str]], Segmentation]) -> np.ndarray:
    """Statistics for a chunk: per-pair Python for what needs alignment (LCS, METEOR), arrays for n-gram overlaps."""
    pairs, segmentation = args
    stats = np.zeros((len(pairs), len(_STATS)))
    vocabulary: dict[str, int] = {}
    word_ids: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
    bleu_ids: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
    chars: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
    for row, (reference, candidate) in enumerate(pairs):
        ref_words, cand_words = words(reference, segmentation), words(candidate, segmentation)
        if ref_words and cand_words:
            stats[row, _COLUMN["rougeL"]] = _f1(lcs_length(ref_words, cand_words), len(ref_words), len(cand_words))
        stats[row, _COLUMN["meteor"]] = meteor(ref_words, cand_words)
        longest = max(len(ref_words), len(cand_words))
        stats[row, _COLUMN["length_ratio"]] = min(len(ref_words), len(cand_words)) / longest if longest else 1.0
        stats[row, _COLUMN["exact_match"]] = float(" ".join(reference.split()) == " ".join(candidate.split()))
        tokenize = bleu_tokenizer(has_cjk(reference) or has_cjk(candidate))  # sacreBLEU's tokens: case kept
        ref_tokens = tokenize(reference.rstrip()).split()  # type: ignore[operator]
        sys_tokens = tokenize(candidate.rstrip()).split()  # type: ignore[operator]
        for side, (text_words, text_tokens, text) in enumerate(
            ((ref_words, ref_tokens, reference), (cand_words, sys_tokens, candidate))
        ):
            word_ids[side].append(_ids(text_words, vocabulary))
            bleu_ids[side].append(_ids(text_tokens, vocabulary))
            chars[side].append(_codepoints("".join(text.split())))
    lengths = {
        name: np.array([len(x) for x in seqs])
        for name, seqs in (
            ("ref_words", word_ids[0]),
            ("cand_words", word_ids[1]),
            ("ref_tokens", bleu_ids[0]),
            ("sys_tokens", bleu_ids[1]),
            ("ref_chars", chars[0]),
            ("cand_chars", chars[1]),
        )
    }
    for n, column in ((1, "rouge1"), (2, "rouge2")):
        overlap = _overlaps(word_ids[0], word_ids[1], n)
        ref_count = np.maximum(lengths["ref_words"] - n + 1, 0)
        cand_count = np.maximum(lengths["cand_words"] - n + 1, 0)
        precision = overlap / np.maximum(cand_count, 1)
        recall = overlap / np.maximum(ref_count, 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            stats[:, _COLUMN[column]] = np.where(
                precision + recall > 0, 2 * precision * recall / (precision + recall), 0
            )
    stats[:, _COLUMN["sys_len"]] = lengths["sys_tokens"]
    stats[:, _COLUMN["ref_len"]] = lengths["ref_tokens"]
    for n in range(1, _BLEU_ORDER + 1):
        stats[:, _COLUMN[f"bleu_correct{n}"]] = _overlaps(bleu_ids[1], bleu_ids[0], n)
        stats[:, _COLUMN[f"bleu_total{n}"]] = np.maximum(lengths["sys_tokens"] - n + 1, 0)
    for n in range(1, _CHRF_ORDER + 1):
        stats[:, _COLUMN[f"chrf_hyp{n}"]] = np.maximum(lengths["cand_chars"] - n + 1, 0)
        stats[:, _COLUMN[f"chrf_ref{n}"]] = np.maximum(lengths["ref_chars"] - n + 1, 0)
        stats[:, _COLUMN[f"chrf_match{n}"]] = _overlaps(chars[1], chars[0], n)
    return stats


def _bleu(stats: np.ndarray) -> np.ndarray:
    """sacreBLEU's sentence BLEU (exp smoothing, effective order) from per-pair statistics, for all rows at once."""
    correct = stats[:, _COLUMN["bleu_correct1"] : _COLUMN["bleu_correct1"] + _BLEU_ORDER]
    total = stats[:, _COLUMN["bleu_total1"] : _COLUMN["bleu_total1"] + _BLEU_ORDER]
    sys_len, ref_len = stats[:, _COLUMN["sys_len"]], stats[:, _COLUMN["ref_len"]]
    with np.errstate(divide="ignore", invalid="ignore"):
        brevity = np.where(sys_len < ref_len, np.exp(1 - ref_len / np.maximum(sys_len, 1)), 1.0)
        brevity = np.where((sys_len < ref_len) & (sys_len == 0), 0.0, brevity)
        # An order counts while its total is positive (sacreBLEU stops at the first empty order).
        present = np.cumprod(total > 0, axis=1).astype(bool)
        zero_hits = (correct == 0) & present
        doublings = np.cumsum(zero_hits, axis=1)  # exp smoothing: 1/2, 1/4, ... for successive empty orders
        precision = np.where(zero_hits, 100.0 / (2.0**doublings * total), 100.0 * correct / total)
        logs = np.where(present & (precision > 0), np.log(np.where(precision > 0, precision, 1.0)), -9999999999.0)
        order = present.sum(axis=1)
        score = brevity * np.exp(np.where(present, logs, 0.0).sum(axis=1) / np.maximum(order, 1))
    score = np.where((correct.sum(axis=1) == 0) | (order == 0), 0.0, score)
    return score / 100.0


def _chrf(stats: np.ndarray) -> np.ndarray:
    """sacreBLEU's sentence chrF (no eps smoothing) for all rows at once."""
    base = _COLUMN["chrf_hyp1"]
    block = stats[:, base : base + 3 * _CHRF_ORDER].reshape(len(stats), _CHRF_ORDER, 3)
    hyp, ref, match = block[..., 0], block[..., 1], block[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        both = (hyp > 0) & (ref > 0)
        precision = np.where(hyp > 0, match / np.where(hyp > 0, hyp, 1), 1e-16)
        recall = np.where(ref > 0, match / np.where(ref > 0, ref, 1), 1e-16)
        order = both.sum(axis=1)
        avg_precision = np.where(order > 0, (precision * both).sum(axis=1) / np.maximum(order, 1), 0.0)
        avg_recall = np.where(order > 0, (recall * both).sum(axis=1) / np.maximum(order, 1), 0.0)
        factor = _CHRF_BETA**2
        denominator = factor * avg_precision + avg_recall
        score = np.where(
            avg_precision + avg_recall > 0,
            (1 + factor) * avg_precision * avg_recall / np.where(denominator > 0, denominator, 1),
            0.0,
        )
    return score


def extract(
    pairs: Sequence[tuple[str, str]],
    *,
    segmentation: Segmentation = "char",
    workers: int | None = None,
    chunk_size: int = 2000,
    progress: bool = False,
) -> np.ndarray:
    """Features of `(reference, candidate)` pairs: a float64 array `[len(pairs), len(FEATURES)]`.

    Args:
        segmentation: Chinese as characters (`char`) or jieba words (`jieba`), for the word-level features.
        workers: processes to use (default: the CPU count; 1 runs in this process).
        progress: show a progress bar.
    """
    pairs = [(str(r), str(c)) for r, c in pairs]
    workers = workers or os.cpu_count() or 1
    chunks = [(pairs[i : i + chunk_size], segmentation) for i in range(0, len(pairs), chunk_size)]
    if workers <= 1 or len(chunks) <= 1:
        parts = [_stats_chunk(chunk) for chunk in _progress(chunks, progress)]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            parts = list(_progress(pool.map(_stats_chunk, chunks), progress, total=len(chunks)))
    stats = np.concatenate(parts) if parts else np.zeros((0, len(_STATS)))
    columns = {
        "rouge1": stats[:, 0],
        "rouge2": stats[:, 1],
        "rougeL": stats[:, 2],
        "bleu": _bleu(stats),
        "chrf": _chrf(stats),
        "meteor": stats[:, 3],
        "length_ratio": stats[:, 4],
        "exact_match": stats[:, 5],
    }
    return np.stack([columns[name] for name in FEATURES], axis=1) if len(stats) else np.zeros((0, len(FEATURES)))


def _progress(items: Any, enabled: bool, total: int | None = None) -> Any:
    if not enabled:
        return items
    from rich.progress import track

    return track(items, description="response-pair features", total=total)


def feature_table(values: np.ndarray) -> dict[str, list[float]]:
    """Columns by feature name (for JSON reports)."""
    return {name: values[:, index].tolist() for index, name in enumerate(FEATURES)}


EMBEDDING = "embedding_cosine"


def pair_features(
    pairs: Sequence[tuple[str, str]],
    *,
    encoder: Any = None,
    segmentation: Segmentation = "char",
    workers: int | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, list[str]]:
    """`extract` plus, with a sentence encoder (anything with `encode(texts) -> [n, dim]`), the cosine of the two
    responses' embeddings; returns the matrix and its column names."""
    values = extract(pairs, segmentation=segmentation, workers=workers, progress=progress)
    if encoder is None:
        return values, list(FEATURES)
    from omnimm.sentence.encoder import cosine

    texts = sorted({text for pair in pairs for text in pair})
    vectors = encoder.encode(texts, progress=progress)
    index = {text: row for row, text in enumerate(texts)}
    left = vectors[[index[r] for r, _ in pairs]]
    right = vectors[[index[c] for _, c in pairs]]
    return np.column_stack([values, cosine(left, right)]), [*FEATURES, EMBEDDING]
