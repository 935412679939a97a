"""Helpers shared by the tests."""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.context
import os
import runpy
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from pih2t_deploy.models import NetworkConfig, PIH2TNet


def make_net(arch: str = "digits_net", *, size: int = 8, seed: int = 0, **settings) -> PIH2TNet:
    """A network whose BN statistics, PIF, head and LWS weights are all non-trivial (not their init values)."""
    torch.manual_seed(seed)
    in_channels = settings.pop("in_channels", 1 if arch == "digits_net" else 3)
    num_classes = settings.pop("num_classes", 7)
    net = PIH2TNet(NetworkConfig(arch=arch, num_classes=num_classes, in_channels=in_channels, **settings))
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name.startswith(("pif", "head")) or "lws" in name:
                param.add_(0.2 * torch.randn_like(param))
        batch_norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        for bn in batch_norms:  # cumulative averages: statistics of real activations, as after training
            bn.reset_running_stats()
            bn.momentum = None
        net.train()
        for _ in range(2):
            net(torch.randn(16, in_channels, size, size))
        for bn in batch_norms:
            bn.momentum = 0.1
    return net.eval()


# what a CLI command imports before its first line of work (about 4 s): imported once, in the fork server
CLI_PRELOAD = [
    "torch",
    "torchvision",
    "onnx",
    "onnxruntime",
    "pih2t_deploy.training.engine",
    "pih2t_deploy.export.exporter",
]


def _cli_context() -> multiprocessing.context.ForkServerContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(CLI_PRELOAD)
    return context


def _cli_process(args: list[str], env: dict[str, str], cwd: str, out_path: str, err_path: str) -> None:
    """In a process forked from the fork server: what ``python -m pih2t_deploy.cli ARGS`` does, with this
    environment and folder, stdout and stderr in files; exit handlers run as at an interpreter's exit."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for fd, path in ((1, out_path), (2, err_path)):
        opened = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(opened, fd)
        os.close(opened)
    sys.argv = [sys.argv[0], *args]
    try:
        runpy.run_module("pih2t_deploy.cli", run_name="__main__", alter_sys=True)
    finally:
        atexit._run_exitfuncs()


def run_cli(*args: str, timeout: float = 280) -> subprocess.CompletedProcess[str]:
    """Run ``python -m pih2t_deploy.cli ARGS`` in a new process and capture its output, with the environment
    Python sees (a library loaded by the tests sets COLUMNS=80 in the C environment, which would narrow tables)
    and the current folder.

    The process is forked from a multiprocessing fork server that has already imported torch, onnx and
    onnxruntime (``CLI_PRELOAD``), instead of starting a new interpreter: the same exit status, stdout and
    stderr, about 4 s sooner per command. Tests that need a fresh interpreter (imports, signals, installs)
    start one themselves."""
    command = [sys.executable, "-m", "pih2t_deploy.cli", *args]
    with tempfile.TemporaryDirectory(prefix="pih2t-cli-") as folder:
        out_path, err_path = os.path.join(folder, "stdout"), os.path.join(folder, "stderr")
        process = _cli_context().Process(
            target=_cli_process, args=(list(args), dict(os.environ), os.getcwd(), out_path, err_path)
        )
        process.start()
        process.join(timeout)
        timed_out = process.exitcode is None
        if timed_out:
            process.kill()
            process.join()
        stdout, stderr = (Path(path).read_text() if os.path.exists(path) else "" for path in (out_path, err_path))
    if timed_out:
        raise subprocess.TimeoutExpired(command, timeout, stdout, stderr)
    return subprocess.CompletedProcess(command, process.exitcode, stdout, stderr)


def kill_if_running(process: subprocess.Popen) -> None:
    """Kill ``process`` (a server a test was meant to stop) if it is still running, and reap it."""
    if process.poll() is None:
        process.kill()
        process.wait()


def start_interruptible(command: list[str]) -> subprocess.Popen[str]:
    """``command`` started with SIGINT at its default, so that it gets Ctrl-C's KeyboardInterrupt even when this
    test run was itself started in the background (a shell starts background jobs with SIGINT ignored, and a
    child inherits that)."""
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
