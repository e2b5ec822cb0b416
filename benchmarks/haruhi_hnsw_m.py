"""haruhi/memory's HNSW graph: recall@10 and single-query latency by `ef_search`, for several `hnsw_m`.

    cd benchmarks && python haruhi_hnsw_m.py [N]        # N real MiniLM vectors (default 100000)

The benchmark's real vectors and held-out real queries (as bench_haruhi_store builds them), one faiss HNSW index per
M (ef_construction 200, as the store builds it), searched one query at a time on one thread; recall against exact
search; every setting is timed once per round in interleaved rounds, and the median round is kept. Prints a table
and writes benchmarks/results/haruhi_hnsw_m-<N>.json. It is how the store's default M was chosen: the M whose curve
reaches a recall in the least time.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from bench_haruhi_store import datasets

M_VALUES = (12, 16, 24, 32)
EF_VALUES = (32, 48, 64, 80, 96, 128)


def main(n: int, rounds: int = 3) -> None:
    import faiss

    from omnimm.files import atomic_write_text

    queries, pool, _ = datasets([n], 1000)
    vectors = np.ascontiguousarray(pool[:n])
    _, truth = faiss.knn(queries, vectors, 10, metric=faiss.METRIC_INNER_PRODUCT)
    indexes, builds = {}, {}
    for m in M_VALUES:
        index = faiss.index_factory(vectors.shape[1], f"HNSW{m}", faiss.METRIC_INNER_PRODUCT)
        faiss.downcast_index(index).hnsw.efConstruction = 200
        started = time.perf_counter()
        index.add(vectors)
        indexes[m], builds[m] = index, time.perf_counter() - started
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # single queries, as the store runs them
    times: dict[tuple[int, int], list[float]] = {}
    recalls: dict[tuple[int, int], float] = {}
    # every setting once per round, the rounds one after another: a slow spell of the machine hits all alike
    for _ in range(rounds):
        for ef in EF_VALUES:
            params = faiss.SearchParametersHNSW(efSearch=ef)
            for m, index in indexes.items():
                for query in queries[:20]:
                    index.search(query[None], 10, params=params)
                found, started = [], time.perf_counter()
                for query in queries:
                    found.append(index.search(query[None], 10, params=params)[1][0])
                times.setdefault((m, ef), []).append((time.perf_counter() - started) / len(queries) * 1000)
                recalls[(m, ef)] = float(
                    np.mean([len(set(f.tolist()) & set(t.tolist())) / 10 for f, t in zip(found, truth, strict=True)])
                )
    faiss.omp_set_num_threads(threads)
    rows = []
    for m in M_VALUES:
        for ef in EF_VALUES:
            ms = float(np.median(times[(m, ef)]))
            rows.append({"hnsw_m": m, "ef_search": ef, "recall_at_10": recalls[(m, ef)], "ms": ms,
                         "ms_rounds": times[(m, ef)], "build_seconds": builds[m]})  # fmt: skip
            print(f"M {m:>2}  ef_search {ef:>3}  recall@10 {recalls[(m, ef)]:.4f}  {ms:.3f} ms (median of {rounds})")
    out = Path(__file__).resolve().parent / "results" / f"haruhi_hnsw_m-{n}.json"
    result = {"n": n, "ef_construction": 200, "rounds": rounds, "rows": rows}
    atomic_write_text(out, json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
