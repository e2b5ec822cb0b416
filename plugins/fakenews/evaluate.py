"""`fakenews/subclass-accuracy`: accuracy per subclass, macro-F1, and the human-vs-machine confusion.

The confusion gives the share of items predicted fake for each (source, truth) cell. A fact detector predicts
fake for fake items whoever wrote them; a source detector predicts fake for machine-written items, real or not:
`source_gap` (machine minus human predicted-fake rate, averaged over real and fake) shows which one was learned.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from omnimm_plugins.fakenews.configs import SubclassAccuracyConfig
from omnimm_plugins.fakenews.data import SUBCLASSES, NewsItem


class SubclassAccuracy:
    def __init__(self, config: SubclassAccuracyConfig | None = None) -> None:
        self.config = config or SubclassAccuracyConfig()

    def evaluate(self, items: Sequence[NewsItem], fake_probability: Sequence[float]) -> dict[str, Any]:
        probabilities = np.asarray(fake_probability, dtype=float)
        if probabilities.shape != (len(items),):
            raise ValueError(
                f"got {probabilities.shape[0] if probabilities.ndim else 0} probabilities for {len(items)} items"
            )
        predicted = probabilities >= self.config.threshold
        truth = np.array([item.fake for item in items])
        subclass = np.array([item.subclass for item in items])
        machine = np.array([item.machine for item in items])
        per_subclass = {
            s: float(np.mean(predicted[subclass == s] == truth[subclass == s])) if np.any(subclass == s) else None
            for s in SUBCLASSES
        }
        confusion = {
            source: {
                label: _rate(predicted[(machine == is_machine) & (truth == is_fake)])
                for label, is_fake in (("real", False), ("fake", True))
            }
            for source, is_machine in (("human", False), ("machine", True))
        }
        gaps = [
            confusion["machine"][label] - confusion["human"][label]
            for label in ("real", "fake")
            if confusion["machine"][label] is not None and confusion["human"][label] is not None
        ]
        return {
            "accuracy": float(np.mean(predicted == truth)) if len(items) else None,
            "macro_f1": _macro_f1(truth, predicted),
            "subclass_accuracy": per_subclass,
            "predicted_fake_rate": confusion,
            "source_gap": float(np.mean(gaps)) if gaps else None,
            "counts": {s: int(np.sum(subclass == s)) for s in SUBCLASSES},
        }


def _rate(predicted: np.ndarray) -> float | None:
    return float(np.mean(predicted)) if len(predicted) else None


def _macro_f1(truth: np.ndarray, predicted: np.ndarray) -> float | None:
    scores = []
    for positive in (True, False):
        tp = np.sum((predicted == positive) & (truth == positive))
        fp = np.sum((predicted == positive) & (truth != positive))
        fn = np.sum((predicted != positive) & (truth == positive))
        scores.append(2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 0.0)
    return float(np.mean(scores)) if len(truth) else None
