"""News items of the four subclasses (HR, HF, MR, MF), their loaders, and a split that keeps `id` groups together.

Subclasses: human-written real (HR), human-written fake (HF), machine-written real (MR), machine-written fake (MF).
Machine items paraphrase human items and share their `id`; splitting by `id` keeps a story and its paraphrases on
one side, so no paraphrase leaks from training into the test set.
"""

from __future__ import annotations

import csv
import json
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from omnimm.errors import ConfigError, ConfigIssue

Subclass = Literal["HR", "HF", "MR", "MF"]
SUBCLASSES: tuple[Subclass, ...] = ("HR", "HF", "MR", "MF")
_FIELDS = ("id", "title", "description", "text")


@dataclass(frozen=True)
class NewsItem:
    id: str
    subclass: Subclass
    text: str
    title: str = ""
    description: str = ""

    @property
    def fake(self) -> bool:
        return self.subclass in ("HF", "MF")

    @property
    def machine(self) -> bool:
        return self.subclass in ("MR", "MF")

    @property
    def label(self) -> int:
        """1 = fake, 0 = real."""
        return int(self.fake)

    def content(self, max_chars: int | None = None) -> str:
        """Title, description and text as one string (what detectors read)."""
        joined = "\n".join(part for part in (self.title, self.description, self.text) if part)
        return joined if max_chars is None else joined[:max_chars]


def load_four_subclass(folder: str | os.PathLike[str]) -> list[NewsItem]:
    """`{HR,HF,MR,MF}.json` in `folder`, each an object index -> `{id, title, description, text}`.

    Every malformed record is reported (file and key) in one `ConfigError`.
    """
    root = Path(folder)
    items: list[NewsItem] = []
    issues: list[ConfigIssue] = []
    for subclass in SUBCLASSES:
        path = root / f"{subclass}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (expected HR.json, HF.json, MR.json and MF.json in {root})")
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as error:
            raise ConfigError([ConfigIssue("", f"not valid JSON: {error}")], source=str(path)) from None
        if not isinstance(records, dict):
            raise ConfigError([ConfigIssue("", "expected an object of index -> record")], source=str(path))
        for key, record in records.items():
            problem = _record_problem(record)
            if problem:
                issues.append(ConfigIssue(f"{path.name}[{key!r}]", problem))
                continue
            items.append(_item(record, subclass))
    if issues:
        raise ConfigError(issues[:20], title=f"news records in {root}")
    return items


def load_records(path: str | os.PathLike[str]) -> list[NewsItem]:
    """A CSV or JSONL of records with `id`, `subclass` (HR/HF/MR/MF) and `text` (`title`, `description` optional):
    bring GossipCop++ or your own data. Problems are reported with file and line."""
    source = Path(path)
    rows: Iterable[tuple[int, object]]
    if source.suffix.lower() == ".jsonl":
        rows = _jsonl_rows(source)
    elif source.suffix.lower() in (".csv", ".tsv"):
        with open(source, encoding="utf-8", newline="") as handle:
            delimiter = "\t" if source.suffix.lower() == ".tsv" else ","
            rows = [(number, row) for number, row in enumerate(csv.DictReader(handle, delimiter=delimiter), start=2)]
    else:
        raise ValueError(f"{source}: expected a .csv, .tsv or .jsonl file")
    items, issues = [], []
    for number, record in rows:
        subclass = record.get("subclass") if isinstance(record, dict) else None
        problem = _record_problem(record, required=("id", "text")) or (
            None if subclass in SUBCLASSES else f"subclass: expected one of HR, HF, MR, MF, got {subclass!r}"
        )
        if problem:
            issues.append(ConfigIssue("", problem, line=number))
            continue
        items.append(_item(record, subclass))  # type: ignore[arg-type]
    if issues:
        raise ConfigError(issues[:20], source=str(source), title="news records")
    return items


def _jsonl_rows(source: Path) -> list[tuple[int, object]]:
    rows = []
    for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append((number, json.loads(line)))
            except ValueError as error:
                rows.append((number, f"not valid JSON: {error}"))
    return rows


def _record_problem(record: object, required: Sequence[str] = ("id", "text")) -> str | None:
    if not isinstance(record, dict):
        return record if isinstance(record, str) else "expected an object"
    for name in required:
        value = record.get(name)
        if not isinstance(value, str) or not value.strip():
            return f"{name}: missing or empty"
    for name in ("title", "description"):
        if record.get(name) is not None and not isinstance(record.get(name), str):
            return f"{name}: expected a string"
    return None


def _item(record: dict, subclass: Subclass) -> NewsItem:
    return NewsItem(
        id=record["id"].strip(),
        subclass=subclass,
        text=record["text"],
        title=record.get("title") or "",
        description=record.get("description") or "",
    )


@dataclass(frozen=True)
class Split:
    train: list[NewsItem]
    validation: list[NewsItem]
    test: list[NewsItem]

    def manifest(self) -> dict[str, dict[str, int]]:
        return {name: count_subclasses(part) for name, part in self.parts().items()}

    def parts(self) -> dict[str, list[NewsItem]]:
        return {"train": self.train, "validation": self.validation, "test": self.test}


def group_split(items: Sequence[NewsItem], *, test: float = 0.3, validation: float = 0.15, seed: int = 0) -> Split:
    """Split by `id`: every item of an id group lands in the same part (seeded shuffle of the groups)."""
    if not 0 < test < 1 or not 0 <= validation < 1 or test + validation >= 1:
        raise ValueError(f"test ({test}) and validation ({validation}) must be fractions summing below 1")
    groups = sorted({item.id for item in items})
    random.Random(seed).shuffle(groups)
    n_test, n_val = round(test * len(groups)), round(validation * len(groups))
    test_ids, val_ids = set(groups[:n_test]), set(groups[n_test : n_test + n_val])
    return Split(
        train=[i for i in items if i.id not in test_ids and i.id not in val_ids],
        validation=[i for i in items if i.id in val_ids],
        test=[i for i in items if i.id in test_ids],
    )


def count_subclasses(items: Iterable[NewsItem]) -> dict[str, int]:
    counts = dict.fromkeys(SUBCLASSES, 0)
    for item in items:
        counts[item.subclass] += 1
    return counts
