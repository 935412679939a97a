"""Per-format artifact builders (each named by its format's entry in ``pih2t_deploy.formats``): each writes its
model file into the artifact folder and returns what it built (a BuildResult): the runner of that file, the
manifest sections it measured (operator counts, OpenVINO or TensorRT details) and, for INT8, the runner of the
fp32 graph it quantized. Builders read their inputs
(BuildInputs) and share no mutable state; the exporter verifies every format through its runner against the
unfolded PyTorch model.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from pih2t_deploy.data.preprocessing import Preprocessing
from pih2t_deploy.errors import UserError
from pih2t_deploy.export.graph_stats import compare_counts, op_counts
from pih2t_deploy.export.onnx_export import INPUT_NAME, export_onnx, set_metadata
from pih2t_deploy.export.options import ExportOptions
from pih2t_deploy.export.quantize import quantize_int8
from pih2t_deploy.export.runners import Runner, onnx_runner, torch_runner
from pih2t_deploy.export.torch_program import export_program, program_op_counts
from pih2t_deploy.export.wrappers import ExportModule, example_input
from pih2t_deploy.runtime.program_archive import read_program


@dataclass(frozen=True)
class BuildInputs:
    """Everything a builder reads: the folded and vanilla modules, preprocessing, options, metadata, the
    calibration images (loaded on first call) and the progress log."""

    folded: nn.Module
    vanilla: nn.Module
    num_classes: int
    prep: Preprocessing
    options: ExportOptions
    metadata: dict[str, Any]
    calibration: Callable[[], np.ndarray]
    log: Callable[[str], None]

    def model_path(self, folder: Path) -> Path:
        """Where the builder writes the model file: the name its format's entry gives, inside ``folder``."""
        return folder / self.options.spec.model_file

    def wrap(self, module: nn.Module, half: bool | None = None) -> ExportModule:
        """``module`` with this export's input/output options."""
        o = self.options
        return ExportModule(
            module,
            self.prep,
            embed_preprocessing=o.embed_preprocessing,
            half=o.half if half is None else half,
            probs=o.probs,
        ).eval()


@dataclass(frozen=True)
class BuildResult:
    """What a builder built: the runner of the written model, manifest sections (``graph``, ``openvino``,
    ``tensorrt``) and, for INT8, the runner of the fp32 graph before quantization (the accuracy reference)."""

    runner: Runner
    sections: dict[str, Any] = field(default_factory=dict)
    fp32_reference: Runner | None = None


def _export_graph(
    ctx: BuildInputs, module: nn.Module, path: Path, *, half: bool | None = None, simplify: bool = False
) -> onnx.ModelProto:
    o = ctx.options
    example = example_input(ctx.prep, o.static_batch or 2, o.embed_preprocessing, torch.Generator().manual_seed(o.seed))
    model = export_onnx(
        ctx.wrap(module, half), path, example, opset=o.opset, static_batch=o.static_batch, metadata=ctx.metadata
    )
    if simplify:
        model = _simplify(path)
    return model


def _simplify(path: Path) -> onnx.ModelProto:
    try:
        import onnxsim
    except ImportError:
        raise UserError("--simplify needs the onnxsim package: pip install onnxsim") from None
    model = onnx.load(str(path))
    simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise UserError("onnxsim could not validate the simplified graph; export without --simplify")
    onnx.save(simplified, str(path))
    return simplified


def _export_counted(
    ctx: BuildInputs, path: Path, *, half: bool | None = None, simplify: bool = False
) -> dict[str, Any]:
    """Export the folded model to ``path``; its operator counts beside a vanilla export's."""
    model = _export_graph(ctx, ctx.folded, path, half=half, simplify=simplify)
    with tempfile.TemporaryDirectory() as work:
        vanilla = _export_graph(ctx, ctx.vanilla, Path(work) / "vanilla.onnx", half=half, simplify=simplify)
    return compare_counts(op_counts(model), op_counts(vanilla))


def build_onnx(ctx: BuildInputs, folder: Path) -> BuildResult:
    """``model.onnx`` (fp32 or fp16 compute), plus operator counts beside a vanilla export."""
    path = ctx.model_path(folder)
    graph = _export_counted(ctx, path, simplify=ctx.options.simplify)
    return BuildResult(onnx_runner(path), {"graph": graph})


@dataclass(frozen=True)
class _Quantized:
    path: Path
    graph: dict[str, Any]
    fp32_reference: Runner


def _quantized_graph(ctx: BuildInputs, work: Path) -> _Quantized:
    """The fp32 export statically quantized with the calibration images, written under ``work``. The operator
    comparison with the vanilla backbone is made on the fp32 graphs (quantization adds the same Q/DQ pairs to
    both); the INT8 graph's own counts are reported beside it; the fp32 graph's runner stays as the reference
    of the accuracy drop."""
    calibration = ctx.calibration()
    ctx.log(f"calibrating INT8 on {len(calibration)} images")
    fp32, vanilla, qdq = work / "fp32.onnx", work / "vanilla.onnx", work / "qdq.onnx"
    fp32_model = _export_graph(ctx, ctx.folded, fp32, half=False)
    vanilla_model = _export_graph(ctx, ctx.vanilla, vanilla, half=False)
    quantize_int8(fp32, qdq, calibration)
    graph = {**compare_counts(op_counts(fp32_model), op_counts(vanilla_model)), "int8": op_counts(onnx.load(str(qdq)))}
    return _Quantized(qdq, graph, onnx_runner(fp32))  # the session keeps the model after the file is gone


def build_onnx_int8(ctx: BuildInputs, folder: Path) -> BuildResult:
    """``model.int8.onnx``: the QDQ INT8 graph (``_quantized_graph``) with this export's metadata."""
    path = ctx.model_path(folder)
    with tempfile.TemporaryDirectory() as work:
        quantized = _quantized_graph(ctx, Path(work))
        model = onnx.load(str(quantized.path))
    set_metadata(model, ctx.metadata)
    onnx.save(model, str(path))
    return BuildResult(onnx_runner(path), {"graph": quantized.graph}, quantized.fp32_reference)


def build_openvino(ctx: BuildInputs, folder: Path) -> BuildResult:
    """``model.xml`` + ``model.bin``: OpenVINO IR of the fp32 export (weights kept in fp32), run in the
    precision the export asks for (f32, or bf16 with --bf16; refused on a CPU without bf16)."""
    from pih2t_deploy.export.openvino_ir import save_ir
    from pih2t_deploy.runtime.openvino_backend import IRRunner, cpu_description

    precision = "bf16" if ctx.options.bf16 else "f32"
    with tempfile.TemporaryDirectory() as work:
        onnx_path = Path(work) / "model.onnx"
        graph = _export_counted(ctx, onnx_path, half=False)
        save_ir(onnx_path, ctx.model_path(folder))
    sections = {"graph": graph, "openvino": {**cpu_description(), "inference_precision": precision}}
    return BuildResult(IRRunner(ctx.model_path(folder), precision), sections)


def build_openvino_int8(ctx: BuildInputs, folder: Path) -> BuildResult:
    """``model.xml`` + ``model.bin``: OpenVINO IR of the QDQ INT8 graph; OpenVINO runs its convolutions in INT8."""
    from pih2t_deploy.export.openvino_ir import save_ir
    from pih2t_deploy.runtime.openvino_backend import IRRunner, cpu_description

    with tempfile.TemporaryDirectory() as work:
        quantized = _quantized_graph(ctx, Path(work))
        save_ir(quantized.path, ctx.model_path(folder))
    sections = {"graph": quantized.graph, "openvino": {**cpu_description(), "inference_precision": "f32"}}
    return BuildResult(IRRunner(ctx.model_path(folder), "f32"), sections, quantized.fp32_reference)


def build_torch(ctx: BuildInputs, folder: Path) -> BuildResult:
    """``model.pt2``: a torch.export program of the folded model (and ATen op counts beside a vanilla one)."""
    o = ctx.options
    path = ctx.model_path(folder)
    example = example_input(ctx.prep, o.static_batch or 2, o.embed_preprocessing, torch.Generator().manual_seed(o.seed))
    program = export_program(ctx.wrap(ctx.folded), example, path, o.static_batch)
    with tempfile.TemporaryDirectory() as work:
        vanilla = export_program(ctx.wrap(ctx.vanilla), example, Path(work) / "vanilla.pt2", o.static_batch)
    graph = compare_counts(program_op_counts(program), program_op_counts(vanilla))
    # read back through the same check serving applies, so an artifact that could not be served is never written
    return BuildResult(torch_runner(read_program(path).module(), exported=True), {"graph": graph})


def tensorrt_onnx(ctx: BuildInputs, precision: str, calibration: np.ndarray | None, work: Path) -> Path:
    """The ONNX file handed to TensorRT's parser, written under ``work``: fp32, fp16, or for 'qdq' a Q/DQ graph
    with signed INT8 and zero points of 0 throughout (TensorRT rejects UINT8 or non-zero zero points)."""
    onnx_path = work / "model.onnx"
    _export_graph(ctx, ctx.folded, onnx_path, half=precision == "fp16")
    if precision != "qdq":
        return onnx_path
    if calibration is None:
        raise UserError("a TensorRT INT8 plan needs calibration images (--calib-data)")
    quantize_int8(onnx_path, work / "qdq.onnx", calibration, symmetric=True)
    return work / "qdq.onnx"


def build_tensorrt(ctx: BuildInputs, folder: Path) -> BuildResult:
    """``model.plan``: a TensorRT plan built from this export's ONNX, run through the TensorRT backend."""
    from pih2t_deploy.export.tensorrt_build import PlanSettings, build_plan, onnx_precision_for
    from pih2t_deploy.runtime.tensorrt_backend import import_tensorrt

    trt = import_tensorrt()
    o = ctx.options
    settings = PlanSettings(
        input_name=INPUT_NAME,
        input_shape=ctx.prep.input_shape,
        max_batch=o.max_batch,
        opt_batch=o.opt_batch or o.max_batch,
        half=o.half,
        int8=o.int8,
        workspace_bytes=int(o.workspace_gb * (1 << 30)),
        timing_cache=o.timing_cache,
        calibration=ctx.calibration() if o.int8 else None,
        calibration_cache=folder.parent / f".{folder.name}.calibration.cache" if o.int8 else None,
    )
    precision = onnx_precision_for(trt, settings)
    with tempfile.TemporaryDirectory() as work:
        onnx_path = tensorrt_onnx(ctx, precision, settings.calibration, Path(work))
        plan = build_plan(trt, onnx_path.read_bytes(), settings, ctx.log)
    ctx.model_path(folder).write_bytes(plan)
    cuda = torch.cuda.get_device_properties(0)
    details = {
        **settings.details,
        "cuda": torch.version.cuda,
        "gpu": cuda.name,
        "compute_capability": f"{cuda.major}.{cuda.minor}",
    }
    from pih2t_deploy.runtime.classifier import ModelInfo
    from pih2t_deploy.runtime.tensorrt_backend import TensorRTClassifier

    info = ModelInfo("export-check", "1", [str(i) for i in range(ctx.num_classes)], None, ctx.prep)
    return BuildResult(TensorRTClassifier(ctx.model_path(folder), info).predict, {"tensorrt": details})
