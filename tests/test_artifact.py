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


def test_the_model_cards_class_table_shows_names_with_pipes_and_markup_as_written(digits_artifact):
    """Rendered by markdown-it (CommonMark tables, as the Hub renders cards): one row per class, four cells
    each, the names shown as written."""
    import dataclasses

    from markdown_it import MarkdownIt

    from pih2t_deploy.export.model_card import render_card

    manifest = read_manifest(digits_artifact[1])
    names = ["a|b", "<b>bold</b>", "back\\slash", *manifest.meta["class_names"][3:]]
    card = render_card(dataclasses.replace(manifest, meta={**manifest.meta, "class_names": names}))
    table = card.split("## Classes", 1)[1].split("## Use", 1)[0]
    tokens = MarkdownIt("commonmark").enable("table").parse(table)
    rows, row = [], []
    for token in tokens:
        if token.type == "tr_open":
            row = []
        elif token.type == "inline":
            row.append(token.content)
        elif token.type == "tr_close":
            rows.append(row)
    assert all(len(cells) == 4 for cells in rows)
    shown = [MarkdownIt().renderInline(cells[1]) for cells in rows[1:4]]
    assert shown == ["a|b", "&lt;b&gt;bold&lt;/b&gt;", "back\\slash"], "as written, HTML shown, not run"
