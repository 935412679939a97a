"""pih2t-export beyond the first round trip: every format and option, metadata, real-image checks, bad input."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from pih2t_deploy.checkpoint import build_meta, save_checkpoint
from pih2t_deploy.data.preprocessing import Preprocessing
from pih2t_deploy.errors import ConfigError, DataError, UserError, VerificationError
from pih2t_deploy.export.exporter import export_checkpoint
from pih2t_deploy.export.onnx_export import read_metadata
from pih2t_deploy.export.options import ExportOptions
from pih2t_deploy.formats import FORMATS
from pih2t_deploy.models import NetworkConfig, PIH2TNet, arch_names
from pih2t_deploy.runtime import load_classifier
from tests import images
from tests.helpers import make_net, run_cli


def test_onnx_options_half_probs_static_batch_and_simplify(tmp_path, digits_artifact):
    ckpt, _ = digits_artifact
    half = export_checkpoint(ckpt, ExportOptions(output=tmp_path / "half", half=True, probs=True))
    session = ort.InferenceSession(str(tmp_path / "half" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float)"
    assert "Cast" in half.manifest.graph["exported"] and half.manifest.output.kind == "probabilities"
    out = session.run(None, {"input": np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)})[0]
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)
    static = export_checkpoint(ckpt, ExportOptions(output=tmp_path / "static", static_batch=4, simplify=True))
    graph = onnx.load(str(tmp_path / "static" / "model.onnx")).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4
    assert [r["batch"] for r in static.manifest.verification[0]["results"]] == [4]


def test_embedded_preprocessing_takes_uint8_pixels_and_serves(tmp_path, digits_artifact):
    ckpt, plain_folder = digits_artifact
    export_checkpoint(ckpt, ExportOptions(output=tmp_path / "embed", embed_preprocessing=True))
    manifest = json.loads((tmp_path / "embed" / "model.json").read_text())
    assert manifest["input"] == {"name": "input", "shape": ["batch", 8, 8, 1], "dtype": "uint8", "layout": "NHWC"}
    embedded, plain = load_classifier(tmp_path / "embed"), load_classifier(plain_folder)
    pictures = [Image.open(io.BytesIO(images.sample(i))) for i in range(10)]
    np.testing.assert_allclose(
        embedded.predict(embedded.prepare(pictures)), plain.predict(plain.prepare(pictures)), atol=1e-4
    )


def test_without_eval_data_int8_is_judged_on_images_held_out_from_calibration(tmp_path, digits_artifact):
    """calib_count 64: 64 + 16 training images drawn; 64 calibrate, the other 16 judge the INT8 model, and the
    report says so (judging it on its own calibration images would flatter it)."""
    from pih2t_deploy.checkpoint import load_checkpoint
    from pih2t_deploy.export.real_images import load_images

    ckpt, _ = digits_artifact
    options = ExportOptions(output=tmp_path / "q", format="onnx-int8", calib_data="recipe", calib_count=64)
    result = export_checkpoint(ckpt, options)
    real = result.manifest.verification[1]
    assert real["source"] == "real images (recipe:train, 16 images held out from calibration)"
    assert real["results"][0]["batch"] == 16 and set(result.manifest.accuracy["drop_points"]) == {
        "top1",
        "many",
        "medium",
        "few",
    }
    drawn = load_images("recipe", load_checkpoint(ckpt), split="train", limit=80, seed=0)
    calibration, held_out = drawn.split(64)
    pixels = {np.asarray(image).tobytes() for image in calibration.images}
    assert len(held_out.images) == 16 and not any(np.asarray(i).tobytes() in pixels for i in held_out.images)


def test_int8_reports_accuracy_per_group_and_refuses_a_ruined_tail(tmp_path, digits_artifact):
    ckpt, _ = digits_artifact
    result = export_checkpoint(
        ckpt, ExportOptions(output=tmp_path / "q", format="onnx-int8", calib_data="recipe", eval_data="recipe")
    )
    accuracy = result.manifest.accuracy
    assert set(accuracy) == {"pytorch", "exported", "onnx_fp32", "drop_points", "label_shift"}
    assert set(accuracy["drop_points"]) == {"top1", "many", "medium", "few"}
    assert result.manifest.graph["identical"] and "QuantizeLinear" in result.manifest.graph["int8"]
    assert (tmp_path / "q" / "model.int8.onnx").exists() and not (tmp_path / "q" / "model.onnx").exists()
    blank = tmp_path / "blank"  # calibration on the wrong data: activation ranges that clip real digits
    blank.mkdir()
    for i in range(16):
        (blank / f"{i}.png").write_bytes(images.encode(Image.new("L", (8, 8), 255 - i)))
    with pytest.raises(VerificationError, match="INT8 quantization costs"):
        export_checkpoint(
            ckpt,
            ExportOptions(output=tmp_path / "strict", format="onnx-int8", calib_data=str(blank), eval_data="recipe"),
        )
    assert not (tmp_path / "strict").exists()


def test_int8_needs_enough_calibration_images(tmp_path, digits_artifact):
    ckpt, _ = digits_artifact
    folder = tmp_path / "few"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_bytes(images.sample(i))
    with pytest.raises(DataError, match=r"at least 32 are needed \(16 to calibrate on, 16 held out to judge INT8"):
        export_checkpoint(ckpt, ExportOptions(output=tmp_path / "q", format="onnx-int8", calib_data=str(folder)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="0 usable images"):
        export_checkpoint(
            ckpt, ExportOptions(output=tmp_path / "q", format="onnx-int8", calib_data=str(tmp_path / "empty"))
        )
    assert not (tmp_path / "q").exists()


def test_torch_program_loads_without_the_library_model_code(tmp_path, digits_artifact):
    ckpt, _ = digits_artifact
    result = export_checkpoint(ckpt, ExportOptions(output=tmp_path / "pt2", format="torch"))
    assert result.manifest.graph["identical"]
    script = (
        "import sys, torch\n"
        "sys.modules['pih2t_deploy'] = None\n"
        f"m = torch.export.load({str(tmp_path / 'pt2' / 'model.pt2')!r}).module()\n"
        "print(tuple(m(torch.zeros(3, 1, 8, 8)).shape))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.stdout.strip() == "(3, 10)", done.stderr
    served = load_classifier(tmp_path / "pt2", "torch")
    assert served.predict(np.zeros((17, 1, 8, 8), np.float32)).shape == (17, 10)


def test_trt_without_tensorrt_exits_2_before_any_work(tmp_path, digits_artifact):
    ckpt, _ = digits_artifact
    done = run_cli("export", "--ckpt", str(ckpt), "--format", "trt", "--output", str(tmp_path / "plan"))
    assert done.returncode == 2
    line = done.stderr.strip()
    assert len(line.splitlines()) == 1 and "TensorRT" in line and "NVIDIA GPU" in line and "--format onnx" in line
    assert not (tmp_path / "plan").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"format": "tflite"}, "unknown format"),
        ({"format": "torch", "half": True}, "--half does not apply to --format torch"),
        ({"format": "onnx", "calib_data": "recipe"}, "--calib-data does not apply to --format onnx"),
        ({"format": "onnx", "int8": True}, "--int8 does not apply"),
        ({"format": "onnx-int8"}, "needs --calib-data"),
        ({"format": "onnx", "opset": 5}, "--opset"),
        ({"static_batch": 0}, "--static-batch"),
        ({"format": "trt", "half": True, "int8": True, "calib_data": "recipe"}, "one of --half and --int8"),
        ({"format": "onnx-int8", "calib_data": "recipe", "calib_count": 3}, "--calib-count"),
    ],
)
def test_options_that_do_not_apply_are_refused_up_front(tmp_path, options, message):
    with pytest.raises(ConfigError, match=message):
        ExportOptions(output=tmp_path / "x", **options).validate()
    assert set(FORMATS) == {"onnx", "onnx-int8", "trt", "torch", "openvino", "openvino-int8"}


def test_existing_artifacts_need_force_and_unwritable_output_is_clear(tmp_path, digits_artifact):
    ckpt, _ = digits_artifact
    export_checkpoint(ckpt, ExportOptions(output=tmp_path / "a"))
    with pytest.raises(UserError, match="--force"):
        export_checkpoint(ckpt, ExportOptions(output=tmp_path / "a"))
    export_checkpoint(ckpt, ExportOptions(output=tmp_path / "a", force=True))
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        export_checkpoint(ckpt, ExportOptions(output=tmp_path / "file"))


def test_an_output_nobody_can_write_is_one_line_and_exit_2_even_for_root(tmp_path, digits_artifact):
    """/proc refuses new entries to every user, root included (CI runs as root, where chmod proves nothing)."""
    ckpt, _ = digits_artifact
    done = run_cli("export", "--ckpt", str(ckpt), "--output", "/proc/pih2t-test/out")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: --output /proc/pih2t-test/out: cannot write in /proc/pih2t-test (No such file or directory); "
        "choose a folder you can write to"
    ]


def test_real_image_verification_and_metadata_round_trip(tmp_path, digits_artifact):
    ckpt, _ = digits_artifact
    result = export_checkpoint(ckpt, ExportOptions(output=tmp_path / "e", eval_data="recipe", logit_adjust_tau=0.5))
    sources = [block["source"] for block in result.manifest.verification]
    assert sources == ["random", "real images (recipe:test)"]
    assert result.manifest.verification[1]["results"][0]["batch"] == 500
    assert result.manifest.accuracy["pytorch"]["top1"] == pytest.approx(result.manifest.accuracy["exported"]["top1"])
    metadata = read_metadata(tmp_path / "e" / "model.onnx")
    assert json.loads(metadata["pih2t.logit_adjust_tau"]) == 0.5
    assert json.loads(metadata["pih2t.class_counts"]) == result.manifest.meta["class_counts"]
    assert json.loads(metadata["pih2t.meta"])["arch"] == "digits_net"
    assert result.manifest.versions["torch"] == str(torch.__version__)


def test_a_corrupted_fold_makes_the_export_fail(tmp_path, digits_artifact, monkeypatch):
    """A wrong head weight after folding (simulating a broken fold step) must fail verification, exit 1."""
    import pih2t_deploy.export.exporter as exporter

    real_fold = exporter.fold

    def broken_fold(*args, **kwargs):
        folded, report = real_fold(*args, **kwargs)
        with torch.no_grad():
            folded.fc.weight[0, 0] += 0.5
        return folded, report

    monkeypatch.setattr(exporter, "fold", broken_fold)
    ckpt, _ = digits_artifact
    with pytest.raises(Exception, match="differs from the PyTorch model"):
        export_checkpoint(ckpt, ExportOptions(output=tmp_path / "bad"))
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("arch", [a for a in arch_names() if a not in ("digits_net",)])
def test_every_registered_architecture_exports(tmp_path, arch):
    """Checkpoints of every registered architecture export with zero operator overhead (small inputs)."""
    config = NetworkConfig(arch=arch, num_classes=5, method="pih2t", lws=True)
    net = (
        make_net(arch, size=32, method="pih2t", lws=True, num_classes=5)
        if arch != "resnet152"
        else PIH2TNet(config).eval()
    )
    prep = Preprocessing(32, 32, "RGB", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    path = save_checkpoint(
        tmp_path / "m.pt", net, build_meta(net.config, preprocessing=prep, class_counts=[9, 7, 5, 3, 1])
    )
    result = export_checkpoint(path, ExportOptions(output=tmp_path / "out", max_batch=3))
    assert result.manifest.graph["identical"], result.manifest.graph["difference"]
    assert result.manifest.verification[0]["passed"]


def test_authors_checkpoint_exports_through_the_cli(tmp_path):
    from tests.authors_files import authors_cifar_checkpoint

    authors_cifar_checkpoint(tmp_path / "h2t.pth.tar", prefixed=True, with_pif=True)
    counts = ",".join(str(c) for c in [500, 300, 200, 100, 60, 40, 20, 10, 8, 5])
    names = ",".join(f"class{i}" for i in range(10))
    done = run_cli(
        "export",
        "--ckpt",
        str(tmp_path / "h2t.pth.tar"),
        "--output",
        str(tmp_path / "out"),
        "--class-counts",
        counts,
        "--class-names",
        names,
        "--logit-adjust",
        "1",
    )
    assert done.returncode == 0, done.stderr
    assert "h2t.pth.tar: ignoring 6 PIF weights (conv1d.*)" in done.stderr
    manifest = json.loads((tmp_path / "out" / "model.json").read_text())
    assert manifest["meta"]["recipe"] == "authors-h2t-import" and manifest["meta"]["class_counts"][0] == 500
    assert manifest["meta"]["stage"] is None and manifest["meta"]["imported_from"]["its_ece"] == 21.375
    assert (tmp_path / "out" / "labels.txt").read_text().splitlines()[3] == "class3"
    assert manifest["graph"]["identical"]


def test_the_int8_gate_refuses_a_model_that_loses_only_tail_accuracy(tmp_path, digits_artifact, monkeypatch):
    """An INT8 model that misclassifies 6 tail (Few) test images it used to get right, and nothing else: Few
    loses 3 points (6 of 200 images) while top-1 loses only 1.2 (6 of 500), under the 2-point limit. The gate
    must refuse it for Few; a gate that looked at top-1 alone would let it through."""
    from pih2t_deploy.checkpoint import load_checkpoint
    from pih2t_deploy.data.longtail import GroupThresholds
    from pih2t_deploy.export import builders
    from pih2t_deploy.export.real_images import load_images

    ckpt_path, artifact = digits_artifact
    ckpt = load_checkpoint(ckpt_path)
    found = load_images("recipe", ckpt, split="test")
    inputs = ckpt.preprocessing.to_numpy(found.images)
    classifier = load_classifier(artifact)
    predicted = classifier.predict(inputs).argmax(axis=1)
    groups = GroupThresholds.from_meta(ckpt.meta).groups(ckpt.class_counts)
    tail_hits = [i for i, label in enumerate(found.labels) if groups[label] == "few" and predicted[i] == label]
    spoiled = {inputs[i].tobytes() for i in tail_hits[:6]}
    assert len(spoiled) == 6
    real_builder = builders.build_onnx_int8

    def tail_losing_builder(inputs, folder):
        built = real_builder(inputs, folder)
        runner = built.runner

        def run(x):
            out = runner(x).copy()
            for row in range(len(x)):
                if x[row].tobytes() in spoiled:
                    out[row] = np.roll(out[row], 1)  # the former top-1 class moves one place on: now wrong
            return out

        return dataclasses.replace(built, runner=run)

    monkeypatch.setattr(builders, "build_onnx_int8", tail_losing_builder)
    options = ExportOptions(output=tmp_path / "q", format="onnx-int8", calib_data="recipe", eval_data="recipe")
    refusal = r"INT8 quantization costs (\d+\.\d) points of accuracy on few"
    with pytest.raises(VerificationError, match=refusal) as refused:
        export_checkpoint(ckpt_path, options)
    # the 6 spoiled images are 3 points; the real INT8 kernels move a tail image or two either way, by CPU (2.5 on
    # an AVX2-only Zen 3, 3.0 elsewhere): what matters is that Few is over the limit and named
    lost = re.search(refusal, str(refused.value))
    assert lost is not None and float(lost.group(1)) > 2.0
    assert not (tmp_path / "q").exists()


def test_the_int8_export_says_which_check_gates_it_and_reports_random_parity_without_a_verdict(
    tmp_path, digits_artifact
):
    """INT8 is judged on accuracy on real images; its differences on random inputs are only reported, so the
    manifest gives them no pass/fail and the command says which check decided, on what data, with which limit."""
    done = run_cli(
        "export",
        "--ckpt",
        str(digits_artifact[0]),
        "-o",
        str(tmp_path / "q"),
        "--format",
        "onnx-int8",
        "--calib-data",
        "recipe",
        "--eval-data",
        "recipe",
    )
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "q" / "model.json").read_text())
    random, real = manifest["verification"]
    assert (random["gated"], random["passed"], random["tolerance"]) == (False, None, None)
    assert real["source"].startswith("real images") and real["gated"] is False
    text = " ".join(done.stdout.split())
    assert "reported, not gated" in text and "100%" not in text.replace("100.0%", "")
    gate = "gate: INT8 quantization may lose at most 2 points of accuracy on top-1 and on each of Many/Medium/Few"
    assert f"{gate}, measured on real images" in text
