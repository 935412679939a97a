"""The artifact contract (pih2t_deploy.artifact): what export writes is what every reader reads, and a folder
of another format or a newer version is refused in one line by the commands that read it."""

from __future__ import annotations

import json
import shutil

import pytest

from pih2t_deploy.artifact import (
    ARTIFACT_FORMAT,
    LABELS_FILE,
    MANIFEST_FILE,
    ArtifactError,
    read_manifest,
    sha256_file,
    write_manifest,
)
from pih2t_deploy.runtime import load_classifier
from tests.helpers import run_cli


def test_the_written_manifest_reads_back_typed_and_names_its_format(digits_artifact):
    folder = digits_artifact[1]
    raw = json.loads((folder / MANIFEST_FILE).read_text())
    assert next(iter(raw)) == "format" and raw["format"] == ARTIFACT_FORMAT == "pih2t-artifact/1"
    manifest = read_manifest(folder)
    assert manifest.to_dict() == raw, "reading and writing lose nothing"
    assert manifest.input.shape == ["batch", 1, 8, 8] and manifest.input.dtype == "float32"
    assert manifest.output.kind == "logits" and not manifest.probabilities and not manifest.pixel_input
    assert manifest.files[LABELS_FILE] == sha256_file(folder / LABELS_FILE)
    info = load_classifier(folder).info
    assert info.version == manifest.files["model.onnx"][:12] and info.meta == manifest.meta


@pytest.mark.parametrize(
    ("format_value", "message"),
    [
        ("pih2t-artifact/2", "is pih2t-artifact/2, newer than this pih2t-deploy"),
        ("onnx-bundle/1", "is not a pih2t artifact manifest (format 'onnx-bundle/1', expected pih2t-artifact/1)"),
        (None, "is not a pih2t artifact manifest (format None, expected pih2t-artifact/1)"),
    ],
)
def test_a_newer_or_foreign_manifest_is_refused_in_one_line(digits_artifact, tmp_path, format_value, message):
    folder = tmp_path / "artifact"
    shutil.copytree(digits_artifact[1], folder)
    raw = json.loads((folder / MANIFEST_FILE).read_text())
    raw["format"] = format_value
    (folder / MANIFEST_FILE).write_text(json.dumps(raw))
    with pytest.raises(ArtifactError, match=r"manifest|newer"):
        read_manifest(folder)
    done = run_cli("predict", "--model", str(folder), "--input", str(folder), "-o", str(tmp_path / "p.jsonl"))
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    built = run_cli("triton", "build", "--model", str(folder), "--repo", str(tmp_path / "repo"))
    assert built.returncode == 2 and message in built.stderr, built.stderr


def test_missing_pieces_are_named(digits_artifact, tmp_path):
    with pytest.raises(ArtifactError, match=r"is not an exported artifact \(no model.json\); run pih2t-export first"):
        read_manifest(tmp_path)
    folder = tmp_path / "artifact"
    shutil.copytree(digits_artifact[1], folder)
    (folder / LABELS_FILE).write_text("only one line\n")
    with pytest.raises(ArtifactError, match=r"labels.txt has changed since it was exported"):
        load_classifier(folder)
    write_manifest(folder, read_manifest(folder))  # the digests made anew: a consistent folder, but a bad file
    with pytest.raises(ArtifactError, match=r"labels.txt has 1 lines for 10 classes"):
        load_classifier(folder)
    raw = json.loads((folder / MANIFEST_FILE).read_text())
    del raw["input"]
    (folder / MANIFEST_FILE).write_text(json.dumps(raw))
    with pytest.raises(ArtifactError, match=r"lacks or misnames a field of pih2t-artifact/1"):
        read_manifest(folder)
