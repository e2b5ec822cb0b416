"""haruhi retrieval: whole scenes embedded as token windows, ChatHaruhi files with several embedding columns, one-line
errors for bad packages and options, and `omnimm encode`'s line numbers."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

from omnimm import encoders
from omnimm_plugins.haruhi.character import Character, Chunk, PackageError
from omnimm_plugins.haruhi.embeddings import SceneWindows, window_spans
from omnimm_plugins.haruhi.evaluate import HeldOutTask, dense_ranker, hits_at_k, recall_interval

from .conftest import OMNIMM, Result, run

FILLER = " ".join(
    f"The {adjective} guests of Capulet drank {drink} and praised the {dish} at the long table."
    for adjective, drink, dish in zip(
        ["merry", "noble", "weary", "loud", "old", "young", "proud", "quiet", "kind", "bold"],
        ["wine", "ale", "mead", "cider", "sack", "wine", "ale", "mead", "cider", "sack"],
        ["pies", "geese", "bread", "pears", "cheese", "cakes", "figs", "plums", "soup", "fish"],
        strict=True,
    )
)  # about 180 MiniLM tokens: a scene the first 128 tokens cannot hold
TAIL = "Then Romeo climbed the orchard wall by moonlight and swore his love beneath Juliet's balcony."
SCENES = [
    f"CAPULET:\n{FILLER}\n\nROMEO:\n{TAIL}",
    "ROMEO:\nMercutio is slain; Tybalt's sword went through him in the street at noon.",
    "ROMEO:\nThe apothecary sold me poison in Mantua for forty ducats.",
]
QUERY = "Romeo climbs the orchard wall by moonlight to swear his love under the balcony"


def cli(*args: object) -> Result:
    return run([str(OMNIMM), *map(str, args)])


def one_error_line(result: Result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def minilm():
    return encoders.build({"name": "hf/sentence-encoder"})


def package(folder: Path, scenes: list[str] = SCENES) -> Path:
    Character("ROMEO", "You are ROMEO.", [Chunk(text, {"n": i}) for i, text in enumerate(scenes)]).save(folder)
    return folder


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


# -- windows ------------------------------------------------------------------------------------------------------


def test_windows_cover_every_token_with_the_stride_and_short_texts_stay_whole(minilm):
    text = SCENES[0]
    offsets = minilm.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assert len(offsets) > 150  # longer than the 126 tokens MiniLM reads (max_length 128 less [CLS] and [SEP])
    assert SceneWindows().resolve(minilm) == (126, 63, "tokens")  # the stride defaults to half the window
    spans = window_spans(text, minilm, 64, 32)
    starts = [next(i for i, o in enumerate(offsets) if o[0] == a) for a, _ in spans]
    assert starts[:-1] == list(range(0, 32 * (len(starts) - 1), 32)) and starts[-1] == len(offsets) - 64
    assert spans[-1][1] == len(text.rstrip())  # the last window ends the text
    for a, b in spans:
        assert len(minilm.tokenizer(text[a:b], add_special_tokens=False)["input_ids"]) == 64
    assert window_spans(SCENES[1], minilm, 64, 32) == [(0, len(SCENES[1]))]
    with pytest.raises(ValueError, match="longer than the 126 tokens the encoder reads"):
        SceneWindows(200).resolve(minilm)
    with pytest.raises(ValueError, match="stride 80 is longer than the window"):
        SceneWindows(64, 80).resolve(minilm)


def test_a_scene_scores_as_its_best_window_once_and_comes_back_whole(tmp_path: Path, minilm):
    character = Character.load(package(tmp_path / "ROMEO"))
    store = character.index(built_encoder=minilm, windows=SceneWindows(64, 32))
    assert len(store) == 3 and len(store.windows) > 3 and store.scenes == {"window": 64, "stride": 32, "unit": "tokens"}
    query = unit(minilm.encode([QUERY]))[0]
    pieces = [SCENES[0][a:b] for a, b in window_spans(SCENES[0], minilm, 64, 32)]
    best = float((unit(minilm.encode(pieces)) @ query).max())
    hits = store.search(query, 10)[0]
    assert hits[0].text == SCENES[0] and len(hits) == 3  # one hit per scene, the whole scene's text
    assert hits[0].score == pytest.approx(best, abs=1e-5) and hits[0].meta == {"n": 0}
    assert [h.rank for h in hits] == [0, 1, 2] and store.ids() == [
        h.id for h in sorted(hits, key=lambda h: h.meta["n"])
    ]
    truncated = Character.load(package(tmp_path / "CUT")).index(built_encoder=minilm, windows=None)
    cut = truncated.search(query, 3)[0]
    assert cut[0].text != SCENES[0]  # the first 128 tokens never reach the orchard wall
    assert cut[[h.text for h in cut].index(SCENES[0])].score < best - 0.2


def test_windowed_ranker_scores_the_held_out_scene_by_its_best_window(minilm):
    task = HeldOutTask("ROMEO", SCENES, [QUERY], [0], [SCENES[0].replace("ROMEO:\n", "NURSE:\n")])
    assert dense_ranker(minilm, windows=SceneWindows(64, 32))(task)[0][0] == 0
    assert dense_ranker(minilm)(task)[0][0] != 0


def test_recall_interval_agrees_with_scipy_bootstrap():
    from scipy.stats import bootstrap

    hits = np.asarray([1.0] * 130 + [0.0] * 70)
    mean, low, high = recall_interval(hits, samples=5000)
    reference = bootstrap((hits,), np.mean, n_resamples=5000, method="percentile", random_state=1)
    assert mean == 0.65
    assert low == pytest.approx(reference.confidence_interval.low, abs=0.015)
    assert high == pytest.approx(reference.confidence_interval.high, abs=0.015)
    assert hits_at_k([[2, 0], [1, 2]], [0, 0], 2).tolist() == [1.0, 0.0]


# -- command line -------------------------------------------------------------------------------------------------


def test_cli_indexes_whole_scenes_searches_and_exports_one_vector_per_scene(tmp_path: Path, minilm):
    folder = package(tmp_path / "ROMEO")
    built = cli("haruhi", "index", folder, "--window-tokens", "64", "--stride-tokens", "32")
    assert built.returncode == 0, built.stderr
    assert "3 memories indexed (flat, dim 384); " in built.stdout and "windows of 64 tokens, stride 32" in built.stdout
    found = cli("haruhi", "search", folder, QUERY, "-k", "5")
    assert found.returncode == 0, found.stderr
    lines = found.stdout.splitlines()
    assert len(lines) == 3 and lines[0].startswith("#1") and "CAPULET: The merry guests" in lines[0]
    zero = cli("haruhi", "search", folder, QUERY, "-k", "0")
    assert zero.returncode == 2 and one_error_line(zero) == "error: -k must be >= 1, got 0"
    exported = cli("haruhi", "export-jsonl", folder, tmp_path / "romeo.jsonl")
    assert exported.returncode == 0, exported.stderr
    rows = [json.loads(line) for line in (tmp_path / "romeo.jsonl").read_text().splitlines()]
    first = np.frombuffer(base64.b64decode(rows[2]["omnimm"]), dtype=">f4")
    pieces = [SCENES[0][a:b] for a, b in window_spans(SCENES[0], minilm, 64, 32)]
    assert np.allclose(first, unit(unit(minilm.encode(pieces)).mean(axis=0)), atol=1e-5)
    clash = cli("haruhi", "index", folder, "--truncate", "--window-tokens", "64")
    assert clash.returncode == 2 and "--truncate embeds each scene once" in one_error_line(clash)


def chatharuhi_file(path: Path, chunks: list[str]) -> Path:
    """ChatHaruhi's layout with two embedding columns: luotuo_openai (1536-d) and bge_en_s15 (384-d)."""
    rng = np.random.default_rng(0)

    def b64(dim: int) -> str:
        return base64.b64encode(rng.standard_normal(dim).astype(">f4").tobytes()).decode()

    rows = [
        {"text": "You are Haruhi.", "luotuo_openai": "system_prompt", "bge_en_s15": "system_prompt"},
        {"text": "Reserve Config Setting Here", "luotuo_openai": "config", "bge_en_s15": "config"},
    ]
    rows += [{"text": text, "luotuo_openai": b64(1536), "bge_en_s15": b64(384)} for text in chunks]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_cli_imports_two_embedding_columns_and_refuses_a_file_without_chunks(tmp_path: Path):
    source = chatharuhi_file(tmp_path / "haruhi.jsonl", ["Haruhi: I want aliens.", "Kyon: Sigh."])
    imported = cli("haruhi", "import-jsonl", source, "--out", tmp_path / "H")
    assert imported.returncode == 0, imported.stderr
    assert "read the 384-d embedding column 'bge_en_s15', ignored luotuo_openai" in imported.stdout
    loaded = Character.load(tmp_path / "H")
    assert [c.text for c in loaded.chunks] == ["Haruhi: I want aliens.", "Kyon: Sigh."]
    assert loaded.info["ignored_embedding_keys"] == ["luotuo_openai"]
    _, vectors = Character.from_chatharuhi(source, embedding_key="luotuo_openai")
    assert vectors.shape == (2, 1536)
    wrong = cli("haruhi", "import-jsonl", source, "--out", tmp_path / "W", "--embedding-key", "m3e")
    assert wrong.returncode == 1 and "no embedding column 'm3e'; the file has luotuo_openai, bge_en_s15" in (
        one_error_line(wrong)
    )
    empty = cli("haruhi", "import-jsonl", chatharuhi_file(tmp_path / "e.jsonl", []), "--out", tmp_path / "E")
    assert empty.returncode == 1 and "e.jsonl: no chunk rows" in one_error_line(empty)
    assert not (tmp_path / "E").exists()


def test_cli_reports_bad_package_files_in_one_line(tmp_path: Path):
    folder = package(tmp_path / "P")
    (folder / "chunks.jsonl").write_text('{"text": "a"}\n{"text": "b", "meta": [1, 2]}\n', encoding="utf-8")
    meta = cli("haruhi", "index", folder)
    assert meta.returncode == 1 and "chunks.jsonl:2: 'meta' must be a JSON object, got list" in one_error_line(meta)
    (folder / "chunks.jsonl").write_bytes(b'{"text": "a"}\n{"text": "caf\xe9"}\n')
    latin = cli("haruhi", "search", folder, "hello")
    assert "chunks.jsonl:2: not UTF-8 text (byte 0xe9 at column 14, offset 27)" in one_error_line(latin)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("chunks.jsonl", b'{"text": "a"}\n{"text": \n', r"chunks\.jsonl:2: not valid JSON"),
        ("chunks.jsonl", b'{"text": "a"}\n["a"]\n', r"chunks\.jsonl:2: expected a JSON object, got list"),
        ("character.json", b'["ROMEO"]', r"character\.json: expected a JSON object, got list"),
        (
            "character.json",
            b'{"name": "R\xff"}',
            r"character\.json:1: not UTF-8 text \(byte 0xff at column 12, offset 11\)",
        ),
        (
            "system_prompt.txt",
            b"You are\n\x80",
            r"system_prompt\.txt:2: not UTF-8 text \(byte 0x80 at column 1, offset 8\)",
        ),
        ("texts/a.txt", b"\xfe", r"a\.txt:1: not UTF-8 text"),
    ],
)
def test_character_load_names_the_file_and_line(tmp_path: Path, name: str, content: bytes, message: str):
    folder = package(tmp_path / "P")
    (folder / name).parent.mkdir(exist_ok=True)
    (folder / name).write_bytes(content)
    with pytest.raises(PackageError, match=message) as caught:
        Character.load(folder)
    assert "\n" not in str(caught.value)


# -- omnimm encode ------------------------------------------------------------------------------------------------


def test_encode_writes_line_numbers_beside_the_rows_and_reports_bad_bytes(tmp_path: Path):
    from safetensors.numpy import load_file
    from sentence_transformers import SentenceTransformer

    from omnimm.sentence.encoder import default_model_path

    source = tmp_path / "sentences.txt"
    source.write_text("A cat sat.\n\n   \nA dog ran.\nThe sun rose.\n\n", encoding="utf-8")
    done = cli("encode", "minilm", source, "--out", tmp_path / "out.safetensors")
    assert done.returncode == 0, done.stderr
    assert "3 x 384 embeddings" in done.stdout and "2 blank lines skipped" in done.stdout
    tensors = load_file(str(tmp_path / "out.safetensors"))
    assert tensors["line"].tolist() == [1, 4, 5]
    reference = SentenceTransformer(default_model_path(), device="cpu")
    expected = reference.encode(["A cat sat.", "A dog ran.", "The sun rose."], normalize_embeddings=True)
    assert np.allclose(tensors["embeddings"], expected, atol=1e-5)
    source.write_bytes(b"A cat sat.\nA caf\xe9.\n")
    bad = cli("encode", "minilm", source, "--out", tmp_path / "bad.safetensors")
    assert bad.returncode == 1 and one_error_line(bad).endswith(
        "sentences.txt:2: not UTF-8 text (byte 0xe9 at column 6, offset 16); save it as UTF-8"
    )
    assert not (tmp_path / "bad.safetensors").exists()
