"""`omnimm simct`: the consistency gate and the training of its classifier."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

simct_app = typer.Typer(help="SimCT: consistency gate between two stages of an LLM service.", no_args_is_help=True)

EXIT_FAIL = 1
EXIT_BAD_INPUT = 2
EXIT_INCONCLUSIVE = 3


@simct_app.command("gate")
def gate_command(
    stage_a: Annotated[Path, typer.Argument(help="JSONL of the old stage: {prompt, response, [query_type]} per line.")],
    stage_b: Annotated[Path, typer.Argument(help="JSONL of the new stage, same prompts.")],
    classifier: Annotated[
        Path | None, typer.Option(help="A trained classifier folder (omnimm simct train); else chrF scores pairs.")
    ] = None,
    score: Annotated[str, typer.Option(help="auto, classifier, rouge1, rouge2, rougeL, bleu, chrf, meteor.")] = "auto",
    alpha: Annotated[float, typer.Option(help="Significance level.")] = 0.05,
    margin: Annotated[float, typer.Option(help="Equivalence margin, in score units.")] = 0.05,
    report: Annotated[Path | None, typer.Option(help="Folder for report.json, report.png and report.html.")] = None,
    fail_on_inconclusive: Annotated[
        bool, typer.Option(help=f"Exit with {EXIT_INCONCLUSIVE} on INCONCLUSIVE (default: 0).")
    ] = False,
) -> None:
    """Compare two stages' responses: PASS (exit 0), FAIL (exit 1) or INCONCLUSIVE, with the evidence.

    Bad input exits with 2.
    """
    from rich.console import Console

    from omnimm.errors import ConfigError
    from omnimm.registry import evaluators
    from omnimm_plugins.simct.records import read_responses
    from omnimm_plugins.simct.report import write_reports

    console = Console(highlight=False, soft_wrap=True)
    errors = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        a, b = read_responses(stage_a), read_responses(stage_b)
        gate = evaluators.build(
            {
                "name": "simct/gate",
                "score": score,
                "alpha": alpha,
                "margin": margin,
                "classifier": str(classifier) if classifier else None,
            }
        )
    except (ConfigError, OSError, ValueError) as error:  # unreadable or malformed input: exit 2
        errors.print(f"error: {error}", markup=False)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    result = gate.evaluate(a, b)
    for prompt in result.only_in_a:
        errors.print(f"warning: prompt only in {stage_a}: {prompt!r}", markup=False)
    for prompt in result.only_in_b:
        errors.print(f"warning: prompt only in {stage_b}: {prompt!r}", markup=False)
    console.print(f"{result.verdict}: {result.reason}", markup=False)
    if result.comparison is not None:
        test = result.comparison
        console.print(
            f"prompts {test.n}, score {result.score}, mean cross - within {test.mean_difference:+.4f} "
            f"[{test.ci_low:+.4f}, {test.ci_high:+.4f}], t-test p {test.p_value:.3g}, TOST p {test.tost_p_value:.3g}, "
            f"effect size {test.effect_size:.3g}",
            markup=False,
        )
    if report is not None:
        paths = write_reports(result, report)
        console.print(f"report: {paths['html']} (also {paths['json'].name}, {paths['png'].name})", markup=False)
    if result.verdict == "FAIL":
        raise typer.Exit(EXIT_FAIL)
    if result.verdict == "INCONCLUSIVE" and fail_on_inconclusive:
        raise typer.Exit(EXIT_INCONCLUSIVE)


@simct_app.command("train")
def train_command(
    stsb: Annotated[Path, typer.Option(help="Folder with sts-train.csv and sts-dev.csv (STS Benchmark).")],
    out: Annotated[Path, typer.Option(help="Where to save model.txt and manifest.json.")],
    embeddings: Annotated[
        bool, typer.Option(help="Add the embedding cosine feature (all-MiniLM-L6-v2; needs omnimm[recse]).")
    ] = False,
) -> None:
    """Train the response-wise classifier on STS-B (score >= 4 consistent, <= 2 inconsistent); select on dev."""
    from rich.console import Console

    from omnimm.registry import encoders
    from omnimm_plugins.simct.training import train_on_stsb

    console = Console(highlight=False, soft_wrap=True)
    encoder = encoders.build("hf/sentence-encoder") if embeddings else None
    model, info = train_on_stsb(stsb, encoder=encoder)
    for trial in info["trials"]:
        dev = trial["dev"]
        console.print(
            f"{trial['params']}: cv AUC {trial['cv_auc']:.4f}, dev accuracy {dev['accuracy']:.4f}, "
            f"F1 {dev['f1']:.4f}, AUC {dev['roc_auc']:.4f}",
            markup=False,
        )
    folder = model.save(out)
    console.print(f"saved {folder} (selected {info['selected']}, threshold {model.threshold:.4f})", markup=False)
