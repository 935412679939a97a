"""Does PI-H2T help the tail on Digits-LT? And what do PIF and H2TF cost per training step?

For seeds 0..4, trains ``ce``, ``h2t`` and ``pih2t`` with the same recipe (digits-lt: IF 50, CE + mixup,
same epochs) and reports mean +- std of top-1 and Many/Medium/Few accuracy. Then times training steps of
stage 1 (with and without PIF) and stage 2 (with and without H2TF) side by side in one process, interleaved,
and prints the ratios. Writes a markdown table to stdout and JSON to --output.

    python benchmarks/longtail_digits.py --output runs/bench-longtail
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from pih2t_deploy.fusion import h2t_fuse
from pih2t_deploy.models import NetworkConfig, PIH2TNet
from pih2t_deploy.training.engine import Trainer
from pih2t_deploy.training.recipe import load_recipe

METHODS = ("ce", "h2t", "pih2t")
GROUPS = ("top1", "many", "medium", "few")


def accuracy_table(output: Path, seeds: list[int], overrides: list[str]) -> dict:
    runs: dict[str, list[dict]] = {m: [] for m in METHODS}
    for seed in seeds:
        for method in METHODS:
            recipe = load_recipe(
                "digits-lt", [f"method={method}", f"seed={seed}", "runtime.progress=false", *overrides]
            )
            result = Trainer(recipe, output / f"{method}-seed{seed}", log=lambda _m: None).run()
            runs[method].append({k: result.metrics[k] for k in GROUPS})
            print(
                f"seed {seed} {method:6s} " + " ".join(f"{k} {100 * result.metrics[k]:.1f}" for k in GROUPS), flush=True
            )
    return runs


def _time_steps(step, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def step_overhead(arch: str, size: int, channels: int, batch: int, repeats: int) -> dict:
    """Median time of one training step, stage 1 ce vs pih2t (PIF) and stage 2 without vs with H2TF."""
    torch.manual_seed(0)
    nets = {
        m: PIH2TNet(NetworkConfig(arch=arch, num_classes=10, in_channels=channels, method=m)).train()
        for m in ("ce", "pih2t")
    }
    x, donor = torch.randn(batch, channels, size, size), torch.randn(batch, channels, size, size)
    y = torch.randint(0, 10, (batch,))

    def stage1(net):
        def step():
            net.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()

        return step

    def stage2(net, fuse):
        def step():
            net.zero_grad()
            with torch.no_grad():  # receivers and donors in two passes, as the engine runs them
                maps = net.features(x)
                if fuse:
                    maps, _ = h2t_fuse(maps, net.features(donor), 0.3, inplace=True)
            torch.nn.functional.cross_entropy(net.classify(maps), y).backward()

        return step

    cases = {
        "stage1_ce": stage1(nets["ce"]),
        "stage1_pif": stage1(nets["pih2t"]),
        "stage2_plain": stage2(nets["ce"], False),
        "stage2_h2tf": stage2(nets["ce"], True),
    }
    for step in cases.values():
        step()
    timings: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(5):  # interleave the cases so machine noise hits all of them alike
        for name, step in cases.items():
            timings[name].append(_time_steps(step, repeats))
    median = {k: statistics.median(v) for k, v in timings.items()}
    return {
        "arch": arch,
        "batch": batch,
        "seconds": median,
        "pif_ratio": median["stage1_pif"] / median["stage1_ce"],
        "h2tf_ratio": median["stage2_h2tf"] / median["stage2_plain"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("runs/bench-longtail"))
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument(
        "overrides", nargs="*", help="recipe overrides applied to every run, e.g. stage2.fusion_ratio=0.5"
    )
    parser.add_argument("--overhead-only", action="store_true", help="skip the accuracy runs")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.overhead_only:
        for o in (step_overhead("digits_net", 8, 1, 64, 20), step_overhead("resnet32", 32, 3, 128, 3)):
            print(f"| {o['arch']} | {o['batch']} | {o['pif_ratio']:.3f} | {o['h2tf_ratio']:.3f} |")
        return
    runs = accuracy_table(args.output, seeds, args.overrides)
    print(f"\nDigits-LT (IF 50), seeds {args.seeds}, overrides {args.overrides or 'none'}; top-1 % mean +- std\n")
    print("| method | top-1 | Many | Medium | Few |\n|---|---|---|---|---|")
    for method in METHODS:
        cells = []
        for key in GROUPS:
            values = [100 * r[key] for r in runs[method]]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.1f} +- {spread:.1f}")
        print(f"| {method} | " + " | ".join(cells) + " |")
    overheads = [step_overhead("digits_net", 8, 1, 64, 20), step_overhead("resnet32", 32, 3, 128, 3)]
    print("\n| backbone | batch | stage-1 step, PIF / CE | stage-2 step, H2TF / plain |\n|---|---|---|---|")
    for o in overheads:
        print(f"| {o['arch']} | {o['batch']} | {o['pif_ratio']:.3f} | {o['h2tf_ratio']:.3f} |")
    args.output.mkdir(parents=True, exist_ok=True)
    record = {
        "runs": runs,
        "overheads": overheads,
        "seeds": seeds,
        "overrides": args.overrides,
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }
    (args.output / "longtail_digits.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
