"""Character packages: a system prompt, story chunks and a persisted index, in one folder.

```
ROMEO/
  character.json        name, language, where it came from
  system_prompt.txt     who the character is
  chunks.jsonl          one scene per line: {"text": ..., "meta": {...}}   (or texts/*.txt, one scene per file)
  index/                the memory store (manifest.json + index + memories; see `store.py`)
  cache/                embeddings by content hash, one safetensors file per encoder
```

Also reads and writes ChatHaruhi's JSONL character format: a `system_prompt` row, a `config` row, then one row per
chunk with its embedding as base64 of big-endian float32 (ChatHaruhi packs with `struct.pack('!f')`).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from omnimm.config import ComponentConfig
from omnimm.errors import StoreError
from omnimm.files import atomic_write_text
from omnimm_plugins.haruhi.configs import MemoryStoreConfig

CHARACTER_FILE = "character.json"
SYSTEM_PROMPT = "system_prompt.txt"
CHUNKS = "chunks.jsonl"
TEXTS = "texts"
INDEX = "index"
CACHE = "cache"


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
        """Read a character folder. Raises FileNotFoundError / ValueError naming the file and line at fault."""
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
            raise ValueError(f"{root}: no story chunks (add {CHUNKS} or {TEXTS}/*.txt)")
        return cls(
            name=str(info.pop("name", root.name)),
            system_prompt=prompt_path.read_text(encoding="utf-8").strip(),
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
        progress: bool = False,
        batch_size: int = 64,
        built_encoder: Any = None,
    ) -> Any:
        """Embed the chunks (cached by content) and bring `index/` up to date; returns the store.

        An existing index built with the same encoder and index kind is updated in place: chunks that are gone are
        deleted, new ones added, unchanged ones untouched. Otherwise the index is rebuilt (embeddings still come
        from the cache when the encoder is the same).
        """
        from omnimm_plugins.haruhi.embeddings import (
            EmbeddingCache,
            build_encoder,
            describe_model,
            embed_texts,
            encoder_config,
        )
        from omnimm_plugins.haruhi.store import FaissMemory, text_id

        root = self._require_folder()
        config = encoder_config(encoder)
        model = describe_model(config)
        store_config = store or MemoryStoreConfig()
        memory = self._reusable_store(model, store_config) or FaissMemory(store_config, model=model)
        wanted = {text_id(c.text): c for c in self.chunks}
        memory.delete([i for i in memory.ids() if i not in wanted])
        new = [c for i, c in wanted.items() if i not in memory]
        if new:
            cache = EmbeddingCache.for_model(root / CACHE, model)
            encoder_module = built_encoder if built_encoder is not None else build_encoder(config)
            vectors = embed_texts(
                encoder_module,
                [c.text for c in new],
                cache=cache,
                batch_size=batch_size,
                progress=progress,
                description=f"embedding {self.name}",
            )
            cache.save()
            memory.add(vectors, [c.text for c in new], meta=[c.meta for c in new])
        memory.save(root / INDEX)
        return memory

    def open_store(self, *, expect_model: Any = None, config: MemoryStoreConfig | None = None) -> Any:
        """Load `index/`; `StoreError` when it is missing, damaged, or built with another encoder."""
        from omnimm_plugins.haruhi.store import FaissMemory

        root = self._require_folder()
        if not (root / INDEX / "manifest.json").is_file():
            raise StoreError(f"{root / INDEX}: no index yet; build it with `omnimm haruhi index {root}`")
        return FaissMemory.load(root / INDEX, expect_model=expect_model, config=config)

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
    def from_chatharuhi(cls, path: str | os.PathLike[str], *, name: str | None = None) -> tuple[Character, np.ndarray]:
        """Read ChatHaruhi's JSONL: the character and the stored embeddings (`[n, dim]`, float32)."""
        source = Path(path)
        system_prompt: str | None = None
        key: str | None = None
        settings: dict[str, Any] = {}
        chunks: list[Chunk] = []
        vectors: list[np.ndarray] = []
        with open(source, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                where = f"{source}:{number}"
                row = _json_row(line, where)
                key = key or _embedding_key(row, where)
                if key not in row or not isinstance(row.get("text"), str):
                    raise ValueError(f"{where}: expected 'text' and '{key}' fields, got {sorted(row)}")
                value = row[key]
                if value == "system_prompt":
                    system_prompt = row["text"]
                elif value == "config":
                    settings = _config_row(row["text"])
                else:
                    chunks.append(Chunk(row["text"]))
                    vectors.append(decode_vector(value, where))
        if system_prompt is None:
            raise ValueError(f"{source}: no system_prompt row")
        dims = {len(v) for v in vectors}
        if len(dims) > 1:
            raise ValueError(f"{source}: embeddings of different lengths {sorted(dims)}")
        character = cls(
            name=name or str(settings.get("name") or source.stem),
            system_prompt=system_prompt.strip(),
            chunks=chunks,
            language=str(settings.get("language") or "en"),
            info={"source": str(source), "format": "chatharuhi-jsonl", "embedding_key": key},
        )
        matrix = np.stack(vectors) if vectors else np.zeros((0, 0), dtype=np.float32)
        return character, matrix


def encode_vector(vector: np.ndarray) -> str:
    """Base64 of big-endian float32, as ChatHaruhi stores embeddings."""
    return base64.b64encode(np.asarray(vector, dtype=">f4").tobytes()).decode("ascii")


def decode_vector(text: Any, where: str = "") -> np.ndarray:
    try:
        raw = base64.b64decode(text, validate=True)
    except (ValueError, TypeError):
        raise ValueError(f"{where}: the embedding is not base64") from None
    if len(raw) % 4:
        raise ValueError(f"{where}: the embedding has {len(raw)} bytes, not a multiple of 4 (float32)")
    return np.frombuffer(raw, dtype=">f4").astype(np.float32)


def _embedding_key(row: dict[str, Any], where: str) -> str:
    keys = [k for k in row if k != "text"]
    if len(keys) != 1:
        raise ValueError(f"{where}: expected 'text' and one embedding field, got {sorted(row)}")
    return keys[0]


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
        raise ValueError(f"{where}: not valid JSON ({error.args[0]})") from None
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object")
    return row


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return value


def _read_chunks(root: Path) -> list[Chunk]:
    chunks: list[Chunk] = []
    if (root / CHUNKS).is_file():
        with open(root / CHUNKS, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                row = _json_row(line, f"{root / CHUNKS}:{number}")
                if not isinstance(row.get("text"), str) or not row["text"].strip():
                    raise ValueError(f"{root / CHUNKS}:{number}: expected a non-empty 'text' string")
                chunks.append(Chunk(row["text"], dict(row.get("meta") or {})))
    if (root / TEXTS).is_dir():
        for path in sorted((root / TEXTS).glob("*.txt")):
            text = path.read_text(encoding="utf-8").strip()
            if text:
                chunks.append(Chunk(text, {"file": path.name}))
    return chunks


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
