"""Installs other than ours: a built wheel used outside the source tree, a serving process where torch cannot
be imported, the GPU and serving-only extras as pip resolves them, and artifacts under an ordinary umask."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import sysconfig
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from pih2t_deploy.atomic import atomic_dir, write_text_atomic
from pih2t_deploy.checkpoint import build_meta, save_checkpoint
from pih2t_deploy.data.preprocessing import Preprocessing, to_mode
from pih2t_deploy.runtime import load_classifier
from pih2t_deploy.serving.process import free_port, wait_ready
from tests import images

ROOT = Path(__file__).resolve().parents[1]
BLOCK_TORCH = """
import sys

class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None

sys.meta_path.insert(0, _NoTorch())
"""


def _serve_and_classify(command: list[str], env: dict[str, str], cwd: Path) -> tuple[dict, int]:
    """Start ``command --port P``, classify digit 3 and return (answer, server pid) once it has been stopped."""
    port = free_port()
    server = subprocess.Popen([*command, "--port", str(port), "--log-level", "warning"], env=env, cwd=cwd)
    try:
        wait_ready(f"http://127.0.0.1:{port}", server, timeout_s=120, what="pih2t-serve")
        maps = Path(f"/proc/{server.pid}/maps").read_text()
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v1/classify", files={"file": ("d3.png", images.sample(3))}, params={"top_k": 3}
        )
        assert answer.status_code == 200, answer.text
        return {"answer": answer.json(), "torch_mapped": "libtorch" in maps}, server.pid
    finally:
        server.terminate()
        server.wait(timeout=30)


def _expected_top3(artifact: Path) -> list[int]:
    classifier = load_classifier(artifact)
    logits = classifier.predict(classifier.prepare([Image.open(images.SAMPLES / "digit_3.png")]))
    return [int(i) for i in np.argsort(-logits[0], kind="stable")[:3]]


def test_serving_an_onnx_artifact_never_imports_torch(tmp_path, digits_artifact):
    """pih2t-serve in a process where ``import torch`` raises: it starts, answers like onnxruntime does, and no
    torch library is mapped into it; the demo and Triton modules import there too."""
    _, artifact = digits_artifact
    (tmp_path / "sitecustomize.py").write_text(BLOCK_TORCH)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    probe = subprocess.run(
        [sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert probe.returncode == 1 and "blocked by the test" in probe.stderr
    imports = "import pih2t_deploy.serving.demo, pih2t_deploy.serving.triton.repository, pih2t_deploy.cli"
    done = subprocess.run([sys.executable, "-c", imports], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result, _ = _serve_and_classify(
        [sys.executable, "-m", "pih2t_deploy.cli", "serve", "--model", str(artifact)], env, tmp_path
    )
    assert not result["torch_mapped"]
    assert [p["index"] for p in result["answer"]["results"][0]["predictions"]] == _expected_top3(artifact)


def test_a_command_that_needs_torch_says_which_extra_to_install(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BLOCK_TORCH)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    done = subprocess.run(
        [sys.executable, "-m", "pih2t_deploy.cli", "train", "--output", str(tmp_path / "run")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: this command needs the torch package, which is not installed here; "
        "install it with: pip install 'pih2t-deploy[train]'"
    ]


def _site_packages(venv: Path) -> Path:
    return venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def test_the_built_wheel_trains_exports_and_serves_outside_the_source_tree(tmp_path):
    """``pip wheel .`` then an install into a fresh virtual environment (its dependencies are those of this
    one, reached through a .pth file, so nothing is downloaded); every command runs from an empty folder."""
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("pih2t_deploy-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    (_site_packages(venv) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert installed.returncode == 0, installed.stderr
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run(
        [python, "-c", "import pih2t_deploy; print(pih2t_deploy.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(_site_packages(venv)), where.stdout
    bin_dir = venv / "bin"
    overrides = ["stage1.epochs=3", "stage2.epochs=1", "runtime.progress=false"]
    for command in (
        [bin_dir / "pih2t-train", "--recipe", "digits-lt", "--output", "run", *overrides],
        [bin_dir / "pih2t-export", "--ckpt", "run/model.pt", "--format", "onnx", "--output", "export"],
    ):
        done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=280)
        assert done.returncode == 0, done.stderr
    manifest = json.loads((work / "export" / "model.json").read_text())
    assert manifest["meta"]["recipe"] == "digits-lt"
    result, _ = _serve_and_classify([str(bin_dir / "pih2t-serve"), "--model", "export"], env, work)
    assert [p["index"] for p in result["answer"]["results"][0]["predictions"]] == _expected_top3(work / "export")


def _resolved(requirement: str, tmp_path: Path) -> dict[str, str]:
    report = tmp_path / "report.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "-q",
            "--report",
            report,
            requirement,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stderr
    return {
        item["metadata"]["name"].lower(): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }


@pytest.mark.parametrize(
    ("extras", "present", "absent"),
    [
        ("gpu,serve", {"onnxruntime-gpu": "1.31.1", "fastapi": "0.165.0"}, {"onnxruntime", "torch", "torchvision"}),
        ("cpu,serve", {"onnxruntime": "1.32.0", "uvicorn": "0.54.0"}, {"onnxruntime-gpu", "torch", "torchvision"}),
    ],
)
def test_pip_resolves_one_onnx_runtime_flavour_and_no_torch_for_serving(tmp_path, extras, present, absent):
    resolved = _resolved(f"{ROOT}[{extras}]", tmp_path)
    assert {name: resolved.get(name) for name in present} == present
    assert absent.isdisjoint(resolved), sorted(absent & set(resolved))


def _modes(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): oct(stat.S_IMODE(path.stat().st_mode)) for path in sorted([root, *root.rglob("*")])
    }


@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [(0o022, "0o644", "0o755"), (0o077, "0o600", "0o700")])
def test_written_files_and_folders_get_the_permissions_the_umask_gives(
    tmp_path, digits_net, umask, file_mode, dir_mode
):
    """Atomic writes go through private temporary names; what lands must still be readable by others under
    umask 022 (containers run as uid 10001 with the artifact mounted read-only) and private under 077."""
    previous = os.umask(umask)
    try:
        save_checkpoint(tmp_path / "run" / "model.pt", digits_net, build_meta(digits_net.config))
        write_text_atomic(tmp_path / "run" / "metrics.json", "{}\n")
        with atomic_dir(tmp_path / "export") as folder:
            (folder / "model.onnx").write_bytes(b"x")
            (folder / "sub").mkdir()
            (folder / "sub" / "labels.txt").write_text("a\n")
    finally:
        os.umask(previous)
    assert _modes(tmp_path / "run") == {".": dir_mode, "metrics.json": file_mode, "model.pt": file_mode}
    assert _modes(tmp_path / "export") == {
        ".": dir_mode,
        "model.onnx": file_mode,
        "sub": dir_mode,
        "sub/labels.txt": file_mode,
    }


@pytest.mark.parametrize(
    "prep",
    [
        Preprocessing(224, 256),
        Preprocessing(32, 36, "RGB", (0.49, 0.48, 0.44), (0.2, 0.19, 0.2), "bicubic"),
        Preprocessing(8, 8, "L", (0.5,), (0.5,), "nearest"),
    ],
)
def test_torch_free_preprocessing_equals_torchvision_bit_for_bit(prep):
    """The serving install preprocesses with PIL and numpy only; it must give exactly what torchvision's
    Resize(int) / CenterCrop / ToDtype(scale) / Normalize give (what training evaluated with)."""
    from torchvision.transforms import v2 as T

    reference = T.Compose(
        [
            T.Lambda(lambda image: to_mode(image, prep.mode)),
            T.Resize(prep.resize, interpolation=T.InterpolationMode(prep.interpolation), antialias=True),
            T.CenterCrop(prep.input_size),
            T.PILToTensor(),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(prep.mean, prep.std),
        ]
    )
    rng = np.random.default_rng(0)
    shapes = [(200, 300, 3), (401, 199, 1), (256, 256, 4), (8, 8, 1), (97, 33, 3), (300, 300, 3)]
    pictures = [Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8).squeeze()) for shape in shapes]
    ours = prep.to_numpy(pictures)
    for index, picture in enumerate(pictures):
        np.testing.assert_array_equal(ours[index], reference(picture).numpy())
    assert ours.dtype == np.float32 and ours.flags["C_CONTIGUOUS"]
