"""STS Benchmark as labelled response pairs: score >= 4 is consistent, score <= 2 inconsistent, the rest left out.

The files are tab-separated: genre, file, year, id, score, sentence 1, sentence 2; some rows carry extra trailing
fields, so only columns 5-7 are read. The genre (`main-news`, `main-captions`, `main-forums`) serves as the query
type.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omnimm.errors import ConfigError, ConfigIssue

CONSISTENT_AT = 4.0
INCONSISTENT_AT = 2.0


@dataclass
class LabelledPairs:
    references: list[str]
    candidates: list[str]
    labels: np.ndarray
    query_types: list[str]
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return list(zip(self.references, self.candidates, strict=True))


def read_split(folder: str | os.PathLike[str], split: str) -> list[tuple[str, float, str, str]]:
    """`(genre, score, sentence1, sentence2)` rows of `sts-<split>.csv`; a malformed row is an error with its line."""
    file = Path(folder) / f"sts-{split}.csv"
    if not file.is_file():
        raise FileNotFoundError(f"STS-B split not found: {file}")
    rows, issues = [], []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split("\t")
        if len(fields) < 7:
            issues.append(ConfigIssue("", f"expected at least 7 tab-separated fields, got {len(fields)}", line=number))
            continue
        try:
            score = float(fields[4])
        except ValueError:
            issues.append(ConfigIssue("score", f"not a number: {fields[4]!r}", line=number))
            continue
        rows.append((fields[0], score, fields[5], fields[6]))
    if issues:
        raise ConfigError(issues[:20], source=str(file), title="STS-B data")
    return rows


def labelled_pairs(folder: str | os.PathLike[str], split: str) -> LabelledPairs:
    """The split's pairs with a clear label (score >= 4: 1, score <= 2: 0)."""
    kept = [row for row in read_split(folder, split) if row[1] >= CONSISTENT_AT or row[1] <= INCONSISTENT_AT]
    return LabelledPairs(
        [r[2] for r in kept],
        [r[3] for r in kept],
        np.array([int(r[1] >= CONSISTENT_AT) for r in kept]),
        [r[0] for r in kept],
        np.array([r[1] for r in kept]),
    )
