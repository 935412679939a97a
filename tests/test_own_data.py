"""A newcomer's first hour: training on their own image folder (the documented worked example, with an
accuracy floor), a preprocessing that does not fit the architecture, busy ports, resuming a finished run,
and the messages on the way."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pih2t_deploy.cli.export_cmd import graph_summary
from pih2t_deploy.data.digits_folder import CLASS_NAMES, write_digits_folder
from pih2t_deploy.errors import UserError
from pih2t_deploy.runtime import load_classifier
from pih2t_deploy.serving.process import start_rest_server
from tests.helpers import run_cli
from tests.servers import running_server

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "training" / "digits-folder.yaml"


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("own") / "digits-folder"
    written = write_digits_folder(root)
    assert sum(written["train"].values()) == 331 and set(written["test"].values()) == {50}
    return root


@pytest.fixture(scope="module")
def trained_on_folder(digits_folder, tmp_path_factory) -> Path:
    """The worked example of training/README.md, exactly as documented."""
    run = tmp_path_factory.mktemp("own-run") / "run"
    done = run_cli("train", "--recipe", str(EXAMPLE), "--output", str(run), f"data.root={digits_folder}")
    assert done.returncode == 0, done.stderr[-3000:]
    return run


def test_the_documented_own_folder_example_trains_above_the_floor_and_serves_the_same(
    trained_on_folder, digits_folder, tmp_path
):
    metrics = json.loads((trained_on_folder / "metrics.json").read_text())
    assert metrics["top1"] >= 0.80, metrics["top1"]
    assert metrics["recipe"] == "digits-folder", "the model is named after the data folder"
    assert metrics["class_names"] == sorted(CLASS_NAMES)
    done = run_cli(
        "export",
        "--ckpt",
        str(trained_on_folder / "model.pt"),
        "--output",
        str(tmp_path / "export"),
        "--eval-data",
        "recipe",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    classifier = load_classifier(tmp_path / "export")
    assert classifier.info.name == "digits-folder" and classifier.info.labels == sorted(CLASS_NAMES)
    paths = sorted((digits_folder / "test").glob("*/*.png"))
    truth = np.array([classifier.info.labels.index(p.parent.name) for p in paths])
    logits = classifier.predict(classifier.prepare([Image.open(p) for p in paths]))
    served_top1 = float((logits.argmax(axis=1) == truth).mean())
    assert served_top1 == pytest.approx(metrics["top1"], abs=1e-9), "export/serve must agree with training's eval"


def test_resume_on_a_finished_run_says_so_and_retrains_nothing(trained_on_folder, digits_folder):
    before = (trained_on_folder / "model.pt").stat().st_mtime_ns
    done = run_cli(
        "train", "--recipe", str(EXAMPLE), "--output", str(trained_on_folder), f"data.root={digits_folder}", "--resume"
    )
    assert done.returncode == 0, done.stderr
    assert f"{trained_on_folder} holds a finished run (model.pt, metrics.json): nothing to resume" in done.stderr
    assert "is complete" in done.stdout and "starting from the beginning" not in done.stderr
    assert (trained_on_folder / "model.pt").stat().st_mtime_ns == before


def test_what_the_folder_shows_cannot_work_stops_before_training_with_the_overrides_to_pass(digits_folder, tmp_path):
    """The imagefolder defaults on 8x8 grayscale digits: the images decide mode and size (8x8 L, no 28x
    upscaling), and resnet18, built for photos, is refused with the architectures that fit; a resize that
    would blow the images up is refused with the sizes that fit; the digits-lt recipe's subsampling factor is
    refused on a folder. Each exits 2 before a training step (no train state written)."""
    cases = [
        (
            ["--recipe", "imagefolder"],
            "error: model.arch=resnet18 is built for 64..1024-pixel inputs but the preprocessing gives 8x8 "
            "(data.input_size); choose model.arch from digits_net, or set data.input_size/data.resize to fit "
            "(e.g. data.input_size=224 data.resize=224)",
        ),
        (
            ["--recipe", "imagefolder", "model.arch=resnet32", "data.input_size=32", "data.resize=32"],
            "error: data.input_size=32 data.resize=32 upscale this data's images (median 8x8) 4.0x; pass "
            "data.input_size=8 data.resize=8 (their own size, with a model.arch built for it), or "
            "data.max_upscale=4 to train on images enlarged that much (the limit is 2)",
        ),
        (
            ["data.source=imagefolder"],
            "error: data.imbalance_factor=50 subsamples the built-in data sets (digits-lt, cifar10-lt, cifar100-lt) "
            "only; imagefolder data keeps every image and its imbalance is measured from it: drop the setting "
            "(start from --recipe imagefolder, not digits-lt)",
        ),
    ]
    for number, (args, expected) in enumerate(cases):
        done = run_cli("train", "--output", str(tmp_path / f"r{number}"), f"data.root={digits_folder}", *args)
        assert (done.returncode, done.stderr.strip().splitlines()[-1:]) == (2, [expected]), done.stderr[-2000:]
        assert not (tmp_path / f"r{number}" / "train_state.pt").exists()


def _listening_socket() -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock, sock.getsockname()[1]


@pytest.mark.parametrize("command", ["serve", "demo"])
def test_a_busy_port_is_one_line_and_exit_2(digits_artifact, command):
    holder, port = _listening_socket()
    with holder:
        done = run_cli(command, "--model", str(digits_artifact[1]), "--port", str(port), timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"error: --port {port}: 127.0.0.1:{port} is already in use by another program; stop it or choose another "
        "port (e.g. --port "
    ), lines


def test_the_quickstart_server_start_refuses_to_talk_to_another_server(digits_artifact):
    """make quickstart's serve step: a port where another server already answers must fail, not report the
    other server's answers as ours."""
    from pih2t_deploy.serving.rest import create_app
    from pih2t_deploy.serving.settings import ServeSettings

    classifier = load_classifier(digits_artifact[1])
    with running_server(create_app(lambda: classifier, ServeSettings())) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        with pytest.raises(UserError, match=r"another server answers|exited with status 2"):
            start_rest_server(digits_artifact[1], port)


def test_bench_serve_takes_a_port_and_refuses_a_busy_one(digits_artifact, tmp_path):
    from pih2t_deploy.bench.serve_load import serve_benchmark

    holder, port = _listening_socket()
    with holder, pytest.raises(UserError, match=f"--port {port}: 127.0.0.1:{port} is already in use"):
        serve_benchmark(digits_artifact[1], ROOT / "pih2t_deploy" / "samples" / "digit_3.png", [1], 0.1, port=port)


def test_logit_adjustment_without_counts_names_the_option(tmp_path):
    from tests.authors_files import authors_cifar_checkpoint

    authors_cifar_checkpoint(tmp_path / "a.pth.tar", with_pif=False)
    done = run_cli(
        "export", "--ckpt", str(tmp_path / "a.pth.tar"), "--output", str(tmp_path / "o"), "--logit-adjust", "1"
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: --logit-adjust needs the training images per class, which {tmp_path / 'a.pth.tar'} does not "
        "record; pass them with --class-counts N1,N2,... (one per class, in class order)"
    ]


def test_the_graph_line_of_a_cosine_head_export_is_readable():
    graph = {"identical": False, "exported_nodes": 14, "vanilla_nodes": 11, "difference": {"Div": 1, "ReduceL2": 2}}
    assert graph_summary(graph, "digits_net") == (
        "graph: 14 nodes (11 in the vanilla digits_net); operators beyond it: +1 Div, +2 ReduceL2"
    )
    same = {"identical": True, "exported_nodes": 11, "vanilla_nodes": 11, "difference": {}}
    assert graph_summary(same, "resnet32") == "graph: 11 nodes, operator counts identical to the vanilla resnet32"


def test_model_repository_is_ignored_by_git():
    ignored = subprocess.run(
        ["git", "check-ignore", "model_repository/x/config.pbtxt"], cwd=ROOT, capture_output=True, text=True
    )
    assert ignored.returncode == 0, "pih2t-triton build's default output must stay out of git"
    assert sys.executable


def test_the_local_demo_prints_its_address_and_no_share_hint(digits_artifact, tmp_path):
    import os
    import time

    import httpx

    from pih2t_deploy.serving.process import free_port

    port = free_port()
    log = tmp_path / "demo.log"
    with log.open("wb") as sink:
        demo = subprocess.Popen(
            [sys.executable, "-m", "pih2t_deploy.cli", "demo", "--model", str(digits_artifact[1]), "--port", str(port)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"},
        )
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.3)
            else:
                pytest.fail(f"the demo did not answer: {log.read_text()[-2000:]}")
        finally:
            demo.terminate()
            demo.wait(timeout=30)
    output = log.read_text()
    assert f"demo of digits-lt on http://127.0.0.1:{port}" in output
    assert "share=True" not in output and "public link" not in output, output
