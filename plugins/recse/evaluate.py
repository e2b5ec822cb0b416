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

    def evaluate(self, encoder: Any) -> dict[str, float]:
        return sts_correlations(encoder, self.pairs, batch_size=self.config.batch_size)
