"""The response-wise test: a LightGBM classifier of (reference, candidate) response pairs, consistent or not.

Saved as LightGBM's own text model (`model.txt`) next to a JSON manifest (`manifest.json`: features, query types,
threshold, versions, metrics); no pickle anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from omnimm.deps import require
from omnimm.errors import StoreError
from omnimm.files import atomic_write_bytes, atomic_write_text

FORMAT = 2
MAX_MANIFEST = 1 << 20
MODEL_FILE = "model.txt"
MANIFEST_FILE = "manifest.json"
QUERY_TYPE = "query_type"

DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_data_in_leaf": 20,
    "feature_fraction": 0.9,
    "bagging_fraction": 0.9,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "deterministic": True,
    "force_row_wise": True,
    "verbosity": -1,
}


def _lgb() -> Any:
    return require("lightgbm", extra="simct", purpose="the response-wise classifier")


@dataclass
class ConsistencyClassifier:
    """P(consistent | features of a response pair, query type), with a calibrated decision threshold."""

    booster: Any
    features: list[str]
    query_types: list[str]
    threshold: float = 0.5
    metrics: dict[str, Any] = field(default_factory=dict)
    encoder: dict[str, Any] | None = None
    """The sentence encoder config the `embedding_cosine` feature was computed with (None: no embedding feature)."""

    # -- data -------------------------------------------------------------------------------------------------------

    def matrix(self, features: np.ndarray, query_types: list[str] | None = None) -> np.ndarray:
        """Feature matrix with the query type as a category code (unknown types: missing)."""
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != len(self.features):
            raise ValueError(
                f"expected features of shape [pairs, {len(self.features)}] ({', '.join(self.features)}), "
                f"got {list(features.shape)}"
            )
        codes = {name: index for index, name in enumerate(self.query_types)}
        column = np.full(len(features), np.nan)
        if query_types is not None:
            column = np.array([codes.get(q, np.nan) for q in query_types], dtype=np.float64)
        return np.column_stack([features, column])

    # -- training ---------------------------------------------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        features: np.ndarray,
        labels: np.ndarray,
        query_types: list[str] | None,
        *,
        feature_names: list[str],
        params: dict[str, Any] | None = None,
        folds: int = 5,
        seed: int = 0,
        max_rounds: int = 2000,
    ) -> ConsistencyClassifier:
        """Cross-validate on the training pairs (early stopping picks the number of trees; out-of-fold predictions
        calibrate the threshold), then fit on all of them."""
        lgb = _lgb()
        labels = np.asarray(labels, dtype=int)
        types = sorted(set(query_types or []))
        model = cls(None, list(feature_names), types)
        matrix = model.matrix(features, query_types)
        settings = {**DEFAULT_PARAMS, **(params or {}), "seed": seed}
        dataset = lgb.Dataset(
            matrix,
            labels,
            feature_name=[*model.features, QUERY_TYPE],
            categorical_feature=[QUERY_TYPE],
            free_raw_data=False,
        )
        splits = _folds(labels, folds, seed)
        result = lgb.cv(
            settings,
            dataset,
            num_boost_round=max_rounds,
            folds=splits,
            seed=seed,
            callbacks=[lgb.early_stopping(50, verbose=False)],
            return_cvbooster=True,
            metrics=["auc"],
        )
        rounds = len(result["valid auc-mean"])
        out_of_fold = np.zeros(len(labels))
        boosters = result["cvbooster"]
        for booster, (_, held_out) in zip(boosters.boosters, splits, strict=True):
            out_of_fold[held_out] = booster.predict(matrix[held_out], num_iteration=boosters.best_iteration)
        model.threshold = best_threshold(labels, out_of_fold)
        model.booster = lgb.train(settings, dataset, num_boost_round=rounds)
        model.metrics = {
            "cv_auc": float(result["valid auc-mean"][-1]),
            "cv_rounds": rounds,
            "train_pairs": len(labels),
            **{f"cv_{k}": v for k, v in classification_metrics(labels, out_of_fold, model.threshold).items()},
        }
        return model

    # -- prediction -------------------------------------------------------------------------------------------------

    def predict_proba(self, features: np.ndarray, query_types: list[str] | None = None) -> np.ndarray:
        """P(consistent) per pair."""
        return self.booster.predict(self.matrix(features, query_types))

    def predict(self, features: np.ndarray, query_types: list[str] | None = None) -> np.ndarray:
        """True where the pair is judged consistent (probability >= the calibrated threshold)."""
        return self.predict_proba(features, query_types) >= self.threshold

    def contributions(self, features: np.ndarray, query_types: list[str] | None = None) -> np.ndarray:
        """Per pair, each feature's SHAP contribution to the log-odds (LightGBM's own TreeSHAP), then the query
        type's, then the bias: `[pairs, len(features) + 2]`."""
        return self.booster.predict(self.matrix(features, query_types), pred_contrib=True)

    # -- files ------------------------------------------------------------------------------------------------------

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write `model.txt` (LightGBM text format), then `manifest.json` with its size and SHA-256, each atomically:
        the manifest, written last, vouches for the model file beside it."""
        import omnimm

        target = Path(folder)
        target.mkdir(parents=True, exist_ok=True)
        model = self.booster.model_to_string().encode("utf-8")
        atomic_write_bytes(target / MODEL_FILE, model)
        manifest = {
            "format": FORMAT,
            "model_file": {"name": MODEL_FILE, "size": len(model), "sha256": hashlib.sha256(model).hexdigest()},
            "features": self.features,
            "query_types": self.query_types,
            "threshold": self.threshold,
            "encoder": self.encoder,
            "metrics": self.metrics,
            "versions": {"lightgbm": _lgb().__version__, "omnimm": omnimm.__version__},
        }
        atomic_write_text(target / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
        return target

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> ConsistencyClassifier:
        """Read a saved classifier; a missing, damaged or mismatched file is one `StoreError` naming it. The model
        file's size and SHA-256 are checked before LightGBM parses it (LightGBM can crash on a cut-short file)."""
        source = Path(folder)
        if not source.is_dir():
            raise _damaged(str(source), "not a folder; expected a saved simct classifier (omnimm simct train)")
        for name in (MODEL_FILE, MANIFEST_FILE):
            if not (source / name).is_file():
                raise _damaged(str(source), f"not a saved simct classifier: {name} is missing")
        manifest = _read_manifest(source / MANIFEST_FILE)
        model = _read_verified(source / MODEL_FILE, manifest["model_file"])
        try:
            booster = _lgb().Booster(model_str=model.decode("utf-8"))
        except Exception as error:  # a bad UTF-8 byte, or LightGBMError (it subclasses Exception only)
            raise _damaged(str(source / MODEL_FILE), f"LightGBM cannot read it: {error}") from None
        if booster.num_feature() != len(manifest["features"]) + 1:
            raise _damaged(
                str(source),
                f"the model has {booster.num_feature()} inputs but the manifest lists {len(manifest['features'])} "
                "features + the query type",
            )
        return cls(
            booster,
            manifest["features"],
            manifest["query_types"],
            manifest["threshold"],
            manifest.get("metrics") or {},
            manifest.get("encoder"),
        )


def _damaged(where: str, reason: str) -> StoreError:
    return StoreError(f"{where}: {reason}")


def _read_manifest(path: Path) -> dict[str, Any]:
    if path.stat().st_size > MAX_MANIFEST:
        raise _damaged(str(path), f"larger than {MAX_MANIFEST} bytes; not a simct manifest")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise _damaged(str(path), f"not valid JSON ({error})") from None
    if not isinstance(manifest, dict):
        raise _damaged(str(path), f"expected a JSON object, got {type(manifest).__name__}")
    if "model_file" not in manifest:
        raise _damaged(
            str(path),
            "no size and checksum for model.txt (saved by an older version), so it cannot be checked before "
            "LightGBM reads it: train it again with omnimm simct train",
        )
    checks = {
        "features": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
        "query_types": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
        "threshold": lambda v: isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 1,
        "model_file": lambda v: (
            isinstance(v, dict) and isinstance(v.get("size"), int) and isinstance(v.get("sha256"), str)
        ),
        "encoder": lambda v: v is None or isinstance(v, dict),
    }
    for key, valid in checks.items():
        if key not in manifest and key != "encoder":
            raise _damaged(str(path), f"`{key}` is missing")
        if not valid(manifest.get(key)):
            raise _damaged(str(path), f"`{key}` is malformed: {manifest.get(key)!r:.80}")
    return manifest


def _read_verified(path: Path, expected: dict[str, Any]) -> bytes:
    size = path.stat().st_size
    if size != expected["size"]:
        raise _damaged(str(path), f"{size} bytes, the manifest says {expected['size']} (cut short or replaced?)")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != expected["sha256"]:
        raise _damaged(str(path), "its SHA-256 does not match the manifest (damaged or replaced)")
    return data


def _folds(labels: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedKFold

    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels))


def best_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The cut on `scores` that maximises balanced accuracy (Youden's J), midway between neighbouring scores."""
    labels = np.asarray(labels, dtype=int)
    order = np.argsort(scores)
    sorted_scores, sorted_labels = np.asarray(scores)[order], labels[order]
    positives, negatives = labels.sum(), len(labels) - labels.sum()
    if positives == 0 or negatives == 0:
        return 0.5
    # Cutting after position i: everything up to i is predicted negative.
    true_negatives = np.cumsum(1 - sorted_labels)
    false_negatives = np.cumsum(sorted_labels)
    j = true_negatives / negatives + (positives - false_negatives) / positives - 1
    j[:-1][sorted_scores[1:] == sorted_scores[:-1]] = -np.inf  # only cut between distinct scores
    best = int(np.argmax(j))
    upper = sorted_scores[best + 1] if best + 1 < len(sorted_scores) else sorted_scores[best] + 1e-9
    return float((sorted_scores[best] + upper) / 2)


def classification_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Accuracy, F1 (consistent = positive) and ROC-AUC."""
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    predicted = np.asarray(scores) >= threshold
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "f1": float(f1_score(labels, predicted)),
        "roc_auc": float(roc_auc_score(labels, scores)),
    }
