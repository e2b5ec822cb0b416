"""How well haruhi/memory's build-time tuning sample stands in for real queries, by `ef_search`.

    python benchmarks/haruhi_tuning_probe.py N SIMILARITY EF_CONSTRUCTION   # e.g. 1000000 0.85 200

Builds an HNSW index (the store's default M) of the benchmark's N real or real-derived MiniLM vectors (as
bench_haruhi_store builds them) without 500 seeded sample vectors and their near-copies (cosine >= SIMILARITY), then
prints recall@10 against exact search for the real held-out queries and for the sample, at each `ef_search`, and
writes benchmarks/results/haruhi_tuning_probe-<N>.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from bench_haruhi_store import datasets, derived_vectors


def recall_at(index, queries: np.ndarray, truth: np.ndarray, ef: int) -> float:
    import faiss

    _, found = index.search(queries, 10, params=faiss.SearchParametersHNSW(efSearch=ef))
    return float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found.tolist(), truth.tolist(), strict=True)]))


def main(n: int, similarity: float, ef_construction: int) -> None:
    import faiss

    queries, pool, key = datasets([n], 1000)
    vectors = derived_vectors(pool, n, key) if n > len(pool) else pool[:n]
    seeds = np.random.default_rng(0).choice(n, 500, replace=False)
    near, nearest = faiss.knn(vectors[seeds], vectors, 512, metric=faiss.METRIC_INNER_PRODUCT)
    held = np.zeros(n, dtype=bool)
    held[seeds] = True
    held[nearest[near >= similarity]] = True
    from omnimm_plugins.haruhi.configs import MemoryStoreConfig

    m = MemoryStoreConfig().hnsw_m  # the store's default graph
    index = faiss.index_factory(vectors.shape[1], f"HNSW{m}", faiss.METRIC_INNER_PRODUCT)
    faiss.downcast_index(index).hnsw.efConstruction = ef_construction
    rest, sample = np.ascontiguousarray(vectors[~held]), np.ascontiguousarray(vectors[seeds])
    started = time.perf_counter()
    index.add(rest)
    build = time.perf_counter() - started
    _, real_truth = faiss.knn(queries, rest, 10, metric=faiss.METRIC_INNER_PRODUCT)
    _, sample_truth = faiss.knn(sample, rest, 10, metric=faiss.METRIC_INNER_PRODUCT)
    rows = []
    print(f"{n:,} vectors, {held.sum():,} held out, similarity {similarity}, M {m}, ef_construction {ef_construction}")
    print(f"{'ef_search':>9} {'real queries':>13} {'tuning sample':>14}")
    for ef in (16, 24, 32, 48, 56, 64, 80, 96, 128, 160, 256):
        row = {"ef_search": ef, "real": recall_at(index, queries, real_truth, ef)}
        row["sample"] = recall_at(index, sample, sample_truth, ef)
        rows.append(row)
        print(f"{ef:>9} {row['real']:>13.3f} {row['sample']:>14.3f}", flush=True)
    result = {"n": n, "similarity": similarity, "hnsw_m": m, "ef_construction": ef_construction, "build_seconds": build}
    result["rows"] = rows
    out = Path(__file__).resolve().parent / "results" / f"haruhi_tuning_probe-{n}.json"
    from omnimm.files import atomic_write_text

    atomic_write_text(out, json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main(int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]))
