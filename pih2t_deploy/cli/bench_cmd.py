"""``pih2t-bench``: every format exported, verified and timed side by side; optional serving load."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pih2t_deploy.cli.common import console, log, parse_int_list, parse_str_list
from pih2t_deploy.formats import bench_entries

Opt = typer.Option


def bench(
    ckpt: Annotated[Path, Opt("--ckpt", help="model.pt to benchmark")],
    formats: Annotated[
        str | None,
        Opt(
            help="comma-separated, of: torch (the baseline), "
            + ", ".join(bench_entries())
            + " (default: every format whose runtime is installed here)"
        ),
    ] = None,
    batch: Annotated[str, Opt(help="comma-separated batch sizes")] = "1,8,32",
    eval_data: Annotated[str | None, Opt(help="accuracy per format: a folder (class sub-folders) or 'recipe'")] = None,
    calib_data: Annotated[str | None, Opt(help="INT8 calibration images (default: 'recipe' when recorded)")] = None,
    device: Annotated[str, Opt(help="cpu or cuda")] = "cpu",
    threads: Annotated[int | None, Opt(help="inference threads (torch and onnxruntime)")] = None,
    rounds: Annotated[int, Opt(help="interleaved timing rounds")] = 5,
    max_group_drop: Annotated[
        float, Opt(help="accuracy gate of the recommendation and of INT8/bf16 exports, in points", min=0)
    ] = 2.0,
    serve: Annotated[
        bool, Opt("--serve", help="also load-test pih2t-serve (and local Triton) on the ONNX artifact")
    ] = False,
    concurrency: Annotated[str, Opt(help="client concurrencies for --serve")] = "1,8,32",
    serve_seconds: Annotated[float, Opt(help="seconds per concurrency for --serve")] = 10.0,
    port: Annotated[int, Opt(help="port of pih2t-serve for --serve (0: any free port)", min=0, max=65535)] = 0,
    output: Annotated[Path, Opt("--output", "-o", help="folder for bench.json, bench.md, bench.png")] = Path(
        "runs/bench"
    ),
) -> None:
    """Export to every format, verify each against the unfolded model, and time each; ratios to PyTorch eager."""
    from pih2t_deploy.bench.report import write_reports
    from pih2t_deploy.bench.runner import BenchOptions, installed_formats, run_bench

    options = BenchOptions(
        ckpt=ckpt,
        output=output,
        formats=(parse_str_list(formats) or []) if formats is not None else installed_formats(),
        batches=parse_int_list(batch, "--batch") or [],
        eval_data=eval_data,
        calib_data=calib_data,
        device=device,
        threads=threads,
        rounds=rounds,
        max_group_drop=max_group_drop,
    )
    report = run_bench(options, log)
    if serve:
        from pih2t_deploy.bench.serve_load import serve_benchmark
        from pih2t_deploy.errors import UserError

        artifact = output / "artifacts" / "onnx"
        if report["formats"].get("onnx", {}).get("status") != "ok":
            raise UserError("--serve needs the onnx format in --formats")
        sample = sorted((Path(__file__).resolve().parents[1] / "samples").glob("*.png"))[0]
        report["serve"] = serve_benchmark(
            artifact, sample, parse_int_list(concurrency, "--concurrency") or [1], serve_seconds, log, port=port
        )
    program = Path(sys.argv[0]).name
    command = " ".join([program if program.startswith("pih2t") else "pih2t", *map(shlex.quote, sys.argv[1:])])
    written = write_reports(report, output, command)
    table = Table(title=f"{report['arch']} on {report['device']} ({report['threads']} threads): x PyTorch eager")
    table.add_column("format")
    for size in options.batches:
        table.add_column(f"batch {size}", justify="right")
    for name, per_batch in report["timings"].items():
        table.add_row(
            name,
            *[
                f"{per_batch[str(b)]['p50_ms']:.2f} ms  x{per_batch[str(b)]['speedup_vs_torch']:.2f}"
                for b in options.batches
            ],
        )
    console.print(table)
    for name, info in report["formats"].items():
        if info["status"] == "skipped":
            console.print(f"skipped {name}: {info['reason']}", markup=False)
    for size, pick in report["recommended"].get("by_batch", {}).items():
        console.print(f"recommended at batch {size}: {pick['format']} ({pick['speedup_vs_torch']:.2f}x PyTorch eager)")
    console.print(f"CPU: {report['cpu']['model']} ({', '.join(report['cpu']['flags'])})", markup=False)
    console.print(f"wrote {', '.join(str(p) for p in written)}")
