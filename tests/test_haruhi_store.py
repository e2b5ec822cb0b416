"""haruhi/memory: the index kind chosen by size, recall tuning (checked by exact numpy search), threads, batches."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from omnimm import StoreError
from omnimm_plugins.haruhi import store as store_module
from omnimm_plugins.haruhi.configs import MemoryStoreConfig
from omnimm_plugins.haruhi.store import _EF_LADDER, _NPROBE_LADDER, FaissMemory, available_cores

faiss = pytest.importorskip("faiss")

DIM = 48  # random 48-d vectors have no structure to exploit: small HNSW graphs and few IVF probes miss neighbours


def unit(n: int, seed: int = 0) -> np.ndarray:
    matrix = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def exact_top(queries: np.ndarray, vectors: np.ndarray, k: int = 10) -> np.ndarray:
    """Row numbers of the k largest inner products, by numpy (the vectors' ids are their row numbers below)."""
    return np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]


def recall(store: FaissMemory, queries: np.ndarray, vectors: np.ndarray, k: int = 10) -> float:
    truth = exact_top(queries, vectors, k)
    found = store.search(queries, k)
    return float(np.mean([len({h.id for h in row} & set(t.tolist())) / k for row, t in zip(found, truth, strict=True)]))


def built(config: MemoryStoreConfig, vectors: np.ndarray) -> FaissMemory:
    store = FaissMemory(config)
    store.add(vectors, [f"memory {i}" for i in range(len(vectors))], ids=list(range(len(vectors))))
    return store


# a graph this sparse needs a long candidate list for recall 0.95 on random vectors: the tuning has work to do;
# float32 storage, so that searches visiting every node give numpy's answers (16-bit storage is tested below)
HNSW = {"index": "hnsw", "hnsw_m": 6, "ef_construction": 16, "hnsw_vectors": "float32"}
HNSW_BF16 = {**HNSW, "hnsw_vectors": "bfloat16"}
IVF = {"index": "ivf", "nlist": 64}


# -- the kind, by size ----------------------------------------------------------------------------------------------


def test_an_unset_index_is_flat_up_to_exact_up_to_then_switches_to_hnsw_keeping_every_memory():
    vectors = unit(300)
    store = FaissMemory(MemoryStoreConfig(exact_up_to=200, ef_search=4096, hnsw_vectors="float32"))
    assert store.kind is None
    store.add(vectors[:200], [f"m{i}" for i in range(200)], ids=list(range(200)))
    assert store.kind == "flat" and store.calibration is None
    store.add(vectors[200:], [f"m{i}" for i in range(200, 300)], ids=list(range(200, 300)))
    assert store.kind == "hnsw" and len(store) == 300
    assert isinstance(faiss.downcast_index(store._index.index), faiss.IndexHNSWFlat)
    assert store._index.ntotal == 300
    # ef_search 4096 visits the whole 300-node graph: the answers are numpy's
    queries = unit(20, seed=1)
    assert [[h.id for h in row] for row in store.search(queries, 10)] == exact_top(queries, vectors).tolist()


def test_a_large_first_add_is_hnsw_at_once_and_a_set_index_is_kept_whatever_the_size():
    assert built(MemoryStoreConfig(exact_up_to=100), unit(101)).kind == "hnsw"
    assert built(MemoryStoreConfig(exact_up_to=100), unit(100)).kind == "flat"
    assert built(MemoryStoreConfig(index="flat", exact_up_to=10), unit(400)).kind == "flat"
    assert built(MemoryStoreConfig(index="ivf", exact_up_to=10_000, nlist=8), unit(400)).kind == "ivf"


def test_the_chosen_kind_is_saved_and_a_config_asking_for_another_is_refused(tmp_path: Path):
    store = built(MemoryStoreConfig(exact_up_to=100, **{k: v for k, v in HNSW.items() if k != "index"}), unit(700))
    store.save(tmp_path / "s")
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["index_kind"] == "hnsw" and manifest["config"]["index"] is None
    assert FaissMemory.load(tmp_path / "s").kind == "hnsw"
    with pytest.raises(StoreError, match="holds a 'hnsw' index but the config asks for 'flat'"):
        FaissMemory.load(tmp_path / "s", config=MemoryStoreConfig(index="flat"))


# -- tuning for target_recall -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [HNSW, HNSW_BF16, IVF], ids=["hnsw", "hnsw-bfloat16", "ivf"])
def test_the_build_tunes_for_target_recall_and_fresh_queries_reach_it_by_numpy(options: dict):
    vectors = unit(4000)
    store = built(MemoryStoreConfig(target_recall=0.95, **options), vectors)
    found = store.calibration
    assert found is not None and found.kind == options["index"] and found.target_recall == 0.95
    assert found.recall >= 0.95 and found.k == 10 and found.queries == 500 and found.count == 4000
    ladder = _EF_LADDER if found.kind == "hnsw" else _NPROBE_LADDER
    assert found.value in ladder and found.value > ladder[0]  # the cheapest setting is not enough here
    # queries the store has never seen, scored by numpy: the tuned setting carries over (500 queries: +-0.01)
    measured = recall(store, unit(500, seed=7), vectors)
    assert measured >= 0.94, f"{found.parameter} {found.value}: recall {measured:.3f} on fresh queries"


@pytest.mark.parametrize("options", [HNSW, IVF], ids=["hnsw", "ivf"])
def test_calibrate_on_given_queries_picks_the_smallest_setting_that_reaches_the_target(options: dict):
    vectors, queries = unit(4000), unit(300, seed=3)
    store = built(MemoryStoreConfig(target_recall=0.9, **options), vectors)
    found = store.calibrate(queries)
    assert found is not None and found.queries == 300 and found.recall >= 0.9
    ladder = list(_EF_LADDER if found.kind == "hnsw" else _NPROBE_LADDER)
    parameter = found.parameter

    def recall_at(value: int) -> float:
        store.config = MemoryStoreConfig(target_recall=0.9, **options, **{parameter: value})
        return recall(store, queries, vectors)

    assert recall_at(found.value) == pytest.approx(found.recall, abs=1e-9)
    assert recall_at(found.value) >= 0.9
    assert recall_at(ladder[ladder.index(found.value) - 1]) < 0.9


def near_copies(originals: np.ndarray, copies: int, noise: float, seed: int = 0) -> np.ndarray:
    """Each original followed by `copies` slightly moved copies of it (overlapping windows, duplicated lines)."""
    rng = np.random.default_rng(seed)
    rows = np.repeat(originals, copies + 1, axis=0)
    moved = rows + rng.standard_normal(rows.shape).astype(np.float32) * noise / np.sqrt(rows.shape[1])
    moved[:: copies + 1] = originals
    return moved / np.linalg.norm(moved, axis=1, keepdims=True)


def test_tuning_holds_out_near_copies_so_its_estimate_holds_for_new_queries():
    # 1,000 texts, each stored 8 times (moved a little: overlapping windows, repeated lines); queries are new texts
    vectors, queries = near_copies(unit(1000), copies=7, noise=0.3), unit(500, seed=11)
    graph = {"index": "hnsw", "hnsw_m": 16, "ef_construction": 64}
    default = built(MemoryStoreConfig(target_recall=0.95, **graph), vectors)
    naive = built(MemoryStoreConfig(target_recall=0.95, tuning_similarity=1.0, **graph), vectors)  # copies stay in
    default_recall, naive_recall = recall(default, queries, vectors), recall(naive, queries, vectors)
    # a sample vector beside its own copies is easy to find: the naive estimate is far above what new queries get
    assert naive.calibration.recall >= 0.95 and naive_recall < 0.8
    # held out with its copies, a sample vector is searched as a new text is: the estimate about holds
    assert default.calibration.value > naive.calibration.value and default.calibration.queries < 500
    assert default_recall >= 0.9 and abs(default.calibration.recall - default_recall) < 0.06, default.calibration


def test_calibration_is_in_the_manifest_and_survives_save_and_load(tmp_path: Path):
    vectors = unit(3000)
    store = built(MemoryStoreConfig(target_recall=0.95, **HNSW), vectors)
    store.save(tmp_path / "s")
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["calibration"] == dataclasses.asdict(store.calibration)
    assert set(manifest["calibration"]) == {
        "kind",
        "value",
        "recall",
        "target_recall",
        "k",
        "queries",
        "count",
        "seconds",
    }
    loaded = FaissMemory.load(tmp_path / "s")
    assert loaded.calibration == store.calibration
    queries = unit(50, seed=2)
    assert [[h.id for h in r] for r in loaded.search(queries)] == [[h.id for h in r] for r in store.search(queries)]
    # adding less than a fifth to the loaded store keeps the saved tuning
    loaded.add(unit(100, seed=9), [f"new {i}" for i in range(100)])
    assert loaded.calibration == store.calibration


def test_the_store_is_tuned_again_once_it_has_grown_by_a_fifth():
    store = built(MemoryStoreConfig(target_recall=0.95, **HNSW), unit(2000))
    first = store.calibration
    assert first is not None and first.count == 2000
    store.add(unit(300, seed=1), [f"a{i}" for i in range(300)], ids=range(2000, 2300))  # +15%: kept
    assert store.calibration is first
    store.add(unit(300, seed=2), [f"b{i}" for i in range(300)], ids=range(2300, 2600))  # +30%: tuned again
    again = store.calibration
    # 75 held out (a quarter of the add); one with a near-copy already in the store may be left out
    assert again is not first and again.count == 2600 and 70 <= again.queries <= 75 and again.recall >= 0.95


def test_a_new_target_recall_is_tuned_for_on_the_next_add():
    store = built(MemoryStoreConfig(target_recall=0.8, **HNSW), unit(2000))
    low = store.calibration.value
    store.config = MemoryStoreConfig(target_recall=0.99, **HNSW)
    store.add(unit(400, seed=5), [f"x{i}" for i in range(400)])
    assert store.calibration.target_recall == 0.99 and store.calibration.value > low


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_calibrate_does_nothing_for_exact_search_or_a_set_parameter(kind: str):
    fixed = {"flat": {}, "ivf": {"nlist": 32, "nprobe": 3}, "hnsw": {"ef_search": 20}}[kind]
    store = built(MemoryStoreConfig(index=kind, **fixed), unit(2000))
    assert store.calibration is None and store.calibrate() is None and store.calibrate(unit(60, seed=1)) is None


# -- 16-bit HNSW storage -----------------------------------------------------------------------------------------------


def test_the_default_hnsw_storage_is_bfloat16():
    store = built(MemoryStoreConfig(exact_up_to=100, ef_search=64), unit(300))
    storage = faiss.downcast_index(faiss.downcast_index(store._index.index).storage)
    assert isinstance(storage, faiss.IndexScalarQuantizer) and storage.sq.qtype == faiss.ScalarQuantizer.QT_bf16
    assert store.config.hnsw_vectors == "bfloat16"


# Bounds on |score - cosine| for unit vectors, by hand: each stored component is off by at most its own size times
# 2**-11 (float16, rounded to nearest) or 2**-8 (faiss' bfloat16 keeps the top 16 bits of a float32); faiss'
# bfloat16 search also rounds the query's components to nearest (2**-9). Summed over a dot product of unit vectors:
BOUNDS = {"float16": 2**-11, "bfloat16": 2**-8 + 2**-9 + 2**-17}


@pytest.mark.parametrize("kind", ["float16", "bfloat16"])
def test_16_bit_storage_scores_stay_within_their_rounding_bound_of_the_cosines(kind: str):
    vectors, queries = unit(3000), unit(200, seed=4)
    store = built(MemoryStoreConfig(**{**HNSW, "hnsw_vectors": kind, "ef_search": 4096}), vectors)
    hits = store.search(queries, 10)  # the list is longer than the store: every node is scored
    ids = np.array([[h.id for h in row] for row in hits])
    scores = np.array([[h.score for h in row] for row in hits])
    cosines = queries @ vectors.T
    bound = BOUNDS[kind]
    assert np.abs(scores - np.take_along_axis(cosines, ids, axis=1)).max() <= bound
    # so a true neighbour can only be missed for a hit whose cosine is within twice the bound of its own
    truth = exact_top(queries, vectors)
    for row, true_row, cosine_row in zip(ids, truth, cosines, strict=True):
        missed = set(true_row.tolist()) - set(row.tolist())
        assert all(cosine_row[m] <= cosine_row[row].min() + 2 * bound for m in missed)
    assert recall(store, queries, vectors) >= 0.98


@pytest.mark.parametrize("kind", ["float16", "bfloat16"])
def test_16_bit_storage_saves_loads_compacts_and_halves_the_index_file(tmp_path: Path, kind: str):
    vectors, queries = unit(2000), unit(50, seed=5)
    # a dense graph: every node stays reachable after the rebuild, so both searches see the whole store
    wide = {**HNSW, "hnsw_m": 32, "ef_construction": 200, "ef_search": 4096}
    full = built(MemoryStoreConfig(**wide), vectors)
    half = built(MemoryStoreConfig(**{**wide, "hnsw_vectors": kind}), vectors)
    full_file, half_file = full.save(tmp_path / "full"), half.save(tmp_path / "half")
    full_bytes, half_bytes = (sum(f.stat().st_size for f in d.glob("*.faiss")) for d in (full_file, half_file))
    assert full_bytes - half_bytes == pytest.approx(2000 * DIM * 2, rel=0.05)  # 2 bytes saved per component
    loaded = FaissMemory.load(tmp_path / "half", config=MemoryStoreConfig(**wide))  # the saved storage wins
    assert loaded.kind == "hnsw" and loaded.config.hnsw_vectors == kind
    before = loaded.search(queries, 15)
    assert before == half.search(queries, 15)
    gone = {row[0].id for row in before[:5]}
    loaded.delete(gone)
    loaded.compact()  # rebuilt from the decoded 16-bit vectors: encoding them again changes no bit
    storage = faiss.downcast_index(faiss.downcast_index(loaded._index.index).storage)
    assert isinstance(storage, faiss.IndexScalarQuantizer) and loaded._index.ntotal == 2000 - len(gone)
    expected = [[(h.id, h.score) for h in row if h.id not in gone][:10] for row in before]
    assert [[(h.id, h.score) for h in row] for row in loaded.search(queries, 10)] == expected


def bottom_layer(store: FaissMemory) -> np.ndarray:
    """Each node's bottom-layer neighbours (positions, -1 where unused), read from faiss' own arrays."""
    hnsw = faiss.downcast_index(store._index.index).hnsw
    offsets = faiss.vector_to_array(hnsw.offsets).astype(np.int64)
    return faiss.vector_to_array(hnsw.neighbors)[offsets[:-1, None] + np.arange(hnsw.nb_neighbors(0))]


def test_a_built_graph_is_numbered_breadth_first_and_every_id_keeps_its_vector():
    vectors = unit(3000)
    store = built(MemoryStoreConfig(**{**HNSW, "hnsw_m": 16, "ef_construction": 64}), vectors)
    hnsw = faiss.downcast_index(store._index.index).hnsw
    assert hnsw.entry_point == 0
    # breadth-first: each node reached from the entry point was found from a node numbered before it, and the nodes
    # found from one node come before those found from the next (the first links that reach them are
    # non-decreasing); nodes the walk cannot reach (none or a few) come last
    links = bottom_layer(store)
    first_parent = np.full(len(vectors), -1)
    for node in range(len(vectors)):
        for neighbour in links[node]:
            if neighbour > node and first_parent[neighbour] < 0:
                first_parent[neighbour] = node
    unreached = np.flatnonzero(first_parent[1:] < 0)
    reached = 1 + (unreached[0] if len(unreached) else len(vectors) - 1)
    assert reached > 0.99 * len(vectors)
    assert np.all(np.diff(first_parent[1:reached]) >= 0)
    # the ids moved with their vectors: each id still holds the vector it was added with, and finds itself
    ids = faiss.vector_to_array(store._index.id_map)
    assert sorted(ids.tolist()) == list(range(len(vectors))) and not np.array_equal(ids, np.arange(len(vectors)))
    stored = faiss.downcast_index(store._index.index).storage.reconstruct_n(0, len(vectors))
    np.testing.assert_allclose(stored, vectors[ids], atol=1e-6)  # the store normalises again: float rounding only
    for memory_id in (0, 17, 2999):
        np.testing.assert_allclose(store._index.reconstruct(memory_id), vectors[memory_id], atol=1e-6)
    assert [row[0].id for row in store.search(vectors[:200], 1)] == list(range(200))


def test_without_scipy_the_graph_keeps_its_order_and_a_warning_says_so(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "scipy.sparse", None)  # an import of it now fails
    vectors = unit(1000)
    with caplog.at_level(logging.WARNING, logger="omnimm_plugins.haruhi.store"):
        store = built(MemoryStoreConfig(**{**HNSW, "hnsw_m": 16, "ef_construction": 64, "ef_search": 4096}), vectors)
    assert "scipy is missing" in caplog.text and "omnimm[haruhi]" in caplog.text
    np.testing.assert_array_equal(faiss.vector_to_array(store._index.id_map), np.arange(1000))  # insertion order
    assert recall(store, unit(50, seed=3), vectors) >= 0.99


def huge_kb(address: int, size: int) -> int:
    """AnonHugePages summed over the mappings that overlap [address, address + size), from /proc/self/smaps (an
    madvise splits a mapping, so one array can span several)."""
    total, overlapping = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:  # a mapping's first line: start-end perms ...
            start, end = (int(part, 16) for part in head.split("-"))
            overlapping = start < address + size and address < end
        elif overlapping and head == "AnonHugePages:":
            total += int(line.split()[1])
    return total


def graph_arrays(store: FaissMemory) -> dict[str, np.ndarray]:
    """The index's vectors and neighbour lists as numpy views of faiss' own memory."""
    inner = faiss.downcast_index(store._index.index)
    arrays = {"vectors": faiss.downcast_index(inner.storage).codes, "neighbours": inner.hnsw.neighbors}
    return {name: faiss.rev_swig_ptr(array.data(), array.size()) for name, array in arrays.items()}


def collapse_supported() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    setting = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    release = tuple(int(part) for part in os.uname().release.split(".")[:2] if part.isdigit())
    return setting.exists() and "[never]" not in setting.read_text() and release >= (6, 1)


@pytest.mark.skipif(not collapse_supported(), reason="needs Linux 6.1+ (MADV_COLLAPSE) with huge pages not 'never'")
def test_the_graph_vectors_and_neighbour_lists_sit_on_huge_pages_after_a_build_and_after_a_load(tmp_path: Path):
    vectors = unit(40_000)  # 7.7 MB of vectors, 5.1 MB of neighbour lists: over 4 MB, each holds an aligned 2 MB page
    store = built(MemoryStoreConfig(**{**HNSW, "hnsw_m": 16, "ef_construction": 32, "ef_search": 64}), vectors)
    for name, array in graph_arrays(store).items():
        assert huge_kb(array.ctypes.data, array.nbytes) >= 2048, name
    store.save(tmp_path / "store")
    loaded = FaissMemory.load(tmp_path / "store")
    for name, array in graph_arrays(loaded).items():
        assert huge_kb(array.ctypes.data, array.nbytes) >= 2048, f"{name} after load"
    queries = unit(20, seed=5)
    assert [[h.id for h in row] for row in loaded.search(queries, 10)] == [
        [h.id for h in row] for row in store.search(queries, 10)
    ]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="huge pages are asked of Linux only")
def test_huge_pages_are_asked_for_unless_the_system_setting_is_never(tmp_path: Path, monkeypatch):
    vectors = unit(25_000)  # 4.8 MB of vectors: over 4 MB, so they hold a whole aligned 2 MB page
    store = built(MemoryStoreConfig(**{**HNSW, "hnsw_m": 16, "ef_construction": 32, "ef_search": 4096}), vectors)
    setting = tmp_path / "enabled"  # the kernel file's format
    monkeypatch.setattr(store_module, "_THP_SETTING", setting)
    setting.write_text("always [madvise] never\n")
    assert store_module._back_with_huge_pages(store._index) >= 2 << 20
    setting.write_text("always madvise [never]\n")
    assert store_module._back_with_huge_pages(store._index) == 0
    monkeypatch.setattr(store_module, "_THP_SETTING", tmp_path / "missing")  # no such file: nothing either
    assert store_module._back_with_huge_pages(store._index) == 0
    assert recall(store, unit(20, seed=3), vectors) >= 0.99


# -- explicit settings ------------------------------------------------------------------------------------------------


def test_an_explicit_ef_search_is_used_as_given():
    vectors, queries = unit(3000), unit(200, seed=4)
    options = {k: v for k, v in HNSW.items() if k != "ef_search"}
    wide = built(MemoryStoreConfig(ef_search=4096, **options), vectors)
    assert wide.calibration is None
    assert recall(wide, queries, vectors) == 1.0  # a list longer than the store visits every node
    wide.config = MemoryStoreConfig(ef_search=10, **options)
    assert recall(wide, queries, vectors) < 0.8
    ef = faiss.SearchParametersHNSW(efSearch=10)
    assert [[h.id for h in r] for r in wide.search(queries[:5])] == wide._index.search(queries[:5], 10, params=ef)[
        1
    ].tolist()


def test_an_explicit_nprobe_is_used_as_given():
    vectors, queries = unit(3000), unit(200, seed=4)
    every = built(MemoryStoreConfig(index="ivf", nlist=64, nprobe=64), vectors)
    assert every.calibration is None
    assert recall(every, queries, vectors) == 1.0  # nprobe = nlist: every list, exact
    every.config = MemoryStoreConfig(index="ivf", nlist=64, nprobe=1)
    assert recall(every, queries, vectors) < 0.5


# -- search and search_batch, threads ---------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [{"index": "flat"}, IVF, HNSW], ids=["flat", "ivf", "hnsw"])
def test_search_one_by_one_and_search_batch_give_the_same_hits(options: dict):
    vectors = unit(3000)
    store = built(MemoryStoreConfig(**options), vectors)
    store.delete(range(0, 3000, 7))
    queries = unit(60, seed=6)  # 60: faiss' batched path, not the few-queries one
    batch = store.search_batch(queries, 10)
    single = [store.search(query, 10)[0] for query in queries]
    assert [[h.id for h in r] for r in batch] == [[h.id for h in r] for r in single]
    assert np.allclose([[h.score for h in r] for r in batch], [[h.score for h in r] for r in single], atol=1e-5)
    assert all(h.id % 7 for row in batch for h in row)
    if options["index"] == "flat":
        live = np.asarray([i for i in range(3000) if i % 7])
        assert [[h.id for h in r] for r in batch] == live[exact_top(queries, vectors[live])].tolist()


def test_searches_put_faiss_thread_count_back():
    store = built(MemoryStoreConfig(**HNSW), unit(2000))
    before = faiss.omp_get_max_threads()
    try:
        faiss.omp_set_num_threads(3)
        store.search(unit(1, seed=1))
        assert faiss.omp_get_max_threads() == 3
        store.search_batch(unit(40, seed=1))
        assert faiss.omp_get_max_threads() == 3
        store.search(unit(40, seed=1), threads=1)
        assert faiss.omp_get_max_threads() == 3
        with pytest.raises(ValueError, match="expected dimension 48"):
            store.search(np.ones((1, 5), dtype=np.float32))
        assert faiss.omp_get_max_threads() == 3
    finally:
        faiss.omp_set_num_threads(before)


def test_available_cores_follows_omp_num_threads(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert available_cores() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "")
    assert available_cores() >= 1


# -- validation and old manifests -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -0.1, 1.01, "high"])
def test_target_recall_must_be_above_0_and_at_most_1(value: object):
    with pytest.raises(ValidationError, match="target_recall"):
        MemoryStoreConfig(target_recall=value)
    assert MemoryStoreConfig(target_recall=1).target_recall == 1.0


def test_a_manifest_with_a_bad_target_recall_or_calibration_is_one_store_error(tmp_path: Path):
    built(MemoryStoreConfig(**HNSW), unit(1000)).save(tmp_path / "s")
    path = tmp_path / "s" / "manifest.json"
    good = json.loads(path.read_text())
    cases = {
        "config.target_recall: Input should be less than or equal to 1": {
            "config": {**good["config"], "target_recall": 2}
        },
        "calibration.kind is 'ivf'; expected 'hnsw'": {"calibration": {**good["calibration"], "kind": "ivf"}},
        "calibration.value is 0; expected an integer from 1": {"calibration": {**good["calibration"], "value": 0}},
        "calibration is 'x'; expected null or an object": {"calibration": "x"},
    }
    for message, change in cases.items():
        path.write_text(json.dumps({**good, **change}))
        with pytest.raises(StoreError, match=message.replace("(", r"\(")):
            FaissMemory.load(tmp_path / "s")


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_a_manifest_from_before_tuning_still_loads_and_is_tuned_on_the_next_add(tmp_path: Path, kind: str):
    vectors = unit(2000)
    fixed = {"flat": {"index": "flat"}, "hnsw": HNSW}[kind]
    store = built(MemoryStoreConfig(**fixed), vectors)
    store.save(tmp_path / "s")
    path = tmp_path / "s" / "manifest.json"
    old = json.loads(path.read_text())
    for key in ("calibration", "index_kind"):  # written since the kind can be chosen by size
        del old[key]
    for key in ("exact_up_to", "target_recall"):
        del old["config"][key]
    path.write_text(json.dumps(old))
    loaded = FaissMemory.load(tmp_path / "s")
    assert loaded.kind == kind and loaded.calibration is None and len(loaded) == 2000
    assert loaded.config.target_recall == MemoryStoreConfig().target_recall
    queries = unit(30, seed=8)
    if kind == "flat":
        assert [[h.id for h in r] for r in loaded.search(queries)] == exact_top(queries, vectors).tolist()
    else:
        loaded.add(unit(600, seed=3), [f"n{i}" for i in range(600)])
        assert loaded.calibration is not None and loaded.calibration.count == 2600


def test_single_queries_run_faiss_on_one_thread_and_batches_on_every_core(monkeypatch):
    store = built(MemoryStoreConfig(**HNSW), unit(2000))
    calls: list[int] = []
    real = faiss.omp_set_num_threads
    monkeypatch.setattr(faiss, "omp_set_num_threads", lambda count: (calls.append(count), real(count))[1])
    before = faiss.omp_get_max_threads()
    try:
        real(available_cores() + 1)  # a caller's own setting, neither of the store's choices
        store.search(unit(1, seed=1))
        store.search(unit(19, seed=1))
        assert calls == [1, available_cores() + 1, 1, available_cores() + 1]  # one thread, then put back
        calls.clear()
        store.search(unit(20, seed=1))
        store.search_batch(unit(2, seed=1))
        assert calls == [available_cores(), available_cores() + 1] * 2
    finally:
        real(before)
