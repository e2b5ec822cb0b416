"""`omnimm simct`: the consistency gate and the training of its classifier."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

simct_app = typer.Typer(help="SimCT: consistency gate between two stages of an LLM service.", no_args_is_help=True)

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_BAD_INPUT = 2
EXIT_INCONCLUSIVE = 3
EXIT_UNEXPECTED = 4
TOO_MANY_TO_LIST = 5


@simct_app.command("gate")
def gate_command(
    stage_a: Annotated[Path, typer.Argument(help="JSONL of the old stage: {prompt, response, [query_type, id]}.")],
    stage_b: Annotated[Path, typer.Argument(help="JSONL of the new stage, same prompts.")],
    classifier: Annotated[
        Path | None, typer.Option(help="A trained classifier folder (omnimm simct train); else chrF scores pairs.")
    ] = None,
    encoder: Annotated[
        str | None,
        typer.Option(help="Sentence encoder for a classifier trained with embeddings (default: the one it records)."),
    ] = None,
    score: Annotated[str, typer.Option(help="auto, classifier, rouge1, rouge2, rougeL, bleu, chrf, meteor.")] = "auto",
    alpha: Annotated[float, typer.Option(help="Significance level.")] = 0.05,
    margin: Annotated[float, typer.Option(help="Equivalence margin, in score units.")] = 0.05,
    seed: Annotated[int, typer.Option(help="Seed of the pair sampling and the bootstrap.")] = 0,
    report: Annotated[Path | None, typer.Option(help="Folder for report.json, report.png and report.html.")] = None,
    inconclusive: Annotated[
        str, typer.Option(help=f"fail: INCONCLUSIVE exits {EXIT_INCONCLUSIVE} (default); pass: it exits 0.")
    ] = "fail",
) -> None:
    """Compare two stages' responses: PASS (exit 0), FAIL (exit 1) or INCONCLUSIVE (exit 3, or 0 with
    --inconclusive pass), with the evidence. Bad input exits 2, an unexpected error 4: never the FAIL code."""
    from rich.console import Console

    errors = Console(stderr=True, highlight=False, soft_wrap=True)
    if inconclusive not in ("fail", "pass"):
        errors.print(f"error: --inconclusive: expected fail or pass, got {inconclusive!r}", markup=False)
        raise typer.Exit(EXIT_BAD_INPUT)
    code = _guarded(_gate, stage_a, stage_b, classifier, encoder, score, alpha, margin, seed, report, inconclusive)
    raise typer.Exit(code)


def _guarded(command: Any, *args: Any) -> int:
    """Run a command; bad input (omnimm's own errors, unreadable files) exits 2, anything else (a bug, a library
    failure) exits 4 with one `error: unexpected ...` line, so it never reads as FAIL. OMNIMM_DEBUG=1 adds the
    traceback and keeps the exit code."""
    import os
    import traceback

    from rich.console import Console

    from omnimm.errors import OmnimmError

    errors = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        return int(command(*args) or 0)
    except typer.Exit:
        raise
    except (OmnimmError, OSError) as error:  # bad input, a damaged folder, a missing optional package
        line, code, trace = f"error: {_one_line(error)}", EXIT_BAD_INPUT, traceback.format_exc()
    except Exception as error:  # IndexError, KeyError, LightGBMError...: a bug or a library failure
        line, code = f"error: unexpected {type(error).__name__}: {_one_line(error)}", EXIT_UNEXPECTED
        trace = traceback.format_exc()
    if os.environ.get("OMNIMM_DEBUG"):
        errors.print(trace.rstrip(), markup=False)
    errors.print(line, markup=False)
    raise typer.Exit(code)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _gate(
    stage_a: Path,
    stage_b: Path,
    classifier: Path | None,
    encoder: str | None,
    score: str,
    alpha: float,
    margin: float,
    seed: int,
    report: Path | None,
    inconclusive: str,
) -> int:
    from rich.console import Console

    from omnimm.registry import evaluators
    from omnimm_plugins.simct.records import read_responses
    from omnimm_plugins.simct.report import write_reports

    console = Console(highlight=False, soft_wrap=True)
    errors = Console(stderr=True, highlight=False, soft_wrap=True)
    a, b = read_responses(stage_a), read_responses(stage_b)
    gate = evaluators.build(
        {
            "name": "simct/gate",
            "score": score,
            "alpha": alpha,
            "margin": margin,
            "seed": seed,
            "classifier": str(classifier) if classifier else None,
            "encoder": {"name": encoder} if encoder else None,
        }
    )
    result = gate.evaluate(a, b)
    for source, prompts in ((stage_a, result.only_in_a), (stage_b, result.only_in_b)):
        if prompts:
            shown = ", ".join(repr(p[:60]) for p in prompts[:TOO_MANY_TO_LIST])
            more = f" and {len(prompts) - TOO_MANY_TO_LIST} more" if len(prompts) > TOO_MANY_TO_LIST else ""
            errors.print(f"warning: {len(prompts)} prompt(s) only in {source}: {shown}{more}", markup=False)
    if result.fallback:
        errors.print(f"note: {result.fallback}", markup=False)
    if result.unseen_query_types:
        listed = ", ".join(f"{name} ({count})" for name, count in sorted(result.unseen_query_types.items()))
        errors.print(f"note: query types the classifier never saw in training (scored as unknown): {listed}")
    console.print(f"{result.verdict}: {result.reason}", markup=False)
    if result.comparison is not None:
        test = result.comparison
        console.print(
            f"prompts {test.n} (matched by {result.settings['matched_by']}), score {result.score}, mean cross - within "
            f"{test.mean_difference:+.4f} [{test.ci_low:+.4f}, {test.ci_high:+.4f}], t-test p {test.p_value:.3g}, "
            f"TOST p {test.tost_p_value:.3g}, effect size {test.effect_size:.3g}",
            markup=False,
        )
    if result.response_wise is not None:
        cross, within = result.response_wise["cross"], result.response_wise["within"]
        console.print(
            f"response-wise: {cross['inconsistent']} of {cross['pairs']} cross-stage pairs inconsistent "
            f"({cross['inconsistency_rate']:.1%}, 95% CI [{cross['ci_low']:.1%}, {cross['ci_high']:.1%}]) vs "
            f"{within['inconsistency_rate']:.1%} [{within['ci_low']:.1%}, {within['ci_high']:.1%}] within stages "
            f"(threshold {result.response_wise['threshold']:.3f})",
            markup=False,
        )
    if report is not None:
        paths = write_reports(result, report)
        console.print(f"report: {paths['html']} (also {paths['json'].name}, {paths['png'].name})", markup=False)
    if result.verdict == "FAIL":
        return EXIT_FAIL
    if result.verdict == "INCONCLUSIVE":
        return EXIT_INCONCLUSIVE if inconclusive == "fail" else EXIT_PASS
    return EXIT_PASS


@simct_app.command("train")
def train_command(
    out: Annotated[Path, typer.Option(help="Where to save model.txt and manifest.json.")],
    stsb: Annotated[
        Path | None, typer.Option(help="Folder with sts-train.csv and sts-dev.csv (STS Benchmark).")
    ] = None,
    pairs: Annotated[
        Path | None,
        typer.Option(help="Your labelled pairs: JSONL/CSV of reference, candidate, label (1/0), [query_type]."),
    ] = None,
    dev: Annotated[
        Path | None, typer.Option(help="Dev pairs for selection (with --pairs; default: 20% of them held out).")
    ] = None,
    embeddings: Annotated[
        bool, typer.Option(help="Add the embedding cosine feature (all-MiniLM-L6-v2; needs omnimm[recse]).")
    ] = False,
    encoder: Annotated[
        str | None, typer.Option(help="Sentence encoder for the embedding feature (implies --embeddings).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the folds, the held-out dev part and LightGBM.")] = 0,
) -> None:
    """Train the response-wise classifier: on STS-B (score >= 4 consistent, <= 2 inconsistent, genres as query
    types) or on your own labelled pairs with your own query types; select on dev. Bad input exits 2."""
    from rich.console import Console

    errors = Console(stderr=True, highlight=False, soft_wrap=True)
    if (stsb is None) == (pairs is None):
        errors.print("error: give exactly one of --stsb DIR and --pairs FILE", markup=False)
        raise typer.Exit(EXIT_BAD_INPUT)
    if dev is not None and pairs is None:
        errors.print("error: --dev goes with --pairs (STS-B brings its own dev split)", markup=False)
        raise typer.Exit(EXIT_BAD_INPUT)
    raise typer.Exit(
        _guarded(_train, out, stsb, pairs, dev, encoder or ("hf/sentence-encoder" if embeddings else None), seed)
    )


def _train(out: Path, stsb: Path | None, pairs: Path | None, dev: Path | None, name: str | None, seed: int) -> int:
    from rich.console import Console

    from omnimm.registry import encoders
    from omnimm_plugins.simct.labelled import read_labelled_pairs
    from omnimm_plugins.simct.training import train_on_pairs, train_on_stsb

    console = Console(highlight=False, soft_wrap=True)
    train_pairs = read_labelled_pairs(pairs) if pairs is not None else None
    dev_pairs = read_labelled_pairs(dev) if dev is not None else None
    built = encoders.build(name) if name else None
    if train_pairs is not None:
        model, info = train_on_pairs(train_pairs, dev_pairs, encoder=built, seed=seed)
    else:
        assert stsb is not None
        model, info = train_on_stsb(stsb, encoder=built, seed=seed)
    model.encoder = {"name": name} if name else None
    for trial in info["trials"]:
        dev_metrics = trial["dev"]
        console.print(
            f"{trial['params']}: cv AUC {trial['cv_auc']:.4f}, dev accuracy {dev_metrics['accuracy']:.4f}, "
            f"F1 {dev_metrics['f1']:.4f}, AUC {dev_metrics['roc_auc']:.4f}",
            markup=False,
        )
    folder = model.save(out)
    types = ", ".join(model.query_types) or "none"
    console.print(
        f"saved {folder} (selected {info['selected']}, threshold {model.threshold:.4f}, query types: {types})",
        markup=False,
    )
    return 0
