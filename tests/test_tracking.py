"""MLflow tracking on a real MLflow store (SQLite, read back with MLflow's own client): a short training run's
parameters, per-epoch metrics, final scores and uploaded run folder; a failed run marked FAILED (KILLED after
Ctrl-C) and resumed in the same MLflow run; an unreachable tracking server refused before training; a store that
breaks mid-run dropped with a warning while training goes on."""

from __future__ import annotations

import hashlib
import json

import pytest
from mlflow import MlflowClient

from pih2t_deploy.errors import ConfigError
from pih2t_deploy.training.recipe import build_recipe, load_recipe
from pih2t_deploy.training.tracking import MLFLOW_RUN_ID_FILE, RunTracking


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_training_run_is_tracked_in_mlflow_beside_the_run_folder_by_default(tmp_path, monkeypatch):
    """No URI given: the store is runs/mlflow.db; MLflow's client reads back what the run folder holds."""
    from pih2t_deploy.training.engine import Trainer

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    recipe = load_recipe(
        "digits-lt",
        ["stage1.epochs=3", "stage2.epochs=2", "runtime.progress=false", "runtime.tracking=tensorboard,mlflow"],
    )
    run = tmp_path / "runs" / "short"
    lines: list[str] = []
    result = Trainer(recipe, run, log=lines.append).run()

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    run_id = (run / MLFLOW_RUN_ID_FILE).read_text().strip()
    tracked = client.get_run(run_id)
    assert any(f"MLflow: run {run_id} in experiment 'pih2t-deploy'" in line for line in lines)
    assert tracked.info.status == "FINISHED" and tracked.info.run_name == "short"
    assert tracked.data.params["stage1.epochs"] == "3" and tracked.data.params["data.source"] == "digits-lt"
    assert tracked.data.params["stage2.fusion_ratio"] == str(recipe.stage2.fusion_ratio)
    assert tracked.data.tags["version.pih2t_deploy"] == "0.1.0"
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [(h["epoch"], pytest.approx(h["loss"])) for h in history if h["stage"] == 1]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "stage1/loss")] == losses
    stage2_few = [(h["epoch"], pytest.approx(h["test"]["few"])) for h in history if h["stage"] == 2]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "stage2/test_few")] == stage2_few
    assert tracked.data.metrics["final/test_few"] == pytest.approx(result.metrics["few"])
    assert tracked.data.metrics["final/test_top1"] == pytest.approx(result.metrics["top1"])
    uploaded = client.download_artifacts(run_id, "", str(tmp_path / "downloaded"))
    for name in ("model.pt", "metrics.json", "metrics.jsonl"):
        assert _sha(tmp_path / "downloaded" / name) == _sha(run / name), f"{name} uploaded as written"
    assert uploaded and (run / "tensorboard").is_dir(), "TensorBoard beside MLflow when both are named"


def _record(epoch: int, loss: float) -> dict:
    return {"stage": 1, "epoch": epoch, "loss": loss, "train_acc": 0.5, "lr": 0.1}


def test_a_failed_run_is_marked_failed_and_a_resumed_one_goes_on_in_the_same_mlflow_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a URI that is given keeps MLflow's own artifact root: ./mlruns
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    run = tmp_path / "run"
    run.mkdir()
    first = RunTracking(run, ("mlflow",), enabled=True, recipe={"stage1": {"lr": 0.1}}, mlflow_uri=uri)
    first.epoch(_record(1, 2.5))
    first.finish("FAILED")
    client = MlflowClient(tracking_uri=uri)
    run_id = (run / MLFLOW_RUN_ID_FILE).read_text().strip()
    assert client.get_run(run_id).info.status == "FAILED"
    assert client.list_artifacts(run_id) == [], "a failed run uploads nothing"

    (run / "model.pt").write_bytes(b"weights")
    resumed = RunTracking(run, ("mlflow",), enabled=True, recipe={"stage1": {"lr": 0.1}}, mlflow_uri=uri, resume=True)
    resumed.epoch(_record(2, 1.5))
    resumed.finish()
    assert (run / MLFLOW_RUN_ID_FILE).read_text().strip() == run_id
    assert client.get_run(run_id).info.status == "FINISHED"
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "stage1/loss")] == [(1, 2.5), (2, 1.5)]
    assert "model.pt" in [a.path for a in client.list_artifacts(run_id)]

    fresh = RunTracking(run, ("mlflow",), enabled=True, recipe={}, mlflow_uri=uri)  # not resuming: a new run
    fresh.finish("KILLED")  # Ctrl-C
    fresh_id = (run / MLFLOW_RUN_ID_FILE).read_text().strip()
    assert fresh_id != run_id and client.get_run(fresh_id).info.status == "KILLED"


def test_an_unreachable_tracking_server_is_refused_before_training_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with pytest.raises(ConfigError, match=r"^MLflow tracking at http://127\.0\.0\.1:9 failed: ") as raised:
        RunTracking(tmp_path, ("mlflow",), enabled=True, recipe={}, mlflow_uri="http://127.0.0.1:9")
    assert "\n" not in str(raised.value)


def test_a_store_that_breaks_mid_run_is_dropped_with_a_warning_and_the_others_go_on(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    store = tmp_path / "store"
    store.mkdir()
    lines: list[str] = []
    tracking = RunTracking(
        tmp_path / "run", ("mlflow", "tensorboard"), enabled=True, recipe={},
        mlflow_uri=f"sqlite:///{store / 'mlflow.db'}", log=lines.append,
    )  # fmt: skip
    tracking.epoch(_record(1, 2.0))
    (store / "mlflow.db").write_bytes(b"not a database" * 1000)
    tracking.epoch(_record(2, 1.0))
    tracking.finish()
    assert sum(line.startswith("warning") for line in lines) == 1, "one warning, once"
    assert "MlflowLog could not log an epoch and stops" in lines[-1]
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("stage1/loss")] == [(1, 2.0), (2, 1.0)]


def test_tracking_names_are_checked_with_the_recipe():
    assert build_recipe({"name": "x", "runtime": {"tracking": "mlflow"}}).runtime.tracking == ("mlflow",)
    assert build_recipe({"name": "x", "runtime": {"tracking": []}}).runtime.tracking == ()
    with pytest.raises(ConfigError, match=r"runtime\.tracking"):
        build_recipe({"name": "x", "runtime": {"tracking": "wandb"}})


@pytest.mark.parametrize(("error", "status"), [(KeyboardInterrupt, "KILLED"), (RuntimeError, "FAILED")])
def test_a_training_run_stopped_by_ctrl_c_or_an_error_ends_its_mlflow_run_so(tmp_path, error, status):
    from pih2t_deploy.training.engine import Trainer

    def stop(stage: int, epoch: int) -> None:
        raise error("stopped in stage 1")

    uri = f"sqlite:///{tmp_path / 'store.db'}"
    settings = ["stage1.epochs=3", "runtime.progress=false", "runtime.tracking=mlflow", f"runtime.mlflow_uri={uri}"]
    recipe = load_recipe("digits-lt", settings)
    run = tmp_path / "runs" / "stopped"
    with pytest.raises(error):
        Trainer(recipe, run, on_epoch_end=stop, log=lambda _m: None).run()
    client = MlflowClient(tracking_uri=uri)
    tracked = client.get_run((run / MLFLOW_RUN_ID_FILE).read_text().strip())
    assert tracked.info.status == status
    assert [m.step for m in client.get_metric_history(tracked.info.run_id, "stage1/loss")] == [1], "epoch 1 logged"
