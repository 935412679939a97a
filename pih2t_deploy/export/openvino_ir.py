"""ONNX -> OpenVINO IR (``model.xml`` + ``model.bin``), weights kept in fp32 (precision is chosen at run time)."""

from __future__ import annotations

from pathlib import Path

from pih2t_deploy.runtime.openvino_backend import import_openvino


def save_ir(onnx_path: Path, xml_path: Path) -> None:
    """Convert ``onnx_path`` with OpenVINO's model converter and write ``xml_path`` and its ``.bin`` beside it.
    The batch axis stays dynamic; weights are not compressed to fp16 (that would change fp32 results)."""
    ov = import_openvino()
    model = ov.convert_model(str(onnx_path))
    ov.save_model(model, str(xml_path), compress_to_fp16=False)
