"""Training mixtures for the three phases of the LLM era, with a tunable machine-fake share of the fake class.

| phase | real class | fake class |
|---|---|---|
| `human-legacy` | HR | (1 - share) HF + share MF |
| `coexistence` (transitional) | half HR, half MR | same |
| `machine-dominance` | MR | same |

Class sizes are fixed across the grid (`real_size`, `fake_size`), so only the composition changes. Mixtures are
nested: each subclass of a pool is shuffled once per seed (`subclass_orders`) and every mixture takes prefixes of
those orders, so raising the machine-fake share swaps HF items for MF items and changes nothing else; a share's effect
is not mixed with the noise of drawing a fresh sample. The manifest lists the counts per subclass and every id drawn.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from omnimm_plugins.fakenews.data import SUBCLASSES, NewsItem, count_subclasses, ids_by_subclass

Phase = Literal["human-legacy", "coexistence", "machine-dominance"]
PHASES: tuple[Phase, ...] = ("human-legacy", "coexistence", "machine-dominance")
REAL_SOURCES: dict[str, dict[str, float]] = {
    "human-legacy": {"HR": 1.0},
    "coexistence": {"HR": 0.5, "MR": 0.5},
    "machine-dominance": {"MR": 1.0},
}
NAMES = {
    "HR": "human-written real",
    "HF": "human-written fake",
    "MR": "machine-written real",
    "MF": "machine-written fake",
}


@dataclass
class Mixture:
    phase: Phase
    machine_fake_share: float
    seed: int
    items: list[NewsItem]
    manifest: dict = field(default_factory=dict)


def subclass_orders(pool: Sequence[NewsItem], seed: int) -> dict[str, list[NewsItem]]:
    """Each subclass of `pool` in one seeded order (the same for every phase and share: mixtures take prefixes)."""
    orders: dict[str, list[NewsItem]] = {s: [] for s in SUBCLASSES}
    for item in pool:
        orders[item.subclass].append(item)
    for subclass, items in orders.items():
        random.Random(f"{seed}/{subclass}").shuffle(items)
    return orders


def needed_subclasses(phases: Iterable[str], shares: Iterable[float]) -> tuple[set[str], set[str]]:
    """(real, fake) subclasses the grid draws from: HF when a share is below 1, MF when one is above 0."""
    phases, shares = list(phases), list(shares)
    real = {source for phase in phases for source in REAL_SOURCES[phase]}
    fake = ({"HF"} if any(s < 1 for s in shares) else set()) | ({"MF"} if any(s > 0 for s in shares) else set())
    return real, fake


def largest_sizes(
    pool: Sequence[NewsItem], phases: Iterable[str] = PHASES, shares: Iterable[float] = (0.0, 1.0)
) -> tuple[int, int]:
    """The largest (real_size, fake_size) every given phase and share can fill from `pool`."""
    counts = count_subclasses(pool)
    real, fake = needed_subclasses(phases, shares)
    return min(counts[s] for s in real), min(counts[s] for s in fake)


def missing_subclasses(pool: Sequence[NewsItem], phases: Iterable[str], shares: Iterable[float]) -> list[str]:
    """The subclasses the grid needs that `pool` has none of, as readable names."""
    counts = count_subclasses(pool)
    real, fake = needed_subclasses(phases, shares)
    return [f"{s} ({NAMES[s]})" for s in SUBCLASSES if s in real | fake and counts[s] == 0]


def build_mixture(
    pool: Sequence[NewsItem],
    phase: Phase,
    machine_fake_share: float,
    *,
    real_size: int,
    fake_size: int,
    seed: int = 0,
    orders: dict[str, list[NewsItem]] | None = None,
) -> Mixture:
    """A training set of exactly `real_size` real and `fake_size` fake items, composed as the phase says, taken as
    prefixes of `orders` (default: `subclass_orders(pool, seed)`)."""
    if phase not in REAL_SOURCES:
        raise ValueError(f"phase: expected one of {', '.join(PHASES)}, got {phase!r}")
    if not 0 <= machine_fake_share <= 1:
        raise ValueError(f"machine_fake_share: expected a fraction in [0, 1], got {machine_fake_share}")
    orders = orders if orders is not None else subclass_orders(pool, seed)
    wanted = _split_counts(REAL_SOURCES[phase], real_size)
    machine_fake = round(machine_fake_share * fake_size)
    wanted.update({"HF": fake_size - machine_fake, "MF": machine_fake})
    chosen: list[NewsItem] = []
    for subclass, count in wanted.items():
        available = orders[subclass]
        if count > len(available):
            missing = f"; the pool has no {NAMES[subclass]} items" if not available else ""
            raise ValueError(
                f"{phase} with machine-fake share {machine_fake_share}: needs {count} {subclass} items, the pool has "
                f"{len(available)}{missing}; lower real_size/fake_size (the largest that always fit: "
                f"{largest_sizes(pool)})"
            )
        chosen += available[:count]
    manifest = {
        "phase": phase,
        "machine_fake_share": machine_fake_share,
        "seed": seed,
        "counts": count_subclasses(chosen),
        "ids": ids_by_subclass(chosen),
    }
    return Mixture(phase, machine_fake_share, seed, chosen, manifest)


def _split_counts(shares: dict[str, float], total: int) -> dict[str, int]:
    counts = {source: int(share * total) for source, share in shares.items()}
    first = next(iter(counts))
    counts[first] += total - sum(counts.values())  # the rounding remainder goes to the first source
    return counts
