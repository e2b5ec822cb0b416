"""`omnimm fakenews sweep CONFIG`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

fakenews_app = typer.Typer(help="Fake-news detection with human/machine real/fake mixtures.", no_args_is_help=True)


@fakenews_app.command("sweep")
def sweep_command(
    config: Annotated[Path, typer.Argument(help="A sweep config (YAML/JSON), e.g. fakenews:politifact.")],
    output_dir: Annotated[Path | None, typer.Option(help="Override output_dir.")] = None,
) -> None:
    """Train and score detectors on the phase x machine-fake-share grid; write sweep.json (after every grid point;
    a rerun resumes) and the plots."""
    from rich.console import Console

    from omnimm.config import load_config
    from omnimm_plugins.fakenews.configs import SweepConfig
    from omnimm_plugins.fakenews.sweep import RESULTS, run_sweep

    console = Console(highlight=False, soft_wrap=True)
    loaded = load_config(config, SweepConfig)
    if output_dir is not None:
        loaded = loaded.model_copy(update={"output_dir": str(output_dir)})
    result = run_sweep(loaded, log=lambda text: console.print(text, markup=False))
    for detector, findings in result["summary"]["findings"].items():
        for finding in findings:
            difference = finding["difference"]
            figure = (
                f"{difference['mean']:+.3f} [{difference['low']:+.3f}, {difference['high']:+.3f}], "
                f"{difference['n']} seeds"
                if difference
                else "no paired seeds"
            )
            console.print(f"{detector}: {finding['key']}: {finding['verdict']} ({figure})", markup=False)
    for detector, transfer in result["summary"]["transfer"].items():
        human, machine = transfer["human_trained_on_machine_items"], transfer["machine_trained_on_human_items"]
        console.print(
            f"{detector}: trained on human items, accuracy on machine items {human:.3f}; "
            f"trained on machine items, on human items {machine:.3f}",
            markup=False,
        )
    console.print(f"wrote {Path(loaded.output_dir) / RESULTS} and the plots beside it", markup=False)
