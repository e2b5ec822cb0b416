"""haruhi: scripts, the faiss memory store (and its crash safety), cached embeddings, characters, prompt budgets,
sessions with real LLM backends, the CLI and the retrieval evaluation."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from omnimm import StoreError, encoders, memories
from omnimm_plugins.haruhi.character import Character, Chunk, character_from_script, decode_vector, encode_vector
from omnimm_plugins.haruhi.configs import MemoryStoreConfig, PromptConfig
from omnimm_plugins.haruhi.embeddings import EmbeddingCache, describe_model, embed_texts, encoder_config
from omnimm_plugins.haruhi.evaluate import bm25_ranker, held_out_task, random_ranker, recall_at_k
from omnimm_plugins.haruhi.prompt import Exchange, compose, pack_history, pack_scenes
from omnimm_plugins.haruhi.scripts import character_scenes, parse_turns, read_turns
from omnimm_plugins.haruhi.session import RolePlaySession
from omnimm_plugins.haruhi.store import FaissMemory, text_id

from .conftest import OMNIMM, REPO, SHARED, requires_shared
from .openai_server import openai_server

SCRIPT = """\
ROMEO:
Is the day so young?

BENVOLIO:
But new struck nine.

ROMEO:
Ay me! sad hours seem long.
Was that my father that went hence so fast?

BENVOLIO:
It was. What sadness lengthens Romeo's hours?

ROMEO:
Not having that, which, having, makes them short.

MERCUTIO:
Nay, gentle Romeo, we must have you dance.

ROMEO:
Not I, believe me: you have dancing shoes
With nimble soles: I have a soul of lead.

MERCUTIO:
You are a lover; borrow Cupid's wings.

TYBALT:
This, by his voice, should be a Montague.
Fetch me my rapier, boy.

CAPULET:
Why, how now, kinsman! wherefore storm you so?

ROMEO:
He jests at scars that never felt a wound.
But, soft! what light through yonder window breaks?

JULIET:
Ay me!
"""


def unit(n: int, dim: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


class CountingEncoder:
    """The real MiniLM, counting the texts it is asked to embed."""

    def __init__(self, encoder):
        self.encoder = encoder
        self.seen: list[str] = []

    def encode(self, texts):
        self.seen.extend(texts)
        return self.encoder.encode(texts)


@pytest.fixture(scope="module")
def minilm():
    return encoders.build({"name": "hf/sentence-encoder"})


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "play.txt"
    path.write_text(SCRIPT, encoding="utf-8")
    return path


@pytest.fixture
def romeo(tmp_path: Path, script: Path, minilm) -> Character:
    character = character_from_script(script, "ROMEO", window=3)
    character.save(tmp_path / "ROMEO")
    character.index(built_encoder=minilm)
    return character


# -- scripts ------------------------------------------------------------------------------------------------------


def test_parse_turns_keeps_speakers_speeches_and_lines():
    turns = parse_turns(SCRIPT)
    assert [t.speaker for t in turns[:3]] == ["ROMEO", "BENVOLIO", "ROMEO"]
    assert turns[2].speech == "Ay me! sad hours seem long.\nWas that my father that went hence so fast?"
    assert turns[2].line == 7
    assert len(turns) == 12


def test_parse_turns_reports_text_outside_a_turn_with_its_line():
    with pytest.raises(ValueError, match=r"play\.txt:4: text outside a turn"):
        parse_turns("ROMEO:\nHello.\n\nno speaker here\n", source="play.txt")


def test_scenes_are_windows_where_the_character_speaks():
    turns = parse_turns(SCRIPT)
    scenes = character_scenes(turns, "tybalt", window=3)  # case-insensitive
    assert [s.turns for s in scenes] == [(6, 7, 8)]
    assert scenes[0].text.startswith("ROMEO:\nNot I, believe me")
    held = character_scenes(turns, "ROMEO", window=3, exclude=frozenset({2}))
    assert [s.turns for s in held] == [(0, 1), (3, 4, 5), (6, 7, 8), (9, 10, 11)]


@requires_shared
def test_tinyshakespeare_parses_into_turns_of_real_characters():
    turns = read_turns(SHARED / "data" / "tinyshakespeare" / "input.txt")
    assert len(turns) > 7000
    romeo = [t for t in turns if t.speaker == "ROMEO"]
    assert len(romeo) > 150
    assert len(character_scenes(turns, "MENENIUS")) > 50


# -- the store ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_store_finds_what_brute_force_finds_and_round_trips(tmp_path: Path, kind: str):
    vectors = unit(2000, 32)
    texts = [f"memory {i}" for i in range(2000)]
    config = MemoryStoreConfig(index=kind, nprobe=64, ef_search=256)
    store = memories.build(config)
    ids = store.add(vectors, texts)
    assert ids == [text_id(t) for t in texts] and len(store) == 2000
    queries = unit(20, 32, seed=1)
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :5]
    found = store.search(queries, k=5)
    top = [ids.index(row[0].id) for row in found]
    hit_rate = np.mean(np.asarray(top) == truth[:, 0])
    # nprobe 64 probes all of ivf's 51 lists, and hnsw with ef_search 256 on 2000 vectors measures 1.0 too
    assert hit_rate == 1.0 if kind == "flat" else hit_rate >= 0.9, f"{kind}: top-1 hit rate {hit_rate:.2f}"
    if kind == "flat":
        scores = np.sort(queries @ vectors.T, axis=1)[:, ::-1][:, :5]
        assert np.allclose([[h.score for h in row] for row in found], scores, atol=1e-5)
    store.save(tmp_path / "store")
    loaded = FaissMemory.load(tmp_path / "store")
    assert loaded.config.index == kind and len(loaded) == 2000
    assert [[h.id for h in row] for row in loaded.search(queries, k=5)] == [[h.id for h in row] for row in found]


def test_single_queries_on_a_flat_index_match_faiss_search_also_after_deletes():
    vectors = unit(500, 24)
    store = FaissMemory()
    ids = store.add(vectors, [f"m{i}" for i in range(500)])
    store.delete(ids[::3])
    queries = unit(3, 24, seed=4)
    few = store.search(queries, k=7)
    scores, found = store._index.search(queries, 7)  # faiss' own flat search
    assert [[h.id for h in row] for row in few] == found.tolist()
    assert np.allclose([[h.score for h in row] for row in few], scores, atol=1e-6)
    assert len(store.search(queries[:1], k=1000)[0]) == len(store)


def test_adding_is_idempotent_and_explicit_ids_must_be_new():
    store = FaissMemory()
    first = store.add(unit(3, 8), ["a", "b", "c"])
    again = store.add(unit(3, 8, seed=5), ["a", "b", "c"])
    assert first == again and len(store) == 3
    store2 = FaissMemory()
    store2.add(unit(2, 8), ["x", "y"], ids=[1, 2])
    with pytest.raises(ValueError, match=r"ids already in the store or repeated: \[2\]"):
        store2.add(unit(1, 8), ["z"], ids=[2])


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_delete_removes_memories_from_results_and_from_disk(tmp_path: Path, kind: str):
    vectors = unit(400, 16)
    store = FaissMemory(MemoryStoreConfig(index=kind, nprobe=32, ef_search=200))
    ids = store.add(vectors, [f"t{i}" for i in range(400)])
    assert store.delete(ids[:10]) == 10
    assert store.delete(ids[:10]) == 0
    found = store.search(vectors[:10], k=3)
    assert all(h.id not in ids[:10] for row in found for h in row)
    store.save(tmp_path / "s")
    loaded = FaissMemory.load(tmp_path / "s")
    assert len(loaded) == 390 and ids[0] not in loaded
    assert all(h.id not in ids[:10] for row in loaded.search(vectors[:10], k=3) for h in row)
    if kind == "hnsw":  # a quarter deleted -> the graph is rebuilt without the tombstones
        loaded.delete(ids[10:120])
        assert loaded._index.ntotal == 280
        loaded.add(vectors[:1], ["t0"])  # a deleted text may come back
        assert loaded.search(vectors[:1], k=1)[0][0].text == "t0"


def test_store_rejects_bad_vectors_with_shapes():
    store = FaissMemory()
    store.add(unit(2, 8), ["a", "b"])
    with pytest.raises(ValueError, match=r"expected dimension 8 \(the store's\), got 4"):
        store.search(unit(1, 4))
    with pytest.raises(ValueError, match="NaN"):
        store.add(np.full((1, 8), np.nan, dtype=np.float32), ["c"])
    with pytest.raises(ValueError, match="got 2 vectors but 1 texts"):
        store.add(unit(2, 8), ["c"])
    with pytest.raises(ValueError, match="IVF index with nlist=64 needs at least 64 vectors"):
        FaissMemory(MemoryStoreConfig(index="ivf", nlist=64)).add(unit(10, 8), [str(i) for i in range(10)])


def test_load_checks_dimension_and_model_against_the_manifest(tmp_path: Path):
    store = FaissMemory(model={"name": "enc-a"})
    store.add(unit(5, 8), list("abcde"))
    store.save(tmp_path / "s")
    with pytest.raises(StoreError, match=r"holds 8-dimensional vectors .* the encoder gives 384"):
        FaissMemory.load(tmp_path / "s", expect_dim=384)
    with pytest.raises(StoreError, match=r"built with model .*enc-a.* not .*enc-b"):
        FaissMemory.load(tmp_path / "s", expect_model={"name": "enc-b"})
    with pytest.raises(StoreError, match="holds a 'flat' index but the config asks for 'hnsw'"):
        FaissMemory.load(tmp_path / "s", config=MemoryStoreConfig(index="hnsw"))


def test_saves_keep_one_generation_and_stale_files_go(tmp_path: Path):
    store = FaissMemory()
    store.add(unit(5, 8), list("abcde"))
    store.save(tmp_path / "s")
    store.add(unit(1, 8), ["f"])
    store.save(tmp_path / "s")
    names = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert names == ["index-2.faiss", "manifest.json", "memories-2.jsonl"]


# -- faults ---------------------------------------------------------------------------------------------------------

SAVER = """
import os, sys, time, numpy as np
from omnimm_plugins.haruhi import store as module
from omnimm_plugins.haruhi.store import FaissMemory

def stall(*args, **kwargs):  # the parent kills this process while it waits here, inside the save
    print("stalled", flush=True)
    time.sleep(600)

store = FaissMemory.load(sys.argv[1])
rng = np.random.default_rng(1)
store.add(rng.standard_normal((2000, 128), dtype=np.float32), [f"new {i}" for i in range(2000)])
if sys.argv[2] == "writing":
    os.fsync = stall  # the new index is written to its temporary file, not yet synced and renamed
else:
    module._sha256 = stall  # both new files are in place, the manifest still names the old ones
store.save(sys.argv[1])
"""


# Where the kill lands is decided by the child stalling at a known point, never by a sleep racing the disk.
@pytest.mark.parametrize(
    ("point", "left"),
    [("writing", [".index-2.faiss.tmp"]), ("checksumming", ["index-2.faiss", "memories-2.jsonl"])],
)
def test_a_process_killed_mid_save_leaves_the_old_store_loadable(tmp_path: Path, point: str, left: list[str]):
    folder = tmp_path / "store"
    old = FaissMemory()
    old.add(unit(1000, 128), [f"old {i}" for i in range(1000)])
    old.save(folder)
    child = subprocess.Popen(
        [sys.executable, "-c", SAVER, str(folder), point], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        assert child.stdout.readline().strip() == "stalled"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        child.kill()
        child.wait(timeout=30)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    leftovers = sorted(
        p.name for p in folder.iterdir() if p.name not in {"manifest.json", "index-1.faiss", "memories-1.jsonl"}
    )
    assert leftovers == left
    loaded = FaissMemory.load(folder)
    assert len(loaded) == 1000 and loaded.search(unit(1, 128), k=1)[0][0].text.startswith("old ")
    loaded.add(unit(1, 128, seed=9), ["after the crash"])
    loaded.save(folder)  # the next save cleans up what the killed one left
    assert sorted(p.name for p in folder.iterdir()) == ["index-2.faiss", "manifest.json", "memories-2.jsonl"]


def test_damaged_files_give_clear_errors_not_crashes(tmp_path: Path):
    folder = tmp_path / "s"
    store = FaissMemory(MemoryStoreConfig(index="hnsw"))
    store.add(unit(50, 16), [f"m{i}" for i in range(50)])
    store.save(folder)
    index_file = folder / "index-1.faiss"
    data = bytearray(index_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    index_file.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"index-1\.faiss: checksum mismatch"):
        FaissMemory.load(folder)
    index_file.write_bytes(bytes(data[: len(data) // 3]))
    with pytest.raises(StoreError, match=r"index-1\.faiss: .* bytes, the manifest recorded"):
        FaissMemory.load(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["index-1.faiss"] = {"bytes": index_file.stat().st_size, "sha256": "skip"}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match=r"index-1\.faiss: faiss cannot read this index"):
        FaissMemory.load(folder, verify=False)
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match=r"manifest\.json: not valid JSON"):
        FaissMemory.load(folder)
    (folder / "manifest.json").unlink()
    with pytest.raises(StoreError, match="is not a saved memory store"):
        FaissMemory.load(folder)


# -- embeddings and characters ----------------------------------------------------------------------------------


def test_reindexing_encodes_only_changed_chunks(tmp_path: Path, script: Path, minilm):
    character = character_from_script(script, "ROMEO", window=3)
    character.save(tmp_path / "ROMEO")
    counting = CountingEncoder(minilm)
    store = character.index(built_encoder=counting)
    assert len(counting.seen) == len(character.chunks) == 4
    kept_ids = store.ids()
    counting.seen.clear()
    character.index(built_encoder=counting)
    assert counting.seen == []  # unchanged: nothing re-encoded, the index is reused
    character.chunks[1] = Chunk("ROMEO:\nA new line.")
    store = character.index(built_encoder=counting)
    assert counting.seen == ["ROMEO:\nA new line."]
    assert set(store.ids()) == set(kept_ids) - {kept_ids[1]} | {text_id("ROMEO:\nA new line.")}
    counting.seen.clear()
    store = character.index(store=MemoryStoreConfig(index="hnsw"), built_encoder=counting)
    assert counting.seen == [] and store.config.index == "hnsw"  # another index kind: rebuilt from the cache


def test_embedding_cache_file_round_trips_and_checks_its_model(tmp_path: Path, minilm):
    model = describe_model(encoder_config(None))
    cache = EmbeddingCache.for_model(tmp_path, model)
    first = embed_texts(minilm, ["a cat", "a dog", "a cat"], cache=cache)
    cache.save()
    assert np.allclose(first[0], first[2]) and len(cache) == 2
    reopened = EmbeddingCache.for_model(tmp_path, model)
    again = embed_texts(CountingEncoder(minilm), ["a dog", "a cat"], cache=reopened)
    assert np.array_equal(again, first[[1, 0]])
    with pytest.raises(StoreError, match="holds embeddings of"):
        EmbeddingCache(reopened.path, {"name": "another"})
    reopened.path.write_bytes(b"garbage")
    with pytest.raises(StoreError, match="not a readable embedding cache"):
        EmbeddingCache(reopened.path, model)


def test_character_folder_reads_jsonl_and_text_files(tmp_path: Path):
    root = tmp_path / "HARUHI"
    (root / "texts").mkdir(parents=True)
    (root / "system_prompt.txt").write_text("You are Haruhi.\n")
    (root / "chunks.jsonl").write_text('{"text": "scene one"}\n\n{"text": "scene two", "meta": {"ep": 2}}\n')
    (root / "texts" / "b.txt").write_text("scene four")
    (root / "texts" / "a.txt").write_text("scene three")
    character = Character.load(root)
    assert character.name == "HARUHI" and character.system_prompt == "You are Haruhi."
    assert [c.text for c in character.chunks] == ["scene one", "scene two", "scene three", "scene four"]
    assert character.chunks[1].meta == {"ep": 2} and character.chunks[2].meta == {"file": "a.txt"}
    (root / "chunks.jsonl").write_text('{"text": "ok"}\n{"txt": "typo"}\n')
    with pytest.raises(ValueError, match=r"chunks\.jsonl:2: expected a non-empty 'text' string"):
        Character.load(root)
    (root / "system_prompt.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"system_prompt\.txt: missing"):
        Character.load(root)


def test_chatharuhi_jsonl_round_trip_matches_their_struct_packing(tmp_path: Path):
    vectors = unit(3, 6)
    reference = __import__("base64").b64encode(b"".join(struct.pack("!f", float(f)) for f in vectors[0])).decode()
    assert encode_vector(vectors[0]) == reference  # ChatHaruhi's float_array_to_base64
    character = Character("Haruhi", "You are Haruhi.", [Chunk("a"), Chunk("b"), Chunk("c")], language="zh")
    path = character.export_chatharuhi(tmp_path / "haruhi.jsonl", vectors, embedding_key="bge_en_s15", model="m")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[0] == {"text": "You are Haruhi.", "bge_en_s15": "system_prompt"}
    assert rows[1]["bge_en_s15"] == "config"
    loaded, matrix = Character.from_chatharuhi(path)
    assert (loaded.name, loaded.language, loaded.system_prompt) == ("Haruhi", "zh", "You are Haruhi.")
    assert [c.text for c in loaded.chunks] == ["a", "b", "c"]
    assert np.array_equal(matrix, vectors)
    placeholder = tmp_path / "theirs.jsonl"
    placeholder.write_text(
        '{"text": "sys", "luotuo_openai": "system_prompt"}\n'
        '{"text": "Reserve Config Setting Here", "luotuo_openai": "config"}\n'
        '{"text": "chunk", "luotuo_openai": "@@@"}\n'
    )
    with pytest.raises(ValueError, match=r"theirs\.jsonl:3: the embedding is not base64"):
        Character.from_chatharuhi(placeholder)
    assert decode_vector(reference).tolist() == pytest.approx(vectors[0].tolist())


# -- prompt composition -----------------------------------------------------------------------------------------


def words(text: str) -> int:
    return len(text.split())


def test_scenes_pack_by_rank_skipping_what_does_not_fit():
    scenes = ["one two three", "a b c d e f g h i j", "x y", "p q r s"]
    story, packed, skipped, used = pack_scenes(scenes, "heading:", " ###", budget=13, count_tokens=words)
    assert packed == [0, 2, 3] and skipped == [1]  # the 2nd is too long for what is left; the 3rd and 4th still fit
    assert used == 1 + 4 + 3 + 5 and story == "heading:one two three ###x y ###p q r s ###"


def test_history_keeps_the_newest_contiguous_exchanges_and_never_overflows():
    history = [Exchange("u1 u1", "r1"), Exchange("u2", "r2 r2 r2"), Exchange("u3", "r3")]
    assert pack_history(history, budget=6, count_tokens=words) == 2
    assert pack_history(history, budget=5, count_tokens=words) == 1  # the 2nd newest would overflow: stop there
    long_last = [*history, Exchange("w " * 50, "r")]
    assert pack_history(long_last, budget=20, count_tokens=words) == 0  # ChatHaruhi sent everything here


def test_compose_orders_system_scenes_history_query():
    history = [Exchange("JULIET: hi", "ROMEO says hi"), Exchange("JULIET: again", "once more")]
    prompt = compose(
        "You are Romeo.",
        ["scene A", "scene B"],
        history,
        "JULIET: where art thou?",
        count_tokens=words,
        config=PromptConfig(max_story_tokens=100, max_history_tokens=5),
    )
    roles = [m["role"] for m in prompt.messages]
    assert roles == ["system", "user", "assistant", "user"]
    assert prompt.messages[0]["content"].startswith("You are Romeo.\n\nClassic scenes")
    assert "scene A\n###\nscene B" in prompt.messages[0]["content"]
    assert prompt.messages[1:3] == [
        {"role": "user", "content": "JULIET: again"},
        {"role": "assistant", "content": "once more"},
    ]
    assert prompt.history_kept == 1 and prompt.tokens["history"] == 4
    assert prompt.messages[-1]["content"] == "JULIET: where art thou?"


def test_chinese_template_formats_queries_with_brackets():
    from omnimm_plugins.haruhi.prompt import TEMPLATES, format_query

    assert format_query("你好", "阿虚", TEMPLATES["zh"]) == "阿虚:「你好」"
    assert format_query("hello", "", TEMPLATES["en"]) == "hello"


# -- sessions -------------------------------------------------------------------------------------------------------

TINY_LLAMA = {
    "name": "hf/causal-lm",
    "config": {
        "model_type": "llama",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
    "tokenizer": "bytes",
}


def test_session_with_a_local_llm_counts_with_its_tokenizer_and_resumes(tmp_path: Path, romeo: Character, minilm):
    import torch

    torch.manual_seed(0)
    config = {
        "character": str(romeo.folder),
        "llm": TINY_LLAMA,
        "prompt": {"top_k": 2, "max_story_tokens": 400},
        "generation": {"max_new_tokens": 4},
        "user_role": "JULIET",
    }
    session = RolePlaySession.from_config(config, encoder=minilm)
    reply = session.ask("Wherefore art thou sad?")
    system = reply.prompt.messages[0]["content"]
    assert reply.prompt.tokens["story"] == len(system.encode()) - len(romeo.system_prompt.encode())  # bytes tokens
    assert reply.prompt.messages[-1]["content"] == "JULIET: Wherefore art thou sad?"
    assert [h.rank for h in reply.hits] == [0, 1]
    session.save(tmp_path / "session.json")
    resumed = RolePlaySession.resume(tmp_path / "session.json", encoder=minilm, llm_config=TINY_LLAMA)
    assert resumed.history == session.history and resumed.config == session.config


def test_session_with_an_openai_server_sends_history_and_scenes(romeo: Character, minilm):
    with openai_server() as server:
        config = {
            "character": str(romeo.folder),
            "llm": {"name": "openai/chat", "base_url": server.url, "model": "romeo"},
            "prompt": {"top_k": 1},
        }
        session = RolePlaySession.from_config(config, encoder=minilm)
        first = session.ask("Why are your hours so long?")
        assert first.text == "reply 1 to: Why are your hours so long?"
        session.ask("Will you dance?")
        sent = server.requests[1]["messages"]
        assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
        assert sent[2]["content"] == first.text and "Classic scenes" in sent[0]["content"]
        assert first.hits[0].text in server.requests[0]["messages"][0]["content"]


def test_session_refuses_an_index_built_with_another_encoder(romeo: Character):
    with pytest.raises(StoreError, match=r"indexed with .* but the session's encoder is"):
        RolePlaySession.from_config(
            {"character": str(romeo.folder), "encoder": {"name": "hf/sentence-encoder", "pooling": "cls"}}
        )


def test_session_without_llm_composes_but_does_not_answer(romeo: Character, minilm):
    session = RolePlaySession.from_config({"character": str(romeo.folder)}, encoder=minilm)
    prompt, hits = session.prepare("what light through yonder window breaks")
    assert hits[0].text.endswith("JULIET:\nAy me!") and prompt.scenes[0] == 0
    with pytest.raises(RuntimeError, match="no LLM"):
        session.ask("hello")


# -- command line ---------------------------------------------------------------------------------------------------


def run_cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIMM_")}
    return subprocess.run(
        [str(OMNIMM), *map(str, args)], input=stdin, capture_output=True, text=True, cwd=REPO, env=env, timeout=300
    )


def test_cli_builds_searches_and_chats_with_a_served_model(tmp_path: Path, script: Path):
    folder = tmp_path / "ROMEO"
    built = run_cli("haruhi", "import-script", script, "ROMEO", "--out", folder, "--window", "3")
    assert built.returncode == 0, built.stderr
    assert "ROMEO with 4 scenes" in built.stdout and "4 memories indexed (flat, dim 384)" in built.stdout
    found = run_cli("haruhi", "search", folder, "yonder window", "-k", "2")
    assert found.returncode == 0, found.stderr
    first, second = found.stdout.splitlines()
    assert first.startswith("#1") and "He jests at scars" in first and second.startswith("#2")
    session = tmp_path / "chat.json"
    with openai_server() as server:
        chat = run_cli(
            "haruhi", "chat", folder, "--endpoint", server.url, "--model", "r", "--session", session,
            "--role", "JULIET", "--show-prompt", stdin="Who goes there?\n/exit\n",
        )  # fmt: skip
        assert chat.returncode == 0, chat.stderr
        assert "ROMEO: reply 1 to: JULIET: Who goes there?" in chat.stdout
        assert "--- prompt (history: 0 exchanges)" in chat.stdout
        resumed = run_cli("haruhi", "chat", "--session", session, "--endpoint", server.url, stdin="And now?\n")
        assert resumed.returncode == 0, resumed.stderr
        assert [m["role"] for m in server.requests[-1]["messages"]] == ["system", "user", "assistant", "user"]
    saved = json.loads(session.read_text())
    assert [h["user"] for h in saved["history"]] == ["JULIET: Who goes there?", "JULIET: And now?"]


def received_session(tmp_path: Path, romeo: Character, minilm, base_url: str) -> Path:
    """A session file as someone else could write it: its backend names their server and a key variable."""
    path = tmp_path / "received.json"
    RolePlaySession.from_config({"character": str(romeo.folder)}, encoder=minilm).save(path)
    data = json.loads(path.read_text())
    data["config"]["llm"] = {
        "name": "openai/chat", "base_url": base_url, "model": "m", "api_key_env": "HARUHI_TEST_API_KEY"
    }  # fmt: skip
    path.write_text(json.dumps(data))
    return path


def test_resume_never_builds_the_backend_a_session_file_names(tmp_path: Path, romeo: Character, minilm, monkeypatch):
    monkeypatch.setenv("HARUHI_TEST_API_KEY", "sk-secret")
    with openai_server() as stranger, openai_server() as own:
        path = received_session(tmp_path, romeo, minilm, stranger.url)
        resumed = RolePlaySession.resume(path, encoder=minilm)
        assert resumed.llm is None and resumed.config.llm is None
        mine = {"name": "openai/chat", "base_url": own.url, "model": "mine"}
        answered = RolePlaySession.resume(path, encoder=minilm, llm_config=mine)
        assert answered.ask("Hello?").text == "reply 1 to: Hello?"
        assert stranger.seen == [] and own.requests[0]["model"] == "mine"


@pytest.mark.timeout(600)
def test_cli_chat_resumed_from_a_received_file_talks_only_to_the_users_backend(
    tmp_path: Path, romeo: Character, minilm, monkeypatch
):
    monkeypatch.setenv("HARUHI_TEST_API_KEY", "sk-secret")  # inherited by the subprocesses
    with openai_server() as stranger, openai_server() as own:
        path = received_session(tmp_path, romeo, minilm, stranger.url)
        unused = run_cli("haruhi", "chat", "--session", path, stdin="Hello?\n")
        assert unused.returncode == 0, unused.stderr
        assert f"the saved llm (openai/chat at {stranger.url}) is not used" in unused.stderr
        assert "no LLM configured" in unused.stdout
        mine = run_cli("haruhi", "chat", "--session", path, "--endpoint", own.url, stdin="Hello?\n")
        assert mine.returncode == 0, mine.stderr
        assert "ROMEO: reply 1 to: Hello?" in mine.stdout
        assert stranger.seen == []  # neither the conversation nor the key went there


@pytest.mark.timeout(600)
def test_cli_chat_survives_a_failed_turn_and_saves_the_good_one(tmp_path: Path, romeo: Character):
    session = tmp_path / "chat.json"
    with openai_server() as server:
        server.fail_with = [400]  # not retried: the first turn fails, the second is answered
        chat = run_cli(
            "haruhi", "chat", romeo.folder, "--endpoint", server.url, "--session", session,
            stdin="First?\nSecond?\n",
        )  # fmt: skip
        assert [m["role"] for m in server.requests[1]["messages"]] == ["system", "user"]  # no failed turn in it
    assert chat.returncode == 1  # some turn failed
    errors = [line for line in chat.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "HTTP 400" in errors[0] and "Traceback" not in chat.stderr, chat.stderr
    assert "ROMEO: reply 2 to: Second?" in chat.stdout
    saved = json.loads(session.read_text())
    assert [(h["user"], h["reply"]) for h in saved["history"]] == [("Second?", "reply 2 to: Second?")]


def test_cli_chat_without_llm_prints_the_prompt_and_export_import_round_trip(tmp_path: Path, romeo: Character):
    shown = run_cli("haruhi", "chat", romeo.folder, "--no-llm", stdin="dancing shoes\n")
    assert shown.returncode == 0, shown.stderr
    assert "no LLM configured" in shown.stdout and "[system]\nYou are ROMEO." in shown.stdout
    exported = run_cli("haruhi", "export-jsonl", romeo.folder, tmp_path / "romeo.jsonl")
    assert exported.returncode == 0, exported.stderr
    imported = run_cli("haruhi", "import-jsonl", tmp_path / "romeo.jsonl", "--out", tmp_path / "copy")
    assert imported.returncode == 0, imported.stderr
    copy = Character.load(tmp_path / "copy")
    assert [c.text for c in copy.chunks] == [c.text for c in romeo.chunks] and copy.name == "ROMEO"


def test_cli_reports_a_damaged_index_in_one_line(tmp_path: Path, romeo: Character):
    (romeo.folder / "index" / "memories-1.jsonl").write_text("garbage\n")
    result = run_cli("haruhi", "search", romeo.folder, "light")
    assert result.returncode != 0
    assert "memories-1.jsonl" in result.stderr and "Traceback" not in result.stderr


def test_demo_without_llm_builds_romeo_and_shows_prompts(tmp_path: Path):
    result = run_cli("demo", "haruhi", "--no-llm", "--workdir", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ROMEO: 72 scenes from romeo_and_juliet.txt" in result.stdout  # a wordless speaker swallows no line
    assert result.stdout.count("--- composed prompt ---") == 3
    assert (tmp_path / "ROMEO" / "index" / "manifest.json").is_file()


# -- retrieval evaluation -----------------------------------------------------------------------------------------


def test_held_out_lines_point_at_their_scene_and_recall_counts_by_hand():
    turns = parse_turns(SCRIPT)
    task = held_out_task(turns, "ROMEO", window=3, min_words=6)
    assert task.queries[0] == "Ay me! sad hours seem long.\nWas that my father that went hence so fast?"
    assert task.targets[0] == 0 and "Ay me! sad" not in task.reduced[0] and "Ay me! sad" in task.scenes[0]
    assert recall_at_k([[2, 0, 1], [1, 2, 0]], [0, 0], ks=(1, 2, 3)) == {
        "recall@1": 0.0,
        "recall@2": 0.5,
        "recall@3": 1.0,
    }
    bm25 = bm25_ranker(depth=4)(task)
    assert len(bm25) == len(task.queries) and all(len(set(r)) == len(r) for r in bm25)
    assert len(random_ranker(depth=2)(task)[0]) == 2


@requires_shared
def test_dense_and_bm25_retrieval_beat_random_on_a_real_character(minilm):
    from omnimm_plugins.haruhi.evaluate import dense_ranker, evaluate_rankers

    turns = read_turns(SHARED / "data" / "tinyshakespeare" / "input.txt")
    task = held_out_task(turns, "JULIET", max_queries=40)
    results = evaluate_rankers(task, {"dense": dense_ranker(minilm), "bm25": bm25_ranker(), "random": random_ranker()})
    assert results["queries"] == 40
    recall = {name: results[name]["recall@10"] for name in ("dense", "bm25", "random")}  # about 0.55, 0.55, 0.125
    assert recall["dense"] > recall["random"] + 0.2 and recall["bm25"] > recall["random"] + 0.2, recall


def test_config_file_for_a_session_validates_with_field_paths(tmp_path: Path):
    from omnimm import ConfigError, load_config
    from omnimm_plugins.haruhi.configs import SessionConfig

    path = tmp_path / "session.yaml"
    path.write_text(
        textwrap.dedent("""\
        character: ROMEO
        llm:
          name: openai/chat
          base_url: ftp://x
          model: m
        prompt:
          max_story_tokens: -1
    """)
    )
    with pytest.raises(ConfigError) as error:
        load_config(path, SessionConfig)
    text = str(error.value)
    assert "llm.base_url" in text and "prompt.max_story_tokens" in text and ":4:" in text


def test_a_chatharuhi_file_with_a_placeholder_config_takes_its_language_from_the_text(tmp_path: Path):
    vector = encode_vector(unit(1, 4)[0])
    rows = [
        {"text": "你是凉宫春日，SOS团的团长。", "luotuo_openai": "system_prompt"},
        {"text": "Reserve Config Setting Here", "luotuo_openai": "config"},  # what ChatHaruhi's files hold
        {"text": "阿虚:「你在干什么？」\n春日:「我在找外星人！」", "luotuo_openai": vector},
    ]
    path = tmp_path / "haruhi.jsonl"
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    assert Character.from_chatharuhi(path)[0].language == "zh"
    rows[0]["text"], rows[2]["text"] = "You are Haruhi.", 'KYON: "What are you doing?"'
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    assert Character.from_chatharuhi(path)[0].language == "en"
