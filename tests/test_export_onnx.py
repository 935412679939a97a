"""The first ONNX round trip: fold, export with a dynamic batch, verify with onnxruntime, write the artifact."""

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from pih2t_deploy.artifact import sha256_file
from pih2t_deploy.checkpoint import build_meta, save_checkpoint
from pih2t_deploy.errors import ConfigError, UserError, VerificationError
from pih2t_deploy.export.exporter import export_checkpoint
from pih2t_deploy.export.onnx_export import read_metadata
from pih2t_deploy.export.options import ExportOptions
from tests.helpers import make_net, run_cli

COUNTS = [90, 50, 30, 15, 8, 4, 2]


@pytest.fixture
def ckpt(tmp_path):
    net = make_net("digits_net", method="pih2t", lws=True)
    meta = build_meta(net.config, class_names=[f"c{i}" for i in range(7)], class_counts=COUNTS)
    return save_checkpoint(tmp_path / "model.pt", net, meta), net


def test_export_round_trip_with_dynamic_batch_and_metadata(tmp_path, ckpt):
    path, net = ckpt
    result = export_checkpoint(path, ExportOptions(output=tmp_path / "art", logit_adjust_tau=1.0))
    folder = result.folder
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "labels.txt", "model.json", "model.onnx"]
    assert (folder / "labels.txt").read_text().splitlines() == [f"c{i}" for i in range(7)]
    manifest = json.loads((folder / "model.json").read_text())
    assert manifest["files"]["model.onnx"] == sha256_file(folder / "model.onnx")
    assert manifest["verification"][0]["passed"] and manifest["fold"]["pif_folded"]
    assert manifest["meta"]["class_counts"] == COUNTS and manifest["export"]["logit_adjust_tau"] == 1.0
    metadata = read_metadata(folder / "model.onnx")
    assert json.loads(metadata["pih2t.class_names"])[0] == "c0"
    assert json.loads(metadata["pih2t.preprocessing"])["input_size"] == 8
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 3, 17):
        x = np.random.default_rng(batch).standard_normal((batch, 1, 8, 8)).astype(np.float32)
        (logits,) = session.run(None, {"input": x})
        with torch.no_grad():
            expected = net(torch.from_numpy(x)).double() - torch.log(torch.tensor(COUNTS, dtype=torch.float64) / 199)
        assert logits.shape == (batch, 7)
        np.testing.assert_allclose(logits, expected.numpy(), atol=1e-4)
    assert not list(tmp_path.glob(".*partial*"))


def test_failed_verification_leaves_nothing(tmp_path, ckpt):
    path, _ = ckpt
    with pytest.raises(VerificationError):
        export_checkpoint(path, ExportOptions(output=tmp_path / "art", tolerance=1e-30))
    assert not (tmp_path / "art").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_bad_options_fail_before_work(tmp_path, ckpt):
    path, _ = ckpt
    with pytest.raises(ConfigError, match="unknown format"):
        export_checkpoint(path, ExportOptions(output=tmp_path / "a", format="tflite"))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="non-empty folder"):
        export_checkpoint(path, ExportOptions(output=tmp_path / "busy"))
    assert (tmp_path / "busy" / "notes.txt").read_text() == "keep me"


def test_cli_exit_codes_and_one_line_errors(tmp_path, ckpt):
    path, _ = ckpt
    ok = run_cli("export", "--ckpt", str(path), "--output", str(tmp_path / "out"))
    assert ok.returncode == 0, ok.stderr
    assert "wrote" in ok.stdout and (tmp_path / "out" / "model.onnx").exists()
    wrote = next(line for line in ok.stdout.splitlines() if line.startswith("wrote"))
    assert len(wrote) > 80 and wrote.endswith("model.json)"), "piped output is not wrapped at 80 columns"
    (tmp_path / "garbage.pt").write_bytes(b"not a model")
    for bad, message in (
        (["--ckpt", str(tmp_path / "missing.pt")], "does not exist"),
        (["--ckpt", str(tmp_path / "garbage.pt")], "not a"),
        (["--ckpt", str(path), "--format", "tflite"], "unknown format 'tflite'; choose one of: onnx, onnx-int8,"),
        (["--ckpt", str(path), "--max-batch", "0"], "Invalid value for '--max-batch'"),
    ):
        result = run_cli("export", *bad, "--output", str(tmp_path / "x"))
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr
        assert "Traceback" not in result.stderr
    failed = run_cli("export", "--ckpt", str(path), "--output", str(tmp_path / "y"), "--tolerance", "1e-30")
    assert failed.returncode == 1 and "verification failed" in failed.stderr
    assert not (tmp_path / "y").exists()


def test_the_cli_passes_fold_and_graph_options_on(tmp_path, ckpt):
    """Each export flag reaches the export: --fuse-bn folds every BatchNorm into its convolution,
    --logit-adjust folds tau, --max-batch sets the verified batches."""
    path, _ = ckpt
    for name, flags in (("plain", []), ("fused", ["--fuse-bn", "--logit-adjust", "0.5", "--max-batch", "3"])):
        done = run_cli("export", "--ckpt", str(path), "-o", str(tmp_path / name), *flags)
        assert done.returncode == 0, done.stderr
    plain = json.loads((tmp_path / "plain" / "model.json").read_text())
    fused = json.loads((tmp_path / "fused" / "model.json").read_text())
    assert (plain["fold"]["bn_fused"], plain["export"]["fuse_bn"]) == (0, False)
    assert fused["fold"]["bn_fused"] > 0 and fused["export"]["fuse_bn"] is True
    assert (plain["fold"]["logit_adjust_tau"], fused["fold"]["logit_adjust_tau"]) == (0.0, 0.5)
    assert [r["batch"] for r in fused["verification"][0]["results"]] == [1, 2, 3]
