"""``pih2t-demo``: the Gradio web demo on an exported artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pih2t_deploy.cli.common import VERIFY_KEY_HELP, err_console, verify_signature
from pih2t_deploy.errors import ConfigError, DataError
from pih2t_deploy.runtime.loader import BackendName

Opt = typer.Option


def demo(
    model: Annotated[Path, Opt("--model", help="artifact folder from pih2t-export")],
    backend: Annotated[BackendName, Opt(help="the runtime that runs the model")] = "onnxruntime",
    host: Annotated[str, Opt(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, Opt(help="TCP port")] = 7860,
    share: Annotated[
        str, Opt(help="public share link: never (the only choice; use a reverse proxy to publish)")
    ] = "never",
    examples: Annotated[
        Path | None, Opt(help="folder of example images (default: from the model's own test data, when known)")
    ] = None,
    max_file_mb: Annotated[float, Opt(help="largest upload")] = 5.0,
    verify_key: Annotated[Path | None, Opt(help=VERIFY_KEY_HELP)] = None,
) -> None:
    """Serve a page to upload an image, see top-k with Many/Medium/Few tags, and re-rank with tau."""
    from pih2t_deploy.runtime import load_classifier
    from pih2t_deploy.serving.demo import DemoSettings, launch
    from pih2t_deploy.serving.process import require_free_port

    if share != "never":
        raise ConfigError(
            "--share must be 'never': public Gradio links are disabled; put the demo behind your own proxy"
        )
    if not 0 < port < 65536:
        raise ConfigError(f"--port must be between 1 and 65535, got {port}")
    found: tuple[Path, ...] = ()
    if examples is not None:
        if not examples.is_dir():
            raise DataError(f"--examples {examples} is not a folder")
        found = tuple(sorted(p for p in examples.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp")))
        if not found:
            raise DataError(f"--examples {examples} holds no .png/.jpg/.webp images")
    require_free_port(host, port)
    verify_signature(model, verify_key)
    classifier = load_classifier(model, backend)
    err_console.print(f"demo of {classifier.info.name} on http://{host}:{port}", markup=False)
    launch(classifier, host, port, DemoSettings(max_file_mb=max_file_mb, examples=found))
