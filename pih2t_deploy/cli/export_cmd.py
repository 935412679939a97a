"""``pih2t-export``: fold a checkpoint, export it and prove the export exact."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pih2t_deploy.cli.common import console, err_console, parse_int_list, parse_str_list


def export(
    ckpt: Annotated[Path, typer.Option("--ckpt", help="model.pt (pih2t/1) or an official H2T CIFAR checkpoint")],
    output: Annotated[Path, typer.Option("--output", "-o", help="artifact folder to write")] = Path("exports/model"),
    format: Annotated[str, typer.Option("--format", help="onnx")] = "onnx",
    opset: Annotated[int, typer.Option(help="ONNX opset")] = 18,
    static_batch: Annotated[int | None, typer.Option(help="fix the batch axis to N (default: dynamic)")] = None,
    max_batch: Annotated[int, typer.Option(help="largest batch size the verification runs")] = 8,
    logit_adjust: Annotated[float, typer.Option("--logit-adjust", help="fold post-hoc logit adjustment TAU")] = 0.0,
    fuse_bn: Annotated[bool, typer.Option("--fuse-bn", help="fold BatchNorm into convolutions")] = False,
    tolerance: Annotated[float, typer.Option(help="largest allowed abs logit difference")] = 1e-3,
    class_counts: Annotated[str | None, typer.Option(help="comma-separated training counts per class")] = None,
    class_names: Annotated[str | None, typer.Option(help="comma-separated class names")] = None,
    seed: Annotated[int, typer.Option(help="seed of the verification inputs")] = 0,
) -> None:
    """Fold the train-time fusion away, export, verify against PyTorch and write the artifact folder."""
    from pih2t_deploy.export.exporter import ExportOptions, export_checkpoint

    options = ExportOptions(
        output=output,
        format=format,
        opset=opset,
        static_batch=static_batch,
        max_batch=max_batch,
        logit_adjust_tau=logit_adjust,
        fuse_bn=fuse_bn,
        tolerance=tolerance,
        seed=seed,
        class_counts=parse_int_list(class_counts, "--class-counts"),
        class_names=parse_str_list(class_names),
    )
    result = export_checkpoint(ckpt, options, log=lambda msg: err_console.print(msg, markup=False))
    table = Table(title=f"verification ({result.manifest['model_format']})")
    for column in ("batch", "max |diff|", "rel diff", "top-1 agree", "top-5 agree"):
        table.add_column(column, justify="right")
    for block in result.manifest["verification"]:
        for row in block["results"]:
            table.add_row(
                str(row["batch"]),
                f"{row['max_abs_diff']:.2e}",
                f"{row['max_rel_diff']:.2e}",
                f"{row['top1_agreement']:.0%}",
                f"{row['top5_agreement']:.0%}",
            )
    console.print(table)
    console.print(f"wrote {result.folder}/ ({', '.join(result.manifest['files'])}, model.json)")
