"""How close a runtime comes to the CPU's limit: the model's operations per image (PyTorch's FLOP counter) times
the measured images per second, beside the CPU's peak operations per second for the precision the format
computes in.

The peak is cores x clock x operations per cycle per core, where the operations per cycle follow from the
widest instruction the CPU has for that precision (flags from /proc/cpuinfo) and the width of its vector
units: Intel cores with AVX-512 issue two 512-bit FMAs per cycle; AMD Zen 4 runs AVX-512 on 256-bit units
(two per cycle). AMX figures are Intel's per-core numbers for Sapphire Rapids (1024 BF16, 2048 INT8 operations
per cycle). The clock: a VM's /proc/cpuinfo shows the nominal clock while the cores run at their boost clock,
so ``gemm_clock_mhz`` measures the clock an fp32 matrix product actually sustains (its operations per second
divided by cores x fp32 operations per cycle) and the higher of the two is used. A runtime at 100% computes as
fast as that matrix product; the fraction is an estimate of the headroom, not an exact efficiency. One
multiply-add counts as two operations.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PRECISIONS = ("fp32", "bf16", "int8")


@dataclass(frozen=True)
class Peak:
    """The CPU's peak for one precision: operations per second and the instruction that gives it."""

    precision: str
    ops_per_s: float
    instruction: str


def _cpuinfo(cpuinfo: Path) -> tuple[str, set[str], float | None]:
    vendor, flags, mhz = "", set[str](), None
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "vendor_id" and not vendor:
                vendor = value
            elif key == "flags" and not flags:
                flags = set(value.split())
            elif key == "cpu MHz" and mhz is None:
                mhz = float(value)
    except (OSError, ValueError):
        pass
    return vendor, flags, mhz


def ops_per_cycle(precision: str, vendor: str, flags: set[str]) -> tuple[float, str] | None:
    """Operations per cycle per core for ``precision`` and the instruction that gives them; None when the CPU
    has no instruction for it worth a peak (INT8 without a dot-product instruction)."""
    amd = vendor == "AuthenticAMD"
    if "avx512f" in flags:
        fp32, unit = (32, "AVX-512 FMA on 2x256-bit units") if amd else (64, "AVX-512 FMA, 2 units")
    elif {"avx2", "fma"} <= flags:
        fp32, unit = 32, "AVX2 FMA, 2 units"
    else:
        fp32, unit = 8, "SSE"
    if precision == "fp32":
        return fp32, unit
    if precision == "bf16":
        if "amx_bf16" in flags:
            return 1024, "AMX-BF16"
        if "avx512_bf16" in flags:
            return 2 * fp32, "AVX512-BF16 dot products"
        return fp32, f"{unit} (no BF16 instruction: computed in fp32)"
    if precision == "int8":
        if "amx_int8" in flags:
            return 2048, "AMX-INT8"
        if "avx512_vnni" in flags:
            return 4 * fp32, "AVX-512 VNNI dot products"
        if "avx_vnni" in flags:
            return 128, "AVX-VNNI dot products"
        return None
    raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")


def cpu_peaks(
    cores: int | None = None, cpuinfo: Path = Path("/proc/cpuinfo"), clock_mhz: float | None = None
) -> dict[str, Peak]:
    """The peak of each precision for ``cores`` cores (default: the CPUs this process may use) at the higher
    of the reported clock and ``clock_mhz`` (a measured one); empty when neither is known."""
    vendor, flags, reported = _cpuinfo(cpuinfo)
    mhz = max(filter(None, (reported, clock_mhz)), default=None)
    if mhz is None:
        return {}
    source = "measured" if clock_mhz is not None and mhz == clock_mhz else "reported"
    cores = cores or len(os.sched_getaffinity(0))
    peaks = {}
    for precision in PRECISIONS:
        found = ops_per_cycle(precision, vendor, flags)
        if found is not None:
            per_cycle, instruction = found
            label = f"{instruction}, {cores} x {mhz:.0f} MHz ({source})"
            peaks[precision] = Peak(precision, cores * mhz * 1e6 * per_cycle, label)
    return peaks


def gemm_clock_mhz(cores: int, cpuinfo: Path = Path("/proc/cpuinfo"), size: int = 1024, repeats: int = 20) -> float:
    """The clock an fp32 matrix product of ``size`` x ``size`` sustains on ``cores`` threads: its best
    operations per second over ``repeats`` runs, divided by cores x fp32 operations per cycle."""
    import time

    import torch

    vendor, flags, _ = _cpuinfo(cpuinfo)
    per_cycle = ops_per_cycle("fp32", vendor, flags)
    assert per_cycle is not None  # every CPU has an fp32 rate
    previous = torch.get_num_threads()
    torch.set_num_threads(cores)
    try:
        a, b = torch.randn(size, size), torch.randn(size, size)
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - started)
    finally:
        torch.set_num_threads(previous)
    return 2 * size**3 / best / (cores * per_cycle[0]) / 1e6


def model_ops_per_image(net: Any, input_shape: tuple[int, ...]) -> float:
    """Operations (2 per multiply-add) of one forward pass of ``net`` on one image, by PyTorch's FLOP counter
    (convolutions and matrix products; element-wise work is not counted)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    was_training = net.training
    net.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(torch.zeros((1, *input_shape)))
    finally:
        net.train(was_training)
    return float(counter.get_total_flops())
