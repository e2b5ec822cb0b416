"""STS evaluators: Spearman and Pearson correlation between cosine similarities and gold scores.

```python
from omnimm import evaluators, encoders
stsb = evaluators.build({"name": "recse/stsb", "folder": "data/stsb", "split": "dev"})
stsb.evaluate(encoders.build({"name": "hf/sentence-encoder"}))   # {"spearman": 0.86, "pearson": 0.87, "pairs": 1500}
```

The encoder is anything with `encode(sentences) -> [n, dim]`; each distinct sentence is embedded once.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np

from omnimm.errors import ConfigError, ConfigIssue
from omnimm.sentence.sts import STSPair, read_sts_csv, read_stsb
from omnimm_plugins.recse.configs import STSBEvaluatorConfig, STSCSVEvaluatorConfig


def sts_correlations(encoder: Any, pairs: Sequence[STSPair], *, batch_size: int = 128) -> dict[str, float]:
    from scipy import stats

    sentences = list(dict.fromkeys(s for p in pairs for s in (p.sentence1, p.sentence2)))
    vectors = np.asarray(_encode(encoder, sentences, batch_size), dtype=np.float64)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    row = {s: i for i, s in enumerate(sentences)}
    left = vectors[[row[p.sentence1] for p in pairs]]
    right = vectors[[row[p.sentence2] for p in pairs]]
    predicted = (left * right).sum(axis=1)
    gold = np.array([p.score for p in pairs])
    return {
        "spearman": float(stats.spearmanr(predicted, gold).statistic),
        "pearson": float(stats.pearsonr(predicted, gold).statistic),
        "pairs": len(pairs),
    }


def _encode(encoder: Any, sentences: list[str], batch_size: int) -> Any:
    if "batch_size" in inspect.signature(encoder.encode).parameters:
        return encoder.encode(sentences, batch_size=batch_size)
    return encoder.encode(sentences)  # an encoder whose encode() takes only the sentences


class STSBEvaluator:
    """`recse/stsb`: STS Benchmark correlations on one split (select on train/dev, report on test)."""

    def __init__(self, config: STSBEvaluatorConfig) -> None:
        self.config = config
        self.pairs = read_stsb(config.folder, config.split)

    def evaluate(self, encoder: Any) -> dict[str, float]:
        return {"split": self.config.split, **sts_correlations(encoder, self.pairs, batch_size=self.config.batch_size)}


class STSCSVEvaluator:
    """`recse/sts-csv`: correlations on any CSV/TSV of `sentence1, sentence2, score` (header optional)."""

    def __init__(self, config: STSCSVEvaluatorConfig) -> None:
        self.config = config
        self.pairs = read_sts_csv(config.path)
        if len(self.pairs) < 2:
            issue = ConfigIssue("", f"{len(self.pairs)} sentence pair: a correlation needs at least 2")
            raise ConfigError([issue], source=str(config.path), title="STS data")

    def evaluate(self, encoder: Any) -> dict[str, float]:
        return sts_correlations(encoder, self.pairs, batch_size=self.config.batch_size)


def embedding_geometry(
    encoder: Any, pairs: Sequence[STSPair], *, positive_score: float = 4.0, batch_size: int = 128, seed: int = 0
) -> dict[str, float]:
    """Wang & Isola's alignment and uniformity of unit embeddings, and the cosine of random sentence pairs.

    alignment: mean `||f(x) - f(y)||^2` over pairs scored >= `positive_score` (lower: paraphrases closer);
    uniformity: `log mean exp(-2 ||f(x) - f(y)||^2)` over all pairs of distinct sentences (lower: more spread out);
    random cosine: mean and standard deviation of the cosine of sentence pairs drawn at random (a mean near 1 is the
    collapsed, anisotropic space of an untuned encoder).
    """
    sentences = list(dict.fromkeys(s for p in pairs for s in (p.sentence1, p.sentence2)))
    vectors = np.asarray(_encode(encoder, sentences, batch_size), dtype=np.float64)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    row = {s: i for i, s in enumerate(sentences)}
    positives = [p for p in pairs if p.score >= positive_score]
    if not positives:
        raise ValueError(f"no pair scored >= {positive_score}: alignment needs positive pairs")
    left = vectors[[row[p.sentence1] for p in positives]]
    right = vectors[[row[p.sentence2] for p in positives]]
    alignment = float(((left - right) ** 2).sum(axis=1).mean())
    cosines = vectors @ vectors.T
    upper = np.triu_indices(len(sentences), k=1)
    squared = np.maximum(2.0 - 2.0 * cosines[upper], 0.0)  # ||a - b||^2 of unit vectors
    uniformity = float(np.log(np.mean(np.exp(-2.0 * squared))))
    generator = np.random.default_rng(seed)
    first, second = generator.integers(0, len(sentences), (2, 2000))
    keep = first != second
    random_cosines = cosines[first[keep], second[keep]]
    return {
        "alignment": alignment,
        "uniformity": uniformity,
        "random_cosine_mean": float(random_cosines.mean()),
        "random_cosine_std": float(random_cosines.std()),
    }
