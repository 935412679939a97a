"""``pih2t-triton build | validate | infer | serve``: Triton Inference Server deployment."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import typer

from pih2t_deploy.cli.common import VERIFY_KEY_HELP, console, err_console, parse_int_list, verify_signature
from pih2t_deploy.errors import VerificationError

Opt = typer.Option
triton_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Generate, validate, serve and query Triton model repositories.",
)


@triton_app.command("build")
def build(
    model: Annotated[Path, Opt("--model", help="artifact folder from pih2t-export --format onnx")],
    repo: Annotated[Path, Opt("--repo", help="model repository folder to write into")],
    name: Annotated[
        str | None,
        Opt(help="ensemble name (default: the artifact's, as pih2t-serve names it); others <name>_onnx, ..."),
    ] = None,
    max_batch: Annotated[int, Opt(help="max_batch_size of every model")] = 64,
    instances: Annotated[int, Opt(help="instances per model")] = 1,
    kind: Annotated[str, Opt(help="cpu or gpu instances")] = "cpu",
    preferred_batch: Annotated[str | None, Opt(help="comma-separated preferred batch sizes")] = None,
    max_queue_delay_us: Annotated[int, Opt(help="dynamic batching queue delay")] = 100,
    trt_accelerator: Annotated[bool, Opt("--trt-accelerator", help="ORT TensorRT accelerator (gpu)")] = False,
    warmup: Annotated[bool, Opt("--warmup", help="add model_warmup with zero inputs")] = False,
    cpu_python: Annotated[bool, Opt("--cpu-python", help="Python-backend onnxruntime model (pytriton server)")] = False,
    force: Annotated[bool, Opt("--force", help="replace existing model versions")] = False,
    verify_key: Annotated[Path | None, Opt(help=VERIFY_KEY_HELP)] = None,
) -> None:
    """Write a versioned model repository (onnx / trt / preprocess / ensemble models) for an artifact."""
    verify_signature(model, verify_key)
    from pih2t_deploy.serving.triton.repository import RepositorySettings, build_repository

    settings = RepositorySettings(
        name=name,
        max_batch=max_batch,
        instances=instances,
        kind=kind,
        preferred_batch=parse_int_list(preferred_batch, "--preferred-batch") or [],
        max_queue_delay_us=max_queue_delay_us,
        trt_accelerator=trt_accelerator,
        warmup=warmup,
        cpu_python=cpu_python,
        force=force,
    )
    models = build_repository(model, repo, settings)
    console.print(f"wrote {', '.join(models)} into {repo}")


@triton_app.command("validate")
def validate(repo: Annotated[Path, typer.Argument(help="model repository folder")]) -> None:
    """Parse every config.pbtxt and check the cross-file rules; exit 1 on any problem."""
    from pih2t_deploy.serving.triton.validate import validate_repository

    report = validate_repository(repo)
    for problem in report.problems:
        err_console.print(f"problem: {problem}", markup=False)
    if not report.ok:
        raise VerificationError(f"{len(report.problems)} problem(s) in {repo}")
    console.print(f"{repo}: {len(report.models)} models valid ({', '.join(report.models)})")


@triton_app.command("infer")
def infer(
    images: Annotated[list[Path], typer.Argument(help="image files")],
    model: Annotated[str, Opt(help="ensemble (or pih2t-serve model) name: the artifact's name, e.g. digits-lt")],
    url: Annotated[str, Opt(help="server address host:port")] = "127.0.0.1:8000",
    protocol: Annotated[str, Opt(help="http or grpc")] = "http",
    top_k: Annotated[int, Opt(help="classes to show per image")] = 5,
) -> None:
    """Classify image files through the ensemble and print the top-k labels."""
    from pih2t_deploy.serving.triton.client import classify_files

    for path, ranked in zip(
        images, classify_files(url, images, model=model, top_k=top_k, protocol=protocol), strict=True
    ):
        console.print(f"{path}: " + ", ".join(f"{r.label} ({r.value:.3f})" for r in ranked), markup=False)


@triton_app.command("serve")
def serve(
    repo: Annotated[Path, typer.Argument(help="model repository built with --cpu-python")],
    http_port: Annotated[int, Opt(help="HTTP port")] = 8000,
    grpc_port: Annotated[int, Opt(help="gRPC port")] = 8001,
    metrics_port: Annotated[int, Opt(help="metrics port")] = 8002,
) -> None:
    """Run the tritonserver shipped with nvidia-pytriton on 127.0.0.1 (Python backend only)."""
    from pih2t_deploy.serving.triton.server import Ports, serve_forever

    if shutil.which("nvidia-smi") is None:
        err_console.print(CPU_NOTE, markup=False)
    raise typer.Exit(serve_forever(repo, Ports(http_port, grpc_port, metrics_port)))


CPU_NOTE = (
    "no GPU here: tritonserver (a CUDA build) logs 'CudaDriverHelper has not been initialized' and 'unable to "
    "create stream' at start; both are expected on a CPU and harmless (pinned memory and GPU metrics are off)"
)
