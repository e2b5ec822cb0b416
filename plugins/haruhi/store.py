"""`haruhi/memory`: memories (texts with ids) in a faiss index, saved so that a crash never loses the previous save.

```python
store = FaissMemory(MemoryStoreConfig(), model={"name": "hf/sentence-encoder"})  # index kind chosen by size
ids = store.add(vectors, texts)            # ids default to a hash of the text: re-adding a text is a no-op
hits = store.search(query_vectors, k=5)    # one list of Hit(id, score, text, meta, rank) per query
hits = store.search_batch(many_queries)    # the same, every core (search() picks by batch size too)
store.delete(ids[:2])
store.save("romeo/index")                  # new files first, then one atomic manifest rename
store = FaissMemory.load("romeo/index", expect_dim=384, expect_model={"name": "hf/sentence-encoder"})
```

On disk, a store folder holds `manifest.json` and the files of one generation (`index-<n>.faiss`,
`memories-<n>.jsonl`). A save writes generation n+1 beside generation n, fsyncs it, then replaces the manifest by
a rename; only after that are older generations removed. Killed at any point, the folder still loads: the old
manifest names the old, untouched files. The manifest records sizes and SHA-256 checksums, so a damaged file is
reported by name instead of handed to faiss.

Approximate indexes (`ivf`, `hnsw`) are tuned on their own vectors: unless `nprobe` / `ef_search` are set, an add
holds back a seeded sample of its vectors (up to 500) together with their near-copies (similarity >=
`tuning_similarity`; a quarter of the add at most), inserts the rest, searches the sample with exact search and with
a ladder of settings, keeps the cheapest whose recall@10 reaches `target_recall`, then inserts what it held back. A
sample vector next to its own near-copy would be found far more easily than a query, a new text, is. The result is
recorded in the manifest, so a loaded store does not tune again until it has grown or shrunk by a fifth (at the next
add of at least 200 memories: fewer cannot spare 50 to hold back).

Locality: a freshly built HNSW graph (a first add, a rebuild, a compaction) is renumbered in breadth-first order of
its bottom layer, so that a search, which walks from node to neighbour, reads memory that sits close together; ids
and results are unchanged. Later adds append their nodes in insertion order until the next rebuild. After every
add and every load, the graph's vectors and neighbour lists are put on 2 MB pages where Linux allows it (fewer TLB
misses on the same walk).

Threads: faiss' OpenMP threads are set to 1 for fewer than 20 queries at once (a single query cannot use more, and
idle spinning threads slow it several-fold) and to every core for batches and builds; the caller's setting is put
back afterwards.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import stat
import struct
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

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
KINDS = ("flat", "ivf", "hnsw")
_CALIBRATION_K = 10  # PromptConfig.top_k's default
_CALIBRATION_QUERIES = 500
_MIN_TUNING_QUERIES = 50  # fewer held-out queries measure recall too coarsely to tune on
_NEAR_COPY_SCAN = 256  # neighbours of a tuning vector checked for near-copies to hold out with it
_RECALIBRATE_AT = 0.2  # tune again once the store has grown or shrunk by a fifth
_EF_LADDER = (16, 20, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 256, 320, 384, 512, 768, 1024, 2048)
_HNSW_STORAGE = {"float32": "", "float16": ",SQfp16", "bfloat16": ",SQbf16"}  # faiss index_factory suffixes
_ORDER_ROWS = 1 << 16  # neighbour lists gathered at a time when the graph is renumbered
_HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14  # Linux: back later page faults in this range with huge pages
_MADV_COLLAPSE = 25  # Linux 6.1+: back the range's present pages with huge pages now
_THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")
_NPROBE_LADDER = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)


_FAISS: Any = None


def _faiss() -> Any:
    global _FAISS  # looked up on every search: import once
    if _FAISS is None:
        _FAISS = require("faiss", extra="haruhi", purpose="the memory store 'haruhi/memory'")
    return _FAISS


def text_id(text: str) -> int:
    """A stable 63-bit id from the text's content (BLAKE2b): the same scene always gets the same id."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little") & _ID_MASK


@dataclass(frozen=True)
class Memory:
    id: int
    text: str
    meta: dict[str, Any] = field(default_factory=dict)


class Hit(NamedTuple):
    """One search result (a named tuple: built per hit on the search path, where a frozen dataclass took 2.5 times
    as long: 0.91 against 0.37 microseconds a hit)."""

    id: int
    score: float
    text: str
    meta: dict[str, Any]
    rank: int


@dataclass(frozen=True)
class Calibration:
    """The search setting an approximate index was tuned to, and what it measured."""

    kind: str
    """`hnsw` (the setting is `ef_search`) or `ivf` (`nprobe`)."""
    value: int
    recall: float
    """Recall@`k` of `value` on the held-out sample, against exact search."""
    target_recall: float
    k: int
    queries: int
    count: int
    """Memories in the store when it was tuned."""
    seconds: float

    @property
    def parameter(self) -> str:
        return "ef_search" if self.kind == "hnsw" else "nprobe"


def available_cores() -> int:
    """The cores this process may run on (`OMP_NUM_THREADS` when set): what batches and builds use."""
    setting = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if setting.isdigit() and int(setting) > 0:
        return int(setting)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextmanager
def faiss_threads(count: int) -> Iterator[None]:
    """Run faiss with `count` OpenMP threads, then restore the caller's setting."""
    faiss = _faiss()
    before = faiss.omp_get_max_threads()
    if count != before:
        faiss.omp_set_num_threads(count)
    try:
        yield
    finally:
        if count != before:
            faiss.omp_set_num_threads(before)


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
        self._params: tuple[tuple[str | None, int], Any] | None = None  # the last faiss search parameters
        self._generation = 0
        self._kind: str | None = self.config.index  # chosen on the first add when the config leaves it unset
        self.calibration: Calibration | None = None
        """How the approximate index was tuned (None: exact, not yet tuned, or `nprobe` / `ef_search` set)."""

    @property
    def kind(self) -> str | None:
        """The index kind in use: the config's, or the one chosen by size (None before the first add)."""
        return self._kind

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
        self._choose_kind(len(self._memories) + len(keep))
        self._insert(new_vectors, new_ids)
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
        if self._kind == "hnsw":  # the graph cannot drop nodes: hide them until the next compaction
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
        self._rebuild(self._kind)

    def _rebuild(self, kind: str | None, *, tune: bool = True) -> None:
        """A new index of `kind` holding the live memories' vectors (drops tombstones), tuned on a held-out part."""
        old = self._index  # `vectors` may be a view of its storage: keep it alive until the copy is made
        vectors, live = self._live_vectors()
        self._index, self._tombstones, self._search_index, self._flat_view = None, set(), None, None
        self._kind, self.calibration = kind, None
        if len(live):
            self._insert(np.ascontiguousarray(vectors), live, tune=tune)
        del old

    def _choose_kind(self, count: int) -> None:
        """Unset `index`: flat while the store is at most `exact_up_to`, then HNSW (the flat index is rebuilt)."""
        if self.config.index is not None:
            self._kind = self.config.index
            return
        wanted = "flat" if count <= self.config.exact_up_to else "hnsw"
        if self._kind is None or self._index is None:
            self._kind = wanted
        elif self._kind == "flat" and wanted == "hnsw":
            log.info(
                "memory store: %d memories, more than exact_up_to=%d: switching to HNSW", count, self.config.exact_up_to
            )
            self._rebuild("hnsw")

    # -- search ---------------------------------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int = 10, *, threads: int | None = None) -> list[list[Hit]]:
        """The `k` most similar memories for each query vector (a `[dim]` vector counts as one query).

        `threads` (faiss' OpenMP threads for this call; unset: 1 below 20 queries, every core from 20 on) is put
        back to the caller's setting afterwards."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        matrix = self._check_vectors(queries, "queries")
        if not self._memories:
            return [[] for _ in range(len(matrix))]
        count = threads or (1 if len(matrix) < _FEW_QUERIES else available_cores())
        scores, found = self._raw_search(matrix, min(k + len(self._tombstones), self._index.ntotal), count, k=k)
        results = []
        for row_scores, row_ids in zip(scores.tolist(), found.tolist(), strict=True):
            hits: list[Hit] = []
            for score, memory_id in zip(row_scores, row_ids, strict=True):
                memory = self._memories.get(memory_id)
                if memory is None:  # -1 (fewer results than k) or a tombstone
                    continue
                hits.append(Hit(memory.id, score, memory.text, memory.meta, len(hits)))
                if len(hits) == k:
                    break
            results.append(hits)
        return results

    def search_batch(self, queries: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """`search` on every core, whatever the number of queries (results are the same as one by one)."""
        return self.search(queries, k, threads=available_cores())

    def calibrate(self, queries: np.ndarray | None = None) -> Calibration | None:
        """Tune `ef_search` (HNSW) or `nprobe` (IVF) for `target_recall` now, unless the config sets it.

        With `queries` (vectors that are not in the store, e.g. logged user queries): on those, against exact search.
        Without: on a held-out sample of the store's own vectors, which means rebuilding the index with the sample
        inserted after the tuning (an HNSW graph cannot take nodes out). The store does this by itself when it is
        built, on a held-out part of each add that leaves the last tuning a fifth off the store's size."""
        if self._index is None or self._kind == "flat" or getattr(self.config, self._parameter()) is not None:
            return None
        if queries is None:
            self._rebuild(self._kind, tune=True)
        else:
            self._tune(self._check_vectors(queries, "queries"))
        return self.calibration

    def _tune(
        self,
        queries: np.ndarray,
        *,
        new_texts_only: bool = False,
        exact: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """Pick the smallest rung of the ladder whose recall@10 on `queries` (not in the index) reaches the target.

        `new_texts_only`: leave out the queries that have a near-copy in the index (similarity >= `tuning_similarity`),
        unless fewer than the minimum would remain. `exact`: the index's vectors and ids as they were added, for the
        exact neighbours (else they are read back from the index, where 16-bit HNSW storage has rounded them)."""
        started = time.perf_counter()
        vectors, ids = exact if exact is not None else self._live_vectors()
        k = min(_CALIBRATION_K, len(ids))
        if not len(queries) or not k:
            return
        with faiss_threads(available_cores()):
            similar, truth = _exact_neighbours(queries, vectors, ids, k)
            if new_texts_only:
                new = similar[:, 0] < self.config.tuning_similarity
                if np.count_nonzero(new) >= _MIN_TUNING_QUERIES:
                    queries, truth = queries[new], [row for row, keep in zip(truth, new, strict=True) if keep]
            ladder, measured = self._ladder(), {}
            low, high = 0, len(ladder) - 1
            fetch = min(k + len(self._tombstones), self._index.ntotal)
            while low <= high:  # recall grows with the setting: binary search for the smallest that reaches it
                middle = (low + high) // 2
                _, found = self._raw_search(queries, fetch, available_cores(), setting=ladder[middle])
                found_live = [[int(i) for i in row if i >= 0 and int(i) not in self._tombstones][:k] for row in found]
                measured[middle] = _recall(found_live, truth)
                if measured[middle] >= self.config.target_recall:
                    high = middle - 1
                else:
                    low = middle + 1
        chosen = low if low in measured else max(measured)
        if measured[chosen] < self.config.target_recall:
            log.warning(
                "memory store: %s=%d reaches recall@%d %.3f, below target_recall %.3f",
                self._parameter(), ladder[chosen], k, measured[chosen], self.config.target_recall,
            )  # fmt: skip
        self.calibration = Calibration(
            kind=self._kind,
            value=ladder[chosen],
            recall=round(measured[chosen], 4),
            target_recall=self.config.target_recall,
            k=k,
            queries=len(queries),
            count=len(ids),
            seconds=round(time.perf_counter() - started, 3),
        )

    def _insert(self, vectors: np.ndarray, ids: np.ndarray, *, tune: bool = False) -> None:
        """Add to the index on every core; tune on a held-out part of the vectors (inserted after) when due."""
        index = self._ensure_index(vectors)
        fresh = index.ntotal == 0
        fixed = self._kind == "flat" or getattr(self.config, self._parameter()) is not None
        due = tune or self._calibration_stale(len(self._memories) + len(ids))
        held = min(_CALIBRATION_QUERIES, len(ids) // 4) if due and not fixed else 0
        tuned = held >= _MIN_TUNING_QUERIES
        with faiss_threads(available_cores()):
            if not tuned:
                index.add_with_ids(vectors, ids)
            else:
                probes, chosen = self._tuning_split(vectors, held)
                kept, kept_ids = np.ascontiguousarray(vectors[~chosen]), ids[~chosen]
                index.add_with_ids(kept, kept_ids)
                # a fresh index holds just these vectors: the exact neighbours come from them, unrounded
                exact = (kept, kept_ids) if fresh else None
                self._tune(np.ascontiguousarray(vectors[probes]), new_texts_only=True, exact=exact)
                index.add_with_ids(np.ascontiguousarray(vectors[chosen]), ids[chosen])
        if fresh and self._kind == "hnsw":
            _order_for_locality(index)
        _back_with_huge_pages(index)  # a grown array is new memory, so again after every add
        if tuned and self.calibration is not None:
            self.calibration = dataclasses.replace(self.calibration, count=index.ntotal - len(self._tombstones))

    def _tuning_split(self, vectors: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        """`count` seeded tuning vectors (positions) and the mask of what is held out of the index while tuning: each
        tuning vector with its near-copies in `vectors` (similarity >= `tuning_similarity`), a quarter of the add at
        most; a vector whose near-copies would not fit (a large cluster of duplicates) is not used for tuning."""
        seeds = np.random.default_rng(0).choice(len(vectors), size=count, replace=False)
        scan = min(_NEAR_COPY_SCAN, len(vectors))
        similar, nearest = _faiss().knn(vectors[seeds], vectors, scan, metric=_faiss().METRIC_INNER_PRODUCT)
        held = np.zeros(len(vectors), dtype=bool)
        budget, probes = len(vectors) // 4, []
        for seed, row_similar, row_nearest in zip(seeds, similar, nearest, strict=True):
            close = row_nearest[(row_similar >= self.config.tuning_similarity) & (row_nearest >= 0)]
            if len(close) == scan and scan < len(vectors):  # more near-copies than scanned: cannot hold them all
                continue
            added = np.count_nonzero(~held[close]) + (not held[seed])
            if held.sum() + added > budget:
                continue
            held[close] = True
            held[seed] = True
            probes.append(seed)
        if len(probes) < _MIN_TUNING_QUERIES:  # mostly duplicates: tune on the sample as it is
            log.info("memory store: too few tuning vectors without near-copies; tuning on a plain sample")
            held[:] = False
            held[seeds] = True
            return seeds, held
        return np.asarray(probes, dtype=np.int64), held

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
            "index_kind": self._kind if self._index is not None else None,
            "calibration": asdict(self.calibration) if self.calibration is not None else None,
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
        with another dimension or model than expected. `verify=False` skips the checksums (faster for huge stores; sizes
        and file types are still checked);
        `config` overrides search-time options (`nprobe`, `ef_search`, `target_recall`, `device`) but not the index
        kind (a config that leaves `index` unset takes the saved kind)."""
        source = Path(folder)
        manifest = _read_manifest(source)
        if config is not None and config.index is not None and manifest.kind not in (None, config.index):
            raise StoreError(
                f"{source}: the store holds a '{manifest.kind}' index but the config asks for "
                f"'{config.index}'; rebuild the index to change its kind"
            )
        store = cls(config or manifest.config, dim=manifest.dim, model=manifest.model)
        store._generation = manifest.generation
        store._kind = manifest.kind or store.config.index
        store.calibration = manifest.calibration
        if expect_dim is not None and manifest.dim is not None and manifest.dim != expect_dim:
            raise StoreError(
                f"{source}: the store holds {manifest.dim}-dimensional vectors (model {manifest.model!r}) but "
                f"the encoder gives {expect_dim}; re-index with that encoder"
            )
        if expect_model is not None and manifest.model != expect_model:
            raise StoreError(
                f"{source}: the store was built with model {manifest.model!r}, not {expect_model!r}; "
                f"re-index with the configured encoder (cached embeddings are reused)"
            )
        for name, record in manifest.files.items():
            _check_file(source / name, record, verify)
        memories_path = source / manifest.memories_file
        if manifest.count > manifest.files[manifest.memories_file].bytes:  # a record is more than one byte
            raise StoreError(
                f"{manifest.path}: count {manifest.count} cannot fit in {memories_path.name}'s "
                f"{manifest.files[manifest.memories_file].bytes} bytes"
            )
        store._memories = _read_memories(memories_path)
        if len(store._memories) != manifest.count:
            raise StoreError(f"{memories_path}: {len(store._memories)} memories, manifest says {manifest.count}")
        if manifest.index_file is not None:
            index_path = source / manifest.index_file
            _check_index_header(index_path, manifest)
            store._index = _read_index(index_path)
            store._check_loaded_index(index_path)
            _back_with_huge_pages(store._index)
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
        if len(matrix) == 1:  # one query: scalar arithmetic is several times cheaper than the array path below
            norm = math.sqrt(float(np.dot(matrix[0], matrix[0])))
            if math.isfinite(norm) and norm > 0:
                return matrix / np.float32(norm)
        norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix))[:, None]  # NaN or inf in a row shows in its norm
        if not np.isfinite(norms).all():
            if not np.isfinite(matrix).all():
                raise ValueError(f"{what}: contains NaN or infinite values")
            norms = np.linalg.norm(matrix.astype(np.float64), axis=1, keepdims=True)  # finite, but squares overflow
        return np.divide(matrix, norms, out=np.zeros(matrix.shape, dtype=np.float32), where=norms > 0)

    def _ensure_index(self, vectors: np.ndarray) -> Any:
        if self._index is not None:
            return self._index
        faiss = _faiss()
        self.dim = self.dim or int(vectors.shape[1])
        kind = self._kind
        if kind == "flat":
            index = faiss.index_factory(self.dim, "IDMap2,Flat", faiss.METRIC_INNER_PRODUCT)
        elif kind == "hnsw":
            layout = f"IDMap2,HNSW{self.config.hnsw_m}{_HNSW_STORAGE[self.config.hnsw_vectors]}"
            index = faiss.index_factory(self.dim, layout, faiss.METRIC_INNER_PRODUCT)
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

    def _parameter(self) -> str:
        return "ef_search" if self._kind == "hnsw" else "nprobe"

    def _ladder(self) -> list[int]:
        if self._kind == "hnsw":
            return list(_EF_LADDER)
        nlist = _faiss().extract_index_ivf(self._index).nlist
        return [n for n in _NPROBE_LADDER if n < nlist] + [nlist]  # nprobe = nlist is exact

    def _calibration_stale(self, count: int) -> bool:
        found = self.calibration
        if found is None or found.kind != self._kind or found.target_recall != self.config.target_recall:
            return True
        return abs(count - found.count) > _RECALIBRATE_AT * max(found.count, 1)

    def _setting(self, k: int) -> int:
        """`ef_search` / `nprobe` for a search of `k`: the config's, else the calibrated one, else faiss-like
        defaults (64 / 16) for a store too small to tune; HNSW's list grows with k past the tuned k."""
        fixed = getattr(self.config, self._parameter())
        value = fixed or (self.calibration.value if self.calibration else (64 if self._kind == "hnsw" else 16))
        if self._kind == "hnsw" and fixed is None and k > _CALIBRATION_K:
            value = math.ceil(value * k / _CALIBRATION_K)
        return value

    def _search_params(self, setting: int) -> Any:
        # building faiss' parameter object costs about as much as a small search: keep the last one
        cached = self._params
        if cached is not None and cached[0] == (self._kind, setting):
            return cached[1]
        faiss = _faiss()
        if self._kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=setting)
        else:
            params = faiss.SearchParametersIVF(nprobe=setting)
        self._params = ((self._kind, setting), params)
        return params

    def _raw_search(
        self, matrix: np.ndarray, fetch: int, threads: int, *, k: int | None = None, setting: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """faiss' scores and ids (tombstones and -1 included) with `threads` OpenMP threads."""
        if setting is None and self._kind != "flat":
            setting = self._setting(k or fetch)
        with faiss_threads(threads):
            if self._kind == "flat":
                searcher = self._searcher()
                if searcher is self._index and len(matrix) < _FEW_QUERIES:
                    return self._exact_search(matrix, fetch)
                return searcher.search(matrix, fetch)
            searcher = self._searcher() if setting is not None else self._index
            if searcher is not self._index:  # the GPU copy: faiss-gpu's own parameter setter (no SearchParameters)
                _faiss().GpuParameterSpace().set_index_parameter(searcher, "nprobe", min(setting, 2048))
                return searcher.search(matrix, fetch)
            return self._index.search(matrix, fetch, params=self._search_params(setting))

    def _live_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """The live memories' vectors `[n, dim]` and ids `[n]` (a view of faiss' storage when nothing is hidden)."""
        faiss = _faiss()
        if self._index is None:
            return np.zeros((0, self.dim or 0), dtype=np.float32), np.zeros(0, dtype=np.int64)
        if isinstance(self._index, faiss.IndexIDMap2):
            inner = faiss.downcast_index(self._index.index)
            storage = faiss.downcast_index(inner.storage) if self._kind == "hnsw" else inner
            if isinstance(storage, faiss.IndexFlat):
                vectors = faiss.rev_swig_ptr(storage.get_xb(), storage.ntotal * storage.d).reshape(-1, storage.d)
            else:  # 16-bit HNSW storage: decoded (a copy)
                vectors = storage.reconstruct_n(0, storage.ntotal)
            ids = faiss.vector_to_array(self._index.id_map)
        else:  # IVF: the raw float32 codes of each inverted list
            lists, blocks, id_blocks = self._index.invlists, [], []
            for number in range(self._index.nlist):
                size = lists.list_size(number)
                if size:
                    codes = faiss.rev_swig_ptr(lists.get_codes(number), size * lists.code_size)
                    blocks.append(codes.view(np.float32).reshape(size, -1))
                    id_blocks.append(faiss.rev_swig_ptr(lists.get_ids(number), size).copy())
            vectors = np.vstack(blocks) if blocks else np.zeros((0, self._index.d), dtype=np.float32)
            ids = np.concatenate(id_blocks) if id_blocks else np.zeros(0, dtype=np.int64)
        if self._tombstones:
            live = ~np.isin(ids, np.fromiter(self._tombstones, dtype=np.int64))
            vectors, ids = vectors[live], ids[live]
        return vectors, ids

    def _searcher(self) -> Any:
        if self._search_index is not None:
            return self._search_index
        self._search_index = self._index
        if self.config.device != "cpu" and self._kind != "hnsw":
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
        kind = _index_kind(index)
        if kind != self._kind:
            found = type(index).__name__
            raise StoreError(f"{path}: {found} is not a '{self._kind}' index, as the manifest says")
        if index.metric_type != _faiss().METRIC_INNER_PRODUCT:
            raise StoreError(f"{path}: the index does not use inner product; expected cosine (inner product) search")
        if index.d != self.dim:
            raise StoreError(f"{path}: index dimension {index.d}, manifest says {self.dim}")
        stored = _index_ids(index)
        missing = set(self._memories) - stored
        if missing:
            raise StoreError(f"{path}: {len(missing)} memories have no vector in the index")
        if kind == "hnsw":  # the graph keeps deleted nodes until compaction
            self._tombstones = stored - set(self._memories)
            saved = _hnsw_vectors(_faiss().downcast_index(index.index))
            if saved != self.config.hnsw_vectors:  # like the kind, the saved storage stays through rebuilds
                self.config = self.config.model_copy(update={"hnsw_vectors": saved})
        elif index.ntotal != len(self._memories):
            raise StoreError(f"{path}: {index.ntotal} vectors but {len(self._memories)} memories")


def _order_for_locality(index: Any) -> None:
    """Renumber the nodes of an `IDMap2,HNSW` index in breadth-first order of its bottom layer, from the entry
    point: a search walks from node to neighbour, and neighbours then sit close together in memory (fewer cache
    misses; measured 6% less search time at 100k memories and 9% at 1M, summed over eight `ef_search` settings).
    Ids, scores and results are unchanged. Without scipy the graph keeps its insertion order (a warning says so)."""
    try:
        from scipy.sparse import csgraph, csr_array
    except ImportError:
        log.warning("memory store: scipy is missing (pip install 'omnimm[haruhi]'): the HNSW graph keeps its order")
        return
    faiss = _faiss()
    hnsw_index = faiss.downcast_index(index.index)
    hnsw, count = hnsw_index.hnsw, index.ntotal
    if count < 2:
        return
    offsets = faiss.vector_to_array(hnsw.offsets).astype(np.int64)
    neighbours = faiss.rev_swig_ptr(hnsw.neighbors.data(), hnsw.neighbors.size())  # faiss' own array, no copy
    slots = np.arange(hnsw.nb_neighbors(0))  # the bottom layer's slots come first in each node's list
    targets, lengths = [], []
    for start in range(0, count, _ORDER_ROWS):  # in blocks: the whole [count, 2M] gather would take GBs at 1M
        block = neighbours[offsets[start : min(start + _ORDER_ROWS, count), None] + slots]
        linked = block >= 0  # -1 marks an unused slot
        targets.append(block[linked])
        lengths.append(linked.sum(axis=1))
    indptr = np.concatenate([[0], np.cumsum(np.concatenate(lengths))])
    indices = np.concatenate(targets)
    # float64 ones: the type csgraph works in, so it does not copy the graph again
    graph = csr_array((np.ones(len(indices)), indices, indptr), shape=(count, count))
    reached = csgraph.breadth_first_order(graph, int(hnsw.entry_point), directed=True, return_predecessors=False)
    missed = np.ones(count, dtype=bool)
    missed[reached] = False
    order = np.concatenate([reached, np.flatnonzero(missed)]).astype(np.int64)  # new position -> old position
    hnsw_index.permute_entries(order)
    ids = faiss.vector_to_array(index.id_map)[order]
    faiss.copy_array_to_vector(ids, index.id_map)
    index.construct_rev_map()


def _back_with_huge_pages(index: Any) -> int:
    """Ask Linux to back the vectors and the neighbour lists of an HNSW graph with 2 MB pages; returns the bytes
    asked for. A search jumps between far-apart nodes, and with 4 kB pages nearly every jump misses the TLB as well
    as the cache. faiss' arrays are never advised on their own, and transparent huge pages are often `madvise`-only.
    Best effort: nothing happens on other systems, when huge pages are off, or when the kernel declines."""
    faiss = _faiss()
    if sys.platform != "linux" or not isinstance(index, faiss.IndexIDMap2) or not _huge_pages_allowed():
        return 0
    inner = faiss.downcast_index(index.index)
    if not isinstance(inner, faiss.IndexHNSW):
        return 0
    advised = 0
    for array in (faiss.downcast_index(inner.storage).codes, inner.hnsw.neighbors):
        if array.size():
            view = faiss.rev_swig_ptr(array.data(), array.size())  # faiss' own memory, no copy
            advised += _advise_huge(view.ctypes.data, view.nbytes)
    return advised


def _huge_pages_allowed() -> bool:
    try:
        return "[never]" not in _THP_SETTING.read_text()
    except OSError:
        return False


def _advise_huge(address: int, size: int) -> int:
    """madvise the whole 2 MB pages inside [address, address + size); returns the bytes advised. Rounding outwards
    would take in other allocations or unmapped memory (the kernel then refuses the whole call with ENOMEM)."""
    start = -(-address // _HUGE_PAGE) * _HUGE_PAGE
    end = (address + size) // _HUGE_PAGE * _HUGE_PAGE
    if end <= start:
        return 0
    import ctypes

    madvise = ctypes.CDLL(None, use_errno=True).madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    # collapse now where the kernel can (6.1+); else at least let later faults and khugepaged use huge pages
    if madvise(start, end - start, _MADV_COLLAPSE) == 0 or madvise(start, end - start, _MADV_HUGEPAGE) == 0:
        return end - start
    return 0


def _first_new(ids: list[int], existing: dict[int, Memory]) -> list[int]:
    seen: set[int] = set()
    keep = []
    for position, memory_id in enumerate(ids):
        if memory_id not in existing and memory_id not in seen:
            seen.add(memory_id)
            keep.append(position)
    return keep


def _exact_neighbours(
    queries: np.ndarray, vectors: np.ndarray, ids: np.ndarray, k: int
) -> tuple[np.ndarray, list[list[int]]]:
    """Exact top-k similarities and ids by inner product (faiss' brute force on the arrays: no index, no copy)."""
    similar, found = _faiss().knn(queries, vectors, min(k, len(vectors)), metric=_faiss().METRIC_INNER_PRODUCT)
    return similar, [[int(ids[i]) for i in row if i >= 0] for row in found]


def _recall(found: list[list[int]], truth: list[list[int]]) -> float:
    shares = [len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True) if t]
    return float(np.mean(shares)) if shares else 1.0


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
    temp.unlink(missing_ok=True)  # a link left at the temp name would be written through, outside the folder
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
    """The generation the folder's manifest names, or 0: a save must work over a damaged or foreign manifest too."""
    try:
        generation = _parse_json(_read_regular(folder / MANIFEST, _MANIFEST_LIMIT), folder / MANIFEST).get("generation")
    except (StoreError, AttributeError):
        return 0
    return generation if _is_int(generation) and 0 < generation <= _MAX_GENERATION else 0


def _remove_other_generations(folder: Path, keep: set[str]) -> None:
    for path in folder.iterdir():
        stale = path.name.startswith(("index-", "memories-", ".index-", ".memories-")) and path.name not in keep
        if stale and path.is_file():
            path.unlink(missing_ok=True)


# -- reading a store folder: every name, size, type and count is checked before anything is parsed or allocated --

_MANIFEST_LIMIT = 1 << 20  # a manifest is a few hundred bytes; a bigger one is not ours
_MAX_GENERATION = 10**15
_MAX_DIM = 1 << 16
_MANIFEST_KEYS = ("format", "generation", "config", "dim", "model", "count", "index_file", "memories_file", "files")


@dataclass(frozen=True)
class _FileRecord:
    bytes: int
    sha256: str


@dataclass(frozen=True)
class _Manifest:
    """A manifest whose every field has been checked: file names are plain names of this generation's files."""

    path: Path
    generation: int
    config: MemoryStoreConfig
    dim: int | None
    model: Any
    count: int
    index_file: str | None
    memories_file: str
    files: dict[str, _FileRecord]
    kind: str | None
    calibration: Calibration | None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_regular(path: Path, limit: int | None = None) -> bytes:
    """The bytes of `path` if it is a regular file (not a link, device or pipe) of at most `limit` bytes."""
    _check_regular(path)
    size = path.stat().st_size
    if limit is not None and size > limit:
        raise StoreError(f"{path}: {size} bytes, more than the {limit} a memory-store manifest can have")
    return _open_regular(path).read()


def _check_regular(path: Path) -> os.stat_result:
    try:
        info = path.lstat()
    except FileNotFoundError:
        raise StoreError(f"{path}: missing (named by {path.parent / MANIFEST})") from None
    except OSError as error:
        raise StoreError(f"{path}: cannot be read ({error.strerror})") from None
    if stat.S_ISLNK(info.st_mode):
        raise StoreError(f"{path}: a symbolic link; a store's files must be regular files inside its folder")
    if not stat.S_ISREG(info.st_mode):
        raise StoreError(f"{path}: not a regular file; a store's files must be regular files inside its folder")
    return info


def _open_regular(path: Path) -> Any:
    # O_NOFOLLOW: a link swapped in after the check is refused by the kernel, not followed
    try:
        return os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)), "rb")
    except OSError as error:
        raise StoreError(f"{path}: cannot be read ({error.strerror})") from None


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise ValueError(f"duplicate key {repeated[0]!r}")
    return dict(pairs)


def _parse_json(data: bytes, where: Path | str) -> Any:
    if not data.strip():
        raise StoreError(f"{where}: empty; expected JSON")
    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=_reject_duplicates)
    except UnicodeDecodeError as error:
        raise StoreError(f"{where}: not UTF-8 text (byte {data[error.start]:#04x} at offset {error.start})") from None
    except RecursionError:
        raise StoreError(f"{where}: not valid JSON (nested too deeply)") from None
    except ValueError as error:
        raise StoreError(f"{where}: not valid JSON ({error})") from None


def _read_manifest(folder: Path) -> _Manifest:
    path = folder / MANIFEST
    if not folder.is_dir():
        raise StoreError(f"{folder}: no such memory store folder")
    if not path.exists() and not path.is_symlink():
        raise StoreError(f"{path}: missing; {folder} is not a saved memory store")
    raw = _parse_json(_read_regular(path, _MANIFEST_LIMIT), path)
    if not isinstance(raw, dict) or not set(_MANIFEST_KEYS) <= set(raw):
        missing = [key for key in _MANIFEST_KEYS if not isinstance(raw, dict) or key not in raw]
        raise StoreError(f"{path}: not a memory-store manifest (missing {', '.join(missing)})")
    if raw["format"] != FORMAT:
        raise StoreError(f"{path}: format {raw['format']!r}, this version reads {FORMAT!r}")
    generation = _manifest_int(raw, "generation", path, low=1, high=_MAX_GENERATION)
    count = _manifest_int(raw, "count", path, low=0, high=_ID_MASK)
    dim = None if raw["dim"] is None else _manifest_int(raw, "dim", path, low=1, high=_MAX_DIM)
    memories_file = _manifest_name(raw, "memories_file", f"memories-{generation}.jsonl", path)
    index_name = f"index-{generation}.faiss"
    index_file = None if raw["index_file"] is None else _manifest_name(raw, "index_file", index_name, path)
    if index_file is None and count:
        raise StoreError(f"{path}: index_file is null but the store has {count} memories; an index file is expected")
    if index_file is not None and dim is None:
        raise StoreError(f"{path}: dim is null but the store has an index; expected the vectors' dimension")
    used = [memories_file] + ([index_file] if index_file else [])
    config = _manifest_config(raw["config"], path)
    kind = _manifest_kind(raw, config, index_file, path)
    return _Manifest(
        path=path,
        generation=generation,
        config=config,
        dim=dim,
        model=raw["model"],
        count=count,
        index_file=index_file,
        memories_file=memories_file,
        files=_manifest_files(raw["files"], used, path),
        kind=kind,
        calibration=_manifest_calibration(raw.get("calibration"), kind, path),
    )


def _manifest_kind(raw: dict[str, Any], config: MemoryStoreConfig, index_file: str | None, path: Path) -> str | None:
    """`index_kind` (absent in manifests written before the kind could be chosen by size: the config's)."""
    kind = raw.get("index_kind", config.index)
    if kind is not None and kind not in KINDS:
        raise StoreError(f"{path}: index_kind is {_shown(kind)}; expected one of {', '.join(map(repr, KINDS))}")
    if config.index is not None and kind not in (None, config.index):
        raise StoreError(f"{path}: index_kind is {kind!r} but config.index is {config.index!r}; they must agree")
    if kind is None and index_file is not None:
        raise StoreError(f"{path}: index_kind is null but the store has an index; expected 'flat', 'ivf' or 'hnsw'")
    return kind


_CALIBRATION_TYPES = {
    "kind": str, "value": int, "recall": float, "target_recall": float, "k": int, "queries": int, "count": int,
    "seconds": float,
}  # fmt: skip


def _manifest_calibration(value: Any, kind: str | None, path: Path) -> Calibration | None:
    if value is None:
        return None
    expected = "null or an object with " + ", ".join(_CALIBRATION_TYPES)
    if not isinstance(value, dict) or sorted(value) != sorted(_CALIBRATION_TYPES):
        raise StoreError(f"{path}: calibration is {_shown(value)}; expected {expected}")
    for key, wanted in _CALIBRATION_TYPES.items():
        item = value[key]
        right = _is_int(item) if wanted is int else isinstance(item, wanted) or (wanted is float and _is_int(item))
        if not right or (wanted is not str and not 0 <= item <= _ID_MASK) or (wanted is float and item != item):
            raise StoreError(f"{path}: calibration.{key} is {_shown(item)}; expected a non-negative {wanted.__name__}")
    if value["kind"] != kind or kind not in ("ivf", "hnsw"):
        raise StoreError(f"{path}: calibration.kind is {_shown(value['kind'])}; expected {kind!r}, the index kind")
    if not 1 <= value["value"] <= 1 << 20:
        raise StoreError(f"{path}: calibration.value is {value['value']}; expected an integer from 1 to {1 << 20}")
    return Calibration(**{key: float(v) if _CALIBRATION_TYPES[key] is float else v for key, v in value.items()})


def _manifest_int(raw: dict[str, Any], key: str, path: Path, *, low: int, high: int) -> int:
    value = raw[key]
    if not _is_int(value) or not low <= value <= high:
        raise StoreError(f"{path}: {key} is {_shown(value)}; expected an integer from {low} to {high}")
    return value


def _manifest_name(raw: dict[str, Any], key: str, expected: str, path: Path) -> str:
    # only the name this generation's save writes: no folders, no '..', no absolute paths, no devices
    if raw[key] != expected:
        raise StoreError(f"{path}: {key} is {_shown(raw[key])}; expected {expected!r} (a file of this store's folder)")
    return expected


def _manifest_config(value: Any, path: Path) -> MemoryStoreConfig:
    from pydantic import ValidationError

    if not isinstance(value, dict):
        raise StoreError(f"{path}: config is {_shown(value)}; expected an object of memory-store options")
    try:
        return MemoryStoreConfig.model_validate(value)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in ("config", *first["loc"]))
        raise StoreError(f"{path}: {where}: {first['msg']}") from None


def _manifest_files(value: Any, used: list[str], path: Path) -> dict[str, _FileRecord]:
    """Exactly the files the manifest uses, each with its size and SHA-256: none can escape the checks."""
    if not isinstance(value, dict) or sorted(value) != sorted(used):
        found = f"lists {sorted(value)}" if isinstance(value, dict) else f"is {_shown(value)}"
        raise StoreError(f"{path}: files {found}; expected a record for each of {used} and nothing else")
    records = {}
    for name in used:
        record = value[name]
        size = record.get("bytes") if isinstance(record, dict) else None
        digest = record.get("sha256") if isinstance(record, dict) else None
        if not _is_int(size) or size < 0 or not isinstance(digest, str):
            raise StoreError(
                f'{path}: files.{name} is {_shown(record)}; expected {{"bytes": <size>, "sha256": <hex digest>}}'
            )
        records[name] = _FileRecord(size, digest)
    return records


def _shown(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _check_file(path: Path, record: _FileRecord, verify: bool) -> None:
    size = _check_regular(path).st_size
    if size != record.bytes:
        raise StoreError(f"{path}: {size} bytes, the manifest recorded {record.bytes}: the file is damaged")
    if verify and _sha256(path) != record.sha256:
        raise StoreError(f"{path}: checksum mismatch: the file is damaged or was changed outside omnimm")


def _read_memories(path: Path) -> dict[int, Memory]:
    memories: dict[int, Memory] = {}
    with _open_regular(path) as handle:
        for number, line in enumerate(handle, 1):
            where = f"{path}:{number}"
            if not line.endswith(b"\n"):
                raise StoreError(f"{where}: the last record has no line end: the file is truncated")
            memory = _memory_record(_parse_json(line, where), where)
            if memory.id in memories:
                raise StoreError(f"{where}: id {memory.id} repeats an earlier line; expected one record per id")
            memories[memory.id] = memory
    return memories


def _memory_record(row: Any, where: str) -> Memory:
    if not isinstance(row, dict):
        raise StoreError(f"{where}: not a memory record (expected an object with id, text, meta)")
    memory_id, text, meta = row.get("id"), row.get("text"), row.get("meta") or {}
    if not _is_int(memory_id) or not 0 <= memory_id <= _ID_MASK:
        raise StoreError(f"{where}: id is {_shown(memory_id)}; expected an integer from 0 to 2**63 - 1")
    if not isinstance(text, str):
        raise StoreError(f"{where}: text is {_shown(text)}; expected a string")
    if not isinstance(meta, dict):
        raise StoreError(f"{where}: meta is {_shown(meta)}; expected an object")
    return Memory(memory_id, text, meta)


def _check_index_header(path: Path, manifest: _Manifest) -> None:
    """faiss allocates what a file's header claims before reading it: the claims must fit the manifest and the file."""
    with _open_regular(path) as handle:
        header = handle.read(16)
    size = path.stat().st_size
    if len(header) < 16:
        raise StoreError(f"{path}: faiss cannot read this index ({size} bytes, shorter than a header: truncated)")
    dim, total = struct.unpack("<iq", header[4:16])
    if dim != manifest.dim:
        raise StoreError(f"{path}: index dimension {dim}, manifest says {manifest.dim}")
    kind = manifest.kind
    if total < manifest.count if kind == "hnsw" else total != manifest.count:
        raise StoreError(f"{path}: the index holds {total} vectors but the manifest counts {manifest.count} memories")
    if total * dim * (2 if kind == "hnsw" else 4) > size:  # HNSW vectors may be 16-bit
        raise StoreError(
            f"{path}: faiss cannot read this index ({total} vectors of dimension {dim} do not fit in {size} bytes: "
            f"the file is truncated)"
        )


def _read_index(path: Path) -> Any:
    try:
        return _faiss().read_index(str(path))
    except MemoryError:
        raise StoreError(f"{path}: faiss cannot read this index (it claims more memory than there is)") from None
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise StoreError(f"{path}: faiss cannot read this index ({first_line})") from None


def _index_kind(index: Any) -> str | None:
    """Which of our three layouts a loaded faiss index is (`IDMap2,Flat`, `IDMap2,HNSW`, `IVF,Flat`), if any."""
    faiss = _faiss()
    if isinstance(index, faiss.IndexIVFFlat):
        return "ivf"
    if isinstance(index, faiss.IndexIDMap2):
        inner = faiss.downcast_index(index.index)
        if isinstance(inner, faiss.IndexHNSWFlat) or (
            isinstance(inner, faiss.IndexHNSWSQ) and _hnsw_vectors(inner) is not None
        ):
            return "hnsw"
        if isinstance(inner, faiss.IndexFlat):
            return "flat"
    return None


def _hnsw_vectors(inner: Any) -> str | None:
    """`hnsw_vectors` of a loaded HNSW index (None: a scalar quantizer the store does not make)."""
    faiss = _faiss()
    if isinstance(inner, faiss.IndexHNSWFlat):
        return "float32"
    quantizer = faiss.downcast_index(inner.storage).sq.qtype
    return {faiss.ScalarQuantizer.QT_fp16: "float16", faiss.ScalarQuantizer.QT_bf16: "bfloat16"}.get(quantizer)


def _index_ids(index: Any) -> set[int]:
    faiss = _faiss()
    if isinstance(index, faiss.IndexIDMap2):
        return set(faiss.vector_to_array(index.id_map).tolist())
    lists = index.invlists
    found: set[int] = set()
    for number in range(index.nlist):
        size = lists.list_size(number)
        if size:
            found.update(faiss.rev_swig_ptr(lists.get_ids(number), size).tolist())
    return found
