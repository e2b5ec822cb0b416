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

from omnimm_plugins.simct.text import Segmentation, bleu_tokenizer, bleu_tokenizer_name, words

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


def _greedy_matches(hypothesis: Sequence[str], reference: Sequence[str], matches: dict[int, int]) -> None:
    """NLTK's matching stage (`_match_enums`): from the last hypothesis word backwards, each word takes the last
    free equal reference word. `hypothesis` and `reference` hold the still free words (None where taken); the
    matches, hypothesis position -> reference position, are added to `matches`."""
    positions: dict[str, list[int]] = {}
    for j, word in enumerate(reference):
        if word is not None:
            positions.setdefault(word, []).append(j)
    for i in range(len(hypothesis) - 1, -1, -1):
        free = positions.get(hypothesis[i]) if hypothesis[i] is not None else None
        if free:
            matches[i] = free.pop()


def meteor(reference: Sequence[str], hypothesis: Sequence[str]) -> float:
    """METEOR as NLTK computes it, with the exact and stem stages (no WordNet synonyms)."""
    if not reference or not hypothesis:
        return 0.0
    matches: dict[int, int] = {}
    _greedy_matches(hypothesis, reference, matches)
    if len(matches) < min(len(hypothesis), len(reference)):  # words left on both sides: the stem stage
        taken = set(matches.values())
        rest_h = [None if i in matches else _stem(word) for i, word in enumerate(hypothesis)]
        rest_r = [None if j in taken else _stem(word) for j, word in enumerate(reference)]
        _greedy_matches(rest_h, rest_r, matches)
    if not matches:
        return 0.0
    precision = len(matches) / len(hypothesis)
    recall = len(matches) / len(reference)
    fmean = precision * recall / (0.9 * precision + 0.1 * recall)
    aligned = sorted(matches.items())
    chunks = 1
    for (h0, r0), (h1, r1) in itertools.pairwise(aligned):
        if not (h1 == h0 + 1 and r1 == r0 + 1):
            chunks += 1
    return (1 - 0.5 * (chunks / len(matches)) ** 3) * fmean


# n-gram keys: the pair's index in the top 16 bits (so counts never mix across pairs), a 47-bit n-gram hash, and
# one bit for the side (reference 0, candidate 1). Sorting the keys groups equal n-grams of a pair together.
_PAIR_SHIFT = np.uint64(48)
MAX_CHUNK = 1 << 16
_PRIME = np.uint64(0x100000001B3)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_FMIX = (np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53))


def _fmix(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser: spreads every input bit over the high bits that the keys keep."""
    x = x ^ (x >> np.uint64(33))
    x = x * _FMIX[0]
    x = x ^ (x >> np.uint64(33))
    x = x * _FMIX[1]
    return x ^ (x >> np.uint64(33))


class _Sequences:
    """The token ids of many texts laid end to end, with what `keys` needs to cut them into n-grams."""

    def __init__(self, ids: list[int] | np.ndarray, lengths: list[int], side: int) -> None:
        self.ids = np.asarray(ids, dtype=np.int64).view(np.uint64) * _GOLDEN
        self.lengths = np.asarray(lengths, dtype=np.int64)
        owner = np.repeat(np.arange(len(self.lengths), dtype=np.uint64), self.lengths)
        # tokens left in its text from each position on: an n-gram starts where at least n are left
        self.left = np.repeat(np.cumsum(self.lengths), self.lengths) - np.arange(len(self.ids))
        self.tag = (owner << _PAIR_SHIFT) | np.uint64(side)
        self._digest = np.zeros(len(self.ids), np.uint64)
        self._order = 0

    def keys(self, n: int) -> np.ndarray:
        """Keys of all n-grams; orders must be asked for as 1, 2, 3, ... (each digest extends the previous one)."""
        assert n == self._order + 1, "n-gram orders are built one after the other"
        with np.errstate(over="ignore"):
            self._digest = self._digest[: len(self.ids) - n + 1] * _PRIME + self.ids[n - 1 :] + np.uint64(1)
            valid = self.left[: len(self._digest)] >= n
            hashed = (_fmix(self._digest[valid]) >> np.uint64(17)) << np.uint64(1)
        self._order = n
        return self.tag[: len(self._digest)][valid] | hashed

    def counts(self, n: int) -> np.ndarray:
        """Per text, its number of n-grams."""
        return np.maximum(self.lengths - n + 1, 0)


def _overlaps(references: _Sequences, candidates: _Sequences, n: int) -> np.ndarray:
    """Per pair, the clipped n-gram overlap `sum_g min(count_ref(g), count_cand(g))`, for all pairs at once."""
    keys = np.sort(np.concatenate([references.keys(n), candidates.keys(n)]))
    pairs = len(references.lengths)
    if not len(keys):
        return np.zeros(pairs)
    gram = keys >> np.uint64(1)
    starts = np.flatnonzero(np.concatenate([[True], gram[1:] != gram[:-1]]))
    sizes = np.diff(np.append(starts, len(keys)))
    in_candidate = np.add.reduceat((keys & np.uint64(1)).astype(np.int64), starts)
    matched = np.minimum(sizes - in_candidate, in_candidate)
    owner = (keys[starts] >> _PAIR_SHIFT).astype(np.int64)
    return np.bincount(owner, weights=matched, minlength=pairs)


def _f1_arrays(overlap: np.ndarray, reference_count: np.ndarray, candidate_count: np.ndarray) -> np.ndarray:
    precision = overlap / np.maximum(candidate_count, 1)
    recall = overlap / np.maximum(reference_count, 1)
    total = precision + recall
    return np.where(total > 0, 2 * precision * recall / np.where(total > 0, total, 1), 0.0)


def _token_ids(tokens: list[str], flat: list[int], lengths: list[int]) -> None:
    """Tokens as ids (Python's string hash: equal within a process, which is all one chunk needs)."""
    flat.extend(map(hash, tokens))
    lengths.append(len(tokens))


def _stats_chunk(args: tuple[list[tuple[str, str]], Segmentation]) -> np.ndarray:
    """Statistics for a chunk: per-pair Python for what needs alignment (LCS, METEOR), arrays for n-gram overlaps."""
    pairs, segmentation = args
    stats = np.zeros((len(pairs), len(_STATS)))
    flat: dict[str, list[int]] = {key: [] for key in ("ref_words", "cand_words", "ref_tokens", "sys_tokens")}
    lengths: dict[str, list[int]] = {key: [] for key in flat}
    texts: tuple[list[str], list[str]] = ([], [])  # whitespace removed, for chrF
    for row, (reference, candidate) in enumerate(pairs):
        ref_words, cand_words = words(reference, segmentation), words(candidate, segmentation)
        if ref_words and cand_words:
            stats[row, _COLUMN["rougeL"]] = _f1(lcs_length(ref_words, cand_words), len(ref_words), len(cand_words))
            stats[row, _COLUMN["meteor"]] = meteor(ref_words, cand_words)
        longest = max(len(ref_words), len(cand_words))
        stats[row, _COLUMN["length_ratio"]] = min(len(ref_words), len(cand_words)) / longest if longest else 1.0
        ref_spaced, cand_spaced = reference.split(), candidate.split()
        stats[row, _COLUMN["exact_match"]] = float(ref_spaced == cand_spaced)
        tokenize = bleu_tokenizer(bleu_tokenizer_name(reference, candidate))  # sacreBLEU's tokens: case kept
        _token_ids(ref_words, flat["ref_words"], lengths["ref_words"])
        _token_ids(cand_words, flat["cand_words"], lengths["cand_words"])
        _token_ids(tokenize(reference.rstrip()).split(), flat["ref_tokens"], lengths["ref_tokens"])
        _token_ids(tokenize(candidate.rstrip()).split(), flat["sys_tokens"], lengths["sys_tokens"])
        texts[0].append("".join(ref_spaced))
        texts[1].append("".join(cand_spaced))
    ref_words_seq = _Sequences(flat["ref_words"], lengths["ref_words"], 0)
    cand_words_seq = _Sequences(flat["cand_words"], lengths["cand_words"], 1)
    for n, column in ((1, "rouge1"), (2, "rouge2")):
        overlap = _overlaps(ref_words_seq, cand_words_seq, n)
        stats[:, _COLUMN[column]] = _f1_arrays(overlap, ref_words_seq.counts(n), cand_words_seq.counts(n))
    ref_tokens = _Sequences(flat["ref_tokens"], lengths["ref_tokens"], 0)
    sys_tokens = _Sequences(flat["sys_tokens"], lengths["sys_tokens"], 1)
    stats[:, _COLUMN["sys_len"]] = sys_tokens.lengths
    stats[:, _COLUMN["ref_len"]] = ref_tokens.lengths
    for n in range(1, _BLEU_ORDER + 1):
        stats[:, _COLUMN[f"bleu_correct{n}"]] = _overlaps(ref_tokens, sys_tokens, n)
        stats[:, _COLUMN[f"bleu_total{n}"]] = sys_tokens.counts(n)
    ref_chars, cand_chars = (_Sequences(_codepoints(side), [len(t) for t in side], k) for k, side in enumerate(texts))
    for n in range(1, _CHRF_ORDER + 1):
        stats[:, _COLUMN[f"chrf_hyp{n}"]] = cand_chars.counts(n)
        stats[:, _COLUMN[f"chrf_ref{n}"]] = ref_chars.counts(n)
        stats[:, _COLUMN[f"chrf_match{n}"]] = _overlaps(ref_chars, cand_chars, n)
    return stats


def _codepoints(texts: list[str]) -> np.ndarray:
    return np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32).astype(np.int64)


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
    chunks = [(part, segmentation) for part in _chunks(pairs, chunk_size, workers)]
    if workers <= 1 or len(chunks) <= 1:
        parts = [_stats_chunk(chunk) for chunk in _progress(chunks, progress)]
    else:
        # Import what every chunk needs before the workers start, so that forked workers do not each import it.
        bleu_tokenizer("13a")
        _porter()
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


def _chunks(pairs: list[tuple[str, str]], chunk_size: int, workers: int) -> list[list[tuple[str, str]]]:
    """Chunks of at most `chunk_size` pairs, as many as a multiple of `workers` (so no worker idles at the end)."""
    count = -(-len(pairs) // max(1, min(chunk_size, MAX_CHUNK)))
    if workers > 1:
        count = -(-count // workers) * workers
    size = -(-len(pairs) // max(count, 1))
    return [pairs[i : i + size] for i in range(0, len(pairs), size)] if pairs else []


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
