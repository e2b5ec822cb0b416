"""Run omnimm's benchmarks: print a table, write JSON to benchmarks/results/<suite>.json.

    python benchmarks/run.py            # every suite (bench_*.py)
    python benchmarks/run.py core       # one suite
    python benchmarks/run.py --quick    # fewer repetitions, for a smoke run

Each suite compares ours with a reference implementation in the same run and reports the ratio (ours / reference).
Timing targets live here, never as asserts in tests.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def environment() -> dict[str, object]:
    from importlib import metadata

    versions = {}
    for package in ["omnimm", "pydantic", "pluggy", "torch"]:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "versions": versions,
        "date": time.strftime("%Y-%m-%d"),
    }


def print_table(suite: str, rows: list[dict[str, object]], console: Console) -> None:
    table = Table(title=f"benchmarks: {suite}", title_justify="left")
    for column in ["benchmark", "ours", "reference", "ratio", "unit", "notes"]:
        table.add_column(column, justify="right" if column in ("ours", "reference", "ratio") else "left")
    for row in rows:
        ratio, reference = row.get("ratio"), row.get("reference")
        labels = f"{escape(str(row['ours_label']))} vs {escape(str(row.get('reference_label')))}"
        table.add_row(
            f"{row['benchmark']}\n[dim]{labels}[/]",
            f"{row['ours']:.4g}",
            f"{reference:.4g}" if isinstance(reference, (int, float)) else "-",
            f"{ratio:.3g}" if isinstance(ratio, (int, float)) else "-",
            str(row["unit"]),
            str(row.get("notes", "")),
        )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suites", nargs="*", help="suite names (bench_<name>.py); all when omitted")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where to write <suite>.json")
    args = parser.parse_args()

    from omnimm.files import atomic_write_text

    available = sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    suites = args.suites or available
    unknown = sorted(set(suites) - set(available))
    if unknown:
        parser.error(f"unknown suite(s) {unknown}; available: {available}")
    console = Console(width=None if sys.stdout.isatty() else 140)
    for suite in suites:
        module = importlib.import_module(f"bench_{suite}")
        started = time.perf_counter()
        rows = module.run(quick=args.quick)
        result = {"suite": suite, "environment": environment(), "seconds": time.perf_counter() - started, "rows": rows}
        print_table(suite, rows, console)
        path = atomic_write_text(args.out / f"{suite}.json", json.dumps(result, indent=2) + "\n")
        console.print(f"wrote {path}", markup=False)


if __name__ == "__main__":
    main()
