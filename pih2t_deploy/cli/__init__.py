"""The ``pih2t`` command and its ``pih2t-<verb>`` aliases.

Every command turns a UserError, or an option value its type or range does not allow, into one line on stderr
and exit status 2, and a failed numerical check (VerificationError) into one line and exit status 1; neither
prints a traceback. ``pih2t --version`` prints the package version.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Annotated, Literal

import typer

from pih2t_deploy import __version__
from pih2t_deploy.cli.bench_cmd import bench
from pih2t_deploy.cli.common import configure_logging, err_console
from pih2t_deploy.cli.demo_cmd import demo
from pih2t_deploy.cli.export_cmd import export
from pih2t_deploy.cli.predict_cmd import predict
from pih2t_deploy.cli.serve_cmd import serve
from pih2t_deploy.cli.train_cmd import evaluate, train
from pih2t_deploy.cli.triton_cmd import triton_app
from pih2t_deploy.errors import UserError, VerificationError

# Which extra brings a package that a command imports (training and export need [train], serving [serve], ...).
EXTRA_OF_PACKAGE = {
    "torch": "train",
    "torchvision": "train",
    "onnx": "train",
    "onnxscript": "train",
    "sklearn": "train",
    "matplotlib": "train",
    "onnxruntime": "cpu] or [gpu",
    "fastapi": "serve",
    "uvicorn": "serve",
    "starlette": "serve",
    "multipart": "serve",
    "prometheus_client": "serve",
    "httpx": "serve",
    "gradio": "demo",
    "gradio_client": "demo",
    "tritonclient": "triton",
    "pytriton": "triton",
    "google": "triton",
    "ray": "ray",
    "pyarrow": "ray",
}

COMMANDS: dict[str, Callable[..., None]] = {
    "train": train,
    "eval": evaluate,
    "export": export,
    "serve": serve,
    "predict": predict,
    "demo": demo,
    "bench": bench,
}


def _typer_app(commands: dict[str, Callable[..., None]]) -> typer.Typer:
    app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None)
    app.callback()(_group)
    for name, function in commands.items():
        app.command(name)(function)
    app.add_typer(triton_app, name="triton")
    return app


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"pih2t-deploy {__version__}")
        raise typer.Exit()


def _group(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="print the version and exit")
    ] = False,
    log_level: Annotated[
        Literal["debug", "info", "warning", "error"],
        typer.Option(help="least severe progress messages shown (also PIH2T_LOG_LEVEL, for pih2t-<verb> too)"),
    ] = "info",
) -> None:
    """Train, fold, export and serve PI-H2T long-tailed image classifiers."""
    configure_logging(log_level)


def _one_line(message: str) -> str:
    """The message itself; for an error re-raised from a DataLoader worker, its original last line."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if len(lines) > 1 and "Original Traceback" in message:
        return lines[-1].split(": ", 1)[-1]
    return " ".join(lines)


def _is_usage_error(exc: Exception) -> bool:
    """A command-line usage error of click (vendored by typer): an unknown option, a value outside its choices
    or range. Recognised by what it offers (a message and exit status 2), not by the vendored class."""
    return callable(getattr(exc, "format_message", None)) and getattr(exc, "exit_code", None) == 2


def _run(app: typer.Typer) -> None:
    try:
        configure_logging(os.environ.get("PIH2T_LOG_LEVEL", "info"))
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except UserError as exc:
        err_console.print(f"error: {_one_line(str(exc))}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except VerificationError as exc:
        err_console.print(f"verification failed: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except FloatingPointError as exc:  # training diverged (the message says which stage, epoch and what to do)
        err_console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)
    except ModuleNotFoundError as exc:
        package = (exc.name or "").split(".")[0]
        if package not in EXTRA_OF_PACKAGE:
            raise
        err_console.print(
            f"error: this command needs the {package} package, which is not installed here; "
            f"install it with: pip install 'pih2t-deploy[{EXTRA_OF_PACKAGE[package]}]'",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(2)
    except OSError as exc:  # a file or folder the command could not read or write
        where = f": {exc.filename}" if exc.filename else ""
        err_console.print(f"error: {exc.strerror or exc}{where}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted", markup=False)
        sys.exit(130)
    except Exception as exc:
        if not _is_usage_error(exc):
            raise
        message = exc.format_message()  # type: ignore[attr-defined]
        if "\n" in message:  # the help text, shown when a command is called without arguments
            err_console.print(message, markup=False, highlight=False)
        else:
            err_console.print(f"error: {message} (see --help)", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)


def main() -> None:
    """``pih2t <verb> ...``."""
    _run(_typer_app(COMMANDS))


def _alias(name: str) -> Callable[[], None]:
    def run() -> None:
        single = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
        single.command(name)(COMMANDS[name])
        _run(single)

    run.__doc__ = f"``pih2t-{name}``: the same as ``pih2t {name}``."
    return run


train_main = _alias("train")
eval_main = _alias("eval")
export_main = _alias("export")
serve_main = _alias("serve")
predict_main = _alias("predict")
demo_main = _alias("demo")
bench_main = _alias("bench")


def triton_main() -> None:
    """``pih2t-triton``: the same as ``pih2t triton``."""
    _run(triton_app)
