"""haruhi/memory's HNSW graph: recall@10 and single-query latency by `ef_search`, for several `hnsw_m`; with
`--vectors`, for each `hnsw_vectors` storage at the default M; with `--order`, for the graph as built and renumbered
breadth-first (what the store does after a build); with `--pages`, for the renumbered graph on 4 kB and on 2 MB pages
(what the store asks Linux for after an add or a load).

    cd benchmarks && python haruhi_hnsw_m.py [N]             # N real MiniLM vectors (default 100000)
    cd benchmarks && python haruhi_hnsw_m.py --vectors [N]   # float32, float16 and bfloat16 storage, M 32
    cd benchmarks && python haruhi_hnsw_m.py --order [N]     # insertion vs breadth-first order, M 32, bfloat16
    cd benchmarks && python haruhi_hnsw_m.py --pages [N]     # 4 kB vs 2 MB pages, M 32, bfloat16, breadth-first

The benchmark's real vectors and held-out real queries (as bench_haruhi_store builds them; past the real pool, its
real-derived vectors), one faiss HNSW index per variant (ef_construction 200, as the store builds it), searched one
query at a time on one thread; recall against exact float32 search; every setting is timed once per round in
interleaved rounds, and the median round is kept. Prints a table and writes benchmarks/results/haruhi_hnsw_m-<N>.json
(haruhi_hnsw_vectors-<N>.json, haruhi_hnsw_order-<N>.json, haruhi_hnsw_pages-<N>.json). It is how the store's default
M was chosen (the M whose curve reaches a recall in the least time), how storages compare, and what the breadth-first
numbering and huge pages gain. Every variant searches its own fresh copy of its graph, so that none is timed in memory
laid out differently.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from bench_haruhi_store import datasets, derived_vectors

M_VALUES = (12, 16, 24, 32)
EF_VALUES = (32, 40, 48, 56, 64, 80, 96, 128)
STORAGE = {"float32": "", "float16": ",SQfp16", "bfloat16": ",SQbf16"}  # as the store builds them


def main(n: int, rounds: int = 3, *, mode: str = "m") -> None:
    import faiss

    from omnimm.files import atomic_write_text
    from omnimm_plugins.haruhi.store import _back_with_huge_pages, _order_for_locality

    queries, pool, key = datasets([n], 1000)
    vectors = derived_vectors(pool, n, key) if n > len(pool) else np.ascontiguousarray(pool[:n])
    _, truth = faiss.knn(queries, vectors, 10, metric=faiss.METRIC_INNER_PRODUCT)
    variants = {  # (hnsw_m, hnsw_vectors, order, pages)
        "m": [(m, "float32", "insertion", "4 kB") for m in M_VALUES],
        "vectors": [(32, kind, "insertion", "4 kB") for kind in STORAGE],
        "order": [(32, "bfloat16", order, "4 kB") for order in ("insertion", "breadth-first")],
        "pages": [(32, "bfloat16", "breadth-first", pages) for pages in ("4 kB", "2 MB")],
    }[mode]
    indexes, builds, prepares = {}, {}, {}
    graph, graph_of = None, None
    for variant in variants:
        m, kind, order, pages = variant
        if graph_of != (m, kind):  # variants of one graph come together: one graph in memory at a time
            index = faiss.index_factory(vectors.shape[1], f"IDMap2,HNSW{m}{STORAGE[kind]}", faiss.METRIC_INNER_PRODUCT)
            faiss.downcast_index(index.index).hnsw.efConstruction = 200
            started = time.perf_counter()
            index.add_with_ids(vectors, np.arange(n, dtype=np.int64))
            graph, graph_of, built_in = faiss.serialize_index(index), (m, kind), time.perf_counter() - started
            del index
        index = faiss.deserialize_index(graph)
        started = time.perf_counter()
        if order == "breadth-first":
            _order_for_locality(index)
        if pages == "2 MB" and not _back_with_huge_pages(index):
            sys.exit("huge pages are not available here (Linux with transparent huge pages not 'never')")
        indexes[variant], builds[variant], prepares[variant] = index, built_in, time.perf_counter() - started
    del graph
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # single queries, as the store runs them
    times: dict[tuple[tuple[int, str, str, str], int], list[float]] = {}
    recalls: dict[tuple[tuple[int, str, str, str], int], float] = {}
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
        m, kind, order, pages = variant
        for ef in EF_VALUES:
            ms, recall = float(np.median(times[(variant, ef)])), recalls[(variant, ef)]
            rows.append({"hnsw_m": m, "hnsw_vectors": kind, "order": order, "pages": pages, "ef_search": ef,
                         "recall_at_10": recall, "ms": ms, "ms_rounds": times[(variant, ef)],
                         "build_seconds": builds[variant], "prepare_seconds": prepares[variant]})  # fmt: skip
            print(
                f"M {m:>2}  {kind:<8}  {order:<13}  {pages:<4}  ef_search {ef:>3}  recall@10 {recall:.4f}  {ms:.3f} ms "
                f"(median of {rounds})"
            )
    name = f"haruhi_hnsw_{mode}"
    out = Path(__file__).resolve().parent / "results" / f"{name}-{n}.json"
    result = {"n": n, "ef_construction": 200, "rounds": rounds, "rows": rows}
    atomic_write_text(out, json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    modes = {"--vectors": "vectors", "--order": "order", "--pages": "pages"}
    arguments = [a for a in sys.argv[1:] if a not in modes]
    chosen = [modes[a] for a in sys.argv[1:] if a in modes]
    main(int(arguments[0]) if arguments else 100_000, mode=chosen[0] if chosen else "m")
