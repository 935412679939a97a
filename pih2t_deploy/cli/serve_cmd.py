"""``pih2t-serve``: the REST service (FastAPI + uvicorn) on an exported artifact."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Literal

import typer

from pih2t_deploy.cli.common import VERIFY_KEY_HELP, err_console, verify_signature
from pih2t_deploy.errors import ConfigError
from pih2t_deploy.runtime.loader import BackendName, PerformanceHint


def serve(
    model: Annotated[
        Path, typer.Option("--model", help="artifact folder from pih2t-export (or a model.pt with --backend torch)")
    ],
    backend: Annotated[BackendName, typer.Option(help="the runtime that runs the model")] = "onnxruntime",
    device: Annotated[Literal["cpu", "cuda"], typer.Option(help="where the model runs")] = "cpu",
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    grpc_port: Annotated[
        int, typer.Option(min=0, max=65535, help="gRPC port (KServe v2 / Triton protocol); 0 turns gRPC off")
    ] = 8001,
    name: Annotated[str | None, typer.Option(help="model name in URLs (default: the recipe name)")] = None,
    max_batch: Annotated[int, typer.Option(help="largest micro-batch")] = 32,
    max_wait_ms: Annotated[
        float, typer.Option(help="longest wait for a batch to fill, while more requests are on their way")
    ] = 5.0,
    max_queue: Annotated[int, typer.Option(help="images allowed to wait; more get 503")] = 256,
    max_upload_mb: Annotated[float, typer.Option(help="largest request body")] = 10.0,
    max_request_pixels: Annotated[
        int, typer.Option(min=1, help="largest total of decoded pixels per request (from the image headers); 413")
    ] = 80_000_000,
    timeout_s: Annotated[float, typer.Option(help="longest wait for an answer; then 504")] = 30.0,
    header_timeout_s: Annotated[
        float, typer.Option(min=0.1, help="longest time request headers may take to arrive; then 408 (slowloris)")
    ] = 10.0,
    body_timeout_s: Annotated[
        float, typer.Option(help="longest time a request body may take to arrive; then 408 (slow clients)")
    ] = 30.0,
    max_connections: Annotated[
        int, typer.Option(min=1, help="open connections allowed at once; more get 503 (protects file handles)")
    ] = 1000,
    drain_s: Annotated[
        float,
        typer.Option(
            min=0, help="on SIGTERM: answer not-ready but keep serving this long before shutting down (Kubernetes)"
        ),
    ] = 0.0,
    threads: Annotated[
        int | None,
        typer.Option(help="inference threads per worker (default: the runtime's choice; with --workers, CPUs / N)"),
    ] = None,
    performance_hint: Annotated[
        PerformanceHint,
        typer.Option(
            help="openvino: latency runs each batch on all threads; throughput runs one batch per OpenVINO stream, "
            "several at once (more requests/s under load, slower single requests; docs/performance.md)"
        ),
    ] = "latency",
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="serving processes sharing the port, each with its own model copy and batcher; /metrics sums them",
        ),
    ] = 1,
    grpc_handoff: Annotated[
        bool,
        typer.Option(
            "--grpc-handoff/--no-grpc-handoff",
            help="with --workers: a worker busier than another hands it gRPC inference calls (the kernel spreads "
            "connections, not calls, so a client with one channel would otherwise keep one worker busy)",
        ),
    ] = True,
    grpc_front: Annotated[
        Literal["python", "native"],
        typer.Option(
            help="what takes gRPC calls: python (grpcio, in each worker) or native (the pih2t-grpc-front program, "
            "built by `make grpc-front`, handing each call to the least busy worker; fewer CPU seconds per call)"
        ),
    ] = "python",
    verify_key: Annotated[Path | None, typer.Option(help=VERIFY_KEY_HELP)] = None,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch/--no-watch",
            help="count answers per class and group, histogram their confidence, estimate label shift",
        ),
    ] = True,
    adapt_prior: Annotated[
        bool,
        typer.Option("--adapt-prior", help="correct answers for the estimated deployment prior once enough are seen"),
    ] = False,
    adapt_min_samples: Annotated[
        int, typer.Option(min=1, help="answers seen before --adapt-prior corrects anything")
    ] = 500,
    prior: Annotated[
        list[str] | None,
        typer.Option(help="NAME=FILE: a deployment prior requests may name (FILE: one number per class); repeatable"),
    ] = None,
    max_class_labels: Annotated[
        int, typer.Option(min=1, help="classes counted by name in /metrics; the others as 'other (<group>)'")
    ] = 100,
    log_low_confidence: Annotated[
        Path | None, typer.Option(help="keep inputs answered below --low-confidence-threshold in this folder")
    ] = None,
    low_confidence_threshold: Annotated[float, typer.Option(help="top-1 probability below which to keep")] = 0.5,
    low_confidence_keep: Annotated[int, typer.Option(min=1, help="samples kept (the oldest are removed)")] = 1000,
    expose_process_info: Annotated[
        bool,
        typer.Option(
            "--expose-process-info", help="show the process id and software versions in GET /v1/model (default: hidden)"
        ),
    ] = False,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Serve /v1/classify, the Open Inference Protocol (/v2), /metrics and /docs."""
    from pih2t_deploy.serving.front import find_front
    from pih2t_deploy.serving.process import require_free_port
    from pih2t_deploy.serving.settings import ServeSettings
    from pih2t_deploy.serving.workers import ServeSpec, WorkerPool, load_model, serve_one, threads_per_worker

    if not 0 < port < 65536:
        raise ConfigError(f"--port must be between 1 and 65535, got {port}")
    settings = ServeSettings(
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_queue=max_queue,
        max_upload_mb=max_upload_mb,
        max_request_pixels=max_request_pixels,
        timeout_s=timeout_s,
        body_timeout_s=body_timeout_s,
        expose_process_info=expose_process_info,
        watch=watch,
        adapt_prior=adapt_prior,
        adapt_min_samples=adapt_min_samples,
        max_class_labels=max_class_labels,
        low_confidence_dir=log_low_confidence,
        low_confidence_threshold=low_confidence_threshold,
        low_confidence_keep=low_confidence_keep,
    )
    verify_signature(model, verify_key)
    require_free_port(host, port)
    if grpc_port:
        if grpc_port == port:
            raise ConfigError(f"--grpc-port {grpc_port} is also --port; give them different ports")
        require_free_port(host, grpc_port)
    elif grpc_front == "native":
        raise ConfigError("--grpc-front native serves gRPC: give it --grpc-port too")
    front_program = find_front() if grpc_front == "native" else None
    spec = ServeSpec(
        model=model,
        backend=backend,
        device=device,
        threads=threads_per_worker(threads, workers),
        name=name,
        settings=settings,
        host=host,
        port=port,
        grpc_port=grpc_port,
        drain_s=drain_s,
        header_timeout_s=header_timeout_s,
        max_connections=max_connections,
        log_level=log_level,
        performance_hint=performance_hint,
        grpc_handoff=grpc_handoff,
        grpc_front=front_program,
    )
    # loaded here even for --workers (which load their own copies): a folder that cannot be served fails now,
    # with one line, instead of in every worker
    classifier = load_model(spec)
    if prior:
        from pih2t_deploy.serving.prior_knob import load_priors

        priors = load_priors(prior, classifier.info.num_classes)
        spec = dataclasses.replace(spec, settings=dataclasses.replace(settings, priors=priors))
    err_console.print(
        f"serving {classifier.info.name} ({classifier.info.num_classes} classes, {classifier.describe()}) "
        f"on http://{host}:{port} (docs at /docs)"
        + (f" and gRPC {host}:{grpc_port}" if grpc_port else "")
        + (" (native front end)" if front_program else "")
        + (f", {workers} worker processes with {spec.threads} inference threads each" if workers > 1 else ""),
        markup=False,
    )
    if workers == 1 and front_program is None:
        serve_one(spec, classifier)
        return
    del classifier  # the parent runs no model
    if WorkerPool(spec, workers).run():
        raise typer.Exit(1)
