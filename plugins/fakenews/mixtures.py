"""Training mixtures for the three phases of the LLM era, with a tunable machine-fake share of the fake class.

| phase | real class | fake class |
|---|---|---|
| `human-legacy` | HR | (1 - share) HF + share MF |
| `coexistence` (transitional) | half HR, half MR | same |
| `machine-dominance` | MR | same |

Class sizes are fixed across the grid (`real_size`, `fake_size`), so only the composition changes. Items are drawn
without replacement with a seeded generator; the manifest lists the counts per subclass and every id drawn.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from omnimm_plugins.fakenews.data import NewsItem, count_subclasses

Phase = Literal["human-legacy", "coexistence", "machine-dominance"]
PHASES: tuple[Phase, ...] = ("human-legacy", "coexistence", "machine-dominance")
REAL_SOURCES: dict[str, dict[str, float]] = {
    "human-legacy": {"HR": 1.0},
    "coexistence": {"HR": 0.5, "MR": 0.5},
    "machine-dominance": {"MR": 1.0},
}


@dataclass
class Mixture:
    phase: Phase
    machine_fake_share: float
    seed: int
    items: list[NewsItem]
    manifest: dict = field(default_factory=dict)


def largest_sizes(pool: Sequence[NewsItem]) -> tuple[int, int]:
    """The largest (real_size, fake_size) every phase and share can fill from `pool`."""
    counts = count_subclasses(pool)
    return min(counts["HR"], counts["MR"]), min(counts["HF"], counts["MF"])


def build_mixture(
    pool: Sequence[NewsItem],
    phase: Phase,
    machine_fake_share: float,
    *,
    real_size: int,
    fake_size: int,
    seed: int = 0,
) -> Mixture:
    """A training set of exactly `real_size` real and `fake_size` fake items, composed as the phase says."""
    if phase not in REAL_SOURCES:
        raise ValueError(f"phase: expected one of {', '.join(PHASES)}, got {phase!r}")
    if not 0 <= machine_fake_share <= 1:
        raise ValueError(f"machine_fake_share: expected a fraction in [0, 1], got {machine_fake_share}")
    generator = random.Random(f"{phase}/{machine_fake_share}/{seed}")
    by_subclass: dict[str, list[NewsItem]] = {s: [] for s in ("HR", "HF", "MR", "MF")}
    for item in pool:
        by_subclass[item.subclass].append(item)
    wanted = _split_counts(REAL_SOURCES[phase], real_size)
    machine_fake = round(machine_fake_share * fake_size)
    wanted.update({"MF": machine_fake, "HF": fake_size - machine_fake})
    chosen: list[NewsItem] = []
    for subclass, count in wanted.items():
        available = by_subclass[subclass]
        if count > len(available):
            raise ValueError(
                f"{phase} with machine-fake share {machine_fake_share}: needs {count} {subclass} items, the pool has "
                f"{len(available)}; lower real_size/fake_size (the largest that always fit: {largest_sizes(pool)})"
            )
        chosen += generator.sample(available, count)
    generator.shuffle(chosen)
    manifest = {
        "phase": phase,
        "machine_fake_share": machine_fake_share,
        "seed": seed,
        "counts": count_subclasses(chosen),
        "ids": {s: sorted(i.id for i in chosen if i.subclass == s) for s in ("HR", "HF", "MR", "MF")},
    }
    return Mixture(phase, machine_fake_share, seed, chosen, manifest)


def _split_counts(shares: dict[str, float], total: int) -> dict[str, int]:
    counts = {source: int(share * total) for source, share in shares.items()}
    first = next(iter(counts))
    counts[first] += total - sum(counts.values())  # the rounding remainder goes to the first source
    return counts
