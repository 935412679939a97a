"""``pih2t-train`` and ``pih2t-eval``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pih2t_deploy.cli.common import console, log


def train(
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides, e.g. stage1.epochs=5")] = None,
    recipe: Annotated[str, typer.Option(help="recipe name (see training/README.md) or a .yaml path")] = "digits-lt",
    output: Annotated[Path, typer.Option("--output", "-o", help="run folder")] = Path("runs/digits-lt"),
    method: Annotated[str | None, typer.Option(help="ce, h2t or pih2t (overrides the recipe)")] = None,
    seed: Annotated[int | None, typer.Option(help="random seed (overrides the recipe)")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue an interrupted run in --output")] = False,
    show: Annotated[
        bool, typer.Option("--show", help="print the fully resolved recipe as YAML and exit (reads no data)")
    ] = False,
) -> None:
    """Train both stages; writes OUTPUT/stage1.pt, OUTPUT/model.pt and OUTPUT/metrics.json."""
    from pih2t_deploy.training.engine import Trainer
    from pih2t_deploy.training.recipe import load_recipe

    extra = list(overrides or [])
    if method is not None:
        extra.append(f"method={method}")
    if seed is not None:
        extra.append(f"seed={seed}")
    config = load_recipe(recipe, extra)
    if show:
        import yaml

        typer.echo(yaml.safe_dump(config.to_dict(), sort_keys=False), nl=False)
        return
    result = Trainer(config, output, resume=resume, log=log).run()
    if result.already_complete:
        console.print(f"the run in {output} is complete: {result.model_path} (run without --resume to train again)")
        return
    console.print(f"wrote {result.stage1_path}, {result.model_path} and {output / 'metrics.json'}")


def evaluate(
    ckpt: Annotated[Path, typer.Option("--ckpt", help="model.pt to evaluate")],
    data_root: Annotated[
        str | None, typer.Option("--data", "--data-root", help="data root to use instead of the recorded one")
    ] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="folder for eval.json and eval.png")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    recipe: Annotated[
        str | None,
        typer.Option(
            help="score on this recipe's test set and preprocessing instead of the recorded one (needed for a "
            "checkpoint saved by the authors' H2T code, e.g. cifar100-lt-if100)"
        ),
    ] = None,
) -> None:
    """Top-1/top-5, Many/Medium/Few, per-class accuracy, ECE and plots on the checkpoint's test set."""
    from pih2t_deploy.training.evaluation_run import evaluate_checkpoint

    folder = output or ckpt.parent / "eval"
    summary = evaluate_checkpoint(ckpt, folder, data_root=data_root, device=device, recipe=recipe, log=log)
    table = Table(title=f"evaluation of {ckpt} ({summary['num_images']} test images)")
    for column in ("top-1", "top-5", "many", "medium", "few", "ECE"):
        table.add_column(column, justify="right")
    table.add_row(*[_pct(summary[k]) for k in ("top1", "top5", "many", "medium", "few")], f"{summary['ece']:.3f}")
    console.print(table)
    thresholds = summary["thresholds"]
    console.print(f"groups: many > {thresholds['many']}, few < {thresholds['few']} training images")
    by_index = summary.get("by_class_index")
    if by_index:
        first, second = by_index["bounds"]
        console.print(
            f"by class index (the authors' split: 0-{first - 1} / {first}-{second - 1} / {second}+): "
            + "  ".join(f"{group} {_pct(by_index[group])}" for group in ("many", "medium", "few"))
        )
    recorded = (summary.get("imported_from") or {}).get("best_acc1")
    if recorded is not None:
        console.print(f"the file records best_acc1 {recorded:.2f}% (the authors' code's score for it)")
    console.print(f"wrote {folder / 'eval.json'} and {folder / 'eval.png'}")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"
