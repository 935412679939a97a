"""Logging: the library reports through the ``logging`` module and prints nothing itself, so an application
that imports it decides what is shown; the commands show INFO lines and take --log-level / PIH2T_LOG_LEVEL."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from pih2t_deploy.training.engine import Trainer
from pih2t_deploy.training.recipe import load_recipe
from tests.helpers import run_cli

TINY = ["stage1.epochs=1", "stage2.epochs=1", "runtime.progress=false"]


def test_the_library_prints_nothing_and_logs_to_its_own_loggers(tmp_path, capsys, caplog):
    with caplog.at_level(logging.INFO, logger="pih2t_deploy"):
        Trainer(load_recipe("digits-lt", TINY), tmp_path / "run").run()
    out, err = capsys.readouterr()
    assert out == "" and err == "", "an application that imports pih2t_deploy decides what is shown"
    records = [r for r in caplog.records if r.name == "pih2t_deploy.training.engine"]
    assert any(r.getMessage().startswith("data digits-lt: 331 training images in 10 classes") for r in records)
    assert any(r.getMessage().startswith("stage 2: top-1") for r in records)


def test_commands_show_info_lines_and_log_level_hides_them(digits_artifact, tmp_path):
    ckpt = str(digits_artifact[0])
    shown = run_cli("export", "--ckpt", ckpt, "--output", str(tmp_path / "a"))
    assert shown.returncode == 0 and "loaded " in shown.stderr and "folded: float64" in shown.stderr
    assert "gate: outputs within the tolerance of the PyTorch model on random inputs: passed" in shown.stdout
    quiet = run_cli("--log-level", "warning", "export", "--ckpt", ckpt, "--output", str(tmp_path / "b"))
    assert quiet.returncode == 0 and "loaded " not in quiet.stderr and "folded" not in quiet.stderr
    alias = os.path.join(os.path.dirname(sys.executable), "pih2t-export")
    env = {**os.environ, "PIH2T_LOG_LEVEL": "warning"}
    done = subprocess.run(
        [alias, "--ckpt", ckpt, "--output", str(tmp_path / "c")], capture_output=True, text=True, env=env, timeout=280
    )
    assert done.returncode == 0 and "loaded " not in done.stderr, done.stderr
