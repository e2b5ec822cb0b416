"""Training the response-wise classifier on STS-B: fit on train (cross-validated), select on dev."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from omnimm_plugins.simct.classifier import ConsistencyClassifier, classification_metrics
from omnimm_plugins.simct.features import pair_features
from omnimm_plugins.simct.stsb import LabelledPairs, labelled_pairs

GRID: tuple[dict[str, Any], ...] = (
    {"num_leaves": 7, "min_data_in_leaf": 20},
    {"num_leaves": 15, "min_data_in_leaf": 20},
    {"num_leaves": 31, "min_data_in_leaf": 10},
)


@dataclass
class Split:
    data: LabelledPairs
    features: np.ndarray


def featurise(
    folder: str | os.PathLike[str], split: str, *, encoder: Any = None, workers: int | None = None
) -> tuple[Split, list[str]]:
    data = labelled_pairs(folder, split)
    values, names = pair_features(data.pairs, encoder=encoder, workers=workers)
    return Split(data, values), names


def train_on_stsb(
    folder: str | os.PathLike[str],
    *,
    encoder: Any = None,
    workers: int | None = None,
    grid: tuple[dict[str, Any], ...] = GRID,
    seed: int = 0,
) -> tuple[ConsistencyClassifier, dict[str, Any]]:
    """One classifier per parameter set, each cross-validated on train; the best ROC-AUC on dev wins."""
    train, names = featurise(folder, "train", encoder=encoder, workers=workers)
    dev, _ = featurise(folder, "dev", encoder=encoder, workers=workers)
    best: tuple[float, ConsistencyClassifier, dict[str, Any]] | None = None
    trials = []
    for params in grid:
        model = ConsistencyClassifier.fit(
            train.features, train.data.labels, train.data.query_types, feature_names=names, params=params, seed=seed
        )
        dev_scores = model.predict_proba(dev.features, dev.data.query_types)
        metrics = classification_metrics(dev.data.labels, dev_scores, model.threshold)
        trials.append({"params": params, "dev": metrics, "cv_auc": model.metrics["cv_auc"]})
        if best is None or metrics["roc_auc"] > best[0]:
            best = (metrics["roc_auc"], model, params)
    assert best is not None
    _, model, params = best
    model.metrics.update({"selected_params": params, "dev": next(t["dev"] for t in trials if t["params"] is params)})
    return model, {"trials": trials, "selected": params}
