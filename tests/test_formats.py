"""The format table (``pih2t_deploy.formats``): one entry is all a new format needs.

The test registers a format that exists nowhere else (ONNX under another file name, built by the existing ONNX
builder) and shows that the exporter, its option checks, the runtime loader, the benchmark, the Triton
repository builder and its validator all pick it up without another line changed.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from pih2t_deploy.bench.runner import BenchOptions, installed_formats, run_bench
from pih2t_deploy.errors import ConfigError
from pih2t_deploy.export.exporter import export_checkpoint
from pih2t_deploy.export.options import ExportOptions
from pih2t_deploy.formats import (
    FORMATS,
    FormatSpec,
    TritonModel,
    bench_entries,
    get_format,
    register_format,
    unregister_format,
)
from pih2t_deploy.runtime import BACKENDS, load_classifier
from pih2t_deploy.serving.triton.repository import RepositorySettings, build_repository
from pih2t_deploy.serving.triton.validate import validate_repository

NEW = FormatSpec(
    name="onnx-renamed",
    model_files=("model.renamed.onnx",),
    builder="pih2t_deploy.export.builders:build_onnx",
    backend="onnxruntime",
    runtime_module="onnxruntime",
    description="ONNX under another file name (a test format)",
    options=frozenset({"opset"}),
    triton=TritonModel("onnx", {"model.onnx": "model.renamed.onnx"}, platform="onnxruntime_onnx"),
    bench_label="renamed",
)


@pytest.fixture
def new_format():
    register_format(NEW)
    yield NEW
    unregister_format(NEW.name)


def test_every_entry_is_complete_and_runs_on_a_known_backend():
    assert list(FORMATS) == ["onnx", "onnx-int8", "trt", "torch", "openvino", "openvino-int8"]
    for spec in FORMATS.values():
        assert spec.backend in BACKENDS
        assert callable(spec.builder_function())
    assert [spec.model_file for spec in FORMATS.values()] == [
        "model.onnx",
        "model.int8.onnx",
        "model.plan",
        "model.pt2",
        "model.xml",
        "model.xml",
    ]
    assert {name for name, spec in FORMATS.items() if spec.needs_calibration} == {"onnx-int8", "openvino-int8"}
    assert bench_entries()["openvino-bf16"] == (FORMATS["openvino"], {"bf16": True})
    assert bench_entries()["torch-export"][0] is FORMATS["torch"]
    with pytest.raises(ConfigError, match="unknown format 'tflite'; choose one of: onnx, onnx-int8, trt"):
        get_format("tflite")
    with pytest.raises(ValueError, match="already registered: onnx"):
        register_format(FORMATS["onnx"])


def test_the_default_bench_formats_are_those_whose_runtime_is_installed(monkeypatch):
    """TensorRT is not installed here; everything else is (the dev install brings OpenVINO)."""
    assert installed_formats() == [
        "torch",
        "onnx",
        "onnx-int8",
        "torch-export",
        "openvino",
        "openvino-bf16",
        "openvino-int8",
    ]
    monkeypatch.setattr(FormatSpec, "runtime_installed", lambda spec: spec.backend == "onnxruntime")
    assert installed_formats() == ["torch", "onnx", "onnx-int8"]


def test_one_entry_adds_a_format_to_export_runtime_bench_and_triton(new_format, digits_artifact, tmp_path):
    ckpt, reference = digits_artifact
    with pytest.raises(ConfigError, match="--half does not apply to --format onnx-renamed"):
        ExportOptions(output=tmp_path / "x", format="onnx-renamed", half=True).validate()
    result = export_checkpoint(ckpt, ExportOptions(output=tmp_path / "art", format="onnx-renamed"))
    manifest = json.loads((tmp_path / "art" / "model.json").read_text())
    assert (manifest["model_file"], manifest["model_format"]) == ("model.renamed.onnx", "onnx-renamed")
    assert sorted(result.manifest.files) == ["README.md", "labels.txt", "model.renamed.onnx"]

    classifier = load_classifier(tmp_path / "art")
    assert classifier.describe()["file"] == "model.renamed.onnx"
    batch = np.random.default_rng(0).standard_normal((3, *classifier.input_shape)).astype(np.float32)
    np.testing.assert_allclose(classifier.predict(batch), load_classifier(reference).predict(batch), atol=1e-5)

    report = run_bench(BenchOptions(ckpt=ckpt, output=tmp_path / "bench", formats=["renamed"], batches=[2], rounds=1))
    assert report["formats"]["renamed"]["status"] == "ok"
    assert set(report["timings"]) == {"torch", "renamed"}

    models = build_repository(tmp_path / "art", tmp_path / "repo", RepositorySettings())
    assert sorted(models) == ["digits-lt", "digits-lt_onnx", "digits-lt_preprocess"]
    served = tmp_path / "repo" / "digits-lt_onnx" / "1" / "model.onnx"
    assert served.read_bytes() == (tmp_path / "art" / "model.renamed.onnx").read_bytes()
    assert validate_repository(tmp_path / "repo").problems == []
