"""Mutation testing of the core and the contracts with mutmut: how many deliberate bugs the tests catch.

For each target (a module and the test files that guard it) mutmut plants one small bug at a time (an operator,
a constant, a comparison changed) in a copy of the tree and runs the tests that cover the mutated function; a
mutant that no test fails on "survived". Runs in a scratch copy of the repository (nothing here changes),
prints killed/survived per module and writes the diffs of the survivors (and of the mutants no selected test
executes), to be killed by a test or explained as equivalent in docs/mutation.md. Slow (minutes per module
on 2 cores): not part of `make test`.

    python scripts/mutation.py                      # every target below
    python scripts/mutation.py fusion losses        # some of them
    python scripts/mutation.py --output runs/mutation
    # only some mutants of one target, e.g. to check that new tests kill the survivors of the last run:
    python scripts/mutation.py fold --mutants \
        $(grep -o '^# pih2t_deploy[^:]*' docs/mutation/fold.survivors.diff | cut -c3-)

Needs mutmut (`pip install mutmut==3.8.1`, in the dev extra).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DETECTED = ("killed", "timeout", "segfault")  # a test run that fails, hangs or crashes has noticed the bug

# name: (module under pih2t_deploy/, the tests that guard it)
TARGETS: dict[str, tuple[str, list[str]]] = {
    "fusion": ("fusion.py", ["tests/test_fusion.py"]),
    "longtail": ("data/longtail.py", ["tests/test_data.py", "tests/test_groups.py"]),
    "losses": ("training/losses.py", ["tests/test_samplers_losses.py"]),
    "evaluate": ("evaluation.py", ["tests/test_groups.py", "-k", "by_hand or metadata or by_class_index"]),
    # the strict-loading test of the two largest torchvision nets adds 3 s to every surviving mutant
    "fold": ("fold.py", ["tests/test_fold.py", "-k", "not resnet152 and not resnext50"]),
    "pif": ("models/pif.py", ["tests/test_pif.py"]),
    "preprocessing": (
        "data/preprocessing.py",
        [
            "tests/test_preprocessing.py",
            "tests/test_installs.py::test_torch_free_preprocessing_equals_torchvision_bit_for_bit",
            "tests/test_serving.py::test_16_bit_and_transparent_images_follow_the_documented_rule",
        ],
    ),
    "v2_codec": ("serving/v2_codec.py", ["tests/test_v2_codec.py"]),
    "batcher": ("serving/batcher.py", ["tests/test_batcher.py"]),
    "verify": ("export/verify.py", ["tests/test_export_gates.py"]),
    "gates": ("export/gates.py", ["tests/test_export_gates.py"]),
    "triton_validate": ("serving/triton/validate.py", ["tests/test_triton.py", "-k", "validate"]),
}


def _config(module: str, tests: list[str]) -> str:
    selection = ", ".join(json.dumps(t) for t in [*tests, "-x", "-q", "-p", "no:cacheprovider"])
    return (
        "[tool.mutmut]\n"
        'source_paths = ["pih2t_deploy"]\n'
        f'only_mutate = ["pih2t_deploy/{module}"]\n'
        f"pytest_add_cli_args_test_selection = [{selection}]\n"
        "timeout_multiplier = 10.0\n"  # a mutant that makes the tests 20x slower counts as caught (a hang)
        'process_isolation = "forkserver"\n'  # torch's thread pool is not fork-safe: plain fork hangs workers
        'also_copy = ["training", "serving", "benchmarks", "scripts", "README.md"]\n'
    )


def _prebuilt_digits(folder: Path) -> Path:
    """The tests' Digits-LT artifact, trained and exported once by unmutated code (conftest reuses it)."""
    from pih2t_deploy.export.exporter import export_checkpoint
    from pih2t_deploy.export.options import ExportOptions
    from pih2t_deploy.training.engine import Trainer
    from pih2t_deploy.training.recipe import load_recipe

    recipe = load_recipe("digits-lt", ["stage1.epochs=30", "stage2.epochs=5", "runtime.progress=false"])
    result = Trainer(recipe, folder / "run", log=lambda _m: None).run()
    export_checkpoint(result.model_path, ExportOptions(output=folder / "export"))
    return folder


def run_target(name: str, output: Path, mutants: list[str] | None = None) -> dict[str, int]:
    """Run mutmut on one target in a scratch copy; returns counts per mutant status.

    ``mutants`` (mutmut names or fnmatch patterns) limits the run to those; the others are left out of the counts.
    """
    module, tests = TARGETS[name]
    with tempfile.TemporaryDirectory(prefix=f"pih2t-mutation-{name}-") as scratch:
        work = Path(scratch) / "repo"
        shutil.copytree(ROOT, work, ignore=shutil.ignore_patterns(".venv", ".git", "runs", "mutants", "__pycache__"))
        pyproject = work / "pyproject.toml"
        pyproject.write_text(pyproject.read_text() + "\n" + _config(module, tests))
        env = {**os.environ, "PIH2T_TEST_DIGITS": str(_prebuilt_digits(Path(scratch) / "digits"))}
        subprocess.run([sys.executable, "-m", "mutmut", "run", *(mutants or [])], cwd=work, check=False, env=env)
        listing = subprocess.run(
            [sys.executable, "-m", "mutmut", "results", "--all", "true"],
            cwd=work,
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        counts: dict[str, int] = {}
        missed: dict[str, list[str]] = {"survived": [], "no tests": []}
        for line in listing.splitlines():
            mutant, _, status = line.strip().rpartition(": ")
            if not mutant or status == "not checked":
                continue
            counts[status] = counts.get(status, 0) + 1
            if status in missed:
                shown = subprocess.run(
                    [sys.executable, "-m", "mutmut", "show", mutant], cwd=work, capture_output=True, text=True
                )
                missed[status].append(shown.stdout)
        output.mkdir(parents=True, exist_ok=True)
        (output / f"{name}.survivors.diff").write_text("\n".join(missed["survived"]))
        (output / f"{name}.no_tests.diff").write_text("\n".join(missed["no tests"]))
        return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", metavar="TARGET", help=f"default: all of {', '.join(TARGETS)}")
    parser.add_argument("--output", type=Path, default=Path("runs/mutation"))
    parser.add_argument(
        "--mutants", nargs="+", metavar="NAME", help="only these mutants (one target; fnmatch patterns)"
    )
    args = parser.parse_args()
    if unknown := sorted(set(args.targets) - set(TARGETS)):
        parser.error(f"unknown target {', '.join(unknown)}; choose from {', '.join(TARGETS)}")
    if args.mutants and len(args.targets) != 1:
        parser.error("--mutants needs exactly one target, e.g. `fold --mutants 'pih2t_deploy.fold.x_fold__*'`")
    rows = {}
    for name in args.targets or list(TARGETS):
        rows[name] = run_target(name, args.output, args.mutants)
        print(f"{name}: {rows[name]}", flush=True)
    print(
        "\n| module | mutants | detected (killed + timeout) | survived | no test | score |\n|---|---|---|---|---|---|"
    )
    for name, counts in rows.items():
        detected = sum(counts.get(s, 0) for s in DETECTED)
        missed = counts.get("survived", 0) + counts.get("no tests", 0)
        score = detected / (detected + missed) if detected + missed else 0.0
        print(
            f"| {TARGETS[name][0]} | {sum(counts.values())} | {detected} | {counts.get('survived', 0)} | "
            f"{counts.get('no tests', 0)} | {score:.0%} |"
        )
    (args.output / "scores.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
