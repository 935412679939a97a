"""pih2t-triton: repository generation and validation, and a real tritonserver (nvidia-pytriton) on 127.0.0.1."""

from __future__ import annotations

import concurrent.futures
import io
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from pih2t_deploy.errors import ConfigError, UserError
from pih2t_deploy.runtime import load_classifier
from pih2t_deploy.serving.rest import create_app
from pih2t_deploy.serving.settings import ServeSettings
from pih2t_deploy.serving.triton.client import classify_files
from pih2t_deploy.serving.triton.repository import RepositorySettings, build_repository
from pih2t_deploy.serving.triton.server import Ports, start_server, wait_until_ready
from pih2t_deploy.serving.triton.validate import validate_repository
from tests import images
from tests.helpers import kill_if_running, run_cli
from tests.servers import running_server


def test_build_writes_a_repository_that_validates(tmp_path, digits_artifact):
    _, artifact = digits_artifact
    models = build_repository(
        artifact,
        tmp_path / "repo",
        RepositorySettings(kind="gpu", trt_accelerator=True, warmup=True, preferred_batch=[8, 16], instances=2),
    )
    assert sorted(models) == ["digits-lt", "digits-lt_onnx", "digits-lt_preprocess"]
    config = (tmp_path / "repo" / "digits-lt_onnx" / "config.pbtxt").read_text()
    for expected in (
        'platform: "onnxruntime_onnx"',
        "max_batch_size: 64",
        'label_filename: "labels.txt"',
        "preferred_batch_size: 8",
        "kind: KIND_GPU",
        'name: "tensorrt"',
        "zero_data: true",
        "num_versions: 1",
    ):
        assert expected in config, expected
    assert (tmp_path / "repo" / "digits-lt_onnx" / "1" / "model.onnx").is_file()
    assert (tmp_path / "repo" / "digits-lt" / "1").is_dir()
    report = validate_repository(tmp_path / "repo")
    assert report.ok, report.problems
    assert not [p for p in (tmp_path / "repo").iterdir() if p.name.startswith(".")], "no staging folder is left"


def test_build_refuses_to_overwrite_and_to_escape(tmp_path, digits_artifact):
    _, artifact = digits_artifact
    build_repository(artifact, tmp_path / "repo", RepositorySettings())
    with pytest.raises(UserError, match="--force"):
        build_repository(artifact, tmp_path / "repo", RepositorySettings())
    build_repository(artifact, tmp_path / "repo", RepositorySettings(force=True))
    for bad in ("../evil", "a/b", ".hidden", ""):
        with pytest.raises(ConfigError, match="--name"):
            build_repository(artifact, tmp_path / "repo", RepositorySettings(name=bad))
    assert not (tmp_path / "evil").exists()
    with pytest.raises(ConfigError, match="--cpu-python"):
        build_repository(artifact, tmp_path / "repo", RepositorySettings(cpu_python=True, kind="gpu"))


def test_build_refuses_a_repository_folder_that_holds_other_models(tmp_path, digits_artifact):
    """tritonserver loads every folder of its repository: building into one that holds something else would
    serve that too. Refused (exit 2, one line) unless --force, which adds our models beside the others."""
    _, artifact = digits_artifact
    repo = tmp_path / "repo"
    (repo / "someone_elses_model" / "1").mkdir(parents=True)
    done = run_cli("triton", "build", "--model", str(artifact), "--repo", str(repo))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: --repo {repo} already holds other entries (someone_elses_model) that tritonserver would load too; "
        "choose an empty folder, or pass --force to add the models beside them (they are left alone)"
    ]
    assert sorted(p.name for p in repo.iterdir()) == ["someone_elses_model"]
    models = build_repository(artifact, repo, RepositorySettings(force=True))
    assert sorted(p.name for p in repo.iterdir()) == sorted([*models, "someone_elses_model"])
    done = run_cli("triton", "build", "--model", str(artifact), "--repo", "/proc/pih2t-test/repo")
    assert done.returncode == 2 and "cannot write in /proc/pih2t-test/repo" in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("model", "find", "replace", "problems"),
    [
        (
            "digits-lt_onnx",
            "max_batch_size: 64",
            "max_batch_sizee: 64",
            [
                'digits-lt_onnx: config.pbtxt does not parse: 8:1 : Message type "inference.ModelConfig" has no field '
                'named "max_batch_sizee".',
                "digits-lt: step 1 names model 'digits-lt_onnx', which is not in the repository",
                "digits-lt: output 'logits' is produced by no step",
            ],
        ),
        (
            "digits-lt_onnx",
            "dims: 8\n",
            "dims: 9\n",
            ["digits-lt_onnx: input 'input' dims [1, 9, 8] != ONNX [1, 8, 8]"],
        ),
        (
            "digits-lt_onnx",
            'name: "digits-lt_onnx"',
            'name: "other"',
            ["digits-lt_onnx: config name 'other' differs from its folder name"],
        ),
        (
            "digits-lt",
            'model_name: "digits-lt_onnx"',
            'model_name: "pih2t_onxx"',
            [
                "digits-lt: step 1 names model 'pih2t_onxx', which is not in the repository",
                "digits-lt: output 'logits' is produced by no step",
            ],
        ),
        (
            "digits-lt",
            'key: "image"',
            'key: "picture"',
            ["digits-lt: step 0 maps 'picture', not an input of digits-lt_preprocess"],
        ),
        (
            "digits-lt_onnx",
            "data_type: TYPE_FP32\n  dims: 1",
            "data_type: TYPE_FP16\n  dims: 1",
            ["digits-lt_onnx: input 'input' is TYPE_FP16, ONNX has TYPE_FP32"],
        ),
        (
            "digits-lt",
            'input_map {\n      key: "input"\n      value: "preprocessed"',
            'input_map {\n      key: "input"\n      value: "x"',
            ["digits-lt: step 1 reads 'x', which no earlier step produces"],
        ),
        ("digits-lt", 'value: "logits"', 'value: "scores"', ["digits-lt: output 'logits' is produced by no step"]),
        (
            "digits-lt",
            'key: "logits"',
            'key: "probs"',
            ["digits-lt: step 1 maps 'probs', not an output of digits-lt_onnx"],
        ),
        (
            "digits-lt_onnx",
            'name: "input"',
            'name: "pixels"',
            [
                "digits-lt_onnx: input 'pixels' is not in the ONNX graph (input)",
                "digits-lt: step 1 maps 'input', not an input of digits-lt_onnx",
            ],
        ),
        (
            "digits-lt_onnx",
            'name: "logits"',
            'name: "scores"',
            [
                "digits-lt_onnx: output 'scores' is not in the ONNX graph (logits)",
                "digits-lt: step 1 maps 'logits', not an output of digits-lt_onnx",
            ],
        ),
    ],
)
def test_validate_catches_what_breaks_deployments(tmp_path, digits_artifact, model, find, replace, problems):
    """One broken config per rule; the report holds exactly the problems it causes, word for word."""
    _, artifact = digits_artifact
    build_repository(artifact, tmp_path / "repo", RepositorySettings())
    config = tmp_path / "repo" / model / "config.pbtxt"
    assert find in config.read_text()
    config.write_text(config.read_text().replace(find, replace, 1))
    report = validate_repository(tmp_path / "repo")
    assert report.problems == problems
    assert report.models == ["digits-lt", "digits-lt_onnx", "digits-lt_preprocess"]


def test_validate_batching_rules_hidden_entries_openvino_weights_and_empty_repositories(tmp_path, digits_artifact):
    _, artifact = digits_artifact
    repo = tmp_path / "repo"
    build_repository(artifact, repo, RepositorySettings())
    config = repo / "digits-lt_onnx" / "config.pbtxt"
    original = config.read_text()
    # batching off: the config's dims are the graph's whole shape, batch axis included
    unbatched = original.replace("max_batch_size: 64", "max_batch_size: 0")
    unbatched = unbatched.replace("dims: 1\n", "dims: -1\n  dims: 1\n", 1).replace(
        "dims: 10\n", "dims: -1\n  dims: 10\n"
    )
    config.write_text(unbatched)
    assert validate_repository(repo).problems == []
    # max_batch_size 1 is batching too: a fixed first dim is refused
    _fix_the_batch_axis(repo / "digits-lt_onnx" / "1" / "model.onnx", 4)
    config.write_text(original.replace("max_batch_size: 64", "max_batch_size: 1"))
    assert validate_repository(repo).problems == [
        "digits-lt_onnx: input 'input' has a fixed first dim 4 but batching is on"
    ]
    config.write_text(original)
    (repo / ".pih2t_staging").mkdir()  # hidden folders and plain files are not models
    (repo / "README.txt").write_text("notes")
    openvino = repo / "vino"
    (openvino / "1").mkdir(parents=True)
    (openvino / "1" / "model.xml").write_text("<net/>")
    (openvino / "2").mkdir()
    (openvino / "2" / "model.xml").write_text("<net/>")
    (openvino / "2" / "model.bin").write_bytes(b"\0")  # version 2 has its weights
    (openvino / "config.pbtxt").write_text('name: "vino"\nbackend: "openvino"\nmax_batch_size: 0\n')
    report = validate_repository(repo)
    assert report.models == ["digits-lt", "digits-lt_onnx", "digits-lt_preprocess", "vino"]
    assert report.problems == [
        "digits-lt_onnx: input 'input' has a fixed first dim 4 but batching is on",
        "vino: version 1 has model.xml but no model.bin",
    ]
    with pytest.raises(UserError) as missing:
        validate_repository(tmp_path / "nowhere")
    assert str(missing.value) == f"model repository {tmp_path / 'nowhere'} does not exist"
    (tmp_path / "empty" / ".hidden").mkdir(parents=True)
    with pytest.raises(UserError) as empty:
        validate_repository(tmp_path / "empty")
    assert str(empty.value) == f"{tmp_path / 'empty'} holds no model folders; build one with pih2t-triton build"


def _fix_the_batch_axis(path: Path, size: int) -> None:
    """Rewrite an ONNX graph's first input dimension to ``size``, as ``--static-batch size`` exports it."""
    import onnx

    model = onnx.load(str(path))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = size
    onnx.save(model, str(path))


def test_validate_catches_a_fixed_batch_axis_and_a_missing_version_folder(tmp_path, digits_artifact):
    _, artifact = digits_artifact
    build_repository(artifact, tmp_path / "repo", RepositorySettings())
    _fix_the_batch_axis(tmp_path / "repo" / "digits-lt_onnx" / "1" / "model.onnx", 4)
    problems = validate_repository(tmp_path / "repo").problems
    assert problems == ["digits-lt_onnx: input 'input' has a fixed first dim 4 but batching is on"], problems
    (tmp_path / "repo" / "digits-lt_preprocess" / "1").rename(tmp_path / "repo" / "digits-lt_preprocess" / "latest")
    problems = validate_repository(tmp_path / "repo").problems
    assert "digits-lt_preprocess: no version folder (e.g. digits-lt_preprocess/1/)" in problems, problems


def test_validate_catches_labels_and_missing_files(tmp_path, digits_artifact):
    _, artifact = digits_artifact
    build_repository(artifact, tmp_path / "repo", RepositorySettings())
    labels = tmp_path / "repo" / "digits-lt_onnx" / "labels.txt"
    labels.write_text("\n".join(labels.read_text().splitlines()[:-1]) + "\n")
    (tmp_path / "repo" / "digits-lt_onnx" / "1" / "model.onnx").unlink()
    (tmp_path / "repo" / "digits-lt" / "labels.txt").unlink()
    (tmp_path / "repo" / "digits-lt_preprocess" / "1" / "model.py").unlink()
    problems = validate_repository(tmp_path / "repo").problems
    assert problems == [
        "digits-lt: label file labels.txt is missing",
        "digits-lt_onnx: version 1 has no model.onnx for onnxruntime_onnx",
        "digits-lt_onnx: labels.txt has 9 lines for [10] classes",
        "digits-lt_preprocess: version 1 has no model.py for python",
    ]
    done = run_cli("triton", "validate", str(tmp_path / "repo"))
    assert done.returncode == 1 and "problem:" in done.stderr


def _free_ports() -> Ports:
    sockets = [socket.socket() for _ in range(3)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = Ports(*(s.getsockname()[1] for s in sockets))
    for s in sockets:
        s.close()
    return ports


@pytest.fixture(scope="module")
def triton(tmp_path_factory, digits_artifact):
    _, artifact = digits_artifact
    root = tmp_path_factory.mktemp("triton")
    build_repository(artifact, root / "repo", RepositorySettings(cpu_python=True, max_queue_delay_us=2000))
    assert validate_repository(root / "repo").ok
    ports = _free_ports()
    process = start_server(root / "repo", ports, root / "work", log_path=root / "server.log")
    try:
        wait_until_ready(process, ports)
        yield ports
    finally:
        process.terminate()
        process.wait(timeout=60)
        shutil.rmtree(root / "work", ignore_errors=True)


def test_triton_http_and_grpc_match_onnxruntime_and_rest(triton, digits_artifact):
    _, artifact = digits_artifact
    classifier = load_classifier(artifact)
    paths = sorted(images.SAMPLES.glob("*.png"))
    pictures = [Image.open(io.BytesIO(p.read_bytes())) for p in paths]
    expected = np.argsort(-classifier.predict(classifier.prepare(pictures)), axis=1, kind="stable")[:, :3]
    via_http = classify_files(f"127.0.0.1:{triton.http}", paths, model="digits-lt", top_k=3)
    via_grpc = classify_files(f"127.0.0.1:{triton.grpc}", paths, model="digits-lt", top_k=3, protocol="grpc")
    with running_server(create_app(lambda: classifier, ServeSettings())) as (url, _):
        rest = httpx.post(
            f"{url}/v1/classify", params={"top_k": 3}, files=[("files", (p.name, p.read_bytes())) for p in paths]
        ).json()["results"]
    for row, http_row, grpc_row, rest_row in zip(expected, via_http, via_grpc, rest, strict=True):
        assert [r.index for r in http_row] == [r.index for r in grpc_row] == list(row)
        assert [p["index"] for p in rest_row["predictions"]] == list(row)
        assert http_row[0].label == classifier.info.labels[row[0]]


def test_a_corrupt_image_is_an_error_and_the_server_stays_ready(triton, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(images.truncated_png())
    with pytest.raises(UserError, match="truncated or corrupt"):
        classify_files(f"127.0.0.1:{triton.http}", [bad], model="digits-lt")
    assert httpx.get(f"http://127.0.0.1:{triton.http}/v2/health/ready").status_code == 200
    one = classify_files(f"127.0.0.1:{triton.http}", [images.SAMPLES / "digit_1.png"], model="digits-lt", top_k=1)
    assert one[0][0].index >= 0


def test_concurrent_clients_get_single_request_answers_and_metrics_count_them(triton):
    paths = [images.SAMPLES / f"digit_{i % 10}.png" for i in range(24)]
    url = f"127.0.0.1:{triton.http}"
    single = {p: classify_files(url, [p], model="digits-lt", top_k=3)[0] for p in paths[:10]}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:  # one client per call: the HTTP client is not thread-safe
        answers = list(pool.map(lambda p: classify_files(url, [p], model="digits-lt", top_k=3)[0], paths))
    for path, answer in zip(paths, answers, strict=True):
        assert [r.index for r in answer] == [r.index for r in single[path]]
        assert [r.value for r in answer] == pytest.approx([r.value for r in single[path]], abs=1e-5)
    metrics = httpx.get(f"http://127.0.0.1:{triton.metrics}/metrics").text
    counts = [
        line for line in metrics.splitlines() if line.startswith('nv_inference_request_success{model="digits-lt",')
    ]
    assert counts and float(counts[0].split()[-1]) >= 34


def test_triton_cli_infer_prints_top_k(triton):
    done = run_cli(
        "triton",
        "infer",
        "--model",
        "digits-lt",
        "--url",
        f"127.0.0.1:{triton.http}",
        "--top-k",
        "2",
        str(images.SAMPLES / "digit_4.png"),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(str(images.SAMPLES / "digit_4.png") + ":") and done.stdout.count("(") == 2


def test_triton_serve_passes_sigterm_on_and_removes_its_work_folder(tmp_path, digits_artifact):
    """Before: SIGTERM ended `pih2t-triton serve` and left tritonserver running and ready, its work folder
    behind. Now tritonserver gets the signal, the launcher waits for it, and the work folder is gone."""
    build_repository(digits_artifact[1], tmp_path / "repo", RepositorySettings(cpu_python=True))
    ports = _free_ports()
    launcher = subprocess.Popen(
        [sys.executable, "-m", "pih2t_deploy.cli", "triton", "serve", str(tmp_path / "repo"),
         "--http-port", str(ports.http), "--grpc-port", str(ports.grpc), "--metrics-port", str(ports.metrics)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_until_ready(launcher, ports)
        (child,) = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
        command = Path(f"/proc/{child}/cmdline").read_bytes().decode().split("\0")
        work = Path(next(a for a in command if a.startswith("--backend-directory=")).split("=", 1)[1]).parent
        assert work.is_dir() and "tritonserver" in command[0]
        launcher.send_signal(signal.SIGTERM)
        output, _ = launcher.communicate(timeout=90)
        assert launcher.returncode == 0
        assert not Path(f"/proc/{child}").exists(), "tritonserver outlived its launcher"
        # on this GPU-less machine: the note about the two expected CUDA lines, and nothing about pinned memory
        # or NVML (their flags are off)
        assert output.count("no GPU here: tritonserver (a CUDA build) logs") == 1, output[-3000:]
        assert "pinned memory pool will not be available" not in output and "NVML" not in output, output[-3000:]
        assert not work.exists()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{ports.http}/v2/health/ready", timeout=2)
    finally:
        kill_if_running(launcher)


def test_validate_checks_the_onnx_file_beside_a_python_model_and_reports_every_broken_entry(tmp_path, digits_artifact):
    """The --cpu-python repository's model.onnx sits beside model.py: its dims are checked too. Two missing
    tensors, two unknown step models, an unreadable config and an output without dims are each reported."""
    _, artifact = digits_artifact
    repo = tmp_path / "repo"
    build_repository(artifact, repo, RepositorySettings(cpu_python=True))
    python_model = repo / "digits-lt_onnx_py" / "config.pbtxt"
    python_model.write_text(python_model.read_text().replace("dims: 8\n", "dims: 9\n", 1))
    assert validate_repository(repo).problems == ["digits-lt_onnx_py: input 'input' dims [1, 9, 8] != ONNX [1, 8, 8]"]
    python_model.write_text(
        python_model.read_text()
        .replace("dims: 9\n", "dims: 8\n", 1)
        .replace('input {\n  name: "input"', 'input {\n  name: "a"\n}\ninput {\n  name: "b"', 1)
    )
    ensemble = repo / "digits-lt" / "config.pbtxt"
    text = ensemble.read_text()
    ensemble.write_text(
        text.replace('model_name: "digits-lt_preprocess"', 'model_name: "gone_1"').replace(
            'model_name: "digits-lt_onnx_py"', 'model_name: "gone_2"'
        )
    )
    problems = validate_repository(repo).problems
    assert problems[:2] == [
        "digits-lt_onnx_py: input 'a' is not in the ONNX graph (input)",
        "digits-lt_onnx_py: input 'b' is not in the ONNX graph (input)",
    ], problems
    assert problems[-3:] == [
        "digits-lt: step 0 names model 'gone_1', which is not in the repository",
        "digits-lt: step 1 names model 'gone_2', which is not in the repository",
        "digits-lt: output 'logits' is produced by no step",
    ], problems
    ensemble.write_text(text.replace("  dims: 10\n  label_filename", "  label_filename"))
    (repo / "digits-lt" / "labels.txt").write_text("")  # no dims: no classes, so no label lines
    (repo / "digits-lt_preprocess" / "config.pbtxt").unlink()
    (repo / "digits-lt_preprocess" / "config.pbtxt").mkdir()
    python_model.write_text(python_model.read_text().replace('name: "a"\n}\ninput {\n  name: "b"', 'name: "input"'))
    assert validate_repository(repo).problems == [
        "digits-lt_preprocess: cannot read config.pbtxt (Is a directory)",
        "digits-lt: step 0 names model 'digits-lt_preprocess', which is not in the repository",
        "digits-lt: step 1 reads 'preprocessed', which no earlier step produces",
    ]


def test_every_batching_model_gets_the_queue_delay_instances_and_preferred_batches_asked_for(tmp_path, digits_artifact):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    settings = RepositorySettings(max_queue_delay_us=2000, preferred_batch=[4, 16], instances=3, max_batch=32)
    build_repository(digits_artifact[1], tmp_path / "repo", settings)
    configs = {
        folder.name: text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        for folder in (tmp_path / "repo").iterdir()
    }
    batching = {name: config for name, config in configs.items() if config.platform != "ensemble"}
    assert sorted(batching) == ["digits-lt_onnx", "digits-lt_preprocess"]
    for name, config in batching.items():
        assert config.dynamic_batching.max_queue_delay_microseconds == 2000, name
        assert list(config.dynamic_batching.preferred_batch_size) == [4, 16], name
        assert [group.count for group in config.instance_group] == [3], name
    assert {config.max_batch_size for config in configs.values()} == {32}
