"""The CPU peak per precision from /proc/cpuinfo's flags and clock, the model's operations per image, and the
fraction of peak pih2t-bench reports: each against numbers worked out by hand."""

from __future__ import annotations

import pytest
from torch import nn

from pih2t_deploy.bench.peak import Peak, cpu_peaks, gemm_clock_mhz, model_ops_per_image, ops_per_cycle
from pih2t_deploy.bench.runner import add_ops_and_peak, format_precision

SAPPHIRE_RAPIDS = {"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"}
ZEN4 = {"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"}
CASCADE_LAKE = {"avx2", "fma", "avx512f", "avx512_vnni"}


@pytest.mark.parametrize(
    ("vendor", "flags", "expected"),
    [
        ("GenuineIntel", SAPPHIRE_RAPIDS, {"fp32": 64, "bf16": 1024, "int8": 2048}),
        ("AuthenticAMD", ZEN4, {"fp32": 32, "bf16": 64, "int8": 128}),
        ("GenuineIntel", CASCADE_LAKE, {"fp32": 64, "bf16": 64, "int8": 256}),
        ("AuthenticAMD", {"avx2", "fma"}, {"fp32": 32, "bf16": 32, "int8": None}),
    ],
)
def test_operations_per_cycle_follow_the_widest_instruction_for_each_precision(vendor, flags, expected):
    found = {p: ops_per_cycle(p, vendor, flags) for p in expected}
    assert {p: None if f is None else f[0] for p, f in found.items()} == expected


def test_the_peak_is_cores_times_clock_times_operations_per_cycle(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "vendor_id\t: AuthenticAMD\ncpu MHz\t\t: 2000.000\nflags\t\t: fpu avx2 fma avx512f avx512_bf16\n\n"
        "vendor_id\t: AuthenticAMD\ncpu MHz\t\t: 1500.000\nflags\t\t: fpu\n"
    )
    peaks = cpu_peaks(2, cpuinfo)
    assert set(peaks) == {"fp32", "bf16"}, "no INT8 dot-product instruction: no INT8 peak"
    assert peaks["fp32"].ops_per_s == 2 * 2000e6 * 32
    assert peaks["bf16"].ops_per_s == 2 * 2000e6 * 64
    assert peaks["bf16"].instruction == "AVX512-BF16 dot products, 2 x 2000 MHz (reported)"
    assert cpu_peaks(2, tmp_path / "missing") == {}
    boosted = cpu_peaks(2, cpuinfo, clock_mhz=3000.0)  # a VM reports its nominal clock; the cores boost
    assert boosted["fp32"].ops_per_s == 2 * 3000e6 * 32 and boosted["fp32"].instruction.endswith("(measured)")
    assert cpu_peaks(2, cpuinfo, clock_mhz=1000.0)["fp32"].ops_per_s == 2 * 2000e6 * 32


def test_the_measured_clock_is_a_clock_in_mhz():
    """On this machine a 1024x1024 fp32 product on one core sustains a clock between 100 MHz and 10 GHz (a rate
    in the wrong unit, or operations counted once per multiply-add, would fall outside by far)."""
    assert 100 < gemm_clock_mhz(1) < 10_000
