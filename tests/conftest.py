"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pih2t_deploy.models import PIH2TNet
from tests.helpers import make_net

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

# The integration tier: tests that need the trained Digits-LT model (the fixtures below) or that train, export
# every architecture, install wheels, or start command processes and servers of other programs. The rest is the
# unit tier (`make test-fast`), which runs on hand-made numbers and the fake classifier of tests/fakes.py.
INTEGRATION_FIXTURES = frozenset({"digits_artifact", "digits_eval"})
INTEGRATION_MODULES = frozenset(
    {
        "test_bench",
        "test_demo",
        "test_export_formats",
        "test_export_onnx",
        "test_finetune_stage",
        "test_fold",
        "test_fuzz",
        "test_gpu_check",
        "test_grpc",
        "test_installs",
        "test_logging",
        "test_openvino",
        "test_own_data",
        "test_predict",
        "test_push_to_hub",
        "test_serve_workers",
        "test_timm_backbones",
        "test_tracking",
        "test_validation_posthoc",
        "test_training",
        "test_triton",
    }
)


def pytest_collection_modifyitems(config, items) -> None:
    """Mark the integration tier (see INTEGRATION_FIXTURES / INTEGRATION_MODULES)."""
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1]
        if INTEGRATION_FIXTURES & set(item.fixturenames) or module in INTEGRATION_MODULES:
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def digits_net() -> PIH2TNet:
    return make_net("digits_net", method="pih2t", lws=True)


@pytest.fixture(scope="session")
def digits_artifact(tmp_path_factory):
    """Digits-LT PI-H2T trained briefly (30+5 epochs, well above chance), exported to ONNX: (checkpoint, folder).

    ``PIH2T_TEST_DIGITS=DIR`` reuses ``DIR/run/model.pt`` and ``DIR/export`` made this way (scripts/mutation.py
    builds them once instead of once per mutant); CI never sets it.
    """
    from pih2t_deploy.export.exporter import export_checkpoint
    from pih2t_deploy.export.options import ExportOptions
    from pih2t_deploy.training.engine import Trainer
    from pih2t_deploy.training.recipe import load_recipe

    prebuilt = os.environ.get("PIH2T_TEST_DIGITS")
    if prebuilt:
        return Path(prebuilt) / "run" / "model.pt", Path(prebuilt) / "export"
    root = tmp_path_factory.mktemp("digits")
    recipe = load_recipe("digits-lt", ["stage1.epochs=30", "stage2.epochs=5", "runtime.progress=false"])
    result = Trainer(recipe, root / "run", log=lambda _m: None).run()
    export_checkpoint(result.model_path, ExportOptions(output=root / "export"))
    return result.model_path, root / "export"


@pytest.fixture(scope="session")
def digits_eval(digits_artifact, tmp_path_factory) -> dict:
    """``pih2t-eval``'s summary of the digits checkpoint (its recorded thresholds are 40/10, not 100/20)."""
    from pih2t_deploy.training.evaluation_run import evaluate_checkpoint

    return evaluate_checkpoint(digits_artifact[0], tmp_path_factory.mktemp("digits-eval"), device="cpu")
