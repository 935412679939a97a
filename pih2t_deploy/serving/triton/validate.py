"""``pih2t-triton validate``: parse every config.pbtxt and check the cross-file rules that break deployments.

Checked: the config parses as tritonclient's ModelConfig (so a misspelt field fails), name equals folder,
version folders hold the file the platform expects, with max_batch_size > 0 the ONNX graph's batch axis is
dynamic and the config dims equal its other dims with matching datatypes, labels.txt has one line per class,
and every ensemble step names a real model and real input/output tensors of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import onnx
from google.protobuf import text_format

from pih2t_deploy.errors import UserError
from pih2t_deploy.formats import FORMATS
from pih2t_deploy.serving.triton.repository import model_config_pb2

PYTHON_FILES = ("model.py",)
ONNX_TYPES = {
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
}


@dataclass
class ValidationReport:
    """Problems found, one line each (``model: what is wrong``)."""

    models: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No problem found."""
        return not self.problems


def _load(folder: Path, report: ValidationReport):
    mc = model_config_pb2()
    try:
        return text_format.Parse((folder / "config.pbtxt").read_text(encoding="utf-8"), mc.ModelConfig())
    except text_format.ParseError as exc:
        report.problems.append(f"{folder.name}: config.pbtxt does not parse: {exc}")
    except OSError as exc:
        report.problems.append(f"{folder.name}: cannot read config.pbtxt ({exc.strerror})")
    return None


def _kind(config) -> str:
    return config.platform or config.backend


def _required_files(kind: str) -> tuple[str, ...]:
    """The files a version folder of a model of ``kind`` (platform or backend) holds, by the format table."""
    if kind == "python":
        return PYTHON_FILES
    for spec in FORMATS.values():
        if spec.triton and kind in (spec.triton.platform, spec.triton.backend):
            return tuple(spec.triton.files)
    return ()


def _check_onnx(name: str, config, path: Path, report: ValidationReport) -> None:
    graph = onnx.load(str(path), load_external_data=False).graph
    mc = model_config_pb2()
    tensors = {"input": (config.input, graph.input), "output": (config.output, graph.output)}
    for role, (declared, actual) in tensors.items():
        by_name = {t.name: t for t in actual}
        for tensor in declared:
            if tensor.name not in by_name:
                report.problems.append(
                    f"{name}: {role} {tensor.name!r} is not in the ONNX graph ({', '.join(by_name)})"
                )
                continue
            kind = by_name[tensor.name].type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in kind.shape.dim]
            if config.max_batch_size > 0:
                if dims[:1] != [-1]:
                    report.problems.append(
                        f"{name}: {role} {tensor.name!r} has a fixed first dim {dims[0]} but batching is on"
                    )
                dims = dims[1:]
            if list(tensor.dims) != dims:
                report.problems.append(f"{name}: {role} {tensor.name!r} dims {list(tensor.dims)} != ONNX {dims}")
            expected = ONNX_TYPES.get(kind.elem_type)
            if expected and mc.DataType.Name(tensor.data_type) != expected:
                report.problems.append(
                    f"{name}: {role} {tensor.name!r} is {mc.DataType.Name(tensor.data_type)}, ONNX has {expected}"
                )


def _check_model(folder: Path, config, report: ValidationReport) -> None:
    name = folder.name
    if config.name != name:
        report.problems.append(f"{name}: config name {config.name!r} differs from its folder name")
    versions = [p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()]
    if not versions:
        report.problems.append(f"{name}: no version folder (e.g. {name}/1/)")
    wanted = _required_files(_kind(config))
    for version in versions:
        missing = [file for file in wanted if not (version / file).is_file()]
        if missing and missing[0] == wanted[0]:
            report.problems.append(f"{name}: version {version.name} has no {wanted[0]} for {_kind(config)}")
        elif missing:
            report.problems.append(f"{name}: version {version.name} has {wanted[0]} but no {missing[0]}")
        elif "model.onnx" in wanted or (version / "model.onnx").is_file():
            _check_onnx(name, config, version / "model.onnx", report)
    for output in config.output:
        if output.label_filename:
            labels = folder / output.label_filename
            if not labels.is_file():
                report.problems.append(f"{name}: label file {output.label_filename} is missing")
            elif len(labels.read_text(encoding="utf-8").splitlines()) != (output.dims[-1] if output.dims else 0):
                count = len(labels.read_text(encoding="utf-8").splitlines())
                report.problems.append(
                    f"{name}: {output.label_filename} has {count} lines for {list(output.dims)[-1:]} classes"
                )


def _check_ensemble(name: str, config, configs: dict, report: ValidationReport) -> None:
    available = {t.name for t in config.input}
    for index, step in enumerate(config.ensemble_scheduling.step):
        target = configs.get(step.model_name)
        if target is None:
            report.problems.append(
                f"{name}: step {index} names model {step.model_name!r}, which is not in the repository"
            )
            continue
        inputs, outputs = {t.name for t in target.input}, {t.name for t in target.output}
        for key, value in step.input_map.items():
            if key not in inputs:
                report.problems.append(f"{name}: step {index} maps {key!r}, not an input of {step.model_name}")
            if value not in available:
                report.problems.append(f"{name}: step {index} reads {value!r}, which no earlier step produces")
        for key, value in step.output_map.items():
            if key not in outputs:
                report.problems.append(f"{name}: step {index} maps {key!r}, not an output of {step.model_name}")
            available.add(value)
    for output in config.output:
        if output.name not in available:
            report.problems.append(f"{name}: output {output.name!r} is produced by no step")


def validate_repository(repo: Path) -> ValidationReport:
    """Check every model folder of ``repo``; a UserError if it is not a folder at all."""
    repo = Path(repo)
    if not repo.is_dir():
        raise UserError(f"model repository {repo} does not exist")
    report = ValidationReport()
    configs = {}
    for folder in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")):
        report.models.append(folder.name)
        config = _load(folder, report)
        if config is not None:
            configs[folder.name] = config
            _check_model(folder, config, report)
    if not report.models:
        raise UserError(f"{repo} holds no model folders; build one with pih2t-triton build")
    for name, config in configs.items():
        if config.platform == "ensemble":
            _check_ensemble(name, config, configs, report)
    return report
