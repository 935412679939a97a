"""pih2t-predict on real PNG files: labelled ImageFolder input checked against an independent onnxruntime run,
bad files as error rows, the three output formats, a killed and an interrupted run resumed, the Python API,
and the Ray engine on a local Ray instance started here."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from pih2t_deploy.data.longtail import GroupThresholds
from pih2t_deploy.data.sources import DataConfig, build_data
from pih2t_deploy.predict import PredictionRow, predict_images
from pih2t_deploy.predict.ray_engine import shard_rows
from pih2t_deploy.predict.writers import journal_path, read_rows
from tests.helpers import run_cli, start_interruptible


@pytest.fixture(scope="module")
def digits_tree(tmp_path_factory):
    """The Digits-LT test split (500 images) as an ImageFolder tree whose folders are the model's labels."""
    root = tmp_path_factory.mktemp("predict") / "tree"
    test = build_data(DataConfig(source="digits-lt")).test
    for index, label in enumerate(test.targets):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        test.image(index).save(folder / f"{index:04d}.png")
    return root


@pytest.fixture(scope="module")
def labelled_run(digits_artifact, digits_tree, tmp_path_factory):
    """``pih2t-predict`` over the tree into JSONL: (the process, the output file)."""
    output = tmp_path_factory.mktemp("labelled") / "preds.jsonl"
    done = run_cli("predict", "--model", str(digits_artifact[1]), "--input", str(digits_tree), "--output", str(output))
    return done, output


def _independent_top5(artifact, path: str) -> tuple[list[int], list[float]]:
    """Top-5 for one image by hand: grayscale 8x8, (x / 255 - 0.5) / 0.5, the ONNX graph, a softmax."""
    session = ort.InferenceSession(str(artifact / "model.onnx"), providers=["CPUExecutionProvider"])
    pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float32)[None, None] / 255.0
    logits = session.run(None, {session.get_inputs()[0].name: (pixels - 0.5) / 0.5})[0][0].astype(np.float64)
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    order = np.argsort(-probs, kind="stable")[:5]
    return order.tolist(), probs[order].tolist()


def test_labelled_folder_rows_equal_an_independent_run_and_accuracy_is_reported(
    digits_artifact, labelled_run, digits_eval
):
    done, output = labelled_run
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(read_rows(output))
    assert len(rows) == 500 and len({r.path for r in rows}) == 500
    assert all(r.error is None and r.true_label == os.path.basename(os.path.dirname(r.path)) for r in rows)
    meta = json.loads((digits_artifact[1] / "model.json").read_text())["meta"]
    groups = GroupThresholds.from_meta(meta).groups(meta["class_counts"])
    for row in rows[::37]:
        indices, scores = _independent_top5(digits_artifact[1], row.path)
        assert row.indices == indices and row.labels == [str(i) for i in indices]
        assert row.scores == pytest.approx(scores, abs=1e-5)
        assert row.group == groups[indices[0]]
    summary = json.loads(output.with_name("preds.summary.json").read_text())
    correct = [r.labels[0] == r.true_label for r in rows]
    assert summary["images"] == 500 and summary["errors"] == 0 and summary["top1"] == pytest.approx(np.mean(correct))
    for group in ("many", "medium", "few"):
        members = [c for r, c in zip(rows, correct, strict=True) if groups[int(r.true_label)] == group]
        assert summary[group] == pytest.approx(np.mean(members))
    assert summary["per_class"]["0"]["images"] == 50
    assert summary["top1"] == pytest.approx(digits_eval["top1"], abs=0.005), "the checkpoint's own evaluation"
    assert f"top-1 {100 * summary['top1']:.1f}%" in done.stdout


def test_bad_files_get_error_rows_in_input_order_and_exit_status_3(digits_artifact, digits_tree, tmp_path):
    good = sorted((digits_tree / "3").iterdir())[0]
    (tmp_path / "garbage.png").write_text("not an image")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "truncated.png").write_bytes(good.read_bytes()[:60])  # cut inside the pixel data
    listing = tmp_path / "list.txt"
    listing.write_text(f"# images to check\n{good}\nmissing.png\ngarbage.png\n\nempty.jpg\ntruncated.png\n")
    done = run_cli(
        "predict", "--model", str(digits_artifact[1]), "--input", str(listing), "--output", str(tmp_path / "o.csv")
    )
    assert done.returncode == 3, done.stderr[-2000:]
    rows = list(read_rows(tmp_path / "o.csv"))
    assert [os.path.basename(r.path) for r in rows] == [
        good.name,
        "missing.png",
        "garbage.png",
        "empty.jpg",
        "truncated.png",
    ]
    assert rows[0].error is None and rows[0].labels
    errors = [r.error for r in rows[1:]]
    assert errors[0] == "cannot read the file: No such file or directory"
    assert "not an image in a supported format" in errors[1]
    assert errors[2] == "empty.jpg is empty"
    assert "truncated or corrupt" in errors[3]
    assert all(r.labels == [] and r.scores == [] for r in rows[1:])
    assert "4 images could not be classified" in done.stdout
    summary = json.loads((tmp_path / "o.summary.json").read_text())
    assert (summary["images"], summary["errors"], summary["classified"]) == (5, 4, 1)


def test_csv_parquet_and_the_python_api_give_the_jsonl_rows(digits_artifact, digits_tree, labelled_run, tmp_path):
    expected = list(read_rows(labelled_run[1]))
    for name in ("p.csv", "p.parquet"):
        done = run_cli(
            "predict", "--model", str(digits_artifact[1]), "--input", str(digits_tree), "-o", str(tmp_path / name)
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert list(read_rows(tmp_path / name)) == expected, name
    assert not journal_path(tmp_path / "p.parquet").exists()
    api_rows = list(predict_images(digits_artifact[1], str(digits_tree), batch_size=7))
    assert [r.indices for r in api_rows] == [r.indices for r in expected]
    assert all(a.scores == pytest.approx(b.scores, abs=1e-6) for a, b in zip(api_rows, expected, strict=True))
    one = list(predict_images(digits_artifact[1], expected[0].path))
    assert len(one) == 1 and one[0].indices == expected[0].indices and one[0].true_label is None
    globbed = list(predict_images(digits_artifact[1], str(digits_tree / "**" / "*.png"), top_k=2))
    assert len(globbed) == 500 and all(len(r.labels) == 2 for r in globbed)


def _many_links(tree, folder, count):
    """``count`` distinct paths (symbolic links in sub-folders) to the tree's images, and each link's target."""
    targets = sorted(str(p) for p in tree.rglob("*.png"))
    links = {}
    for i in range(count):
        link = folder / f"{i // 1000:02d}" / f"img{i:05d}.png"
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(targets[i % len(targets)], link)
        links[str(link)] = targets[i % len(targets)]
    return links


def _start(*args):
    command = [sys.executable, "-m", "pih2t_deploy.cli", "predict", "--no-progress", *args]
    return start_interruptible(command)


def _wait_for_rows(path, minimum, process, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if path.exists() and path.read_bytes().count(b"\n") >= minimum:
            return
        time.sleep(0.01)
    raise AssertionError(f"no {minimum} rows in {path} before the process ended ({process.poll()})")


def test_a_killed_run_resumes_without_losing_or_repeating_a_row(digits_artifact, digits_tree, labelled_run, tmp_path):
    """SIGKILL in the middle (possibly half-way through a line), then --resume: every image exactly once,
    each row the one its image got in the uninterrupted labelled run."""
    links = _many_links(digits_tree, tmp_path / "many", 6000)
    output = tmp_path / "out.jsonl"
    args = ["--model", str(digits_artifact[1]), "--input", str(tmp_path / "many"), "-o", str(output), "--batch", "4"]
    process = _start(*args, "--workers", "1")
    _wait_for_rows(output, 40, process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    before = output.read_bytes()
    assert 40 <= before.count(b"\n") < 6000, "the run was stopped part-way"
    with output.open("ab") as handle:  # a crash half-way through a row
        handle.write(b'{"path": "/half/a/row", "labels": ["')
    again = run_cli("predict", *args, "--resume")
    assert again.returncode == 0, again.stderr[-2000:]
    rows = list(read_rows(output))
    assert sorted(r.path for r in rows) == sorted(links), "every image once, the half row gone"
    assert output.read_bytes().startswith(before), "the rows written before the kill are kept as they were"
    reference = {r.path: r for r in read_rows(labelled_run[1])}
    for row in rows[::50]:
        assert row.indices == reference[links[row.path]].indices
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert summary["images"] == 6000 and summary["skipped_already_done"] == before.count(b"\n")
    refused = run_cli("predict", *args)
    assert refused.returncode == 2 and "pass --resume" in refused.stderr, "an output is never overwritten"


def test_ctrl_c_keeps_a_parquet_runs_rows_in_its_journal_and_resume_finishes_the_file(
    digits_artifact, digits_tree, tmp_path
):
    links = _many_links(digits_tree, tmp_path / "many", 4000)
    output = tmp_path / "out.parquet"
    args = ["--model", str(digits_artifact[1]), "--input", str(tmp_path / "many"), "-o", str(output), "--batch", "4"]
    process = _start(*args, "--workers", "1")
    _wait_for_rows(journal_path(output), 20, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-2000:]
    assert "run the same command with --resume to continue" in stderr and "Traceback" not in stderr
    assert journal_path(output).exists() and not output.exists()
    kept = journal_path(output).read_bytes().count(b"\n")
    again = run_cli("predict", *args, "--resume")
    assert again.returncode == 0, again.stderr[-2000:]
    assert sorted(r.path for r in read_rows(output)) == sorted(links) and not journal_path(output).exists()
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert (summary["written_now"], summary["skipped_already_done"], summary["images"]) == (4000 - kept, kept, 4000)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-o", "OUT/x.txt"], "the file name must end in .jsonl, .csv, .parquet"),
        (["-o", "OUT/x.jsonl", "--engine", "ray"], "--engine ray writes Parquet shards into a folder"),
        (["-o", "OUT/x.jsonl", "--engine", "spark"], "Invalid value for '--engine': Value error, 'spark' is not"),
        (["-o", "OUT/x.jsonl", "--top-k", "0"], "Invalid value for '--top-k': Input should be greater than or"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(digits_artifact, digits_tree, tmp_path, extra, message):
    extra = [part.replace("OUT", str(tmp_path)) for part in extra]
    done = run_cli("predict", "--model", str(digits_artifact[1]), "--input", str(digits_tree), *extra)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("error: ")
    missing = run_cli("predict", "--model", str(digits_artifact[1]), "--input", str(tmp_path / "nope"), "-o", "x.csv")
    assert missing.returncode == 2 and "--input" in missing.stderr and "does not exist" in missing.stderr


def test_a_type_error_in_user_input_is_a_row_never_a_crash():
    assert PredictionRow.from_dict({"path": "a", "labels": None}).labels == []


@pytest.fixture
def local_ray(monkeypatch):
    """A real two-node Ray cluster on this machine: a head and a worker node, each started by `ray start` on
    127.0.0.1 with 1 CPU (their own short temp folder: Ray's socket paths must stay under 108 bytes), with one
    authentication token given to both nodes and to every process the test starts (Ray 2.60 authenticates
    local clusters; a token file left in ~/.ray by another run must not count); stopped and removed
    afterwards. Yields the head's address."""
    import secrets
    import shutil
    import socket
    import tempfile

    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    token = secrets.token_hex(32)
    monkeypatch.setenv("RAY_AUTH_TOKEN", token)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ)
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    ray = [os.path.join(os.path.dirname(sys.executable), "ray"), "start", "--node-ip-address=127.0.0.1", "--num-cpus=1"]
    head = [*ray, "--head", f"--port={port}", "--include-dashboard=false", "--disable-usage-stats"]
    head.append(f"--temp-dir={temp}")
    worker = [*ray, f"--address=127.0.0.1:{port}"]
    try:
        for command in (head, worker):
            started = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
            assert started.returncode == 0, started.stderr[-2000:]
        yield f"127.0.0.1:{port}"
    finally:
        # this cluster only (`ray stop` would stop every Ray of the user), including the processes that rename
        # themselves (ray::DashboardAgent keeps only its log files in the temp folder open)
        stop_processes_of_cluster(temp, token)
        shutil.rmtree(temp, ignore_errors=True)


def stop_processes_of_cluster(temp: str, token: str, grace_s: float = 3.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``, every process of the test's Ray cluster: those whose command
    line names its ``temp`` folder, whose environment holds its ``token``, or that hold a file in ``temp``."""
    import signal as signals

    def belongs(entry: Path) -> bool:
        if temp.encode() in (entry / "cmdline").read_bytes() or token.encode() in (entry / "environ").read_bytes():
            return True
        return any(os.readlink(fd).startswith(temp) for fd in (entry / "fd").iterdir())

    def matching() -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                with contextlib.suppress(OSError):
                    if belongs(entry):
                        found.append(int(entry.name))
        return found

    for number in matching():
        with contextlib.suppress(OSError):
            os.kill(number, signals.SIGTERM)
    deadline = time.monotonic() + grace_s
    while matching() and time.monotonic() < deadline:
        time.sleep(0.2)
    for number in matching():
        with contextlib.suppress(OSError):
            os.kill(number, signals.SIGKILL)


def test_the_ray_engine_gives_the_single_machine_rows(digits_artifact, digits_tree, labelled_run, local_ray, tmp_path):
    """Two classifier actors on a two-node Ray cluster: both nodes classify, and the rows equal the single-machine
    run's."""
    output = tmp_path / "shards"
    done = run_cli(
        "predict", "--model", str(digits_artifact[1]), "--input", str(digits_tree), "-o", str(output),
        "--engine", "ray", "--address", local_ray, "--num-workers", "2", "--batch", "32", "--no-progress",
        timeout=400,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    expected = sorted(read_rows(labelled_run[1]), key=lambda r: r.path)
    rows = sorted(shard_rows(output), key=lambda r: r.path)
    assert [(r.path, r.indices, r.labels, r.group, r.true_label) for r in rows] == [
        (r.path, r.indices, r.labels, r.group, r.true_label) for r in expected
    ]
    assert all(a.scores == pytest.approx(b.scores, abs=1e-6) for a, b in zip(rows, expected, strict=True))
    summary = json.loads((tmp_path / "shards.summary.json").read_text())
    assert summary["engine"] == "ray" and summary["images"] == 500
    per_node = summary["images_per_node"]
    assert len(per_node) == 2 and sum(per_node.values()) == 500 and min(per_node.values()) > 0, per_node
    assert summary["top1"] == json.loads(labelled_run[1].with_name("preds.summary.json").read_text())["top1"]


def test_a_local_ray_pool_larger_than_the_machine_is_refused_at_once(digits_artifact, digits_tree, tmp_path):
    """Without --address Ray runs on this machine only, which cannot grow: more actors than CPUs is refused
    before any work, not after the wait for the pool to start."""
    done = run_cli(
        "predict", "--model", str(digits_artifact[1]), "--input", str(digits_tree), "-o", str(tmp_path / "out"),
        "--engine", "ray", "--num-workers", "256", "--no-progress",
    )  # fmt: skip
    assert done.returncode == 2
    assert re.fullmatch(
        r"error: --num-workers 256 x 1 thread\(s\) needs 256 CPUs and this machine's Ray has \d+; lower "
        r"--num-workers, or pass --address of a larger cluster",
        done.stderr.strip().splitlines()[-1],
    )
    assert not any((tmp_path / "out").glob("*.parquet"))
