"""benchmarks/gpu_check.sh must not rot on machines without a GPU: run its code path on the CPU, tiny sizes.

The GPU itself cannot exist here; ``--allow-cpu --quick`` runs every step (engine training with the CUDA
settings off, resnet50 PIF/H2TF steps, fold parity, matmul rate, eager/compile timings) on the CPU.
"""

import json
import os
import subprocess
import sys
from pathlib import Path


def test_gpu_check_runs_end_to_end_on_the_cpu(tmp_path):
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(root / "benchmarks" / "gpu_check.sh"), "--allow-cpu", "--quick"],
        capture_output=True,
        text=True,
        env=env,
        timeout=280,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["resnet50_steps"]["losses_finite"] and report["resnet50_steps"]["pif_gradient"] > 0
    assert report["training"]["stage2_head_trained"] and report["training"]["stage2_pif_frozen"]
    assert report["fold_parity"]["fp32_max_abs_diff"] < 1e-3
    assert [row["batch"] for row in report["inference"]] == [1, 4]
    assert "| batch | min ms |" in done.stdout.splitlines()[-4]
    assert (tmp_path / "out" / "gpu_check.log").exists() and (tmp_path / "out" / "nvidia-smi.txt").exists()
