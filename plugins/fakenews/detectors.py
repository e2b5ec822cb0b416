"""Detectors: `fit(train, validation, seed=)` then `predict_proba(items) -> P(fake)`.

The sweep passes a validation mixture of the same phase and machine-fake share as the training mixture (drawn from
the validation part of the split), and a seed per run.

- `fakenews/embedding`: frozen sentence embeddings (any registered encoder; MiniLM by default) and LightGBM or
  logistic regression. Embeddings are computed once per article and reused across refits (a sweep refits it
  hundreds of times).
- `fakenews/char-ngram`: TF-IDF of character n-grams within word boundaries and logistic regression: a detector that
  can learn writing style (punctuation, spelling, function-word habits), which frozen topic embeddings barely see.
- `fakenews/transformer`: a transformers encoder with a fresh classification head, fine-tuned on HF's Trainer with
  early stopping on the validation mixture's loss (the best epoch is restored).
"""

from __future__ import annotations

import hashlib
import inspect
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from omnimm.deps import require
from omnimm_plugins.fakenews.configs import CharNgramDetectorConfig, EmbeddingDetectorConfig, TransformerDetectorConfig
from omnimm_plugins.fakenews.data import NewsItem


class EmbeddingDetector:
    def __init__(self, config: EmbeddingDetectorConfig, *, encoder: Any = None) -> None:
        self.config = config
        self._encoder = encoder
        self._cache: dict[str, np.ndarray] = {}
        self._model: Any = None

    def embed(self, items: Sequence[NewsItem]) -> np.ndarray:
        texts = [item.content(self.config.max_chars) for item in items]
        keys = [hashlib.blake2b(t.encode(), digest_size=16).hexdigest() for t in texts]
        missing = sorted({k: i for i, k in enumerate(keys) if k not in self._cache}.values())
        if missing:
            if self._encoder is None:
                from omnimm.registry import encoders

                self._encoder = encoders.build(self.config.encoder)
            vectors = np.asarray(self._encoder.encode([texts[i] for i in missing]), dtype=np.float32)
            self._cache.update((keys[i], v) for i, v in zip(missing, vectors, strict=True))
        return np.stack([self._cache[k] for k in keys])

    def fit(
        self, train: Sequence[NewsItem], validation: Sequence[NewsItem] = (), *, seed: int = 0
    ) -> EmbeddingDetector:
        x, y = self.embed(train), _labels(train)
        if self.config.classifier == "logistic":
            linear_model = require("sklearn.linear_model", extra="fakenews", purpose="the logistic detector")
            self._model = linear_model.LogisticRegression(C=1.0, max_iter=5000).fit(x, y)
            return self
        lightgbm = require("lightgbm", extra="fakenews", purpose="the LightGBM detector")
        model = lightgbm.LGBMClassifier(
            n_estimators=400, learning_rate=0.05, num_leaves=15, min_child_samples=5, subsample=0.9,
            subsample_freq=1, colsample_bytree=0.5, random_state=seed, verbose=-1,
        )  # fmt: skip
        fit_options: dict[str, Any] = {}
        if len(validation):
            x_val, y_val = self.embed(validation), _labels(validation, "validation")
            newer = "eval_X" in inspect.signature(model.fit).parameters  # LightGBM >= 4.6 renamed eval_set
            fit_options = {"eval_X": (x_val,), "eval_y": (y_val,)} if newer else {"eval_set": [(x_val, y_val)]}
            fit_options["callbacks"] = [lightgbm.early_stopping(30, verbose=False)]
        self._model = model.fit(x, y, **fit_options)
        return self

    def predict_proba(self, items: Sequence[NewsItem]) -> np.ndarray:
        if self._model is None:
            raise RuntimeError("fit() the detector first")
        return self._model.predict_proba(self.embed(items))[:, 1]


def _labels(items: Sequence[NewsItem], what: str = "training") -> np.ndarray:
    labels = np.array([item.label for item in items])
    if len(set(labels.tolist())) < 2:
        raise ValueError(f"the {what} set holds one class only; a detector needs real and fake items")
    return labels


class CharNgramDetector:
    def __init__(self, config: CharNgramDetectorConfig) -> None:
        self.config = config
        self._model: Any = None

    def fit(
        self, train: Sequence[NewsItem], validation: Sequence[NewsItem] = (), *, seed: int = 0
    ) -> CharNgramDetector:
        """Fits the vectoriser and the classifier on `train` only (the validation mixture is not needed: fixed C)."""
        text = require("sklearn.feature_extraction.text", extra="fakenews", purpose="the char-ngram detector")
        linear_model = require("sklearn.linear_model", extra="fakenews", purpose="the char-ngram detector")
        pipeline = require("sklearn.pipeline", extra="fakenews", purpose="the char-ngram detector")
        low, high = self.config.ngram_range
        self._model = pipeline.make_pipeline(
            text.TfidfVectorizer(
                analyzer="char_wb", ngram_range=(low, high), sublinear_tf=True, min_df=2,
                max_features=self.config.max_features, lowercase=False,
            ),
            linear_model.LogisticRegression(C=self.config.C, max_iter=5000, random_state=seed),
        )  # fmt: skip
        self._model.fit([item.content(self.config.max_chars) for item in train], _labels(train))
        return self

    def predict_proba(self, items: Sequence[NewsItem]) -> np.ndarray:
        if self._model is None:
            raise RuntimeError("fit() the detector first")
        return self._model.predict_proba([item.content(self.config.max_chars) for item in items])[:, 1]


class TransformerDetector:
    def __init__(self, config: TransformerDetectorConfig) -> None:
        self.config = config
        self._model: Any = None
        self._tokenizer: Any = None

    def _path(self) -> str:
        if self.config.path is not None:
            return self.config.path
        from omnimm.sentence.encoder import default_model_path

        return default_model_path()

    def _encode(self, items: Sequence[NewsItem]) -> list[dict[str, Any]]:
        return [{"text": item.content(), "label": item.label} for item in items]

    def _collate(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        batch = self._tokenizer(
            [r["text"] for r in rows], padding=True, truncation=True, max_length=self.config.max_length,
            return_tensors="pt",
        )  # fmt: skip
        batch["labels"] = torch.tensor([r["label"] for r in rows])
        return dict(batch)

    def fit(
        self, train: Sequence[NewsItem], validation: Sequence[NewsItem] = (), *, seed: int = 0
    ) -> TransformerDetector:
        transformers = require("transformers", extra="fakenews", purpose="the transformer detector")
        import torch

        path = self._path()
        transformers.set_seed(seed)  # the fresh head's initialisation
        self._tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        self._model = transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
        stopping = bool(len(validation))
        with tempfile.TemporaryDirectory() as folder:
            arguments = transformers.TrainingArguments(
                output_dir=folder,
                per_device_train_batch_size=self.config.batch_size,
                per_device_eval_batch_size=self.config.batch_size,
                learning_rate=self.config.learning_rate,
                num_train_epochs=self.config.epochs,
                eval_strategy="epoch" if stopping else "no",
                save_strategy="epoch" if stopping else "no",
                save_total_limit=1,
                load_best_model_at_end=stopping,
                metric_for_best_model="eval_loss" if stopping else None,
                greater_is_better=False,
                remove_unused_columns=False,
                use_cpu=not torch.cuda.is_available(),
                report_to="none",
                disable_tqdm=True,
                logging_strategy="no",
                seed=seed,
                data_seed=seed,
            )
            trainer = transformers.Trainer(
                model=self._model,
                args=arguments,
                train_dataset=self._encode(train),
                eval_dataset=self._encode(validation) if stopping else None,
                data_collator=self._collate,
                callbacks=[transformers.EarlyStoppingCallback(self.config.patience)] if stopping else [],
            )
            trainer.train()
        self._model.eval()
        return self

    def predict_proba(self, items: Sequence[NewsItem]) -> np.ndarray:
        import torch

        if self._model is None:
            raise RuntimeError("fit() the detector first")
        rows = self._encode(items)
        out = []
        with torch.no_grad():
            for start in range(0, len(rows), 32):
                batch = self._collate(rows[start : start + 32])
                batch.pop("labels")
                batch = {k: v.to(self._model.device) for k, v in batch.items()}
                out.append(torch.softmax(self._model(**batch).logits, dim=-1)[:, 1].float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)
