"""News items of the four subclasses (HR, HF, MR, MF), their loaders, and a split that keeps duplicate groups together.

Subclasses: human-written real (HR), human-written fake (HF), machine-written real (MR), machine-written fake (MF).
Machine items paraphrase human items and share their `id`; PolitiFact++ also holds identical articles under
different ids (several ids share one boilerplate page or one title). The split therefore groups items that share an
id, a normalised text or a normalised title, and keeps each group on one side, so no copy or paraphrase of a test
article is seen in training or validation.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import unicodedata
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


KNOWN_DATASETS: dict[str, tuple[str, ...]] = {
    "politifact_pp": ("../shared/data/politifact_pp", "shared/data/politifact_pp"),
}
"""Dataset names `data:` accepts besides a path -> the folders tried, relative to the working directory."""


def load_items(source: str | os.PathLike[str]) -> list[NewsItem]:
    """A `{HR,HF,MR,MF}.json` folder, a CSV/TSV/JSONL file, or a name from `KNOWN_DATASETS`."""
    path = Path(source)
    if not path.exists():
        name = str(source)
        if name not in KNOWN_DATASETS:
            known = "; ".join(f"{key} ({', '.join(where)})" for key, where in KNOWN_DATASETS.items())
            raise ConfigError(
                [ConfigIssue("data", f"unknown dataset {name!r}: no such file or folder, nor a known name ({known})")]
            )
        found = next((Path(where) for where in KNOWN_DATASETS[name] if Path(where).is_dir()), None)
        if found is None:
            raise FileNotFoundError(f"dataset {name!r}: not found at {' or '.join(KNOWN_DATASETS[name])}")
        path = found
    return load_four_subclass(path) if path.is_dir() else load_records(path)


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


def normalise(text: str) -> str:
    """Case-folded, NFKC, every run of non-alphanumerics one space: copies that differ in markup or spacing match."""
    return " ".join(re.sub(r"[\W_]+", " ", unicodedata.normalize("NFKC", text).casefold()).split())


def contradictions(items: Sequence[NewsItem]) -> list[NewsItem]:
    """Items of every id whose normalised text also appears with the other label (the paraphrases of a text labelled
    both real and fake inherit the contradiction). PolitiFact++ has one: an article filed as HR and HF."""
    labels: dict[str, set[int]] = {}
    for item in items:
        labels.setdefault(normalise(item.text), set()).add(item.label)
    bad_ids = {item.id for item in items if len(labels[normalise(item.text)]) > 1}
    return [item for item in items if item.id in bad_ids]


def drop_contradictions(items: Sequence[NewsItem]) -> tuple[list[NewsItem], list[NewsItem]]:
    """(kept, dropped): `contradictions(items)` removed."""
    dropped = contradictions(items)
    bad = {id(item) for item in dropped}
    return [item for item in items if id(item) not in bad], dropped


def duplicate_groups(items: Sequence[NewsItem]) -> list[int]:
    """A group number per item: items sharing an id, a normalised text or a normalised title are in one group
    (transitively; union-find over the three keys)."""
    parent = list(range(len(items)))

    def root(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    first: dict[tuple[str, str], int] = {}
    for index, item in enumerate(items):
        keys = [("id", item.id), ("text", normalise(item.text))]
        if normalise(item.title):
            keys.append(("title", normalise(item.title)))
        for key in keys:
            if key in first:
                parent[root(index)] = root(first[key])
            else:
                first[key] = index
    return [root(index) for index in range(len(items))]


@dataclass(frozen=True)
class Split:
    train: list[NewsItem]
    validation: list[NewsItem]
    test: list[NewsItem]

    def manifest(self) -> dict[str, dict]:
        """Counts per subclass and every id, per part (ids listed per subclass, in the part's order)."""
        return {
            name: {"counts": count_subclasses(part), "ids": ids_by_subclass(part)}
            for name, part in self.parts().items()
        }

    def parts(self) -> dict[str, list[NewsItem]]:
        return {"train": self.train, "validation": self.validation, "test": self.test}


def group_split(items: Sequence[NewsItem], *, test: float = 0.3, validation: float = 0.15, seed: int = 0) -> Split:
    """Split by `duplicate_groups`: all items sharing an id, normalised text or normalised title land in the same
    part (a seeded shuffle of the groups; `test` and `validation` are fractions of the groups)."""
    if not 0 < test < 1 or not 0 <= validation < 1 or test + validation >= 1:
        raise ValueError(f"test ({test}) and validation ({validation}) must be fractions summing below 1")
    group_of = duplicate_groups(items)
    # name each group by its smallest (id, text) so the shuffle does not depend on the input order
    names: dict[int, tuple[str, str]] = {}
    for index, group in enumerate(group_of):
        names[group] = min(names.get(group, (items[index].id, items[index].text)), (items[index].id, items[index].text))
    groups = sorted(names, key=names.__getitem__)
    random.Random(seed).shuffle(groups)
    n_test, n_val = round(test * len(groups)), round(validation * len(groups))
    part = {group: "test" for group in groups[:n_test]} | {
        group: "validation" for group in groups[n_test : n_test + n_val]
    }
    chosen: dict[str, list[NewsItem]] = {"train": [], "validation": [], "test": []}
    for item, group in zip(items, group_of, strict=True):
        chosen[part.get(group, "train")].append(item)
    return Split(**chosen)


def ids_by_subclass(items: Iterable[NewsItem]) -> dict[str, list[str]]:
    ids: dict[str, list[str]] = {s: [] for s in SUBCLASSES}
    for item in items:
        ids[item.subclass].append(item.id)
    return ids


def count_subclasses(items: Iterable[NewsItem]) -> dict[str, int]:
    counts = dict.fromkeys(SUBCLASSES, 0)
    for item in items:
        counts[item.subclass] += 1
    return counts
