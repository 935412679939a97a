"""The CPU a benchmark ran on: model name and the instruction-set flags that decide which backend is fastest."""

from __future__ import annotations

import os
import platform
from pathlib import Path

# Flags that change which runtime/precision wins: AMX tiles, AVX-512 VNNI (INT8), AVX-512 BF16, AVX-512, AVX2.
RELEVANT_FLAGS = ("amx_tile", "amx_bf16", "amx_int8", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx512f", "avx2")


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, object]:
    """{"model": ..., "flags": [...relevant flags present...], "cores": N}; model falls back to platform's."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "flags": [f for f in RELEVANT_FLAGS if f in flags], "cores": os.cpu_count()}
