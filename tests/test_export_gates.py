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


def test_compare_on_hand_made_outputs():
    """Max differences, top-1 agreement and top-5 set agreement, computed by hand for 2 rows of 6 classes."""
    import numpy as np

    from pih2t_deploy.export.verify import compare, verify

    expected = np.array([[6, 5, 4, 3, 2, 1], [1, 2, 3, 4, 5, 6]], dtype=np.float32)
    actual = np.array([[6, 5, 4, 3, 2, 1.5], [1, 2, 3, 4, 6, 5.5]], dtype=np.float32)
    result = compare(expected, actual)
    assert (result.batch, result.max_abs_diff, result.reference_scale) == (2, 1.0, 6.0)
    assert result.max_rel_diff == pytest.approx(1 / 6)
    assert result.top1_agreement == 0.5  # row 2's best class moved from 5 to 4
    assert result.top5_agreement == 1.0  # both rows keep the same five best classes (as sets)
    swapped = np.array([[6, 5, 4, 3, 0.5, 1], [1, 2, 3, 4, 5, 6]], dtype=np.float32)
    assert compare(expected, swapped).top5_agreement == 0.5
    with pytest.raises(ValueError, match=r"output shapes differ: \(2, 6\) vs \(1, 6\)"):
        compare(expected, actual[:1])
    report = verify(lambda x: x * 2, lambda x: x * 2 + 0.5, [np.ones((3, 4), np.float32)], 0.1, "random")
    assert report.to_dict() == {
        "source": "random",
        "tolerance": 0.1,
        "gated": True,
        "passed": False,  # 0.5 > 0.1 x max(1, 2)
        "max_abs_diff": 0.5,
        "results": [
            {
                "batch": 3,
                "max_abs_diff": 0.5,
                "max_rel_diff": 0.25,
                "top1_agreement": 1.0,
                "top5_agreement": 1.0,
                "reference_scale": 2.0,
            }
        ],
    }
    reported_only = VerificationReport("r", None, report.results)
    assert reported_only.passed and (reported_only.to_dict()["gated"], reported_only.to_dict()["passed"]) == (
        False,
        None,
    )


def test_parity_batches_are_seeded_inputs_of_the_graphs_form(tmp_path):
    import numpy as np

    from pih2t_deploy.data.preprocessing import Preprocessing

    prep = Preprocessing(input_size=8, resize=8, mode="L", mean=(0.5,), std=(0.5,))
    gate = ParityGate.for_export(ExportOptions(output=tmp_path / "a", max_batch=4, seed=7))
    assert (gate.format, gate.seed) == ("onnx", 7)
    tensors = gate.random_batches(prep, pixels=False)
    assert [b.shape for b in tensors] == [(1, 1, 8, 8), (2, 1, 8, 8), (4, 1, 8, 8)]
    assert all(b.dtype == np.float32 for b in tensors) and tensors[2].std() > 0.5
    again = ParityGate("onnx", 1e-4, (1, 2, 4), 7).random_batches(prep, pixels=False)
    assert all(np.array_equal(a, b) for a, b in zip(tensors, again, strict=True))
    other = ParityGate("onnx", 1e-4, (1, 2, 4), 8).random_batches(prep, pixels=False)
    assert not np.array_equal(tensors[2], other[2])
    pixels = gate.random_batches(prep, pixels=True)
    assert [b.shape for b in pixels] == [(1, 8, 8, 1), (2, 8, 8, 1), (4, 8, 8, 1)] and pixels[0].dtype == np.uint8


def test_gate_labels_and_an_export_without_real_images(tmp_path):
    bf16 = AccuracyGate.for_export(ExportOptions(output=tmp_path / "b", format="openvino", bf16=True))
    assert bf16 == AccuracyGate("bf16 inference", 2.0)
    bf16.enforce([], {})  # nothing measured on real images: nothing to refuse


def test_relative_difference_below_one():
    import numpy as np

    from pih2t_deploy.export.verify import compare

    result = compare(np.array([[0.5, 0.25]]), np.array([[0.5, 0.0]]))
    assert (result.max_abs_diff, result.max_rel_diff, result.reference_scale) == (0.25, 0.5, 0.5)
    two_classes = compare(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]))
    assert (two_classes.top1_agreement, two_classes.top5_agreement) == (0.0, 1.0)  # top-5 of 2 classes: both
