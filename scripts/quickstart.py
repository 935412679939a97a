"""``make quickstart``: the whole product on the bundled Digits-LT data, end to end, saying what it does.

Train PI-H2T (both stages), evaluate Many/Medium/Few, fold and export to ONNX with verification, then
serve the artifact with pih2t-serve on 127.0.0.1 and classify the bundled sample images through the REST API.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

STEPS = 5


def step(number: int, text: str, command: list[str]) -> None:
    """Announce and run one CLI command; stop the quickstart if it fails."""
    print(f"\n[{number}/{STEPS}] {text}\n$ {' '.join(command)}", flush=True)
    done = subprocess.run(command)
    if done.returncode != 0:
        sys.exit(f"quickstart stopped: step {number} failed with exit status {done.returncode}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/quickstart"))
    parser.add_argument("--port", type=int, default=0, help="port for the serving step (0: any free port)")
    args = parser.parse_args()
    run, exe = args.run_dir, Path(sys.executable).parent
    started = time.perf_counter()
    step(
        1,
        "train PI-H2T on Digits-LT (stage 1: PIF; stage 2: H2TF)",
        [str(exe / "pih2t-train"), "--recipe", "digits-lt", "--output", str(run / "train"), "--resume"],
    )
    step(
        2,
        "evaluate top-1 and Many/Medium/Few accuracy",
        [str(exe / "pih2t-eval"), "--ckpt", str(run / "train" / "model.pt"), "--output", str(run / "eval")],
    )
    step(
        3,
        "fold PIF/H2TF away, export to ONNX and verify against PyTorch",
        [
            str(exe / "pih2t-export"),
            "--ckpt",
            str(run / "train" / "model.pt"),
            "--format",
            "onnx",
            "--output",
            str(run / "export"),
            "--eval-data",
            "recipe",
            "--force",
        ],
    )
    samples = sorted((Path(__file__).resolve().parents[1] / "pih2t_deploy" / "samples").glob("*.png"))
    step(
        4,
        "serve the artifact on 127.0.0.1 and classify the bundled sample images through the REST API",
        [
            sys.executable,
            "-m",
            "pih2t_deploy.serving.smoke",
            "--model",
            str(run / "export"),
            "--port",
            str(args.port),
            *map(str, samples),
        ],
    )
    step(5, "show the artifact folder", ["ls", "-l", str(run / "export")])
    print(
        f"\nquickstart done in {time.perf_counter() - started:.0f} s: model {run / 'train' / 'model.pt'}, "
        f"evaluation {run / 'eval'}, artifact {run / 'export'}"
    )


if __name__ == "__main__":
    main()
