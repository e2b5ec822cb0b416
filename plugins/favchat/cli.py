"""favchat's commands: `omnimm favchat faces` and `omnimm demo favchat`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from omnimm_plugins.favchat.face.cli import faces_command

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
        row += [f"{result.accuracy[label][kind]['accuracy']:.0%}" for label in result.accuracy]
        table.add_row(*row)
    console.print(table)
    for label, lines in result.notes.items():
        for line in lines:
            console.print(f"{label}: {line}", markup=False)
    timings = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in result.seconds.items())
    console.print(f"time: {timings}", markup=False)
