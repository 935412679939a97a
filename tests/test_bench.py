"""pih2t-bench on a tiny model: report files, expected keys, a valid PNG, skipped formats with reasons."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from pih2t_deploy.bench.runner import BenchOptions, run_bench
from pih2t_deploy.errors import ConfigError
from tests.helpers import run_cli


def test_bench_writes_json_markdown_and_a_png(tmp_path, digits_artifact, digits_eval):
    ckpt, _ = digits_artifact
    done = run_cli(
        "bench",
        "--ckpt",
        str(ckpt),
        "--formats",
        "torch,onnx,trt",
        "--batch",
        "1,2",
        "--rounds",
        "2",
        "--eval-data",
        "recipe",
        "--output",
        str(tmp_path / "b"),
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert {"timings", "formats", "accuracy", "versions", "machine", "device", "date", "command"} <= set(report)
    assert set(report["timings"]) == {"torch", "onnx"}
    for per_batch in report["timings"].values():
        assert set(per_batch) == {"1", "2"}
        assert {"p50_ms", "p90_ms", "p99_ms", "images_per_s", "speedup_vs_torch"} <= set(per_batch["1"])
    assert report["timings"]["torch"]["1"]["speedup_vs_torch"] == pytest.approx(1.0)
    onnx = report["timings"]["onnx"]["2"]
    assert onnx["gops_per_s"] == pytest.approx(report["ops_per_image"] * onnx["images_per_s"] / 1e9)
    assert 0 < onnx["of_peak"] < 1 and onnx["of_peak"] * report["peaks"]["fp32"]["gops_per_s"] == pytest.approx(
        onnx["gops_per_s"]
    )
    assert report["formats"]["trt"]["status"] == "skipped" and "TensorRT" in report["formats"]["trt"]["reason"]
    assert report["formats"]["onnx"]["verification"][0]["passed"]
    assert report["accuracy"]["onnx"]["top1"] == pytest.approx(report["accuracy"]["torch"]["top1"])
    for group in ("many", "medium", "few"):  # the checkpoint's thresholds (40/10), as pih2t-eval uses them
        assert report["accuracy"]["torch"][group] == pytest.approx(digits_eval[group]), group
    with Image.open(tmp_path / "b" / "bench.png") as image:
        image.verify()
    markdown = (tmp_path / "b" / "bench.md").read_text()
    assert (
        "| onnx | 2 |" in markdown
        and "% of peak" in markdown
        and "Skipped formats" in markdown
        and "pih2t bench --ckpt" in markdown
    )


def test_bench_refuses_unknown_formats(tmp_path, digits_artifact):
    with pytest.raises(ConfigError, match="unknown format 'tflite'"):
        run_bench(BenchOptions(ckpt=digits_artifact[0], output=tmp_path, formats=["tflite"]))
    with pytest.raises(ConfigError, match="--batch"):
        run_bench(BenchOptions(ckpt=digits_artifact[0], output=tmp_path, batches=[0]))


def test_bench_serve_mode_load_tests_pih2t_serve_and_local_triton(tmp_path, digits_artifact):
    ckpt, _ = digits_artifact
    done = run_cli(
        "bench",
        "--ckpt",
        str(ckpt),
        "--formats",
        "torch,onnx",
        "--batch",
        "1",
        "--rounds",
        "1",
        "--serve",
        "--concurrency",
        "1,2",
        "--serve-seconds",
        "1.5",
        "--output",
        str(tmp_path / "b"),
        timeout=280,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "b" / "bench.json").read_text())
    for server in ("pih2t-serve", "triton"):
        rows = report["serve"][server]
        assert [row["concurrency"] for row in rows] == [1, 2]
        assert all(row["requests"] > 0 and row["errors"] == 0 for row in rows), rows
    assert "| triton | 2 |" in (tmp_path / "b" / "bench.md").read_text()


def test_latency_percentiles_keep_their_names_from_clock_to_report(monkeypatch):
    """Calls that take 1, 2, ..., 100 ms: the median is 50.5 ms, the 90th percentile 90 ms, the 99th 99 ms;
    the report row and the markdown table show each under its own name."""
    from pih2t_deploy import timing
    from pih2t_deploy.bench.report import to_markdown
    from pih2t_deploy.bench.runner import timing_row

    clock = {"now": 0.0}
    durations = iter([0.0] * 2 + [ms / 1000 for ms in range(1, 101)])  # two warm-up calls, then 100 timed

    def call() -> None:
        clock["now"] += next(durations)

    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock["now"])
    measured = timing.time_interleaved({"onnx": call}, rounds=4, repeats=25, warmup=2)["onnx"]
    assert (measured.median, measured.p90, measured.p99, measured.calls) == pytest.approx((0.0505, 0.090, 0.099, 100))
    baseline = timing.Timing(median=0.101, p90=0.2, p99=0.3, calls=10)
    row = timing_row(measured, batch=8, baseline=baseline)
    assert row == pytest.approx(
        {"p50_ms": 50.5, "p90_ms": 90.0, "p99_ms": 99.0, "images_per_s": 8 / 0.0505, "speedup_vs_torch": 2.0}
    )
    report = {
        "arch": "a",
        "method": "m",
        "input_shape": [1],
        "machine": "x",
        "device": "cpu",
        "threads": 1,
        "date": "d",
        "cpu": {"model": "c", "flags": []},
        "timings": {"onnx": {"8": row}},
        "formats": {},
        "accuracy": {},
    }
    assert "| onnx | 8 | 50.50 | 90.00 | 99.00 | 158.4 | 2.00 |" in to_markdown(report, "cmd")
