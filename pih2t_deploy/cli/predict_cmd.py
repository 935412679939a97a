"""``pih2t-predict``: classify a folder, a glob, a list of paths or an ImageFolder tree into a result file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal

import typer

from pih2t_deploy.cli.common import VERIFY_KEY_HELP, console, log, verify_signature
from pih2t_deploy.runtime.loader import BackendName


def predict(
    model: Annotated[Path, typer.Option("--model", help="artifact folder from pih2t-export")],
    input_source: Annotated[
        str,
        typer.Option(
            "--input",
            help="a folder (recursive; an ImageFolder tree gives accuracies), a glob in quotes, "
            "a text file with one path per line, or one image",
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="result file: .jsonl, .csv or .parquet (with --engine ray: a folder of shards)"
        ),
    ],
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="classes per image")] = 5,
    batch: Annotated[int, typer.Option(min=1, help="images per model call")] = 64,
    backend: Annotated[BackendName, typer.Option(help="the runtime that runs the model")] = "onnxruntime",
    threads: Annotated[int | None, typer.Option(min=1, help="inference threads (default: the runtime's)")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="image decoding threads (default: CPU count)")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="skip the images OUTPUT already holds")] = False,
    engine: Annotated[
        Literal["local", "ray"], typer.Option(help="local (this machine) or ray (a Ray cluster)")
    ] = "local",
    address: Annotated[
        str | None, typer.Option(help="Ray cluster: auto or HOST:PORT (default: start a local Ray)")
    ] = None,
    num_workers: Annotated[int, typer.Option(min=1, help="Ray classifier actors")] = 2,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="show a progress bar")] = True,
    verify_key: Annotated[Path | None, typer.Option(help=VERIFY_KEY_HELP)] = None,
    tau: Annotated[
        float | None, typer.Option(help="logit-adjustment strength for every row (default: the one folded at export)")
    ] = None,
    prior: Annotated[
        Path | None, typer.Option(help="deployment class prior for every row: a file of one number per class")
    ] = None,
    adapt_prior: Annotated[
        bool,
        typer.Option("--adapt-prior", help="estimate the inputs' class prior first, then score with it (2 passes)"),
    ] = False,
) -> None:
    """Classify every image; one row per image (top-k labels, indices, scores, group; the error for a bad file).

    Exit status 0 when every image was classified, 3 when some rows are errors, 2 on bad arguments.
    """
    verify_signature(model, verify_key)
    if engine == "ray":
        from pih2t_deploy.errors import ConfigError
        from pih2t_deploy.predict.ray_engine import run_on_ray

        if tau is not None or prior is not None or adapt_prior:
            raise ConfigError("--tau, --prior and --adapt-prior run with --engine local (this machine) only")

        result = run_on_ray(
            model, input_source, output, address=address, num_workers=num_workers, top_k=top_k, batch_size=batch,
            backend=backend, threads=threads, resume=resume, progress=progress, log=log,
        )  # fmt: skip
    else:
        from pih2t_deploy.predict.job import run_local

        result = run_local(
            model, input_source, output, top_k=top_k, batch_size=batch, backend=backend, threads=threads,
            workers=workers, resume=resume, progress=progress, tau=tau, prior=prior, adapt_prior=adapt_prior, log=log,
        )  # fmt: skip
    summary = result.summary
    console.print(
        f"{summary['images']} rows in {output} ({result.written} new, {result.skipped} already there; "
        f"{summary['errors']} errors); summary in {result.summary_path}"
    )
    if "top1" in summary:
        groups = [g for g in ("many", "medium", "few") if summary.get(g) is not None]
        console.print(
            f"accuracy on {summary['labelled_images']} labelled images: top-1 {100 * summary['top1']:.1f}%  "
            + "  ".join(f"{g} {100 * summary[g]:.1f}%" for g in groups)
        )
    shift = summary.get("label_shift")
    if shift:
        console.print(
            f"class prior of the {shift['window']} images sampled: total variation {shift['total_variation']:.3f} from "
            f"the training prior, {shift['total_variation_from_reference']:.3f} from the one the model assumes"
        )
    if result.exit_code:
        console.print(f"{summary['errors']} images could not be classified: their rows carry the error")
        sys.exit(result.exit_code)
