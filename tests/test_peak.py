"""The CPU peak per precision from /proc/cpuinfo's flags and clock, the model's operations per image, and the
fraction of peak pih2t-bench reports: each against numbers worked out by hand."""

from __future__ import annotations

import pytest
from torch import nn

from pih2t_deploy.bench.peak import Peak, cpu_peaks, model_ops_per_image, ops_per_cycle
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
    assert peaks["bf16"].instruction == "AVX512-BF16 dot products, 2 x 2000 MHz"
    assert cpu_peaks(2, tmp_path / "missing") == {}


def test_model_operations_count_two_per_multiply_add_of_convolutions_and_linear_layers():
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10)).train()
    conv = 4 * 1 * 3 * 3 * 8 * 8  # output channels x input channels x kernel x output positions
    linear = 4 * 8 * 8 * 10
    assert model_ops_per_image(net, (1, 8, 8)) == 2 * (conv + linear)
    assert net.training, "the model is left in the mode it came in"


def test_the_bench_rows_get_achieved_operations_and_the_fraction_of_their_precisions_peak(monkeypatch):
    fake_peaks = {"fp32": Peak("fp32", 1e11, "x"), "int8": Peak("int8", 4e11, "x")}
    monkeypatch.setattr("pih2t_deploy.bench.runner.cpu_peaks", lambda cores: fake_peaks)
    timings = {
        "torch": {"1": {"images_per_s": 50.0}},
        "onnx-int8": {"1": {"images_per_s": 200.0}},
        "openvino-bf16": {"1": {"images_per_s": 100.0}},
    }
    peaks = add_ops_and_peak(timings, 1e9, cores=2)
    assert timings["torch"]["1"]["gops_per_s"] == pytest.approx(50.0)
    assert timings["torch"]["1"]["of_peak"] == pytest.approx(0.5)
    assert timings["onnx-int8"]["1"]["of_peak"] == pytest.approx(0.5)  # 200 G ops/s of the INT8 peak, 400
    assert timings["openvino-bf16"]["1"]["of_peak"] is None  # no bf16 peak given
    assert peaks == {
        "fp32": {"gops_per_s": 100.0, "instruction": "x"},
        "int8": {"gops_per_s": 400.0, "instruction": "x"},
    }
    assert [format_precision(n) for n in ("torch", "onnx", "onnx-int8", "openvino-bf16", "openvino-int8")] == [
        "fp32",
        "fp32",
        "int8",
        "bf16",
        "int8",
    ]
