"""Helpers shared by the tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

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


def run_cli(*args: str, timeout: float = 280) -> subprocess.CompletedProcess[str]:
    """Run ``python -m pih2t_deploy.cli ARGS`` in a fresh process and capture its output, with the environment
    Python sees (a library loaded by the tests sets COLUMNS=80 in the C environment, which would narrow tables)."""
    return subprocess.run(
        [sys.executable, "-m", "pih2t_deploy.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ),
    )


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
