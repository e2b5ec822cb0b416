"""favchat's commands: `omnimm favchat faces` and `omnimm demo favchat`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from omnimm_plugins.favchat.face.cli import faces_command


def wilson_interval(share: float, count: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval of a proportion `share` of `count` trials (95% by default)."""
    if count == 0:
        return 0.0, 1.0
    centre = (share + z * z / (2 * count)) / (1 + z * z / count)
    half = z * ((share * (1 - share) / count + z * z / (4 * count * count)) ** 0.5) / (1 + z * z / count)
    return max(0.0, centre - half), min(1.0, centre + half)


favchat_app = typer.Typer(help="Facial video understanding: faces in images and videos.", no_args_is_help=True)
favchat_app.command("faces")(faces_command)


def demo_favchat(
    workdir: Annotated[
        Path | None,
        typer.Option(help="Working folder for data, tokenizer and runs (default: ~/.cache/omnimm/favchat-demo)."),
    ] = None,
    ablation: Annotated[
        bool, typer.Option(help="Also train without the face encoder, and with a dense connector of the same size.")
    ] = True,
    quick: Annotated[bool, typer.Option(help="A smoke run: less data, one epoch per stage.")] = False,
) -> None:
    """FaVChat on synthetic face videos: a face encoder with real weights (SFace), a mixture-of-experts connector,
    two progressive stages on the CPU, then held-out attribute questions."""
    from rich.console import Console
    from rich.table import Table

    from omnimm_plugins.favchat.demo import run_demo

    console = Console(highlight=False)
    result = run_demo(workdir, ablation=ablation, quick=quick, log=lambda text: console.print(text, markup=False))
    table = Table(title="held-out attribute questions: accuracy", title_justify="left")
    table.add_column("question")
    table.add_column("chance", justify="right")
    for label in result.accuracy:
        table.add_column(label, justify="right")
    first = next(iter(result.accuracy.values()))
    for kind, scores in first.items():
        row = [kind, f"{scores['chance']:.0%}"]
        for label in result.accuracy:
            cell = result.accuracy[label][kind]
            low, high = wilson_interval(cell["accuracy"], cell["n"])
            row.append(f"{cell['accuracy']:.0%} ({low:.0%}-{high:.0%})")
        table.add_row(*row)
    console.print(table)
    console.print(f"{first[next(iter(first))]['n']} held-out clips per question; 95% Wilson intervals", markup=False)
    for label, lines in result.notes.items():
        for line in lines:
            console.print(f"{label}: {line}", markup=False)
    timings = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in result.seconds.items())
    console.print(f"time: {timings}", markup=False)
