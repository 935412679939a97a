"""The export gates on hand-made numbers: parity tolerance, accuracy per group, top-1 agreement, and the
builders' results (what each builder returns instead of writing into shared state)."""

from __future__ import annotations

import pytest

from pih2t_deploy.errors import VerificationError
from pih2t_deploy.export.gates import AccuracyGate, ParityGate
from pih2t_deploy.export.options import ExportOptions
from pih2t_deploy.export.verify import ParityResult, VerificationReport


def _report(max_abs: float, top1: float = 1.0, scale: float = 1.0, tolerance: float | None = 1e-4):
    return VerificationReport("random", tolerance, [ParityResult(4, max_abs, max_abs / scale, top1, 1.0, scale)])


def test_parity_gate_follows_the_export_options(tmp_path):
    onnx = ParityGate.for_export(ExportOptions(output=tmp_path / "a", max_batch=16, tolerance=1e-4))
    assert (onnx.tolerance, onnx.batch_sizes) == (1e-4, (1, 2, 16))
    static = ParityGate.for_export(ExportOptions(output=tmp_path / "b", static_batch=4))
    assert static.batch_sizes == (4,)
    int8 = ParityGate.for_export(ExportOptions(output=tmp_path / "c", format="onnx-int8", calib_data="recipe"))
    assert int8.tolerance is None


def test_parity_gate_is_absolute_up_to_one_and_relative_above(tmp_path):
    gate = ParityGate("onnx", 1e-4, (1,), 0)
    gate.enforce([_report(0.9e-4), _report(9e-4, scale=10.0)])  # 9e-4 <= 1e-4 x 10
    with pytest.raises(VerificationError) as refused:
        gate.enforce([_report(0.9e-4), _report(1.1e-4, scale=0.5)])
    assert str(refused.value) == (
        "the onnx export differs from the PyTorch model by 0.00011 (tolerance 0.0001); no artifact was written"
    )


def test_accuracy_gate_names_the_group_that_lost_most(tmp_path):
    gate = AccuracyGate("INT8 quantization", max_group_drop=2.0)
    kept = {"drop_points": {"top1": 0.5, "many": 0.0, "medium": 1.9, "few": 2.0}}
    gate.enforce([_report(0.1, top1=0.95)], kept)
    lost = {"drop_points": {"top1": 0.9, "many": 2.5, "medium": 0.0, "few": 4.25}}
    with pytest.raises(VerificationError) as refused:
        gate.enforce([_report(0.1, top1=0.95)], lost)
    assert str(refused.value) == (
        "INT8 quantization costs 4.2 points of accuracy on few (limit --max-group-drop 2); no artifact was written"
    )


def test_without_labels_the_accuracy_gate_needs_top1_agreement(tmp_path):
    gate = AccuracyGate("bf16 inference", max_group_drop=2.0)
    gate.enforce([_report(0.1, top1=0.9)], {})
    with pytest.raises(VerificationError, match=r"^bf16 inference: top-1 agrees with PyTorch on only 89% of inputs"):
        gate.enforce([_report(0.1, top1=0.89)], {})
    assert AccuracyGate.for_export(ExportOptions(output=tmp_path / "x")) is None
    int8 = AccuracyGate.for_export(ExportOptions(output=tmp_path / "y", format="onnx-int8", max_group_drop=3.0))
    assert int8 == AccuracyGate("INT8 quantization", 3.0)
