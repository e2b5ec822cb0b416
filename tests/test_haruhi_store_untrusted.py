"""Memory-store folders from elsewhere: a manifest or file that is wrong, hostile or damaged gives one StoreError line
naming the file and what was expected, and nothing outside the folder is ever read or written."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from omnimm import StoreError
from omnimm_plugins.haruhi.character import Character, Chunk
from omnimm_plugins.haruhi.configs import MemoryStoreConfig
from omnimm_plugins.haruhi.store import FaissMemory

from .conftest import OMNIMM, run

pytestmark = pytest.mark.timeout(300)

DIM = 8


def unit(n: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def saved_store(folder: Path, kind: str = "flat", n: int = 5) -> Path:
    store = FaissMemory(MemoryStoreConfig(index=kind, nlist=2), model={"name": "test/encoder"})
    store.add(unit(n), [f"memory {i}" for i in range(n)])
    return store.save(folder)


def manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "manifest.json").read_text())


def write_manifest(folder: Path, value: Any) -> None:
    (folder / "manifest.json").write_text(json.dumps(value))


def record(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def rewrite(folder: Path, name: str, data: bytes, **changes: Any) -> None:
    """Replace one of the store's files and make the manifest agree with it (as a forger would)."""
    (folder / name).write_bytes(data)
    values = manifest(folder)
    values["files"][name] = record(folder / name)
    values.update(changes)
    write_manifest(folder, values)


def load_error(folder: Path) -> str:
    with pytest.raises(StoreError) as caught:
        FaissMemory.load(folder)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return saved_store(tmp_path / "store")


@pytest.fixture
def outside(tmp_path: Path, store: Path) -> Path:
    """A copy of the store's memories outside its folder: what a hostile manifest would point at."""
    path = tmp_path / "outside.jsonl"
    shutil.copy(store / "memories-1.jsonl", path)
    return path


# -- file names and file types --------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["memories_file", "index_file"])
@pytest.mark.parametrize(
    "name", ["../outside.jsonl", "OUTSIDE", "/dev/zero", "sub/memories-1.jsonl", "memories-2.jsonl"]
)
def test_a_manifest_names_only_its_own_files_in_the_folder(store: Path, outside: Path, key: str, name: str):
    values = manifest(store)
    target = str(outside) if name == "OUTSIDE" else name
    old = values[key]
    values[key] = target
    values["files"][target] = values["files"].pop(old)
    if name == "OUTSIDE" or name.startswith(".."):
        values["files"][target] = record(outside)
    write_manifest(store, values)
    message = load_error(store)
    expected = "memories-1.jsonl" if key == "memories_file" else "index-1.faiss"
    assert message.startswith(f"{store / 'manifest.json'}: {key} is ") and f"expected '{expected}'" in message


def test_files_must_list_every_file_used_and_nothing_else(store: Path):
    (store / "memories-1.jsonl").write_text('{"id": 1, "text": "changed outside omnimm", "meta": {}}\n' * 5)
    values = manifest(store)
    for files in ({}, {"index-1.faiss": values["files"]["index-1.faiss"]}, {**values["files"], "extra.txt": {}}):
        write_manifest(store, {**values, "files": files})
        assert "files lists" in load_error(store) and "expected a record for each of" in load_error(store)
    write_manifest(store, values)
    assert "memories-1.jsonl: " in load_error(store) and "the file is damaged" in load_error(store)


def test_a_link_in_the_folder_is_refused_even_with_the_right_checksum(store: Path, outside: Path):
    (store / "memories-1.jsonl").unlink()
    (store / "memories-1.jsonl").symlink_to(outside)
    message = load_error(store)
    assert message.startswith(f"{store / 'memories-1.jsonl'}: a symbolic link")


def test_a_linked_manifest_is_refused(tmp_path: Path, store: Path):
    (tmp_path / "real.json").write_bytes((store / "manifest.json").read_bytes())
    (store / "manifest.json").unlink()
    (store / "manifest.json").symlink_to(tmp_path / "real.json")
    assert load_error(store).startswith(f"{store / 'manifest.json'}: a symbolic link")
    (store / "manifest.json").unlink()
    (store / "manifest.json").symlink_to("/dev/zero")
    assert load_error(store).startswith(f"{store / 'manifest.json'}: a symbolic link")


def test_a_pipe_or_folder_in_place_of_a_file_is_not_a_regular_file(store: Path):
    (store / "memories-1.jsonl").unlink()
    os.mkfifo(store / "memories-1.jsonl")
    assert load_error(store).startswith(f"{store / 'memories-1.jsonl'}: not a regular file")
    (store / "manifest.json").unlink()
    (store / "manifest.json").mkdir()
    assert load_error(store).startswith(f"{store / 'manifest.json'}: not a regular file")


def test_a_save_never_writes_through_a_link_left_at_a_temp_name(tmp_path: Path, store: Path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    for name in (".memories-2.jsonl.tmp", ".index-2.faiss.tmp"):
        (store / name).symlink_to(victim)
    loaded = FaissMemory.load(store)
    loaded.add(unit(1, seed=3), ["a new memory"])
    loaded.save(store)
    assert victim.read_text() == "precious\n"
    assert sorted(p.name for p in store.iterdir()) == ["index-2.faiss", "manifest.json", "memories-2.jsonl"]
    assert len(FaissMemory.load(store)) == 6


SAVE_OVER = """
import sys, numpy as np
from omnimm_plugins.haruhi.configs import MemoryStoreConfig
from omnimm_plugins.haruhi.store import FaissMemory
fresh = FaissMemory(MemoryStoreConfig())
fresh.add(np.eye(2, 8, dtype=np.float32), ["a", "b"])
fresh.save(sys.argv[1])
"""


def _limit_memory() -> None:  # reading /dev/zero to the end must fail fast, not exhaust the machine
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


def test_a_save_over_a_manifest_that_is_a_link_to_a_device_does_not_read_it(store: Path):
    (store / "manifest.json").unlink()
    (store / "manifest.json").symlink_to("/dev/zero")
    done = subprocess.run(
        [sys.executable, "-c", SAVE_OVER, str(store)],
        capture_output=True, text=True, timeout=120, preexec_fn=_limit_memory, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert not (store / "manifest.json").is_symlink() and len(FaissMemory.load(store)) == 2


# -- manifest contents ----------------------------------------------------------------------------------------------


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], Any]:
    def change(values: dict[str, Any]) -> Any:
        values[key] = value
        return values

    return change


def _file_field(key: str, value: Any) -> Callable[[dict[str, Any]], Any]:
    def change(values: dict[str, Any]) -> Any:
        values["files"]["memories-1.jsonl"][key] = value
        return values

    return change


def _without(key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda values: {k: v for k, v in values.items() if k != key}


GIB = 1 << 30
# name -> (change to the saved manifest: a new value, or raw bytes for the file; what the error says)
BAD_MANIFESTS: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "invalid JSON": (lambda values: b"{not json", "manifest.json: not valid JSON"),
    "empty": (lambda values: b"", "manifest.json: empty; expected JSON"),
    "100k-deep": (lambda values: b"[" * 100_000 + b"]" * 100_000, "not valid JSON (nested too deeply)"),
    "not UTF-8": (lambda values: b'{"format": "\xff"}', "manifest.json: not UTF-8 text (byte 0xff"),
    "repeated key": (
        lambda values: json.dumps(values)[:-1].encode() + b', "count": 0}',
        "not valid JSON (duplicate key 'count')",
    ),
    "a list": (lambda values: [values], "not a memory-store manifest (missing format, generation"),
    "missing count": (_without("count"), "not a memory-store manifest (missing count)"),
    "missing files": (_without("files"), "not a memory-store manifest (missing files)"),
    "other format": (_set("format", "other/2"), "format 'other/2', this version reads 'omnimm-memory/1'"),
    "generation a string": (_set("generation", "1"), "generation is '1'; expected an integer from 1"),
    "generation a float": (_set("generation", 1.5), "generation is 1.5; expected an integer"),
    "generation true": (_set("generation", True), "generation is True; expected an integer"),
    "generation 0": (_set("generation", 0), "generation is 0; expected an integer from 1"),
    "count negative": (_set("count", -1), "count is -1; expected an integer from 0"),
    "count a string": (_set("count", "5"), "count is '5'; expected an integer"),
    "count a billion": (_set("count", 10**9), "count 1000000000 cannot fit in memories-1.jsonl's"),
    "count 2**64": (_set("count", 2**64), "count is 18446744073709551616; expected an integer from 0"),
    "dim a string": (_set("dim", "8"), "dim is '8'; expected an integer from 1 to 65536"),
    "dim zero": (_set("dim", 0), "dim is 0; expected an integer from 1"),
    "dim a billion": (_set("dim", 10**9), "dim is 1000000000; expected an integer from 1 to 65536"),
    "dim null with an index": (_set("dim", None), "dim is null but the store has an index"),
    "config a list": (_set("config", [1]), "config is [1]; expected an object of memory-store options"),
    "config unknown kind": (_set("config", {"index": "lsh"}), "config.index: Input should be 'flat', 'ivf' or 'hnsw'"),
    "config bad nprobe": (_set("config", {"nprobe": 0}), "config.nprobe: Input should be greater than or equal to 1"),
    "files a list": (_set("files", []), "files is []; expected a record for each of"),
    "file record null": (_file_field("bytes", None), "files.memories-1.jsonl is {'bytes': None"),
    "size a string": (_file_field("bytes", "270"), "files.memories-1.jsonl is {'bytes': '270'"),
    "size negative": (_file_field("bytes", -1), "files.memories-1.jsonl is {'bytes': -1"),
    "size a gigabyte": (_file_field("bytes", GIB), f"bytes, the manifest recorded {GIB}: the file is damaged"),
    "checksum a number": (_file_field("sha256", 5), "'sha256': 5}; expected"),
    "memories_file null": (_set("memories_file", None), "memories_file is None; expected 'memories-1.jsonl'"),
    "memories but no index": (
        lambda values: {
            **values,
            "index_file": None,
            "files": {"memories-1.jsonl": values["files"]["memories-1.jsonl"]},
        },
        "index_file is null but the store has 5 memories; an index file is expected",
    ),
}


@pytest.mark.parametrize("case", list(BAD_MANIFESTS))
def test_a_bad_manifest_is_one_store_error_naming_it(store: Path, case: str):
    change, expected = BAD_MANIFESTS[case]
    changed = change(manifest(store))
    if isinstance(changed, bytes):
        (store / "manifest.json").write_bytes(changed)
    else:
        write_manifest(store, changed)
    message = load_error(store)
    assert message.startswith(str(store)) and expected in message, message


def test_an_empty_saved_store_still_loads_and_an_empty_folder_is_not_a_store(tmp_path: Path):
    FaissMemory(MemoryStoreConfig()).save(tmp_path / "empty")
    assert len(FaissMemory.load(tmp_path / "empty")) == 0
    (tmp_path / "bare").mkdir()
    assert "is not a saved memory store" in load_error(tmp_path / "bare")


# -- file contents (the manifest agrees with them, as a forged or hand-edited store's would) -----------------------


def test_memory_lines_that_are_not_utf8_truncated_or_ill_typed_name_their_line(store: Path):
    lines = (store / "memories-1.jsonl").read_bytes().splitlines(keepends=True)
    cases = {
        b'{"id": 9, "text": "caf\xe9", "meta": {}}\n': ":6: not UTF-8 text (byte 0xe9",
        b'{"id": 9, "text": "cut': ":6: the last record has no line end: the file is truncated",
        b'{"id": "9", "text": "t", "meta": {}}\n': ":6: id is '9'; expected an integer from 0 to 2**63 - 1",
        b'{"id": 9, "text": 3, "meta": {}}\n': ":6: text is 3; expected a string",
        b'{"id": 9, "text": "t", "meta": [1]}\n': ":6: meta is [1]; expected an object",
        b"[" * 100_000 + b"]" * 100_000 + b"\n": ":6: not valid JSON (nested too deeply)",
        lines[0]: ":6: id ",  # the same record twice
    }
    for extra, expected in cases.items():
        rewrite(store, "memories-1.jsonl", b"".join(lines) + extra, count=6)
        message = load_error(store)
        assert message.startswith(f"{store / 'memories-1.jsonl'}{expected}"), message


def flat_index_bytes(store: Path) -> bytes:
    return (store / "index-1.faiss").read_bytes()


def test_a_truncated_index_with_a_matching_manifest_is_refused(store: Path):
    data = flat_index_bytes(store)
    for cut in (0, 10, 50, len(data) - 1):
        rewrite(store, "index-1.faiss", data[:cut])
        message = load_error(store)
        assert message.startswith(f"{store / 'index-1.faiss'}: faiss cannot read this index"), message


def test_an_index_header_claiming_more_vectors_than_the_file_holds_is_refused(store: Path):
    data = bytearray(flat_index_bytes(store))
    data[8:16] = struct.pack("<q", 1 << 40)  # ntotal: a terabyte of vectors in a 300-byte file
    rewrite(store, "index-1.faiss", bytes(data), count=5)
    assert "index holds 1099511627776 vectors but the manifest counts 5" in load_error(store)


def test_an_index_of_another_kind_or_other_ids_is_refused(tmp_path: Path, store: Path):
    hnsw = saved_store(tmp_path / "hnsw", kind="hnsw")
    rewrite(store, "index-1.faiss", (hnsw / "index-1.faiss").read_bytes())
    assert "IndexIDMap2 is not a 'flat' index, as the manifest says" in load_error(store)
    ivf = saved_store(tmp_path / "ivf", kind="ivf", n=100)
    rewrite(store, "index-1.faiss", (ivf / "index-1.faiss").read_bytes())
    message = load_error(store)
    assert "index holds 100 vectors but the manifest counts 5" in message
    other = FaissMemory(MemoryStoreConfig(), model={"name": "test/encoder"})
    other.add(unit(5, seed=1), [f"another text {i}" for i in range(5)])
    other.save(tmp_path / "other")
    rewrite(store, "index-1.faiss", (tmp_path / "other" / "index-1.faiss").read_bytes())
    assert "5 memories have no vector in the index" in load_error(store)


# -- the haruhi commands that load a store ----------------------------------------------------------------------------


@pytest.fixture
def character(tmp_path: Path) -> Path:
    folder = tmp_path / "ROMEO"
    Character("ROMEO", "You are ROMEO.", [Chunk(f"memory {i}") for i in range(5)]).save(folder)
    saved_store(folder / "index")
    return folder


def _no_index(index: Path) -> None:
    values = manifest(index)
    values["index_file"] = None
    del values["files"]["index-1.faiss"]
    write_manifest(index, values)


def _non_utf8_line(index: Path) -> None:
    rewrite(
        index, "memories-1.jsonl", (index / "memories-1.jsonl").read_bytes() + b'{"id": 9, "text": "\xff"}\n', count=6
    )


def _config_a_list(index: Path) -> None:
    write_manifest(index, {**manifest(index), "config": [1]})


def _files_empty(index: Path) -> None:
    write_manifest(index, {**manifest(index), "files": {}})


CLI_CASES = {
    "memories but no index": (_no_index, "manifest.json: index_file is null"),
    "a non-UTF-8 memory line": (_non_utf8_line, "memories-1.jsonl:6: not UTF-8 text"),
    "config of the wrong type": (_config_a_list, "manifest.json: config is [1]"),
    "no file records": (_files_empty, "manifest.json: files lists []"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
@pytest.mark.parametrize("command", ["search", "export-jsonl", "chat"])
def test_haruhi_commands_print_one_line_and_fail_on_a_bad_store(
    character: Path, tmp_path: Path, case: str, command: str
):
    damage, expected = CLI_CASES[case]
    damage(character / "index")
    args = {
        "search": ["search", character, "light"],
        "export-jsonl": ["export-jsonl", character, tmp_path / "out.jsonl"],
        "chat": ["chat", character, "--no-llm"],
    }[command]
    result = run([str(OMNIMM), "haruhi", *map(str, args)], timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.output, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr


def test_haruhi_index_rebuilds_over_a_manifest_pointing_outside_and_reads_nothing_there(
    character: Path, tmp_path: Path
):
    from omnimm_plugins.haruhi.embeddings import describe_model, encoder_config

    index = character / "index"
    store = FaissMemory.load(index)
    store.model = describe_model(encoder_config(None))  # what `haruhi index` would reuse
    store.save(index)
    outside = tmp_path / "outside.jsonl"
    outside.write_text("".join(json.dumps({"id": i, "text": f"outside {i}", "meta": {}}) + "\n" for i in range(5)))
    values = manifest(index)
    values["files"] = {"../../outside.jsonl": record(outside), "index-2.faiss": values["files"]["index-2.faiss"]}
    write_manifest(index, {**values, "memories_file": "../../outside.jsonl"})
    result = run([str(OMNIMM), "haruhi", "index", str(character)], timeout=240)
    assert result.returncode == 0, result.output
    rebuilt = FaissMemory.load(index)
    assert sorted(m.text for m in rebuilt.memories()) == [f"memory {i}" for i in range(5)] and rebuilt.dim == 384
    assert outside.read_text().count("outside") == 5


ODD_VALUES: list[Any] = [None, True, 0, -1, 1.5, 2**63, 10**30, "", "x", "../x", "/dev/zero", [], [1], {}, {"a": 1}]


def test_seeded_mutations_of_a_manifest_load_or_give_a_store_error(tmp_path: Path):
    """300 manifests with one field (or one file record field) set to an odd value: none raises anything else."""
    rng = np.random.default_rng(0)
    base = saved_store(tmp_path / "base", kind="hnsw")
    outcomes = {"loaded": 0, "StoreError": 0}
    for trial in range(300):
        folder = tmp_path / f"m{trial}"
        shutil.copytree(base, folder)
        values = manifest(folder)
        key = _MUTABLE[int(rng.integers(len(_MUTABLE)))]
        odd = ODD_VALUES[int(rng.integers(len(ODD_VALUES)))]
        if key.startswith("files."):
            values["files"][str(rng.choice(sorted(values["files"])))][key.split(".")[1]] = odd
        else:
            values[key] = odd
        write_manifest(folder, values)
        try:
            FaissMemory.load(folder)
            outcomes["loaded"] += 1
        except StoreError as error:
            assert "\n" not in str(error) and str(error).startswith(str(folder)), error
            outcomes["StoreError"] += 1
        shutil.rmtree(folder)
    assert sum(outcomes.values()) == 300, outcomes


_MUTABLE = ["format", "generation", "config", "dim", "model", "count", "index_file", "memories_file", "files"]
_MUTABLE += ["files.bytes", "files.sha256"]
