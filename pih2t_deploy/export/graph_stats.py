"""Operator counts of an ONNX graph, compared with a vanilla backbone exported the same way."""

from __future__ import annotations

from collections import Counter

import onnx


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Nodes per operator type in the main graph (sorted by name)."""
    return dict(sorted(Counter(node.op_type for node in model.graph.node).items()))


def compare_counts(exported: dict[str, int], vanilla: dict[str, int]) -> dict[str, object]:
    """The two counts, their difference per operator, and whether they are identical (zero overhead)."""
    ops = sorted(set(exported) | set(vanilla))
    extra = {op: exported.get(op, 0) - vanilla.get(op, 0) for op in ops if exported.get(op, 0) != vanilla.get(op, 0)}
    return {
        "exported": exported,
        "vanilla": vanilla,
        "difference": extra,
        "identical": not extra,
        "exported_nodes": sum(exported.values()),
        "vanilla_nodes": sum(vanilla.values()),
    }
