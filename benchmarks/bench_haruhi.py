"""haruhi: retrieval quality on held-out lines of real characters, and memory-store latency at 10k / 100k / 1M.

Quality: for each character of tinyshakespeare, every line of 5+ words is held out in turn and must bring back its
scene (the window that keeps its neighbours); MiniLM dense retrieval vs BM25 (`bm25s`), with random order as the
floor. Speed: synthetic unit vectors (384-d, a mixture of 2,000 clusters so approximate indexes meet structure, as
with real embeddings); single-query latency p50/p99 and QPS of `haruhi/memory` (flat = exact, IVF and HNSW =
approximate) vs a plain numpy brute-force search per query (what ChatHaruhi-style naive stores do), recall@10 of the
approximate indexes against the exact answer, build time, and bytes per memory on disk.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SCRIPT = SHARED / "tinyshakespeare" / "input.txt"
CHARACTERS = ["ROMEO", "JULIET", "MENENIUS", "GLOUCESTER"]
DIM = 384
K = 10
QUERIES = 300


# -- quality --------------------------------------------------------------------------------------------------------


def bench_quality() -> list[dict[str, Any]]:
    from omnimm.registry import encoders
    from omnimm_plugins.haruhi.evaluate import (
        bm25_ranker,
        dense_ranker,
        evaluate_rankers,
        held_out_task,
        random_ranker,
    )
    from omnimm_plugins.haruhi.scripts import read_turns

    encoder = encoders.build({"name": "hf/sentence-encoder"})
    turns = read_turns(SCRIPT)
    rows = []
    for character in CHARACTERS:
        task = held_out_task(turns, character)
        result = evaluate_rankers(
            task, {"dense": dense_ranker(encoder), "bm25": bm25_ranker(), "random": random_ranker(seed=0)}
        )
        for k in (1, 5, 10):
            key = f"recall@{k}"
            dense, bm25, chance = result["dense"][key], result["bm25"][key], result["random"][key]
            rows.append(
                {
                    "benchmark": f"{key}, {character}: {result['queries']} held-out lines, {result['scenes']} scenes",
                    "ours_label": "MiniLM dense (haruhi default)",
                    "reference_label": "BM25",
                    "ours": dense,
                    "reference": bm25,
                    "ratio": dense / bm25 if bm25 else None,
                    "unit": "recall",
                    "notes": f"random order {chance:.3f}",
                    "random": chance,
                }
            )
    return rows


# -- speed ----------------------------------------------------------------------------------------------------------


def clustered(n: int, seed: int, centres: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((n, DIM), dtype=np.float32) * (0.6 / np.sqrt(DIM))  # same-cluster cosine ~0.7
    vectors = centres[rng.integers(0, len(centres), n)] + noise
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32, copy=False)


def numpy_search(matrix: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    scores = matrix @ query
    top = np.argpartition(-scores, k)[:k]
    return top[np.argsort(-scores[top])]


def latencies(search: Any, queries: np.ndarray) -> tuple[np.ndarray, list[Any]]:
    times, answers = [], []
    for query in queries:
        started = time.perf_counter()
        answers.append(search(query))
        times.append(time.perf_counter() - started)
    return np.asarray(times) * 1000, answers


def recall(found: list[list[int]], truth: list[np.ndarray]) -> float:
    return float(np.mean([len(set(f) & set(t.tolist())) / len(t) for f, t in zip(found, truth, strict=True)]))


def bench_size(n: int, kinds: list[str]) -> list[dict[str, Any]]:
    from omnimm_plugins.haruhi.configs import MemoryStoreConfig
    from omnimm_plugins.haruhi.store import FaissMemory

    centres = np.random.default_rng(0).standard_normal((2000, DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    matrix = clustered(n, 1, centres)
    queries = clustered(QUERIES, 2, centres)
    ids = list(range(n))
    texts = [f"memory {i}" for i in ids]

    reference_ms, truth = latencies(lambda q: numpy_search(matrix, q, K), queries)
    rows = []
    for kind in kinds:
        nlist = 1024 if n >= 1_000_000 else None
        store = FaissMemory(MemoryStoreConfig(index=kind, nlist=nlist, nprobe=16, ef_search=64))
        started = time.perf_counter()
        store.add(matrix, texts, ids=ids)
        build = time.perf_counter() - started
        ours_ms, hits = latencies(lambda q, s=store: s.search(q, K)[0], queries)
        found = [[h.id for h in row] for row in hits]
        started = time.perf_counter()
        store.search(queries, K)
        batch_qps = len(queries) / (time.perf_counter() - started)
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            store.save(folder)
            save = time.perf_counter() - started
            files = {p.name.split("-")[0]: p.stat().st_size for p in Path(folder).iterdir()}
            started = time.perf_counter()
            FaissMemory.load(folder)
            load = time.perf_counter() - started
        label = {"flat": "faiss flat (exact)", "ivf": "faiss IVF nprobe 16", "hnsw": "faiss HNSW32 efSearch 64"}[kind]
        p50, p99 = np.percentile(ours_ms, 50), np.percentile(ours_ms, 99)
        r50, r99 = np.percentile(reference_ms, 50), np.percentile(reference_ms, 99)
        notes = (
            f"p99 {p99:.3g} vs {r99:.3g} ms; QPS {1000 / ours_ms.mean():.0f} vs {1000 / reference_ms.mean():.0f} "
            f"(batched {batch_qps:.0f}); "
            f"recall@10 {recall(found, truth):.3f}; build {build:.1f} s; save {save:.1f} s, load {load:.1f} s; "
            f"index {files['index'] / n:.0f} B/memory, texts {files['memories'] / n:.0f} B/memory"
        )
        rows.append(
            {
                "benchmark": f"query latency p50, {n:,} memories x {DIM}-d, k={K}",
                "ours_label": f"haruhi/memory {label}",
                "reference_label": "numpy brute force per query",
                "ours": p50,
                "reference": r50,
                "ratio": p50 / r50,
                "unit": "ms",
                "notes": notes,
                "p99_ms": p99,
                "reference_p99_ms": r99,
                "qps": 1000 / ours_ms.mean(),
                "batch_qps": batch_qps,
                "reference_qps": 1000 / reference_ms.mean(),
                "recall_at_10": recall(found, truth),
                "build_seconds": build,
                "save_seconds": save,
                "load_seconds": load,
                "index_bytes_per_memory": files["index"] / n,
                "memories_bytes_per_memory": files["memories"] / n,
            }
        )
        del store
    return rows


def run(quick: bool = False) -> list[dict[str, Any]]:
    rows = bench_quality() if SCRIPT.is_file() else []
    sizes = [(10_000, ["flat", "ivf", "hnsw"]), (100_000, ["flat", "ivf", "hnsw"])]
    if not quick:
        sizes.append((1_000_000, ["flat", "ivf"]))  # HNSW at 1M takes tens of minutes to build on 2 cores
    for n, kinds in sizes:
        rows += bench_size(n, kinds)
    return rows
