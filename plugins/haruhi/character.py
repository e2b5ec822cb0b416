"""Character packages: a system prompt, story chunks and a persisted index, in one folder.

```
ROMEO/
  character.json        name, language, where it came from
  system_prompt.txt     who the character is
  chunks.jsonl          one scene per line: {"text": ..., "meta": {...}}   (or texts/*.txt, one scene per file)
  index/                the memory store (manifest.json + index + memories; see `store.py`): one memory per
                        window of a scene's tokens, searched through `SceneMemory` (a scene ranks by its best window)
  cache/                embeddings by content hash, one safetensors file per encoder
```

Also reads and writes ChatHaruhi's JSONL character format: a `system_prompt` row, a `config` row, then one row per
chunk with its embedding as base64 of big-endian float32 (ChatHaruhi packs with `struct.pack('!f')`). A file may
carry several embedding columns (e.g. `luotuo_openai` and `bge_zh_s15`): one is read, the others are ignored.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from omnimm.config import ComponentConfig
from omnimm.errors import StoreError
from omnimm.files import atomic_write_text, read_utf8
from omnimm_plugins.haruhi.configs import MemoryStoreConfig
from omnimm_plugins.haruhi.embeddings import SceneWindows

CHARACTER_FILE = "character.json"
SYSTEM_PROMPT = "system_prompt.txt"
CHUNKS = "chunks.jsonl"
TEXTS = "texts"
INDEX = "index"
CACHE = "cache"
ROLE_VALUES = ("system_prompt", "config")  # what ChatHaruhi puts in the embedding column of its two header rows
DEFAULT_WINDOWS: SceneWindows | None = None
"""Each scene embedded once with all the encoder's positions: better on dev than any window setting tried (see the
docs' "Retrieval quality"); windows are opt-in (`SceneWindows`, `--window-tokens`)."""
_SCENE, _WINDOW, _SPAN = "_scene", "_window", "_span"  # memory meta of a window (stripped from search hits)


class PackageError(StoreError, ValueError):
    """A character package or ChatHaruhi file that cannot be read: the message names the file, the line and why."""


@dataclass
class Chunk:
    text: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Character:
    name: str
    system_prompt: str
    chunks: list[Chunk]
    language: str = "en"
    info: dict[str, Any] = field(default_factory=dict)
    """Free-form provenance (source file, window size, ...)."""
    folder: Path | None = None

    # -- folders --------------------------------------------------------------------------------------------------

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> Character:
        """Read a character folder. Raises FileNotFoundError / `PackageError` naming the file and line at fault."""
        root = Path(folder)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such character folder")
        prompt_path = root / SYSTEM_PROMPT
        if not prompt_path.is_file():
            raise FileNotFoundError(f"{prompt_path}: missing (every character needs a system prompt)")
        info: dict[str, Any] = {}
        if (root / CHARACTER_FILE).is_file():
            info = _read_json_object(root / CHARACTER_FILE)
        chunks = _read_chunks(root)
        if not chunks:
            raise PackageError(f"{root}: no story chunks (add {CHUNKS} or {TEXTS}/*.txt)")
        return cls(
            name=str(info.pop("name", root.name)),
            system_prompt=read_text(prompt_path).strip(),
            chunks=chunks,
            language=str(info.pop("language", "en")),
            info=info,
            folder=root,
        )

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write `character.json`, `system_prompt.txt` and `chunks.jsonl` (each atomically)."""
        root = Path(folder)
        root.mkdir(parents=True, exist_ok=True)
        meta = {"name": self.name, "language": self.language, **self.info}
        atomic_write_text(root / CHARACTER_FILE, json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
        atomic_write_text(root / SYSTEM_PROMPT, self.system_prompt + "\n")
        lines = (json.dumps({"text": c.text, "meta": c.meta}, ensure_ascii=False) for c in self.chunks)
        atomic_write_text(root / CHUNKS, "".join(line + "\n" for line in lines))
        self.folder = root
        return root

    def _require_folder(self) -> Path:
        if self.folder is None:
            raise ValueError(f"character {self.name!r} has no folder yet; save() it first")
        return self.folder

    # -- index ----------------------------------------------------------------------------------------------------

    def index(
        self,
        encoder: ComponentConfig | dict[str, Any] | None = None,
        store: MemoryStoreConfig | None = None,
        *,
        windows: SceneWindows | None = DEFAULT_WINDOWS,
        progress: bool = False,
        batch_size: int = 64,
        built_encoder: Any = None,
    ) -> SceneMemory:
        """Embed the chunks (cached by content) and bring `index/` up to date; returns the store.

        `windows` set: each chunk is cut into overlapping windows of the encoder's tokens and every window is a
        memory; search ranks chunks by their best window. None (the default): one embedding per chunk, of its first
        `max_length` tokens (512 for the default encoder).
        An existing index built with the same encoder, windows and index kind is updated in place: windows that are
        gone are deleted, new ones added, unchanged ones untouched. Otherwise the index is rebuilt (embeddings still
        come from the cache when the encoder is the same).
        """
        from omnimm_plugins.haruhi.embeddings import (
            EmbeddingCache,
            build_encoder,
            describe_model,
            embed_texts,
            encoder_config,
        )
        from omnimm_plugins.haruhi.store import FaissMemory

        root = self._require_folder()
        config = encoder_config(encoder)
        model = describe_model(config)
        encoder_module = built_encoder if built_encoder is not None else build_encoder(config)
        if windows is not None:
            window, stride, unit = windows.resolve(encoder_module)
            model = {**model, "scenes": {"window": window, "stride": stride, "unit": unit}}
        store_config = store or MemoryStoreConfig()
        memory = self._reusable_store(model, store_config) or FaissMemory(store_config, model=model)
        wanted = self._windows(encoder_module, model.get("scenes"))
        memory.delete([i for i in memory.ids() if i not in wanted])
        new = {i: w for i, w in wanted.items() if i not in memory}
        if new:
            cache = EmbeddingCache.for_model(root / CACHE, describe_model(config))
            vectors = embed_texts(
                encoder_module,
                [w.text for w in new.values()],
                cache=cache,
                batch_size=batch_size,
                progress=progress,
                description=f"embedding {self.name}",
            )
            cache.save()
            memory.compact()  # explicit ids may not reuse an HNSW tombstone's
            memory.add(vectors, [w.scene for w in new.values()], ids=list(new), meta=[w.meta for w in new.values()])
        memory.save(root / INDEX)
        return SceneMemory(memory)

    def _windows(self, encoder: Any, scenes: dict[str, Any] | None) -> dict[int, _Window]:
        """The memories the chunks make, by id: a chunk that fits in one window keeps its own text's id."""
        from omnimm_plugins.haruhi.embeddings import window_spans
        from omnimm_plugins.haruhi.store import text_id

        wanted: dict[int, _Window] = {}
        for chunk in self.chunks:
            scene = text_id(chunk.text)
            spans = [(0, len(chunk.text))]
            if scenes is not None:
                spans = window_spans(chunk.text, encoder, scenes["window"], scenes["stride"])
            for number, (start, end) in enumerate(spans):
                tag = f"{scenes['window']}/{scenes['stride']}/{number}" if len(spans) > 1 and scenes else ""
                memory_id = text_id(f"{tag}\x00{chunk.text}") if tag else scene
                meta = {**chunk.meta, _SCENE: scene, _WINDOW: number, _SPAN: [start, end]}
                wanted.setdefault(memory_id, _Window(chunk.text, chunk.text[start:end], meta))
        return wanted

    def open_store(self, *, expect_model: Any = None, config: MemoryStoreConfig | None = None) -> SceneMemory:
        """Load `index/`; `StoreError` when it is missing, damaged, or built with another encoder (`expect_model`:
        the encoder's `describe_model`)."""
        from omnimm_plugins.haruhi.store import FaissMemory

        root = self._require_folder()
        if not (root / INDEX / "manifest.json").is_file():
            raise StoreError(f"{root / INDEX}: no index yet; build it with `omnimm haruhi index {root}`")
        memory = SceneMemory(FaissMemory.load(root / INDEX, config=config))
        if expect_model is not None and memory.model != expect_model:
            raise StoreError(
                f"{root / INDEX}: the store was built with model {memory.model!r}, not {expect_model!r}; "
                f"re-index with the configured encoder (cached embeddings are reused)"
            )
        return memory

    def _reusable_store(self, model: Any, config: MemoryStoreConfig) -> Any:
        from omnimm_plugins.haruhi.store import FaissMemory

        path = self._require_folder() / INDEX
        if not (path / "manifest.json").is_file():
            return None
        try:
            existing = FaissMemory.load(path)
        except StoreError:
            return None  # damaged: rebuild (the embeddings cache makes that cheap)
        if existing.model != model or existing.config.index != config.index:
            return None
        existing.config = config
        return existing

    # -- ChatHaruhi's JSONL ---------------------------------------------------------------------------------------

    def export_chatharuhi(
        self, path: str | os.PathLike[str], vectors: np.ndarray, *, embedding_key: str, model: Any = None
    ) -> Path:
        """Write ChatHaruhi's JSONL: system prompt row, config row (our model description as JSON), chunk rows."""
        if len(vectors) != len(self.chunks):
            raise ValueError(f"got {len(vectors)} vectors for {len(self.chunks)} chunks")
        rows = [
            {"text": self.system_prompt, embedding_key: "system_prompt"},
            {
                "text": json.dumps({"name": self.name, "language": self.language, "model": model}),
                embedding_key: "config",
            },
        ]
        rows += [{"text": c.text, embedding_key: encode_vector(v)} for c, v in zip(self.chunks, vectors, strict=True)]
        return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))

    @classmethod
    def from_chatharuhi(
        cls,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        embedding_key: str | None = None,
        prefer_dim: int | None = None,
    ) -> tuple[Character, np.ndarray]:
        """Read ChatHaruhi's JSONL: the character and the stored embeddings (`[n, dim]`, float32).

        With several embedding columns, the one read is `embedding_key`, else the only one whose vectors have
        `prefer_dim` values (the encoder's), else the first; `info` records it (`embedding_key`) and the others
        (`ignored_embedding_keys`)."""
        source = Path(path)
        rows = [(f"{source}:{n}", _json_row(line, f"{source}:{n}")) for n, line in _lines(source) if line.strip()]
        keys = _embedding_columns(rows, source)
        key = _choose_column(rows, keys, embedding_key, prefer_dim, source)
        system_prompt: str | None = None
        settings: dict[str, Any] = {}
        chunks: list[Chunk] = []
        vectors: list[np.ndarray] = []
        for where, row in rows:
            if key not in row or not isinstance(row.get("text"), str):
                raise PackageError(f"{where}: expected 'text' and '{key}' fields, got {sorted(row)}")
            value = row[key]
            if value == "system_prompt":
                system_prompt = row["text"]
            elif value == "config":
                settings = _config_row(row["text"])
            else:
                chunks.append(Chunk(row["text"]))
                vectors.append(decode_vector(value, where))
        if system_prompt is None:
            raise PackageError(f"{source}: no system_prompt row")
        if not chunks:
            raise PackageError(f"{source}: no chunk rows (only the system prompt and config); nothing to retrieve")
        dims = {len(v) for v in vectors}
        if len(dims) > 1:
            raise PackageError(f"{source}: embeddings of different lengths {sorted(dims)} in '{key}'")
        character = cls(
            name=name or str(settings.get("name") or source.stem),
            system_prompt=system_prompt.strip(),
            chunks=chunks,
            language=str(settings.get("language") or guess_language([system_prompt, *(c.text for c in chunks[:200])])),
            info={"source": str(source), "format": "chatharuhi-jsonl", "embedding_key": key},
        )
        if len(keys) > 1:
            character.info["ignored_embedding_keys"] = [k for k in keys if k != key]
        return character, np.stack(vectors)


def guess_language(texts: Iterable[str]) -> str:
    """`zh` when Han characters make up a fifth or more of the letters, else `en`: ChatHaruhi's files do not say
    their language (their config row is a placeholder), and its characters are Chinese or English."""
    han = letters = 0
    for text in texts:
        for char in text:
            if char.isalpha():
                letters += 1
                han += "\u4e00" <= char <= "\u9fff" or "\u3400" <= char <= "\u4dbf"
    return "zh" if letters and han / letters >= 0.2 else "en"


@dataclass(frozen=True)
class _Window:
    scene: str
    """The whole chunk's text (what a hit returns)."""
    text: str
    """The window's text (what is embedded)."""
    meta: dict[str, Any]


class SceneMemory:
    """A character's memory store seen as scenes: `search` ranks each scene by its best window, once per scene.

    Everything else (`save`, `config`, `dim`, `kind`, `calibration`, ...) is the underlying `FaissMemory`'s
    (`.windows`); `len`, `ids` and `in` count scenes, and `model` is the encoder's description (the window sizes
    are under `scenes`)."""

    def __init__(self, memory: Any) -> None:
        self.windows = memory

    def __getattr__(self, name: str) -> Any:
        return getattr(self.windows, name)

    @property
    def model(self) -> Any:
        model = self.windows.model
        return {k: v for k, v in model.items() if k != "scenes"} if isinstance(model, dict) else model

    @property
    def scenes(self) -> dict[str, Any] | None:
        """`{window, stride, unit}` of the index, or None when each memory is a whole chunk embedded once."""
        model = self.windows.model
        return model.get("scenes") if isinstance(model, dict) else None

    def ids(self) -> list[int]:
        return list(dict.fromkeys(_scene_of(m) for m in self.windows.memories()))

    def __len__(self) -> int:
        return len(self.ids())

    def __contains__(self, scene_id: object) -> bool:
        return scene_id in set(self.ids())

    def scene_vectors(self, chunks: Sequence[Chunk], cache: Any) -> list[np.ndarray | None]:
        """One unit vector per chunk: the normalised mean of its windows' cached embeddings (None when missing)."""
        from omnimm_plugins.haruhi.embeddings import content_key
        from omnimm_plugins.haruhi.store import text_id

        windows: dict[int, list[str]] = {}
        for memory in self.windows.memories():
            start, end = memory.meta.get(_SPAN, [0, len(memory.text)])
            windows.setdefault(_scene_of(memory), []).append(memory.text[start:end])
        result: list[np.ndarray | None] = []
        for chunk in chunks:
            found = cache.lookup([content_key(t) for t in windows.get(text_id(chunk.text), [])])
            if not found or any(v is None for v in found):
                result.append(None)
                continue
            mean = np.mean(np.stack(found), axis=0)
            result.append(mean / max(float(np.linalg.norm(mean)), 1e-12))
        return result

    def search(self, queries: np.ndarray, k: int = 10, *, threads: int | None = None) -> list[list[Any]]:
        """The `k` best scenes per query (a `[dim]` vector is one query), each scored by its best window."""
        from omnimm_plugins.haruhi.store import Hit

        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        total = len(self.windows)
        depth = min(total, k * 4) or k
        while True:
            rows = self.windows.search(queries, depth, threads=threads)
            results = [_best_per_scene(row, k, Hit) for row in rows]
            if depth >= total or all(len(r) == k for r in results):
                return results
            depth = min(total, depth * 4)


def _scene_of(memory: Any) -> int:
    return int(memory.meta.get(_SCENE, memory.id))


def _best_per_scene(hits: list[Any], k: int, hit_type: Any) -> list[Any]:
    """Window hits (best first) -> the first hit of each scene, up to k, without the window bookkeeping in meta."""
    scenes: list[Any] = []
    seen: set[int] = set()
    for hit in hits:
        scene = int(hit.meta.get(_SCENE, hit.id))
        if scene in seen:
            continue
        seen.add(scene)
        meta = {key: value for key, value in hit.meta.items() if key not in (_SCENE, _WINDOW, _SPAN)}
        scenes.append(hit_type(scene, hit.score, hit.text, meta, len(scenes)))
        if len(scenes) == k:
            break
    return scenes


def encode_vector(vector: np.ndarray) -> str:
    """Base64 of big-endian float32, as ChatHaruhi stores embeddings."""
    return base64.b64encode(np.asarray(vector, dtype=">f4").tobytes()).decode("ascii")


def decode_vector(text: Any, where: str = "") -> np.ndarray:
    try:
        raw = base64.b64decode(text, validate=True)
    except (ValueError, TypeError):
        raise PackageError(f"{where}: the embedding is not base64") from None
    if len(raw) % 4:
        raise PackageError(f"{where}: the embedding has {len(raw)} bytes, not a multiple of 4 (float32)")
    return np.frombuffer(raw, dtype=">f4").astype(np.float32)


def _embedding_columns(rows: list[tuple[str, dict[str, Any]]], source: Path) -> list[str]:
    """The embedding columns, in the file's order: every field but `text` of the first row."""
    if not rows:
        raise PackageError(f"{source}: empty file (expected a system_prompt row, a config row and chunk rows)")
    where, first = rows[0]
    keys = [k for k in first if k != "text"]
    if not keys:
        raise PackageError(f"{where}: expected 'text' and an embedding field, got {sorted(first)}")
    return keys


def _choose_column(
    rows: list[tuple[str, dict[str, Any]]], keys: list[str], wanted: str | None, dim: int | None, source: Path
) -> str:
    if wanted is not None:
        if wanted not in keys:
            raise PackageError(f"{source}: no embedding column '{wanted}'; the file has {', '.join(keys)}")
        return wanted
    if len(keys) == 1 or dim is None:
        return keys[0]
    sizes = {k: _first_dim(rows, k) for k in keys}
    matching = [k for k in keys if sizes[k] == dim]
    return matching[0] if len(matching) == 1 else keys[0]


def _first_dim(rows: list[tuple[str, dict[str, Any]]], key: str) -> int | None:
    for where, row in rows:
        value = row.get(key)
        if isinstance(value, str) and value not in ROLE_VALUES:
            return len(decode_vector(value, where))
    return None


def _config_row(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}  # ChatHaruhi writes a placeholder sentence here
    return value if isinstance(value, dict) else {}


def _json_row(line: str, where: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except ValueError as error:
        raise PackageError(f"{where}: not valid JSON ({error.args[0]})") from None
    if not isinstance(row, dict):
        raise PackageError(f"{where}: expected a JSON object, got {type(row).__name__}")
    return row


def read_text(path: Path) -> str:
    """A package file's UTF-8 text; `PackageError` with the line, column and byte offset of the first bad byte."""
    return read_utf8(path, error=PackageError)


def _lines(path: Path) -> list[tuple[int, str]]:
    return list(enumerate(read_text(path).split("\n"), 1))  # not splitlines(): JSON may hold a raw U+2028


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(read_text(path))
    except ValueError as error:
        if isinstance(error, PackageError):
            raise
        raise PackageError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise PackageError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def _read_chunks(root: Path) -> list[Chunk]:
    chunks: list[Chunk] = []
    if (root / CHUNKS).is_file():
        for number, line in _lines(root / CHUNKS):
            if line.strip():
                chunks.append(_chunk_row(line, f"{root / CHUNKS}:{number}"))
    if (root / TEXTS).is_dir():
        for path in sorted((root / TEXTS).glob("*.txt")):
            text = read_text(path).strip()
            if text:
                chunks.append(Chunk(text, {"file": path.name}))
    return chunks


def _chunk_row(line: str, where: str) -> Chunk:
    row = _json_row(line, where)
    if not isinstance(row.get("text"), str) or not row["text"].strip():
        raise PackageError(f"{where}: expected a non-empty 'text' string")
    meta = row.get("meta") or {}
    if not isinstance(meta, dict):
        raise PackageError(f"{where}: 'meta' must be a JSON object, got {type(meta).__name__}")
    return Chunk(row["text"], dict(meta))


def character_from_script(
    script: str | os.PathLike[str],
    name: str,
    *,
    window: int = 6,
    system_prompt: str | None = None,
    language: str = "en",
    exclude: Sequence[int] = (),
) -> Character:
    """A character whose chunks are the script windows where it speaks (see `scripts.character_scenes`)."""
    from omnimm_plugins.haruhi.scripts import character_scenes, default_system_prompt, read_turns

    turns = read_turns(script)
    scenes = character_scenes(turns, name, window=window, exclude=frozenset(exclude))
    if not scenes:
        known = sorted({t.speaker for t in turns}, key=str.casefold)
        raise ValueError(f"{script}: {name!r} never speaks; speakers include {', '.join(known[:15])}")
    chunks = [Chunk(s.text, {"turns": [s.turns[0], s.turns[-1]]}) for s in scenes]
    return Character(
        name=name,
        system_prompt=system_prompt or default_system_prompt(name, language=language),
        chunks=chunks,
        language=language,
        info={"source": str(script), "window": window, "format": "script"},
    )
