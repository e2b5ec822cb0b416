"""haruhi/memory vs Chroma: single-query QPS, p50/p99 latency, recall@10, build time and bytes per memory."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import itertools
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CACHE = Path(os.environ.get("OMNIMM_BENCH_CACHE", Path.home() / ".cache" / "omnimm" / "bench"))
K = 10
SIZES = [25_000, 100_000, 1_000_000]
QUICK_SIZES = [25_000]
CHROMA_UP_TO = int(os.environ.get("OMNIMM_BENCH_CHROMA_UP_TO", 1_000_000))
QUERY_POOL = 1_000  # real vectors held out of every store
QUERIES = 1_000
QUICK_QUERIES = 300
WARMUP = 20
ROUNDS = 5  # ours and Chroma alternate, round by round
DERIVE_NEIGHBOURS = 10
# measured besides the default: a kind, or hnsw-<storage> for an HNSW index with other `hnsw_vectors`
KINDS = os.environ.get("OMNIMM_BENCH_KINDS", "flat,hnsw-float32,ivf").split(",")


# -- real vectors ---------------------------------------------------------------------------------------------------


def corpus() -> list[str]:
    """Unique sentences of the shared corpora: STS-B pairs, PolitiFact++ articles split into sentences,
    tinyshakespeare speech lines and windows of 2 and 3 lines (what a character store holds)."""
    texts: list[str] = []
    for name in ("sts-train.csv", "sts-dev.csv", "sts-test.csv"):
        for line in (SHARED / "stsb" / name).read_text(encoding="utf-8").splitlines():
            texts += line.split("\t")[5:7]
    for name in ("HR", "HF", "MR", "MF"):
        items = json.loads((SHARED / "politifact_pp" / f"{name}.json").read_text(encoding="utf-8")).values()
        for item in items:
            for key in ("title", "description", "text"):
                texts += re.split(r"(?<=[.!?])\s+|\n+", item.get(key) or "")
    lines = [line.strip() for line in (SHARED / "tinyshakespeare" / "input.txt").read_text().splitlines()]
    speech = [line for line in lines if line and not line.endswith(":")]
    texts += speech + [f"{a} {b}" for a, b in itertools.pairwise(speech)]
    texts += [" ".join(speech[i : i + 3]) for i in range(0, len(speech) - 2, 2)]
    seen: set[str] = set()
    unique = []
    for text in (" ".join(t.split()) for t in texts):
        if len(text) >= 12 and len(text.split()) >= 3 and text not in seen:
            seen.add(text)
            unique.append(text)
    return unique


def real_vectors() -> np.ndarray:
    """MiniLM embeddings of `corpus()` (unit length), cached under CACHE (about 170 MB, not in the repository)."""
    texts = corpus()
    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    path = CACHE / f"minilm-{key}.npy"
    if path.is_file():
        return np.load(path, allow_pickle=False)
    from omnimm.registry import encoders

    encoder = encoders.build({"name": "hf/sentence-encoder"})
    order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths per batch: far less padding
    vectors = np.empty((len(texts), encoder.out_dim), dtype=np.float32)
    for start in range(0, len(order), 4096):
        rows = order[start : start + 4096]
        vectors[rows] = encoder.encode([texts[i] for i in rows], batch_size=128)
        print(f"embedded {start + len(rows):,} / {len(texts):,}", flush=True)
    _save_npy(path, vectors)
    return vectors


def neighbour_table(vectors: np.ndarray, key: str) -> np.ndarray:
    """Each real vector's 10 nearest other real vectors (exact), cached beside the embeddings."""
    import faiss

    path = CACHE / f"neighbours-{key}.npy"
    if path.is_file():
        return np.load(path, allow_pickle=False)
    _, found = faiss.knn(vectors, vectors, DERIVE_NEIGHBOURS + 1, metric=faiss.METRIC_INNER_PRODUCT)
    table = found[:, 1:].astype(np.int32)
    _save_npy(path, table)
    return table


def derived_vectors(real: np.ndarray, count: int, key: str, seed: int = 0) -> np.ndarray:
    """`count` real-derived unit vectors: the real ones first, then for random real vectors a: normalise((1 - t) a +
    t b + e), b one of a's 10 nearest real neighbours, t ~ U(0, 0.5), e ~ N(0, (0.05^2 / dim) I) (norm about 0.05)."""
    if count <= len(real):
        return real[:count]
    table = neighbour_table(real, key)
    rng = np.random.default_rng(seed)
    extra = count - len(real)
    out = np.empty((count, real.shape[1]), dtype=np.float32)
    out[: len(real)] = real
    for start in range(0, extra, 100_000):
        size = min(100_000, extra - start)
        a = rng.integers(0, len(real), size)
        b = table[a, rng.integers(0, DERIVE_NEIGHBOURS, size)]
        t = rng.uniform(0, 0.5, (size, 1)).astype(np.float32)
        block = (1 - t) * real[a] + t * real[b]
        block += rng.standard_normal(block.shape, dtype=np.float32) * np.float32(0.05 / np.sqrt(real.shape[1]))
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[len(real) + start : len(real) + start + size] = block
    return out


def _save_npy(path: Path, array: np.ndarray) -> None:
    import io

    from omnimm.files import atomic_write_bytes

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    atomic_write_bytes(path, buffer.getvalue())


def datasets(sizes: list[int], queries: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(held-out real queries, the store pool, cache key): queries are real vectors that no store holds."""
    real = real_vectors()
    order = np.random.default_rng(0).permutation(len(real))
    held_out = real[order[:QUERY_POOL]][:queries]
    pool = np.ascontiguousarray(real[order[QUERY_POOL:]])
    key = hashlib.sha256(pool[:1000].tobytes()).hexdigest()[:16]
    return held_out, pool, key


# -- measuring --------------------------------------------------------------------------------------------------------


def latencies(search: Any, queries: np.ndarray, warmup: int = WARMUP) -> tuple[np.ndarray, list[Any]]:
    """Each query's latency in ms (after `warmup` untimed queries) and its answer."""
    for query in queries[:warmup]:
        search(query)
    times, answers = [], []
    for query in queries:
        started = time.perf_counter()
        answers.append(search(query))
        times.append(time.perf_counter() - started)
    return np.asarray(times) * 1000, answers


def alternating(search: Any, reference: Any | None, queries: np.ndarray) -> tuple[np.ndarray, list[Any], np.ndarray]:
    """`search` and `reference` (Chroma) timed in ROUNDS alternating rounds over the same queries: a slow spell of
    the machine (seen here: 2x on the same exact search an hour apart) then falls on both, and their ratio holds.
    Returns our latencies (every round), our answers (first round) and the reference's latencies."""
    ours, theirs, answers = [], [], None
    for _ in range(ROUNDS):
        ms, found = latencies(search, queries)
        ours.append(ms)
        answers = answers if answers is not None else found
        if reference is not None:
            theirs.append(latencies(reference, queries)[0])
    return np.concatenate(ours), answers or [], np.concatenate(theirs) if theirs else np.zeros(0)


def round_ratios(ours: np.ndarray, theirs: np.ndarray) -> list[float]:
    """Our QPS over the reference's in each alternating round: how far the machine's drift moves the ratio."""
    return [float(t.mean() / o.mean()) for o, t in zip(np.split(ours, ROUNDS), np.split(theirs, ROUNDS), strict=True)]


def timing(ms: np.ndarray) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "qps": 1000 / ms.mean()}


def recall(found: list[list[int]], truth: Any) -> float:
    """Mean recall@k of `found` against the exact ids `truth` (one row per query)."""
    return float(np.mean([len(set(f) & set(t.tolist())) / len(t) for f, t in zip(found, truth, strict=True)]))


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def measure_ours(
    label: str,
    config: Any,
    vectors: np.ndarray,
    queries: np.ndarray,
    truth: np.ndarray,
    single: int,
    match: float | None = None,
    reference: Any | None = None,
) -> dict[str, Any]:
    """One store built from `vectors`, timed alternately with `reference` (Chroma's search); with `match` (Chroma's
    recall@10), also the same index at the smallest setting of the tuning ladder that reaches it on these queries
    (a matched-recall comparison)."""
    import faiss

    from omnimm_plugins.haruhi.store import FaissMemory

    ids = list(range(len(vectors)))
    store = FaissMemory(config)
    threads_before = faiss.omp_get_max_threads()
    started = time.perf_counter()
    store.add(vectors, [f"memory {i}" for i in ids], ids=ids)
    build = time.perf_counter() - started
    ms, found, reference_ms = alternating(
        lambda q, s=store: [h.id for h in s.search(q, K)[0]], reference, queries[:single]
    )
    started = time.perf_counter()
    batch = store.search_batch(queries, K)
    batch_qps = len(queries) / (time.perf_counter() - started)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        store.save(folder)
        save = time.perf_counter() - started
        size = folder_bytes(Path(folder))
    calibration = store.calibration
    setting = (
        f"{calibration.parameter} {calibration.value} (tuned: held-out recall {calibration.recall:.3f})"
        if calibration
        else "exact"
        if store.kind == "flat"
        else ""
    ) + (f", {store.config.hnsw_vectors} vectors" if store.kind == "hnsw" else "")
    row = {
        "label": label,
        "kind": store.kind,
        "setting": setting,
        "build_seconds": build,
        "save_seconds": save,
        **timing(ms),
        "reference_timing": timing(reference_ms) if len(reference_ms) else None,
        "round_ratios": round_ratios(ms, reference_ms) if len(reference_ms) else None,
        "batch_qps": batch_qps,
        "recall_at_10": recall(found, truth[:single]),
        "batch_recall_at_10": recall([[h.id for h in row] for row in batch], truth),
        "bytes_per_memory": size / len(vectors),
        "calibration": None if calibration is None else dataclasses.asdict(calibration),
        "hnsw_vectors": store.config.hnsw_vectors if store.kind == "hnsw" else "float32",
        "threads_restored": faiss.omp_get_max_threads() == threads_before,
    }
    if match is not None and calibration is not None and row["recall_at_10"] < match:
        row["matched"] = measure_matched(store, queries, truth, match, reference)
    del store
    gc.collect()
    return row


def measure_matched(
    store: Any, queries: np.ndarray, truth: np.ndarray, match: float, reference: Any | None
) -> dict[str, Any]:
    """Single-query speed of `store`'s index at the smallest ladder setting whose recall@10 here reaches `match`."""
    from omnimm_plugins.haruhi import store as module

    parameter = store.calibration.parameter
    ladder = module._EF_LADDER if parameter == "ef_search" else module._NPROBE_LADDER
    for value in (v for v in ladder if v > store.calibration.value):
        store.config = store.config.model_copy(update={parameter: value})
        if recall([[h.id for h in row] for row in store.search_batch(queries, K)], truth) >= match:
            break
    ms, found, reference_ms = alternating(lambda q, s=store: [h.id for h in s.search(q, K)[0]], reference, queries)
    return {
        "setting": f"{parameter} {value}",
        **timing(ms),
        "reference_timing": timing(reference_ms) if len(reference_ms) else None,
        "round_ratios": round_ratios(ms, reference_ms) if len(reference_ms) else None,
        "recall_at_10": recall(found, truth),
    }


@contextlib.contextmanager
def chroma_store(vectors: np.ndarray) -> Iterator[tuple[Any, Any, dict[str, Any]]]:
    """Chroma in this process (PersistentClient in a temp folder, cosine space, its default HNSW), as ChatHaruhi uses
    it: added in batches of its maximum size. Yields (collection, one-query search, build facts); the collection
    stays open so that its queries can alternate with ours."""
    import chromadb

    with tempfile.TemporaryDirectory() as folder:
        client = chromadb.PersistentClient(path=folder)
        collection = client.create_collection("bench", configuration={"hnsw": {"space": "cosine"}})
        batch = client.get_max_batch_size()
        started = time.perf_counter()
        for start in range(0, len(vectors), batch):
            part = vectors[start : start + batch]
            collection.add(
                ids=[str(i) for i in range(start, start + len(part))],
                embeddings=part,
                documents=[f"memory {i}" for i in range(start, start + len(part))],
            )
        build = time.perf_counter() - started

        def search(query: np.ndarray) -> list[int]:  # one embedding at a time, with documents and distances
            answer = collection.query(query_embeddings=query[None], n_results=K, include=["documents", "distances"])
            return [int(i) for i in answer["ids"][0]]

        hnsw = collection.configuration["hnsw"]
        facts = {
            "label": f"Chroma {chromadb.__version__}",
            "kind": "hnsw",
            "setting": f"M {hnsw['max_neighbors']}, ef_construction {hnsw['ef_construction']}, "
            f"ef_search {hnsw['ef_search']}",
            "build_seconds": build,
            "bytes_per_memory": folder_bytes(Path(folder)) / len(vectors),
        }
        yield collection, search, facts
    gc.collect()  # the client and its index go with this frame


def measure_chroma(collection: Any, search: Any, facts: dict[str, Any], queries: np.ndarray, truth: np.ndarray) -> dict:
    """Chroma's recall and its batch speed (its single-query speed is taken beside each of our stores)."""
    ms, found = latencies(search, queries)
    started = time.perf_counter()
    answer = collection.query(query_embeddings=queries, n_results=K, include=["documents", "distances"])
    batch_qps = len(queries) / (time.perf_counter() - started)
    batch_found = [[int(i) for i in row] for row in answer["ids"]]
    return {
        **facts,
        **timing(ms),
        "batch_qps": batch_qps,
        "recall_at_10": recall(found, truth),
        "batch_recall_at_10": recall(batch_found, truth),
    }


# -- the suite --------------------------------------------------------------------------------------------------------


def bench_size(n: int, pool: np.ndarray, queries: np.ndarray, key: str, chroma: bool) -> list[dict[str, Any]]:
    import faiss

    from omnimm_plugins.haruhi.configs import MemoryStoreConfig

    vectors = derived_vectors(pool, n, key) if n > len(pool) else pool[:n]
    _, truth = faiss.knn(queries, vectors, K, metric=faiss.METRIC_INNER_PRODUCT)
    flat_queries = min(len(queries), max(100, int(2e8 / n)))  # exact search at 1M is ~50 ms a query
    with contextlib.ExitStack() as stack:
        reference, search = None, None
        if chroma:
            collection, search, facts = stack.enter_context(chroma_store(vectors))
            reference = measure_chroma(collection, search, facts, queries, truth)
        match = reference["recall_at_10"] if reference else None
        default = measure_ours("default", MemoryStoreConfig(), vectors, queries, truth, len(queries), match, search)
        measured = [default]
        if "matched" in default:
            matched = default.pop("matched")
            label = f"default index at Chroma's recall ({matched['setting']}, chosen on these queries)"
            measured.append({**default, **matched, "label": label, "batch_qps": None, "batch_recall_at_10": None})
        for other in KINDS:
            kind, _, storage = other.partition("-")
            if kind != default["kind"] or (storage and storage != default["hnsw_vectors"]):
                config = MemoryStoreConfig(index=kind, **({"hnsw_vectors": storage} if storage else {}))
                single = flat_queries if kind == "flat" else len(queries)
                measured.append(measure_ours(other, config, vectors, queries, truth, single, reference=search))
    rows = []
    for result in measured:
        label = result["label"] + ("" if result["label"] == result["kind"] else f" ({result['kind']})")
        notes = (
            f"{result['setting']}; recall@10 {result['recall_at_10']:.3f}"
            + (f" vs {reference['recall_at_10']:.3f}" if reference else "")
            + f"; p50/p99 {result['p50_ms']:.3g}/{result['p99_ms']:.3g} ms"
            + (
                f" vs {result['reference_timing']['p50_ms']:.3g}/{result['reference_timing']['p99_ms']:.3g}"
                if reference
                else ""
            )
            + (
                f"; ratio by round {min(result['round_ratios']):.2f}-{max(result['round_ratios']):.2f}x"
                if reference
                else ""
            )
            + (f"; batch {result['batch_qps']:,.0f} QPS" if result["batch_qps"] else "")
            + f"; build {result['build_seconds']:.1f} s"
            + (f" vs {reference['build_seconds']:.1f}" if reference else "")
            + f"; {result['bytes_per_memory']:,.0f} B/memory"
            + (f" vs {reference['bytes_per_memory']:,.0f}" if reference else "")
        )
        rows.append(
            {
                "benchmark": f"single-query QPS, {n:,} memories x {vectors.shape[1]}-d, k={K}",
                "ours_label": f"haruhi/memory {label}",
                "reference_label": reference["label"] if reference else "Chroma (not run)",
                "ours": result["qps"],
                # Chroma's single-query QPS timed in the rounds alternating with this store's
                "reference": result["reference_timing"]["qps"] if reference else None,
                "ratio": result["qps"] / result["reference_timing"]["qps"] if reference else None,
                "unit": "QPS",
                "notes": notes,
                "memories": n,
                **result,
                "chroma": reference,
            }
        )
    return rows


RESULTS = Path(__file__).resolve().parent / "results" / "haruhi_store.json"


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Every size (or those in OMNIMM_BENCH_SIZES, e.g. `100000,1000000`: the other sizes' rows are kept from the
    last results file, each row carrying its own date)."""
    chosen = os.environ.get("OMNIMM_BENCH_SIZES")
    sizes = [int(n) for n in chosen.split(",")] if chosen else QUICK_SIZES if quick else SIZES
    queries, pool, key = datasets(sizes, QUICK_QUERIES if quick else QUERIES)
    rows = []
    for n in sizes:
        chroma = n <= CHROMA_UP_TO
        measured = bench_size(n, pool, queries, key, chroma)
        rows += [{**row, "date": time.strftime("%Y-%m-%d"), "queries": len(queries)} for row in measured]
        print(f"measured {n:,} memories", flush=True)
    if chosen and RESULTS.is_file():
        kept = [row for row in json.loads(RESULTS.read_text())["rows"] if row["memories"] not in sizes]
        rows = sorted(kept + rows, key=lambda row: row["memories"])  # stable: each size keeps its row order
    return rows


if __name__ == "__main__":
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="25k memories, 300 queries")
    args = parser.parse_args()
    sys.argv = [sys.argv[0], "haruhi_store"] + (["--quick"] if args.quick else [])
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run import main

    main()
