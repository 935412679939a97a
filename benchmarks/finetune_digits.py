"""From scratch against fine-tuned from a pretrained file, on Digits-LT (real handwritten digits, scikit-learn's
8x8 set, which this project did not make), with a timm backbone.

No hub can be reached here, so the "pretrained" weights are made by this script and it says so: timm's
resnet10t is trained (plain cross-entropy, both stages as the recipe runs them) on every digit outside
Digits-LT's test split, balanced to the smallest class's count (the long-tailed training images are among
them: like an ImageNet backbone that has seen the tail's kind of images, it has seen many more tail digits than
the long-tailed set holds), and its backbone saved as a .safetensors file. The test split is never seen. Then
the same long-tailed training runs twice, 20% of each class held out for validation: once from random weights,
once from that file. Everything at 32x32 (8x8 upscaled 4x).

    python benchmarks/finetune_digits.py [--output runs/bench-finetune] [--seed 0]

Prints a markdown table: test top-1, Many/Medium/Few and ECE, before and after the tau and temperature chosen
on validation.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from safetensors.torch import save_file
from sklearn.datasets import load_digits

from pih2t_deploy.bench.machine import cpu_info
from pih2t_deploy.checkpoint import load_checkpoint
from pih2t_deploy.data.digits_folder import CLASS_NAMES, write_digits_folder
from pih2t_deploy.training.engine import Trainer
from pih2t_deploy.training.recipe import load_recipe

RECIPE = str(Path(__file__).resolve().parents[1] / "training" / "digits-folder.yaml")
AT_32 = ["model.arch=timm/resnet10t", "data.input_size=32", "data.resize=32", "data.max_upscale=4"]


def _png_bytes_of(folder: Path) -> set[bytes]:
    from PIL import Image

    return {Image.open(p).tobytes() for p in folder.rglob("*.png")}


def write_pretraining_folder(lt_root: Path, root: Path, held_out_per_class: int = 10) -> int:
    """The digits not in Digits-LT's test split, as ROOT/train and ROOT/test folders (``held_out_per_class`` of
    each class to score the pretraining), balanced to the smallest class; returns the training images per class."""
    from PIL import Image

    used = _png_bytes_of(lt_root / "test")
    digits = load_digits()
    pixels = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    unused = [i for i in range(len(pixels)) if pixels[i].tobytes() not in used]
    per_class = min(int(np.sum(digits.target[unused] == c)) for c in range(10))
    for label, name in enumerate(CLASS_NAMES):
        members = [i for i in unused if digits.target[i] == label][:per_class]
        for position, index in enumerate(members):
            split = "test" if position < held_out_per_class else "train"
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[index], mode="L").save(folder / f"{name}_{position:04d}.png")
    return per_class - held_out_per_class


def train(output: Path, overrides: list[str]) -> dict:
    """One training run of the digits-folder recipe with ``overrides``; its metrics.json."""
    recipe = load_recipe(RECIPE, ["runtime.progress=false", *overrides])
    return Trainer(recipe, output, log=lambda message: print("   ", message, flush=True)).run().metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("runs/bench-finetune"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="pih2t-finetune-") as scratch:
        work = Path(scratch)
        write_digits_folder(work / "lt")
        per_class = write_pretraining_folder(work / "lt", work / "pretrain")
        print(f"pretraining on {per_class} digits per class, none of Digits-LT's test split", flush=True)
        pretrained = train(work / "pretrain-run", [f"data.root={work / 'pretrain'}", "method=ce", *AT_32])
        ckpt = load_checkpoint(work / "pretrain-run" / "model.pt")
        weights = work / "resnet10t-digits.safetensors"
        save_file({k: v.contiguous() for k, v in ckpt.net.backbone.body.state_dict().items()}, str(weights))
        common = [f"data.root={work / 'lt'}", "data.val_fraction=0.2", f"seed={args.seed}", *AT_32]
        for label, extra in (
            ("from scratch", []),
            ("fine-tuned from the pretrained file", [f"model.weights={weights}"]),
        ):
            print(label, flush=True)
            rows[label] = train(work / label.replace(" ", "-"), [*common, *extra])
    header = (
        "| timm/resnet10t | top-1 | Many | Medium | Few | ECE | tau, T | after: top-1 | Many | Medium | Few | ECE |"
    )
    print("\n" + header + "\n" + "|---" * 12 + "|")
    for label, m in rows.items():
        chosen, after = m["validation"]["posthoc"], m["validation"]["test"]["after_posthoc"]
        print(
            f"| {label} | {100 * m['top1']:.1f} | {100 * m['many']:.1f} | {100 * m['medium']:.1f} | "
            f"{100 * m['few']:.1f} | {m['ece']:.3f} | {chosen['tau']:g}, {chosen['temperature']:.2f} | "
            f"{100 * after['top1']:.1f} | {100 * after['many']:.1f} | {100 * after['medium']:.1f} | "
            f"{100 * after['few']:.1f} | {after['ece']:.3f} |"
        )
    print(f"\npretraining run (balanced, plain CE): top-1 {100 * pretrained['top1']:.1f} on its held-out digits")
    args.output.mkdir(parents=True, exist_ok=True)
    report = {"machine": cpu_info(), "pretraining_per_class": per_class, "runs": rows}
    (args.output / "finetune.json").write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
