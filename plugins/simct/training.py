"""Training the response-wise classifier on STS-B: fit on train (cross-validated), select on dev."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from omnimm.errors import ConfigError, ConfigIssue
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
    return _select(train, dev, names, grid=grid, seed=seed)


def train_on_pairs(
    train: LabelledPairs,
    dev: LabelledPairs | None = None,
    *,
    encoder: Any = None,
    workers: int | None = None,
    grid: tuple[dict[str, Any], ...] = GRID,
    seed: int = 0,
    dev_fraction: float = 0.2,
) -> tuple[ConsistencyClassifier, dict[str, Any]]:
    """Your own labelled pairs (query types of your own naming): select on `dev`, or on a seeded, stratified
    `dev_fraction` of `train` held out when no dev pairs are given."""
    _check_counts("training pairs", train, FOLDS + (0 if dev is not None else 2))
    if dev is None:
        train, dev = _hold_out(train, dev_fraction, seed)
    _check_counts("training pairs", train, FOLDS)
    _check_counts("dev pairs", dev, 1)
    train_values, names = pair_features(train.pairs, encoder=encoder, workers=workers)
    dev_values, _ = pair_features(dev.pairs, encoder=encoder, workers=workers)
    model, info = _select(Split(train, train_values), Split(dev, dev_values), names, grid=grid, seed=seed)
    info["train_pairs"], info["dev_pairs"] = len(train), len(dev)
    return model, info


FOLDS = 5
"""Cross-validation folds of `ConsistencyClassifier.fit`: each label needs at least this many training pairs."""


def _check_counts(what: str, data: LabelledPairs, least: int) -> None:
    """Each label needs `least` pairs, or sklearn's fold and split makers fail with a message about `n_splits`."""
    counts = {label: int((data.labels == label).sum()) for label in (0, 1)}
    if min(counts.values()) < least:
        raise ConfigError(
            [
                ConfigIssue(
                    "label",
                    f"{what}: need at least {least} pairs of each label (1 consistent, 0 inconsistent) for "
                    f"{FOLDS}-fold cross-validation and selection; got {counts[1]} with 1 and {counts[0]} with 0",
                )
            ],
            title="labelled pairs",
        )


def _hold_out(data: LabelledPairs, fraction: float, seed: int) -> tuple[LabelledPairs, LabelledPairs]:
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(data))
    kept, held = train_test_split(rows, test_size=fraction, random_state=seed, stratify=data.labels)
    return _subset(data, np.sort(kept)), _subset(data, np.sort(held))


def _subset(data: LabelledPairs, rows: np.ndarray) -> LabelledPairs:
    return LabelledPairs(
        [data.references[i] for i in rows],
        [data.candidates[i] for i in rows],
        data.labels[rows],
        [data.query_types[i] for i in rows],
        data.scores[rows],
    )


def _select(
    train: Split, dev: Split, names: list[str], *, grid: tuple[dict[str, Any], ...], seed: int
) -> tuple[ConsistencyClassifier, dict[str, Any]]:
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
