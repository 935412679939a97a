"""pih2t-predict on inputs a user (or someone else) pointed it at: devices, FIFOs, link loops, oversized
files, and output files it did not write. Nothing is read that is not a regular file, nothing stalls, and a
file the command did not write is never changed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest

from pih2t_deploy.errors import ConfigError
from pih2t_deploy.predict import predict_images
from pih2t_deploy.predict import rows as rows_module
from pih2t_deploy.predict.writers import open_writer
from tests import images
from tests.helpers import run_cli, start_interruptible


@pytest.fixture
def awkward_folder(tmp_path) -> Path:
    """Two real images beside a FIFO, /dev/zero and a folder named like images, a link loop and an oversized
    file."""
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    (root / "a.png").write_bytes(images.sample(3))
    (root / "sub" / "b.png").write_bytes(images.sample(7))
    os.mkfifo(root / "fifo.png")
    (root / "zero.png").symlink_to("/dev/zero")
    (root / "folder.png").mkdir()
    (root / "sub" / "loop").symlink_to("..")  # sub/loop/sub/loop/... forever, if followed
    (root / "huge.png").write_bytes(b"\0" * 5000)
    return root


@pytest.mark.timeout(60)
def test_devices_fifos_loops_and_oversized_files_become_error_rows_without_being_read(
    digits_artifact, awkward_folder, monkeypatch
):
    monkeypatch.setattr(rows_module, "MAX_FILE_BYTES", 4000)
    rows = {
        Path(row.path).relative_to(awkward_folder).as_posix(): row
        for row in predict_images(digits_artifact[1], str(awkward_folder))
    }
    assert sorted(rows) == ["a.png", "fifo.png", "huge.png", "sub/b.png", "zero.png"]  # folder.png is a folder
    assert rows["a.png"].error is None and rows["a.png"].labels[0] == "3"
    assert rows["sub/b.png"].error is None
    for name in ("fifo.png", "zero.png"):
        assert rows[name].error.startswith("not a regular file (a device, FIFO, socket or folder)"), name
    assert rows["huge.png"].error == "the file is 5,000 bytes; the limit is 4,000"


@pytest.mark.timeout(60)
def test_a_recursive_glob_does_not_follow_a_link_loop(digits_artifact, awkward_folder):
    pattern = str(awkward_folder / "**" / "*.png")
    paths = sorted(
        Path(row.path).relative_to(awkward_folder).as_posix() for row in predict_images(digits_artifact[1], pattern)
    )
    assert paths == ["a.png", "fifo.png", "huge.png", "sub/b.png", "zero.png"]


@pytest.mark.timeout(120)
def test_ctrl_c_stops_a_job_that_meets_a_fifo_and_its_output_stays_valid(digits_artifact, tmp_path):
    """A list of 3,000 paths, with a FIFO among them: the job is not held by it, and Ctrl-C ends the job
    quickly with every written line a whole row."""
    os.mkfifo(tmp_path / "stuck.png")
    image = tmp_path / "d.png"
    image.write_bytes(images.sample(5))
    (tmp_path / "list.txt").write_text("stuck.png\n" + "d.png\n" * 3000)
    output = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "pih2t_deploy.cli", "predict", "--model", str(digits_artifact[1])]
    process = start_interruptible(
        [*command, "--input", str(tmp_path / "list.txt"), "-o", str(output), "--batch", "4", "--workers", "1"]
    )
    deadline = time.monotonic() + 60
    while not (output.exists() and output.read_bytes().count(b"\n") >= 20):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130 and "Traceback" not in stderr, stderr[-2000:]
    lines = output.read_text().splitlines()
    assert json.loads(lines[0])["error"].startswith("not a regular file")
    assert all(json.loads(line)["path"] for line in lines)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("foreign.csv", b"id,score\n1,0.5\n2,0.7"),  # no newline at the end: the last line would have been cut
        ("foreign.jsonl", b'{"id": 1}\n{"id": 2}'),
        ("notes.jsonl", b"first line without a newline"),
        ("table.parquet", b"PAR1 not really"),
    ],
)
def test_resume_refuses_a_file_it_did_not_write_and_leaves_it_byte_for_byte(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=r"is not a pih2t-predict \.(csv|jsonl|parquet) output"):
        open_writer(path, resume=True)
    assert path.read_bytes() == content


def test_resume_on_a_foreign_csv_is_exit_2_and_changes_nothing(digits_artifact, tmp_path):
    path = tmp_path / "scores.csv"
    path.write_bytes(b"id,score\n1,0.5\n2,0.7")
    sample = str(images.SAMPLES / "digit_3.png")
    done = run_cli("predict", "--model", str(digits_artifact[1]), "--input", sample, "-o", str(path), "--resume")
    assert (
        done.returncode == 2 and "is not a pih2t-predict .csv output" in done.stderr and "Traceback" not in done.stderr
    )
    assert path.read_bytes() == b"id,score\n1,0.5\n2,0.7"


def test_resume_cuts_only_the_half_written_row_of_its_own_output(digits_artifact, tmp_path):
    sample = tmp_path / "d.png"
    shutil.copy(images.SAMPLES / "digit_3.png", sample)
    output = tmp_path / "out.jsonl"
    rows = list(predict_images(digits_artifact[1], str(sample)))
    whole = json.dumps(rows[0].to_dict()) + "\n"
    output.write_text(whole + whole[:30])  # a crash in the middle of the second row
    writer = open_writer(output, resume=True)
    writer.close()
    assert output.read_text() == whole and writer.done == {str(sample)}
