"""STS Benchmark as labelled response pairs: score >= 4 is consistent, score <= 2 inconsistent, the rest left out.

The files are read by `omnimm.sentence.sts.read_stsb`. The genre (`main-news`, `main-captions`, `main-forums`)
serves as the query type.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from omnimm.sentence.sts import read_stsb

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


def labelled_pairs(folder: str | os.PathLike[str], split: str) -> LabelledPairs:
    """The split's pairs with a clear label (score >= 4: 1, score <= 2: 0)."""
    kept = [p for p in read_stsb(folder, split) if p.score >= CONSISTENT_AT or p.score <= INCONSISTENT_AT]
    return LabelledPairs(
        [p.sentence1 for p in kept],
        [p.sentence2 for p in kept],
        np.array([int(p.score >= CONSISTENT_AT) for p in kept]),
        [p.genre for p in kept],
        np.array([p.score for p in kept]),
    )
