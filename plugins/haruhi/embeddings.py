"""Text embeddings through the encoders registry, batched, with a content-hash cache.

Any registered encoder with `encode(list_of_texts) -> array [n, dim]` works (`hf/sentence-encoder` by default, a
recse encoder, your own). The cache keys each text by its BLAKE2b hash in a file per model, so re-indexing a
character whose scenes did not change encodes nothing.

Encoders read a bounded number of tokens (`max_length`, 128 for the default), and most scenes are longer: a scene is
cut into overlapping windows of its encoder's tokens (`SceneWindows`), each window is embedded, and a scene scores
as its best window (see `Character.index` and `SceneMemory`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from omnimm.config import ComponentConfig
from omnimm.deps import require
from omnimm.errors import StoreError
from omnimm.files import atomic_write_bytes

DEFAULT_ENCODER: dict[str, Any] = {"name": "hf/sentence-encoder", "max_length": 512}
"""all-MiniLM-L6-v2 reading all its 512 positions: on the dev characters of `benchmarks/bench_haruhi.py windows` this
retrieves scenes better than its usual 128 tokens (see the docs' "Retrieval quality")."""


def encoder_config(config: ComponentConfig | dict[str, Any] | None) -> ComponentConfig:
    """Validate an encoder config (default: the offline all-MiniLM-L6-v2, `max_length` 512)."""
    from omnimm.registry import encoders

    if isinstance(config, ComponentConfig):
        return config
    return encoders.validate(dict(config or DEFAULT_ENCODER))


def describe_model(config: ComponentConfig) -> dict[str, Any]:
    """What identifies an encoder's embeddings: its registry name and full config (stored in manifests)."""
    from omnimm.registry import encoders

    return {"name": encoders.name_of(config), "config": config.model_dump(mode="json")}


def build_encoder(config: ComponentConfig) -> Any:
    from omnimm.registry import encoders

    encoder = encoders.build(config)
    if not callable(getattr(encoder, "encode", None)):
        raise TypeError(f"encoder '{encoders.name_of(config)}' has no encode(texts) method; it cannot embed text")
    return encoder


@dataclass(frozen=True)
class SceneWindows:
    """How a scene is cut for embedding: windows of `window` tokens, a new one every `stride` tokens.

    `window` unset: as many tokens as the encoder reads (its `max_length` less its special tokens). Chosen on the dev
    characters of `benchmarks/bench_haruhi.py` (see the docs' "Retrieval quality")."""

    window: int | None = None
    stride: int | None = None
    """Unset: half the window."""

    def __post_init__(self) -> None:
        if self.window is not None and self.window < 1:
            raise ValueError(f"window must be >= 1 token, got {self.window}")
        if self.stride is not None and self.stride < 1:
            raise ValueError(f"stride must be >= 1 token, got {self.stride}")

    def resolve(self, encoder: Any) -> tuple[int, int, str]:
        """(window, stride, unit) for `encoder`: its tokenizer's tokens when it has one, else whitespace words."""
        limit = encoder_token_limit(encoder)
        unit = "tokens" if _tokenizer(encoder) is not None else "words"
        window = self.window or limit or 128
        if limit is not None and window > limit:
            raise ValueError(f"window {window} is longer than the {limit} tokens the encoder reads")
        stride = self.stride or max(1, window // 2)
        if stride > window:
            raise ValueError(f"stride {stride} is longer than the window ({window}): text would be skipped")
        return window, stride, unit


def _tokenizer(encoder: Any) -> Any:
    tokenizer = getattr(encoder, "tokenizer", None)
    return tokenizer if getattr(tokenizer, "is_fast", False) else None  # offsets need a fast tokenizer


def encoder_token_limit(encoder: Any) -> int | None:
    """Tokens of text an encoder reads per input (its `max_length` less special tokens), when it says."""
    tokenizer = _tokenizer(encoder)
    max_length = getattr(getattr(encoder, "config", None), "max_length", None)
    if tokenizer is None or not isinstance(max_length, int):
        return None
    return max(1, max_length - tokenizer.num_special_tokens_to_add())


def window_spans(text: str, encoder: Any, window: int, stride: int) -> list[tuple[int, int]]:
    """Character spans of overlapping windows of `window` tokens (every `stride`); the last one ends the text."""
    tokenizer = _tokenizer(encoder)
    if tokenizer is not None:
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)[
            "offset_mapping"
        ]
    else:
        offsets = [m.span() for m in re.finditer(r"\S+", text)]
    if len(offsets) <= window:
        return [(0, len(text))]
    starts = list(range(0, len(offsets) - window + 1, stride))
    if starts[-1] + window < len(offsets):
        starts.append(len(offsets) - window)
    return [(offsets[i][0], offsets[i + window - 1][1]) for i in starts]


def content_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


class EmbeddingCache:
    """Embeddings of one model, keyed by text hash; kept in one safetensors file, rewritten atomically."""

    def __init__(self, path: str | os.PathLike[str], model: Any) -> None:
        self.path = Path(path)
        self.model = model
        self._rows: dict[bytes, int] = {}
        self._vectors: list[np.ndarray] = []
        self._dirty = False
        if self.path.exists():
            self._load()

    @classmethod
    def for_model(cls, folder: str | os.PathLike[str], model: Any) -> EmbeddingCache:
        """The cache file of `model` inside `folder` (one file per model, named by a hash of its description)."""
        tag = hashlib.sha256(json.dumps(model, sort_keys=True).encode()).hexdigest()[:16]
        return cls(Path(folder) / f"embeddings-{tag}.safetensors", model)

    def __len__(self) -> int:
        return len(self._rows)

    def lookup(self, keys: Sequence[bytes]) -> list[np.ndarray | None]:
        return [self._vectors[self._rows[k]] if k in self._rows else None for k in keys]

    def put(self, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        for key, vector in zip(keys, np.asarray(vectors, dtype=np.float32), strict=True):
            if key not in self._rows:
                self._rows[key] = len(self._vectors)
                self._vectors.append(vector)
                self._dirty = True

    def save(self) -> None:
        if not self._dirty:
            return
        safetensors_numpy = require("safetensors.numpy", extra="torch", purpose="the embedding cache")
        # rows are numbered in insertion order, so keys and vectors line up as stored
        keys = np.frombuffer(b"".join(self._rows), dtype=np.uint8).reshape(len(self._rows), 16)
        vectors = np.stack(self._vectors) if self._vectors else np.zeros((0, 0), np.float32)
        data = safetensors_numpy.save(
            {"keys": keys, "vectors": np.ascontiguousarray(vectors)}, metadata={"model": json.dumps(self.model)}
        )
        atomic_write_bytes(self.path, data)
        self._dirty = False

    def _load(self) -> None:
        safetensors_numpy = require("safetensors.numpy", extra="torch", purpose="the embedding cache")
        from safetensors import safe_open

        try:
            with safe_open(str(self.path), framework="numpy") as handle:
                model = json.loads((handle.metadata() or {}).get("model", "null"))
            tensors = safetensors_numpy.load_file(str(self.path))
            keys, vectors = tensors["keys"], tensors["vectors"]
        except Exception as error:  # safetensors raises several types for a damaged file
            raise StoreError(f"{self.path}: not a readable embedding cache ({error}); delete it to rebuild") from None
        if model != self.model:
            raise StoreError(f"{self.path}: holds embeddings of {model!r}, expected {self.model!r}")
        if keys.ndim != 2 or keys.shape[1] != 16 or len(keys) != len(vectors):
            raise StoreError(f"{self.path}: keys {list(keys.shape)} do not match vectors {list(vectors.shape)}")
        self._rows = {bytes(k): i for i, k in enumerate(keys)}
        self._vectors = list(vectors)


def embed_texts(
    encoder: Any,
    texts: Sequence[str],
    *,
    cache: EmbeddingCache | None = None,
    batch_size: int = 64,
    progress: bool = False,
    description: str = "embedding",
) -> np.ndarray:
    """Embeddings of `texts` as float32 `[n, dim]`; only texts missing from `cache` reach the encoder."""
    keys = [content_key(t) for t in texts]
    cached = cache.lookup(keys) if cache is not None else [None] * len(texts)
    todo = sorted({k: i for i, (k, v) in enumerate(zip(keys, cached, strict=True)) if v is None}.values())
    fresh: dict[bytes, np.ndarray] = {}
    if todo:
        batches = range(0, len(todo), batch_size)
        if progress:
            from rich.progress import track

            batches = track(batches, description=f"{description} ({len(todo)} new, {len(texts) - len(todo)} cached)")
        for start in batches:
            chunk = todo[start : start + batch_size]
            vectors = np.asarray(encoder.encode([texts[i] for i in chunk]), dtype=np.float32)
            if vectors.shape[0] != len(chunk) or vectors.ndim != 2:
                raise ValueError(f"the encoder returned shape {list(vectors.shape)} for {len(chunk)} texts")
            fresh.update((keys[i], v) for i, v in zip(chunk, vectors, strict=True))
        if cache is not None:
            cache.put(list(fresh), np.stack(list(fresh.values())))
    rows = [v if v is not None else fresh[k] for k, v in zip(keys, cached, strict=True)]
    if not rows:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack(rows).astype(np.float32, copy=False)
