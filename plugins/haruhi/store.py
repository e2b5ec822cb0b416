"""`haruhi/memory`: memories (texts with ids) in a faiss index, saved so that a crash never loses the previous save.

```python
store = FaissMemory(MemoryStoreConfig(index="flat"), model={"name": "hf/sentence-encoder"})
ids = store.add(vectors, texts)            # ids default to a hash of the text: re-adding a text is a no-op
hits = store.search(query_vectors, k=5)    # one list of Hit(id, score, text, meta, rank) per query
store.delete(ids[:2])
store.save("romeo/index")                  # new files first, then one atomic manifest rename
store = FaissMemory.load("romeo/index", expect_dim=384, expect_model={"name": "hf/sentence-encoder"})
```

On disk, a store folder holds `manifest.json` and the files of one generation (`index-<n>.faiss`,
`memories-<n>.jsonl`). A save writes generation n+1 beside generation n, fsyncs it, then replaces the manifest by
a rename; only after that are older generations removed. Killed at any point, the folder still loads: the old
manifest names the old, untouched files. The manifest records sizes and SHA-256 checksums, so a damaged file is
reported by name instead of handed to faiss.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from omnimm.deps import require
from omnimm.errors import StoreError
from omnimm.files import atomic_write_text
from omnimm_plugins.haruhi.configs import MemoryStoreConfig

log = logging.getLogger(__name__)

FORMAT = "omnimm-memory/1"
MANIFEST = "manifest.json"
_ID_MASK = (1 << 63) - 1
_COMPACT_AT = 0.25  # HNSW: rebuild once a quarter of the graph is tombstones
# faiss' flat search parallelises over queries and skips BLAS below 20 of them, so one query runs on one core;
# a BLAS matrix-vector product over faiss' own vector storage (no copy) is 2-3x faster for those.
_FEW_QUERIES = 20


def _faiss() -> Any:
    return require("faiss", extra="haruhi", purpose="the memory store 'haruhi/memory'")


def text_id(text: str) -> int:
    """A stable 63-bit id from the text's content (BLAKE2b): the same scene always gets the same id."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little") & _ID_MASK


@dataclass(frozen=True)
class Memory:
    id: int
    text: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    id: int
    score: float
    text: str
    meta: dict[str, Any]
    rank: int


class FaissMemory:
    """A vector memory: `add`, `delete`, `search`, `save`, `load`. Vectors are L2-normalised (cosine similarity)."""

    def __init__(self, config: MemoryStoreConfig | None = None, *, dim: int | None = None, model: Any = None) -> None:
        self.config = config or MemoryStoreConfig()
        self.dim = dim
        self.model = model
        """Describes the embedding model (any JSON value); `load` compares it with what the caller expects."""
        self._index: Any = None
        self._memories: dict[int, Memory] = {}
        self._tombstones: set[int] = set()
        self._search_index: Any = None  # a GPU copy for search, rebuilt after changes
        self._flat_view: tuple[np.ndarray, np.ndarray] | None = None  # (vectors, ids) of a flat index, no copy
        self._generation = 0

    # -- contents -------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._memories)

    def __contains__(self, memory_id: object) -> bool:
        return memory_id in self._memories

    def ids(self) -> list[int]:
        return list(self._memories)

    def get(self, memory_id: int) -> Memory:
        try:
            return self._memories[memory_id]
        except KeyError:
            raise KeyError(f"no memory with id {memory_id}") from None

    def memories(self) -> list[Memory]:
        return list(self._memories.values())

    # -- changes --------------------------------------------------------------------------------------------------

    def add(
        self,
        vectors: np.ndarray,
        texts: Sequence[str],
        *,
        ids: Sequence[int] | None = None,
        meta: Sequence[dict[str, Any]] | None = None,
    ) -> list[int]:
        """Add memories; returns their ids. Without `ids`, ids come from the texts and texts already stored are
        skipped (adding is idempotent). Explicit ids that exist already are an error."""
        matrix = self._check_vectors(vectors, "vectors")
        if len(texts) != len(matrix):
            raise ValueError(f"got {len(matrix)} vectors but {len(texts)} texts")
        if meta is not None and len(meta) != len(matrix):
            raise ValueError(f"got {len(matrix)} vectors but {len(meta)} meta entries")
        if ids is None:
            all_ids = [text_id(t) for t in texts]
            keep = _first_new(all_ids, self._memories)
        else:
            all_ids = [int(i) for i in ids]
            clash = [i for i in all_ids if i in self._memories or i in self._tombstones]
            if clash or len(set(all_ids)) != len(all_ids):
                raise ValueError(f"ids already in the store or repeated: {sorted(set(clash))[:5] or 'repeated ids'}")
            if any(not 0 <= i <= _ID_MASK for i in all_ids):
                raise ValueError("ids must be between 0 and 2**63 - 1")
            keep = list(range(len(all_ids)))
        if not keep:
            return all_ids
        new_ids = np.asarray([all_ids[i] for i in keep], dtype=np.int64)
        if self._tombstones.intersection(new_ids.tolist()):  # a deleted text comes back: drop its old node first
            self.compact()
        new_vectors = np.ascontiguousarray(matrix[keep])
        index = self._ensure_index(new_vectors)
        index.add_with_ids(new_vectors, new_ids)
        for i in keep:
            self._memories[all_ids[i]] = Memory(all_ids[i], texts[i], dict(meta[i]) if meta is not None else {})
        self._search_index = self._flat_view = None
        return all_ids

    def delete(self, ids: Iterable[int]) -> int:
        """Remove memories by id; returns how many were there. Unknown ids are ignored."""
        present = [int(i) for i in ids if int(i) in self._memories]
        if not present:
            return 0
        for i in present:
            del self._memories[i]
        if self.config.index == "hnsw":  # the graph cannot drop nodes: hide them until the next compaction
            self._tombstones.update(present)
            if len(self._tombstones) > _COMPACT_AT * self._index.ntotal:
                self.compact()
        else:
            self._index.remove_ids(np.asarray(present, dtype=np.int64))
        self._search_index = self._flat_view = None
        return len(present)

    def compact(self) -> None:
        """Rebuild the index from the live memories (drops HNSW tombstones)."""
        if self._index is None or not self._tombstones:
            return
        live = np.asarray(list(self._memories), dtype=np.int64)
        vectors = np.vstack([self._index.reconstruct(int(i)) for i in live]) if len(live) else None
        self._index, self._tombstones, self._search_index, self._flat_view = None, set(), None, None
        if vectors is not None:
            self._ensure_index(vectors).add_with_ids(vectors, live)

    # -- search ---------------------------------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """The `k` most similar memories for each query vector (a `[dim]` vector counts as one query)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        matrix = self._check_vectors(queries, "queries")
        if not self._memories:
            return [[] for _ in range(len(matrix))]
        fetch = min(k + len(self._tombstones), self._index.ntotal)
        searcher = self._searcher()
        if self.config.index == "flat" and searcher is self._index and len(matrix) < _FEW_QUERIES:
            scores, found = self._exact_search(matrix, fetch)
        else:
            scores, found = searcher.search(matrix, fetch)
        results = []
        for row_scores, row_ids in zip(scores, found, strict=True):
            hits: list[Hit] = []
            for score, memory_id in zip(row_scores, row_ids, strict=True):
                memory = self._memories.get(int(memory_id))
                if memory is None:  # -1 (fewer results than k) or a tombstone
                    continue
                hits.append(Hit(memory.id, float(score), memory.text, memory.meta, len(hits)))
                if len(hits) == k:
                    break
            results.append(hits)
        return results

    # -- persistence ----------------------------------------------------------------------------------------------

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write the store to `folder` without ever leaving it unloadable (see the module docs)."""
        faiss = _faiss()
        target = Path(folder)
        target.mkdir(parents=True, exist_ok=True)
        generation = max(self._generation, _current_generation(target)) + 1
        index_name, memories_name = f"index-{generation}.faiss", f"memories-{generation}.jsonl"
        if self._index is not None:
            _write_durably(target / index_name, lambda path: faiss.write_index(self._index, str(path)))
        _write_durably(target / memories_name, lambda path: self._write_memories(path))
        files = [memories_name] + ([index_name] if self._index is not None else [])
        manifest = {
            "format": FORMAT,
            "generation": generation,
            "config": self.config.model_dump(mode="json", exclude_defaults=False),
            "dim": self.dim,
            "model": self.model,
            "count": len(self._memories),
            "index_file": index_name if self._index is not None else None,
            "memories_file": memories_name,
            "files": {name: _file_record(target / name) for name in files},
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write_text(target / MANIFEST, json.dumps(manifest, indent=1) + "\n")
        self._generation = generation
        _remove_other_generations(target, keep=set(files))
        return target

    @classmethod
    def load(
        cls,
        folder: str | os.PathLike[str],
        *,
        expect_dim: int | None = None,
        expect_model: Any = None,
        config: MemoryStoreConfig | None = None,
        verify: bool = True,
    ) -> FaissMemory:
        """Load a saved store. Raises `StoreError` naming the file when something is missing, damaged, or was built
        with another dimension or model than expected. `verify=False` skips the checksums (faster for huge stores);
        `config` overrides search-time options (`nprobe`, `ef_search`, `device`) but not the index kind."""
        source = Path(folder)
        manifest = _read_manifest(source)
        saved_config = MemoryStoreConfig.model_validate(manifest["config"])
        if config is not None and config.index != saved_config.index:
            raise StoreError(
                f"{source}: the store holds a '{saved_config.index}' index but the config asks for "
                f"'{config.index}'; rebuild the index to change its kind"
            )
        store = cls(config or saved_config, dim=manifest["dim"], model=manifest["model"])
        store._generation = int(manifest["generation"])
        if expect_dim is not None and manifest["dim"] is not None and manifest["dim"] != expect_dim:
            raise StoreError(
                f"{source}: the store holds {manifest['dim']}-dimensional vectors (model {manifest['model']!r}) but "
                f"the encoder gives {expect_dim}; re-index with that encoder"
            )
        if expect_model is not None and manifest["model"] != expect_model:
            raise StoreError(
                f"{source}: the store was built with model {manifest['model']!r}, not {expect_model!r}; "
                f"re-index with the configured encoder (cached embeddings are reused)"
            )
        for name, record in manifest["files"].items():
            _check_file(source / name, record, verify)
        store._memories = _read_memories(source / manifest["memories_file"])
        if len(store._memories) != manifest["count"]:
            raise StoreError(
                f"{source / manifest['memories_file']}: {len(store._memories)} memories, manifest says "
                f"{manifest['count']}"
            )
        if manifest["index_file"] is not None:
            store._index = _read_index(source / manifest["index_file"])
            store._check_loaded_index(source / manifest["index_file"])
        return store

    # -- internals ------------------------------------------------------------------------------------------------

    def _check_vectors(self, vectors: np.ndarray, what: str) -> np.ndarray:
        matrix = np.asarray(vectors, dtype=np.float32)
        if matrix.ndim == 1:
            matrix = matrix[None, :]
        if matrix.ndim != 2:
            raise ValueError(f"{what}: expected shape [n, dim], got {list(np.shape(vectors))}")
        if self.dim is not None and matrix.shape[1] != self.dim:
            raise ValueError(f"{what}: expected dimension {self.dim} (the store's), got {matrix.shape[1]}")
        if not np.isfinite(matrix).all():
            raise ValueError(f"{what}: contains NaN or infinite values")
        matrix = np.array(matrix, dtype=np.float32, order="C", copy=True)
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        np.divide(matrix, norms, out=matrix, where=norms > 0)
        return matrix

    def _ensure_index(self, vectors: np.ndarray) -> Any:
        if self._index is not None:
            return self._index
        faiss = _faiss()
        self.dim = self.dim or int(vectors.shape[1])
        kind = self.config.index
        if kind == "flat":
            index = faiss.index_factory(self.dim, "IDMap2,Flat", faiss.METRIC_INNER_PRODUCT)
        elif kind == "hnsw":
            index = faiss.index_factory(self.dim, f"IDMap2,HNSW{self.config.hnsw_m}", faiss.METRIC_INNER_PRODUCT)
            faiss.downcast_index(index.index).hnsw.efConstruction = self.config.ef_construction
        else:
            nlist = self.config.nlist or _auto_nlist(len(vectors))
            if len(vectors) < nlist:
                raise ValueError(
                    f"an IVF index with nlist={nlist} needs at least {nlist} vectors in its first add "
                    f"(got {len(vectors)}); lower `nlist` or use index: flat"
                )
            index = faiss.index_factory(self.dim, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
            index.train(vectors)
        self._index = index
        return index

    def _apply_search_options(self, index: Any) -> None:
        faiss = _faiss()
        if self.config.index == "ivf":
            faiss.extract_index_ivf(index).nprobe = self.config.nprobe
        elif self.config.index == "hnsw":
            faiss.downcast_index(index.index).hnsw.efSearch = self.config.ef_search

    def _searcher(self) -> Any:
        if self._search_index is not None:
            return self._search_index
        self._apply_search_options(self._index)
        self._search_index = self._index
        if self.config.device != "cpu" and self.config.index != "hnsw":
            self._search_index = _to_gpu(self._index, required=self.config.device == "cuda") or self._index
        return self._search_index

    def _exact_search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """What `IndexFlatIP.search` returns, computed with one BLAS call on the index's own storage."""
        if self._flat_view is None:
            faiss = _faiss()
            flat = faiss.downcast_index(self._index.index)
            vectors = faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d).reshape(flat.ntotal, flat.d)
            self._flat_view = (vectors, faiss.vector_to_array(self._index.id_map))
        vectors, ids = self._flat_view
        scores = queries @ vectors.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else np.argsort(-scores, axis=1)
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        return np.take_along_axis(top_scores, order, axis=1), ids[np.take_along_axis(top, order, axis=1)]

    def _write_memories(self, path: Path) -> None:
        with open(path, "w", encoding="utf-8") as handle:
            for memory in self._memories.values():
                handle.write(json.dumps({"id": memory.id, "text": memory.text, "meta": memory.meta}) + "\n")

    def _check_loaded_index(self, path: Path) -> None:
        index = self._index
        if index.d != self.dim:
            raise StoreError(f"{path}: index dimension {index.d}, manifest says {self.dim}")
        stored = index.ntotal
        if self.config.index == "hnsw":
            graph_ids = set(_faiss().vector_to_array(index.id_map).tolist())
            missing = set(self._memories) - graph_ids
            if missing:
                raise StoreError(f"{path}: {len(missing)} memories have no vector in the index")
            self._tombstones = graph_ids - set(self._memories)
        elif stored != len(self._memories):
            raise StoreError(f"{path}: {stored} vectors but {len(self._memories)} memories")


def _first_new(ids: list[int], existing: dict[int, Memory]) -> list[int]:
    seen: set[int] = set()
    keep = []
    for position, memory_id in enumerate(ids):
        if memory_id not in existing and memory_id not in seen:
            seen.add(memory_id)
            keep.append(position)
    return keep


def _auto_nlist(count: int) -> int:
    return max(1, min(int(4 * math.sqrt(count)), count // 39))


def _to_gpu(index: Any, *, required: bool) -> Any:
    faiss = _faiss()
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        if required:
            raise StoreError("device: cuda needs faiss-gpu and a visible GPU (pip install 'omnimm[gpu]')")
        return None
    try:
        return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    except RuntimeError as error:
        if required:
            raise StoreError(f"could not move the index to the GPU: {error}") from None
        log.warning("searching on the CPU: faiss could not move the index to the GPU (%s)", error)
        return None


def _write_durably(path: Path, write: Any) -> None:
    """Write through `write(temp_path)`, fsync, then rename to `path`: `path` is either complete or absent."""
    temp = path.with_name(f".{path.name}.tmp")
    try:
        write(temp)
        with open(temp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _file_record(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": _sha256(path)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _current_generation(folder: Path) -> int:
    try:
        return int(json.loads((folder / MANIFEST).read_text("utf-8")).get("generation", 0))
    except (OSError, ValueError, AttributeError):
        return 0


def _remove_other_generations(folder: Path, keep: set[str]) -> None:
    for path in folder.iterdir():
        stale = path.name.startswith(("index-", "memories-", ".index-", ".memories-")) and path.name not in keep
        if stale and path.is_file():
            path.unlink(missing_ok=True)


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not folder.is_dir():
        raise StoreError(f"{folder}: no such memory store folder")
    if not path.is_file():
        raise StoreError(f"{path}: missing; {folder} is not a saved memory store")
    try:
        manifest = json.loads(path.read_text("utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise StoreError(f"{path}: not valid JSON ({error})") from None
    required = {"format", "generation", "config", "dim", "model", "count", "index_file", "memories_file", "files"}
    if not isinstance(manifest, dict) or not required <= set(manifest):
        missing = sorted(required - set(manifest)) if isinstance(manifest, dict) else sorted(required)
        raise StoreError(f"{path}: not a memory-store manifest (missing {', '.join(missing)})")
    if manifest["format"] != FORMAT:
        raise StoreError(f"{path}: format {manifest['format']!r}, this version reads {FORMAT!r}")
    return manifest


def _check_file(path: Path, record: dict[str, Any], verify: bool) -> None:
    if not path.is_file():
        raise StoreError(f"{path}: missing (named by {path.parent / MANIFEST})")
    size = path.stat().st_size
    if size != record["bytes"]:
        raise StoreError(f"{path}: {size} bytes, the manifest recorded {record['bytes']}: the file is damaged")
    if verify and _sha256(path) != record["sha256"]:
        raise StoreError(f"{path}: checksum mismatch: the file is damaged or was changed outside omnimm")


def _read_memories(path: Path) -> dict[int, Memory]:
    memories: dict[int, Memory] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            try:
                row = json.loads(line)
                memory = Memory(int(row["id"]), str(row["text"]), dict(row.get("meta") or {}))
            except (ValueError, KeyError, TypeError) as error:
                raise StoreError(f"{path}:{number}: not a memory record ({error})") from None
            memories[memory.id] = memory
    return memories


def _read_index(path: Path) -> Any:
    try:
        return _faiss().read_index(str(path))
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise StoreError(f"{path}: faiss cannot read this index ({first_line})") from None
