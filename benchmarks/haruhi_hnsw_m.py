"""haruhi/memory's HNSW graph: recall@10 and single-query latency by `ef_search`, for several `hnsw_m` or, with
`--vectors`, for each `hnsw_vectors` storage at the default M.

    cd benchmarks && python haruhi_hnsw_m.py [N]             # N real MiniLM vectors (default 100000)
    cd benchmarks && python haruhi_hnsw_m.py --vectors [N]   # float32, float16 and bfloat16 storage, M 32

The benchmark's real vectors and held-out real queries (as bench_haruhi_store builds them), one faiss HNSW index per
variant (ef_construction 200, as the store builds it), searched one query at a time on one thread; recall against
exact float32 search; every setting is timed once per round in interleaved rounds, and the median round is kept.
Prints a table and writes benchmarks/results/haruhi_hnsw_m-<N>.json (haruhi_hnsw_vectors-<N>.json). It is how the
store's default M was chosen (the M whose curve reaches a recall in the least time) and how storages compare.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from bench_haruhi_store import datasets

M_VALUES = (12, 16, 24, 32)
EF_VALUES = (32, 40, 48, 56, 64, 80, 96, 128)
STORAGE = {"float32": "", "float16": ",SQfp16", "bfloat16": ",SQbf16"}  # as the store builds them


def main(n: int, rounds: int = 3, *, vectors_mode: bool = False) -> None:
    import faiss

    from omnimm.files import atomic_write_text

    queries, pool, _ = datasets([n], 1000)
    vectors = np.ascontiguousarray(pool[:n])
    _, truth = faiss.knn(queries, vectors, 10, metric=faiss.METRIC_INNER_PRODUCT)
    variants = [(32, kind) for kind in STORAGE] if vectors_mode else [(m, "float32") for m in M_VALUES]
    indexes, builds = {}, {}
    for variant in variants:
        m, kind = variant
        index = faiss.index_factory(vectors.shape[1], f"HNSW{m}{STORAGE[kind]}", faiss.METRIC_INNER_PRODUCT)
        faiss.downcast_index(index).hnsw.efConstruction = 200
        started = time.perf_counter()
        index.add(vectors)
        indexes[variant], builds[variant] = index, time.perf_counter() - started
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # single queries, as the store runs them
    times: dict[tuple[tuple[int, str], int], list[float]] = {}
    recalls: dict[tuple[tuple[int, str], int], float] = {}
    # every setting once per round, the rounds one after another: a slow spell of the machine hits all alike
    for _ in range(rounds):
        for ef in EF_VALUES:
            params = faiss.SearchParametersHNSW(efSearch=ef)
            for variant, index in indexes.items():
                for query in queries[:20]:
                    index.search(query[None], 10, params=params)
                found, started = [], time.perf_counter()
                for query in queries:
                    found.append(index.search(query[None], 10, params=params)[1][0])
                times.setdefault((variant, ef), []).append((time.perf_counter() - started) / len(queries) * 1000)
                recalls[(variant, ef)] = float(
                    np.mean([len(set(f.tolist()) & set(t.tolist())) / 10 for f, t in zip(found, truth, strict=True)])
                )
    faiss.omp_set_num_threads(threads)
    rows = []
    for variant in variants:
        m, kind = variant
        for ef in EF_VALUES:
            ms, recall = float(np.median(times[(variant, ef)])), recalls[(variant, ef)]
            rows.append({"hnsw_m": m, "hnsw_vectors": kind, "ef_search": ef, "recall_at_10": recall, "ms": ms,
                         "ms_rounds": times[(variant, ef)], "build_seconds": builds[variant]})  # fmt: skip
            print(f"M {m:>2}  {kind:<8}  ef_search {ef:>3}  recall@10 {recall:.4f}  {ms:.3f} ms (median of {rounds})")
    name = "haruhi_hnsw_vectors" if vectors_mode else "haruhi_hnsw_m"
    out = Path(__file__).resolve().parent / "results" / f"{name}-{n}.json"
    result = {"n": n, "ef_construction": 200, "rounds": rounds, "rows": rows}
    atomic_write_text(out, json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    arguments = [a for a in sys.argv[1:] if a != "--vectors"]
    main(int(arguments[0]) if arguments else 100_000, vectors_mode="--vectors" in sys.argv)
