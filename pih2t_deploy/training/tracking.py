"""Experiment tracking, chosen with ``runtime.tracking`` (a list; ``[]`` tracks nothing):

- ``tensorboard`` (the default): event files in ``RUN/tensorboard`` (``tensorboard --logdir RUN``);
- ``mlflow``: one MLflow run with the recipe as parameters, the same scalars as metrics and, once training
  has finished, the run folder as its artifacts. The store is ``runtime.mlflow_uri``, else the environment's
  ``MLFLOW_TRACKING_URI``, else a SQLite file beside the run folder (``RUN/../mlflow.db``, artifacts in
  ``RUN/../mlartifacts``) that ``mlflow ui --backend-store-uri sqlite:///...`` opens. A resumed run goes on
  in the same MLflow run (its id is kept in ``RUN/mlflow_run_id``).

Both record one scalar per number an epoch's record holds (loss, learning rate, training accuracy, and the
validation and test scores with Many/Medium/Few and ECE when measured), and the run's final test scores
before and after the choices made on validation. Only the main process of a distributed run tracks.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pih2t_deploy.atomic import write_text_atomic
from pih2t_deploy.errors import ConfigError, first_line

SCORES = ("top1", "balanced", "many", "medium", "few", "ece")
TrackerName = Literal["tensorboard", "mlflow"]
RunStatus = Literal["FINISHED", "FAILED", "KILLED"]
MLFLOW_RUN_ID_FILE = "mlflow_run_id"
MLFLOW_BATCH = 100  # MLflow's limit on parameters per log_batch call
DEFAULT_EXPERIMENT = "pih2t-deploy"


def epoch_scalars(record: dict[str, Any]) -> dict[str, float]:
    """The scalars of one epoch's record (metrics.jsonl's line), named ``stageN/key`` and ``stageN/split_key``."""
    stage = f"stage{record['stage']}"
    scalars = {f"{stage}/{key}": float(record[key]) for key in ("loss", "train_acc", "lr")}
    for split in ("val", "test"):
        for key, value in (record.get(split) or {}).items():
            if key in SCORES and value is not None:
                scalars[f"{stage}/{split}_{key}"] = float(value)
    return scalars


def final_scalars(scores: dict[str, Any], prefix: str) -> dict[str, float]:
    """A finished run's scores, named ``final/<prefix>_key``."""
    return {f"final/{prefix}_{key}": float(scores[key]) for key in SCORES if scores.get(key) is not None}


def flat_params(settings: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested recipe dict as dotted keys (``stage1.lr``) with string values, as MLflow stores parameters."""
    out: dict[str, str] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_params(value, f"{name}."))
        else:
            out[name] = str(value)
    return out


class TensorBoardLog:
    """Scalars in TensorBoard event files under ``folder``."""

    def __init__(self, folder: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder))

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Write ``values`` at ``step`` and flush, so a crash loses no finished epoch."""
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def finish(self, output: Path, status: RunStatus) -> None:
        """Close the event file."""
        self.writer.close()


class MlflowLog:
    """One MLflow run; see the module docstring for where it is stored."""

    def __init__(
        self,
        output: Path,
        params: dict[str, str],
        *,
        uri: str | None,
        experiment: str | None,
        resume: bool,
        tags: dict[str, str],
        log: Callable[[str], None],
    ) -> None:
        try:
            from mlflow import MlflowClient
            from mlflow.entities import Param
        except ImportError:
            raise ConfigError(
                "runtime.tracking=mlflow needs MLflow: pip install 'pih2t-deploy[train]' (or drop mlflow from "
                "runtime.tracking)"
            ) from None
        default_store = not (uri or os.environ.get("MLFLOW_TRACKING_URI"))
        store = output.resolve().parent
        uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{store / 'mlflow.db'}"
        id_file = output / MLFLOW_RUN_ID_FILE
        try:
            self.client = MlflowClient(tracking_uri=uri)
            if resume and id_file.is_file():
                self.run_id = id_file.read_text(encoding="utf-8").strip()
                self.client.update_run(self.run_id, status="RUNNING")
                log(f"MLflow: resuming run {self.run_id} in {uri}")
                return
            name = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
            found = self.client.get_experiment_by_name(name)
            location = (store / "mlartifacts").as_uri() if default_store else None
            experiment_id = found.experiment_id if found else self.client.create_experiment(name, location)
            run = self.client.create_run(experiment_id, run_name=output.name, tags=tags)
            self.run_id = run.info.run_id
            items = [Param(key, value[:6000]) for key, value in params.items()]
            for start in range(0, len(items), MLFLOW_BATCH):
                self.client.log_batch(self.run_id, params=items[start : start + MLFLOW_BATCH])
        except Exception as exc:  # an unreachable server or a malformed URI: said before any training
            raise ConfigError(f"MLflow tracking at {uri} failed: {first_line(exc)}") from None
        output.mkdir(parents=True, exist_ok=True)
        write_text_atomic(id_file, self.run_id + "\n")
        log(f"MLflow: run {self.run_id} in experiment {name!r} at {uri}")

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Log ``values`` at ``step`` in one batch."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, output: Path, status: RunStatus) -> None:
        """Upload the run folder as the run's artifacts (a finished run only) and end the run with ``status``."""
        if status == "FINISHED":
            self.client.log_artifacts(self.run_id, str(output))
        self.client.set_terminated(self.run_id, status=status)


class RunTracking:
    """The trackers ``runtime.tracking`` names, written to together; none on processes other than rank 0.
    ``resume`` goes on with the MLflow run recorded in the run folder; ``tags`` label a new MLflow run."""

    def __init__(
        self,
        output: Path,
        names: tuple[TrackerName, ...],
        *,
        enabled: bool,
        recipe: dict[str, Any],
        mlflow_uri: str | None = None,
        mlflow_experiment: str | None = None,
        resume: bool = False,
        tags: dict[str, str] | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.output = output
        self.log = log
        self.trackers: list[TensorBoardLog | MlflowLog] = []
        if not enabled:
            return
        if "mlflow" in names:
            mlflow = MlflowLog(
                output, flat_params(recipe), uri=mlflow_uri, experiment=mlflow_experiment, resume=resume,
                tags=tags or {}, log=log,
            )  # fmt: skip
            self.trackers.append(mlflow)
        if "tensorboard" in names:
            self.trackers.append(TensorBoardLog(output / "tensorboard"))

    def epoch(self, record: dict[str, Any]) -> None:
        """One epoch's record, at step = its epoch."""
        values, step = epoch_scalars(record), int(record["epoch"])
        self._each("log an epoch", lambda tracker: tracker.scalars(values, step))

    def final(self, scores: dict[str, Any], prefix: str = "test") -> None:
        """The finished run's scores (step 0) under ``prefix``."""
        values = final_scalars(scores, prefix)
        self._each("log the final scores", lambda tracker: tracker.scalars(values, 0))

    def finish(self, status: RunStatus = "FINISHED") -> None:
        """Close every tracker: a finished run uploads its folder to MLflow; one that failed is marked FAILED,
        one interrupted (Ctrl-C) KILLED, as MLflow's own runs are."""
        self._each("finish", lambda tracker: tracker.finish(self.output, status))
        self.trackers = []

    def _each(self, action: str, call: Callable[[TensorBoardLog | MlflowLog], None]) -> None:
        """``call`` on every tracker; one that fails (a tracking server gone mid-run) is dropped with one line
        in the log, and training goes on: its results are in the run folder either way."""
        for tracker in list(self.trackers):
            try:
                call(tracker)
            except Exception as exc:
                self.trackers.remove(tracker)
                self.log(f"warning: {type(tracker).__name__} could not {action} and stops: {exc}")
