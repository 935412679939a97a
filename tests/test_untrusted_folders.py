"""A model folder is untrusted input (docs/security.md): a crafted model.pt2 never runs code, and a file changed
after export is refused by every command that loads an artifact."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from pih2t_deploy.artifact import ArtifactError, read_manifest, write_manifest
from pih2t_deploy.errors import UserError
from pih2t_deploy.export.exporter import export_checkpoint
from pih2t_deploy.export.options import ExportOptions
from pih2t_deploy.runtime import load_classifier
from pih2t_deploy.runtime.program_archive import UnsafeArchiveError
from pih2t_deploy.serving.process import free_port
from tests.helpers import run_cli


class TouchFile:
    """Unpickling this runs ``touch PATH``: what a hostile archive would do (here, harmlessly)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def hostile_torch_save(marker: Path) -> bytes:
    """A file in torch.save's zip layout whose data.pkl runs code when unpickled unrestricted."""
    honest = io.BytesIO()
    torch.save({"x": torch.zeros(1)}, honest)
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(honest.getvalue())) as source, zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            data = source.read(info.filename)
            target.writestr(
                info.filename, pickle.dumps(TouchFile(marker)) if info.filename.endswith("data.pkl") else data
            )
    return out.getvalue()


def rewrite_archive(path: Path, change) -> None:
    """Rewrite the zip at ``path`` member by member through ``change(name, data) -> {name: data}``."""
    with zipfile.ZipFile(path) as source:
        members = [(info.filename, source.read(info.filename)) for info in source.infolist()]
    with zipfile.ZipFile(path, "w") as target:
        for name, data in members:
            for new_name, new_data in change(name, data).items():
                target.writestr(new_name, new_data)


@pytest.fixture(scope="module")
def torch_artifact(digits_artifact, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pt2") / "artifact"
    export_checkpoint(digits_artifact[0], ExportOptions(output=folder, format="torch"))
    return folder


def poisoned(torch_artifact: Path, tmp_path: Path, change) -> Path:
    """A copy of the artifact whose model.pt2 went through ``change``, with model.json's digests made anew
    (whoever crafts the folder writes its manifest too)."""
    folder = tmp_path / "hostile"
    shutil.copytree(torch_artifact, folder)
    rewrite_archive(folder / "model.pt2", change)
    write_manifest(folder, read_manifest(folder))
    return folder


def hostile_sample_inputs(marker):
    return lambda name, data: {name: hostile_torch_save(marker) if name.endswith("sample_inputs/model.pt") else data}


def pickled_weight(marker):
    def change(name, data):
        if name.endswith("model_weights_config.json"):
            config = json.loads(data)
            first = next(iter(config["config"].values()))
            first["use_pickle"] = True
            return {name: json.dumps(config).encode()}
        if name.endswith("data/weights/weight_0"):
            return {name: hostile_torch_save(marker)}
        return {name: data}

    return change


def custom_object_constant(marker):
    def change(name, data):
        if name.endswith("model_constants_config.json"):
            config = {"config": {"evil": {"path_name": "custom_obj_0", "is_param": False, "use_pickle": False}}}
            root = name.split("/", 1)[0]
            return {
                name: json.dumps(config).encode(),
                f"{root}/data/constants/custom_obj_0": pickle.dumps(TouchFile(marker)),
            }
        return {name: data}

    return change


def extra_member(marker):
    def change(name, data):
        if name.endswith("archive_format"):
            return {name: data, name.split("/", 1)[0] + "/extra/notes.pkl": pickle.dumps(TouchFile(marker))}
        return {name: data}

    return change


def test_the_crafted_archive_really_runs_code_when_torch_loads_it(torch_artifact, tmp_path):
    """The threat is real: torch.export.load on its own runs the sample inputs' pickle (its fallback to an
    unrestricted unpickler), so the checks below are what keeps the folder from running code."""
    marker = tmp_path / "ran"
    folder = poisoned(torch_artifact, tmp_path, hostile_sample_inputs(marker))
    with pytest.raises(Exception):  # noqa: B017 - torch fails afterwards, but the code has already run
        torch.export.load(str(folder / "model.pt2"))
    assert marker.exists()


@pytest.mark.parametrize(
    ("craft", "member"),
    [
        (hostile_sample_inputs, "data/sample_inputs/model.pt' needs unpickling of arbitrary Python objects"),
        (pickled_weight, "model_weights_config.json' stores"),
        (custom_object_constant, "names 'custom_obj_0', not a tensor file"),
        (extra_member, "member 'model/extra/notes.pkl' is not part of a torch.export program"),
    ],
    ids=["sample-inputs", "pickled-weight", "custom-object", "extra-member"],
)
def test_a_crafted_pt2_is_refused_before_anything_in_it_runs(torch_artifact, tmp_path, craft, member):
    marker = tmp_path / "ran"
    folder = poisoned(torch_artifact, tmp_path, craft(marker))
    with pytest.raises(UnsafeArchiveError) as refused:
        load_classifier(folder, backend="torch")
    assert member in str(refused.value) and not marker.exists()


def test_serve_and_predict_refuse_a_crafted_pt2_with_exit_2_and_one_line(torch_artifact, tmp_path):
    marker = tmp_path / "ran"
    folder = poisoned(torch_artifact, tmp_path, hostile_sample_inputs(marker))
    for command in (
        ["serve", "--model", str(folder), "--backend", "torch", "--port", str(free_port())],
        [
            "predict",
            "--model",
            str(folder),
            "--backend",
            "torch",
            "--input",
            str(folder),
            "-o",
            str(tmp_path / "p.jsonl"),
        ],
    ):
        done = run_cli(*command)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and "refused model.pt2" in lines[0], done.stderr
    assert not marker.exists()


def changed(artifact: Path, tmp_path: Path, name: str, edit) -> Path:
    folder = tmp_path / f"changed-{name}"
    shutil.copytree(artifact, folder)
    path = folder / name
    path.write_bytes(edit(path.read_bytes()))
    return folder


def test_a_file_changed_after_export_is_refused_by_every_command(digits_artifact, tmp_path):
    """labels.txt with two names swapped, and model.onnx with one byte of a weight changed: both keep the model
    loadable and would be served as the same version; the recorded sha256 tells them apart."""
    _, artifact = digits_artifact
    swapped = changed(artifact, tmp_path, "labels.txt", lambda data: data.replace(b"0\n1\n", b"1\n0\n", 1))
    onnx_bytes = (artifact / "model.onnx").read_bytes()
    offset = len(onnx_bytes) // 2
    flipped = changed(
        artifact, tmp_path, "model.onnx", lambda data: data[:offset] + bytes([data[offset] ^ 1]) + data[offset + 1 :]
    )
    for folder, name in ((swapped, "labels.txt"), (flipped, "model.onnx")):
        with pytest.raises(ArtifactError, match=rf"{name} has changed since it was exported"):
            load_classifier(folder)
    sample = str(Path(__file__).resolve().parents[1] / "pih2t_deploy" / "samples" / "digit_3.png")
    for command in (
        ["serve", "--model", str(swapped), "--port", str(free_port())],
        ["predict", "--model", str(swapped), "--input", sample, "-o", str(tmp_path / "p.jsonl")],
        ["demo", "--model", str(swapped), "--port", str(free_port())],
        ["triton", "build", "--model", str(swapped), "--repo", str(tmp_path / "repo")],
    ):
        done = run_cli(*command)
        assert done.returncode == 2 and "labels.txt has changed since it was exported" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["files"].update({"../escape.txt": "0" * 64}), "names '../escape.txt', which is not a file name"),
        (lambda m: m.update(model_file="/etc/passwd"), "names '/etc/passwd', which is not a file name"),
        (lambda m: m["files"].pop("model.onnx"), "records no sha256 for its model file model.onnx"),
    ],
)
def test_a_manifest_that_points_outside_its_folder_or_skips_its_model_is_refused(
    digits_artifact, tmp_path, edit, message
):
    folder = tmp_path / "artifact"
    shutil.copytree(digits_artifact[1], folder)
    manifest = json.loads((folder / "model.json").read_text())
    edit(manifest)
    (folder / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_classifier(folder)


def test_a_model_file_replaced_by_a_link_or_a_fifo_is_refused_without_reading_it(digits_artifact, tmp_path):
    folder = tmp_path / "artifact"
    shutil.copytree(digits_artifact[1], folder)
    (folder / "labels.txt").unlink()
    os.mkfifo(folder / "labels.txt")  # reading it would wait forever
    with pytest.raises(ArtifactError, match=r"labels\.txt is not a regular file"):
        load_classifier(folder)
    (folder / "labels.txt").unlink()
    (folder / "labels.txt").symlink_to("/dev/zero")  # reading it would never end
    with pytest.raises(ArtifactError, match=r"labels\.txt is not a regular file"):
        load_classifier(folder)


def test_export_force_replaces_only_an_artifact_of_its_own_and_nothing_beside_it(digits_artifact, tmp_path):
    ckpt, _ = digits_artifact
    lookalike = tmp_path / "lookalike"
    lookalike.mkdir()
    (lookalike / "model.json").write_text('{"my": "own settings"}')
    (lookalike / "data.csv").write_text("precious\n")
    with pytest.raises(UserError, match=r"holds a model\.json that is not a pih2t artifact's"):
        export_checkpoint(ckpt, ExportOptions(output=lookalike, force=True))
    assert sorted(p.name for p in lookalike.iterdir()) == ["data.csv", "model.json"]
    ours = tmp_path / "ours"
    export_checkpoint(ckpt, ExportOptions(output=ours))
    (ours / "notes.txt").write_text("my notes")
    with pytest.raises(UserError, match=r"holds files the export did not write \(notes.txt\)"):
        export_checkpoint(ckpt, ExportOptions(output=ours, force=True))
    assert (ours / "notes.txt").read_text() == "my notes"
    (ours / "notes.txt").unlink()
    export_checkpoint(ckpt, ExportOptions(output=ours, force=True, logit_adjust_tau=0.5))
    assert read_manifest(ours).export["logit_adjust_tau"] == 0.5


def test_triton_build_replaces_only_the_version_it_builds_and_leaves_the_users_files(digits_artifact, tmp_path):
    from pih2t_deploy.serving.triton.repository import RepositorySettings, build_repository

    _, artifact = digits_artifact
    repo = tmp_path / "repo"
    build_repository(artifact, repo, RepositorySettings())
    (repo / "digits-lt_onnx" / "2").mkdir()
    (repo / "digits-lt_onnx" / "2" / "model.onnx").write_bytes(b"the user's own version 2")
    (repo / "digits-lt_onnx" / "README.md").write_text("notes")
    first = (repo / "digits-lt_onnx" / "1" / "model.onnx").stat().st_ino
    with pytest.raises(UserError, match="version 1 of digits-lt_preprocess exists; pass --force"):
        build_repository(artifact, repo, RepositorySettings())
    build_repository(artifact, repo, RepositorySettings(force=True))
    assert (repo / "digits-lt_onnx" / "1" / "model.onnx").stat().st_ino != first  # version 1 rebuilt
    assert (repo / "digits-lt_onnx" / "2" / "model.onnx").read_bytes() == b"the user's own version 2"
    assert (repo / "digits-lt_onnx" / "README.md").read_text() == "notes"
    build_repository(artifact, repo, RepositorySettings(version=3))
    assert sorted(p.name for p in (repo / "digits-lt_onnx").iterdir() if p.is_dir()) == ["1", "2", "3"]
    other = tmp_path / "other"
    (other / "digits-lt_preprocess" / "1").mkdir(parents=True)  # a model of the same name the user wrote
    with pytest.raises(UserError, match="digits-lt_preprocess exists and was not written by pih2t-triton"):
        build_repository(artifact, other, RepositorySettings(force=True))
    assert sorted(p.name for p in other.iterdir()) == ["digits-lt_preprocess"]
    with pytest.raises(UserError, match="digits-lt_onnx/2 was not written by pih2t-triton"):
        build_repository(artifact, repo, RepositorySettings(version=2, force=True))
    assert (repo / "digits-lt_onnx" / "2" / "model.onnx").read_bytes() == b"the user's own version 2"


def test_a_tensorrt_plan_is_deserialised_with_host_code_forbidden(tmp_path, monkeypatch):
    """TensorRT cannot be installed here, so TensorRT is a stand-in module (the GPU check is patched too):
    the runtime must refuse the host code a version-compatible plan can embed before it reads the plan."""
    import sys
    import types

    from pih2t_deploy.errors import UserError as PlanError
    from pih2t_deploy.runtime.tensorrt_backend import TensorRTClassifier
    from tests.fakes import FakeClassifier

    seen = {}

    class Runtime:
        def __init__(self, _logger) -> None:
            self.engine_host_code_allowed = True

        def deserialize_cuda_engine(self, data: bytes):
            seen["host code allowed"], seen["bytes"] = self.engine_host_code_allowed, data
            return None  # as for a plan of another TensorRT version

    class Logger:
        WARNING = 2

        def __init__(self, _level: int) -> None:
            pass

    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(Runtime=Runtime, Logger=Logger))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    (tmp_path / "model.plan").write_bytes(b"plan")
    with pytest.raises(PlanError, match="could not deserialize"):
        TensorRTClassifier(tmp_path / "model.plan", FakeClassifier().info, device="cuda")
    assert seen == {"host code allowed": False, "bytes": b"plan"}
