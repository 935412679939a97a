"""How close a runtime comes to the CPU's limit: the model's operations per image (PyTorch's FLOP counter) times
the measured images per second, beside the CPU's peak operations per second for the precision the format
computes in.

The peak is cores x clock x operations per cycle per core, where the operations per cycle follow from the
widest instruction the CPU has for that precision (flags from /proc/cpuinfo) and the width of its vector
units: Intel cores with AVX-512 issue two 512-bit FMAs per cycle; AMD Zen 4 runs AVX-512 on 256-bit units
(two per cycle). AMX figures are Intel's per-core numbers for Sapphire Rapids (1024 BF16, 2048 INT8 operations
per cycle). The clock is the one /proc/cpuinfo reports, which in a VM is the nominal clock: cores that boost
above it can show more than 100% (on the 2.6 GHz-nominal AMD EPYC of docs/performance.md, the fp32 runtimes
show 120%: about 3.1 GHz). Read the fraction as the headroom left at the nominal clock, not an exact
efficiency. One multiply-add counts as two operations.
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


def cpu_peaks(cores: int | None = None, cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Peak]:
    """The peak of each precision for ``cores`` cores (default: the CPUs this process may use) at the clock
    /proc/cpuinfo reports; empty when it reports none."""
    vendor, flags, mhz = _cpuinfo(cpuinfo)
    if mhz is None:
        return {}
    cores = cores or len(os.sched_getaffinity(0))
    peaks = {}
    for precision in PRECISIONS:
        found = ops_per_cycle(precision, vendor, flags)
        if found is not None:
            per_cycle, instruction = found
            peaks[precision] = Peak(precision, cores * mhz * 1e6 * per_cycle, f"{instruction}, {cores} x {mhz:.0f} MHz")
    return peaks


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
