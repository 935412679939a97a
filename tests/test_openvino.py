"""OpenVINO: the IR formats (fp32, bf16, INT8) exported and verified with the real OpenVINO runtime on this CPU,
the runtime backend behind the Classifier interface and pih2t-serve, the Triton OpenVINO-backend config, and
pih2t-bench's recommendation."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from pih2t_deploy.bench.runner import recommend
from pih2t_deploy.errors import ConfigError, UserError, VerificationError
from pih2t_deploy.export.exporter import export_checkpoint
from pih2t_deploy.export.options import BF16_TOLERANCE, ExportOptions
from pih2t_deploy.runtime import load_classifier
from pih2t_deploy.runtime.openvino_backend import compile_ir, cpu_description
from pih2t_deploy.serving.rest import create_app
from pih2t_deploy.serving.settings import ServeSettings
from pih2t_deploy.serving.triton.repository import RepositorySettings, build_repository
from pih2t_deploy.serving.triton.validate import validate_repository
from tests import images
from tests.servers import running_server

HAS_BF16 = "BF16" in cpu_description()["capabilities"]


def _test_inputs(classifier) -> tuple[np.ndarray, list[int]]:
    pictures = [Image.open(images.SAMPLES / f"digit_{i}.png") for i in range(10)]
    return classifier.prepare(pictures), list(range(10))


@pytest.fixture(scope="module")
def fp32_ir(digits_artifact, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ov") / "fp32"
    result = export_checkpoint(digits_artifact[0], ExportOptions(output=folder, format="openvino", eval_data="recipe"))
    return folder, result.manifest


def test_fp32_ir_matches_onnxruntime_and_records_what_made_it(fp32_ir, digits_artifact):
    folder, manifest = fp32_ir
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "labels.txt",
        "model.bin",
        "model.json",
        "model.xml",
    ]
    assert set(manifest.files) == {"README.md", "labels.txt", "model.bin", "model.xml"}
    assert manifest.openvino["inference_precision"] == "f32" and manifest.openvino["openvino"]
    assert all(r["passed"] and r["tolerance"] == pytest.approx(1e-3) for r in manifest.verification)
    assert manifest.graph["identical"]
    ov, ort = load_classifier(folder, "openvino"), load_classifier(digits_artifact[1])
    batch, _ = _test_inputs(ort)
    np.testing.assert_allclose(ov.predict(batch), ort.predict(batch), atol=1e-4)
    assert ov.describe() == {"backend": "openvino", "precision": "f32", "file": "model.xml"}


@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no bf16 (OpenVINO's OPTIMIZATION_CAPABILITIES)")
def test_bf16_ir_passes_its_stated_tolerance_and_the_group_gate(digits_artifact, tmp_path):
    options = ExportOptions(output=tmp_path / "bf16", format="openvino", bf16=True, eval_data="recipe")
    manifest = export_checkpoint(digits_artifact[0], options).manifest
    assert manifest.openvino["inference_precision"] == "bf16"
    assert [r["tolerance"] for r in manifest.verification] == [BF16_TOLERANCE, BF16_TOLERANCE]
    assert all(d <= 2.0 for d in manifest.accuracy["drop_points"].values()), manifest.accuracy
    bf16 = load_classifier(tmp_path / "bf16", "openvino")
    fp32 = load_classifier(digits_artifact[1])
    batch, _ = _test_inputs(fp32)
    difference = np.abs(bf16.predict(batch) - fp32.predict(batch)).max()
    assert 1e-5 < difference <= BF16_TOLERANCE * max(1.0, np.abs(fp32.predict(batch)).max()), "bf16 really ran"


def test_bf16_is_refused_where_the_cpu_cannot_run_it(fp32_ir, monkeypatch):
    """This CPU may well have bf16; OpenVINO's capability query is replaced by one without it (a CPU that cannot
    be had here)."""
    import openvino

    real = openvino.Core.get_property

    def without_bf16(self, device, name):
        value = real(self, device, name)
        return [c for c in value if c != "BF16"] if name == "OPTIMIZATION_CAPABILITIES" else value

    monkeypatch.setattr(openvino.Core, "get_property", without_bf16)
    with pytest.raises(UserError, match=r"this CPU cannot run OpenVINO in bf16 \(it offers .*FP32"):
        compile_ir(fp32_ir[0] / "model.xml", "bf16")


def test_int8_ir_is_gated_per_group_and_computes_in_int8(digits_artifact, tmp_path):
    options = ExportOptions(output=tmp_path / "q", format="openvino-int8", calib_data="recipe", eval_data="recipe")
    manifest = export_checkpoint(digits_artifact[0], options).manifest
    assert set(manifest.accuracy) == {"pytorch", "exported", "onnx_fp32", "drop_points", "label_shift"}
    assert all(d <= 2.0 for d in manifest.accuracy["drop_points"].values())
    assert "QuantizeLinear" in manifest.graph["int8"]
    assert "FakeQuantize" in (tmp_path / "q" / "model.xml").read_text(), "OpenVINO turned Q/DQ into INT8 ops"
    strict = ExportOptions(
        output=tmp_path / "strict", format="openvino-int8", calib_data="recipe", eval_data="recipe", max_group_drop=0.0
    )
    try:  # with a 0-point gate, any measured loss refuses the artifact and writes nothing
        kept = export_checkpoint(digits_artifact[0], strict).manifest
    except VerificationError as exc:
        assert "INT8 quantization costs" in str(exc) and not (tmp_path / "strict").exists()
    else:
        assert all(d <= 0 for d in kept.accuracy["drop_points"].values()), kept.accuracy


def test_options_that_do_not_fit_openvino_are_refused(tmp_path):
    for options, message in (
        ({"format": "openvino", "bf16": True}, "--bf16 needs --eval-data"),
        ({"format": "openvino-int8"}, "needs --calib-data"),
        ({"format": "openvino", "half": True}, "--half does not apply"),
        ({"format": "onnx", "bf16": True, "eval_data": "recipe"}, "--bf16 does not apply"),
    ):
        with pytest.raises(ConfigError, match=message):
            ExportOptions(output=tmp_path / "x", **options).validate()


def test_the_thread_count_reaches_openvino(fp32_ir):
    compiled = compile_ir(fp32_ir[0] / "model.xml", "f32", threads=1)
    assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == 1


def test_pih2t_serve_on_the_openvino_backend_answers_like_the_backend(fp32_ir):
    import httpx

    classifier = load_classifier(fp32_ir[0], "openvino")
    batch, _ = _test_inputs(classifier)
    expected = classifier.probabilities(classifier.predict(batch))
    with running_server(create_app(lambda: classifier, ServeSettings(max_batch=16))) as (url, _):
        files = [("files", (f"{i}.png", images.sample(i), "image/png")) for i in range(10)]
        answer = httpx.post(f"{url}/v1/classify", files=files, params={"top_k": 1}).json()
        card = httpx.get(f"{url}/v1/model").json()
    assert card["backend"]["backend"] == "openvino"
    for i, result in enumerate(answer["results"]):
        top = result["predictions"][0]
        assert top["index"] == int(expected[i].argmax()) and top["score"] == pytest.approx(expected[i].max(), abs=1e-6)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="two OpenVINO streams need two CPUs")
def test_the_throughput_hint_runs_a_batch_per_stream_and_each_caller_gets_its_own_answers(fp32_ir):
    """With two threads the throughput hint gives two streams: four batches predicted from four threads at once
    get the latency hint's logits, each its own, and pih2t-serve answers concurrent requests like the backend."""
    import httpx

    latency = load_classifier(fp32_ir[0], "openvino", threads=2)
    throughput = load_classifier(fp32_ir[0], "openvino", threads=2, performance_hint="throughput")
    assert (latency.parallel_batches, throughput.parallel_batches) == (1, 2)
    assert throughput.describe() == {
        "backend": "openvino",
        "precision": "f32",
        "file": "model.xml",
        "hint": "throughput",
        "streams": 2,
    }
    batch, _ = _test_inputs(latency)
    parts = [np.roll(batch, shift, axis=0)[: 3 + shift] for shift in range(4)]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(throughput.predict, parts))
    for part, answer in zip(parts, answers, strict=True):
        np.testing.assert_allclose(answer, latency.predict(part), atol=1e-5)
    expected = latency.probabilities(latency.predict(batch))
    with running_server(create_app(lambda: throughput, ServeSettings(max_batch=2, max_wait_ms=0))) as (url, _):

        def top(i: int) -> dict:
            files = [("files", (f"{i}.png", images.sample(i), "image/png"))]
            return httpx.post(f"{url}/v1/classify", files=files, params={"top_k": 1}).json()["results"][0]

        with ThreadPoolExecutor(10) as pool:
            results = list(pool.map(top, range(10)))
        card = httpx.get(f"{url}/v1/model").json()
    assert card["backend"]["hint"] == "throughput"
    for i, result in enumerate(results):
        best = result["predictions"][0]
        assert best["index"] == int(expected[i].argmax())
        assert best["score"] == pytest.approx(expected[i].max(), abs=1e-5)


def test_a_performance_hint_other_than_latency_is_refused_for_other_backends(digits_artifact):
    message = r"^--performance-hint throughput applies to --backend openvino only; leave it out for onnxruntime$"
    with pytest.raises(ConfigError, match=message):
        load_classifier(digits_artifact[1], "onnxruntime", performance_hint="throughput")


def test_triton_repository_of_an_ir_uses_the_openvino_backend(fp32_ir, tmp_path):
    models = build_repository(fp32_ir[0], tmp_path / "repo", RepositorySettings())
    assert sorted(models) == ["digits-lt", "digits-lt_openvino", "digits-lt_preprocess"]
    assert validate_repository(tmp_path / "repo").ok
    config = (tmp_path / "repo" / "digits-lt_openvino" / "config.pbtxt").read_text()
    assert 'backend: "openvino"' in config and "KIND_CPU" in config and "HINT_BF16" not in config
    assert sorted(p.name for p in (tmp_path / "repo" / "digits-lt_openvino" / "1").iterdir()) == [
        "model.bin",
        "model.xml",
    ]
    (tmp_path / "repo" / "digits-lt_openvino" / "1" / "model.bin").unlink()
    problems = validate_repository(tmp_path / "repo").problems
    assert problems == ["digits-lt_openvino: version 1 has model.xml but no model.bin"]
    with pytest.raises(ConfigError, match="--cpu-python"):
        build_repository(fp32_ir[0], tmp_path / "other", RepositorySettings(cpu_python=True))


def test_the_recommendation_is_the_fastest_format_that_passes_the_accuracy_gate():
    timings = {
        "torch": {"1": {"images_per_s": 100, "speedup_vs_torch": 1.0}},
        "openvino-int8": {"1": {"images_per_s": 900, "speedup_vs_torch": 9.0}},
        "openvino-bf16": {"1": {"images_per_s": 500, "speedup_vs_torch": 5.0}},
        "onnx": {"1": {"images_per_s": 300, "speedup_vs_torch": 3.0}},
    }
    full = {"top1": 0.9, "many": 1.0, "medium": 0.9, "few": 0.7}
    accuracy = {
        "torch": full,
        "openvino-int8": {**full, "few": 0.67},  # 3 points lost on Few only: over a 2-point gate
        "openvino-bf16": {**full, "top1": 0.895},
        "onnx": full,
    }
    picked = recommend(timings, accuracy, [1], max_group_drop=2.0)
    assert picked["by_batch"]["1"] == {"format": "openvino-bf16", "speedup_vs_torch": 5.0}
    assert picked["failed_accuracy_gate"] == ["openvino-int8"]
    assert "nothing is recommended" in recommend(timings, {}, [1], 2.0)["reason"]
