"""The two-stage PI-H2T training engine (docs METHOD.md): the run around the stages (``stages.py``).

The Trainer sets up device, processes, data and network, runs ``Stage1`` then ``Stage2`` (each an object
with its own optimizer, schedule and loss that returns a typed summary), and writes stage1.pt, model.pt and
metrics.json. Stage 2 loads stage 1, freezes backbone and PIF (run under no_grad; with shift-BN their
BatchNorm layers stay in train mode and re-estimate statistics, receivers and donors in two separate passes
as the authors' code runs them, so each batch updates the statistics once), keeps the head from stage 1 and
re-trains it on H2TF-fused features: class-balanced receivers, instance-balanced donors, ratio p. With
``runtime.test_each_stage2_epoch`` every stage-2 epoch is scored on the test set, so metrics.json can report
the best epoch as the authors' code does, beside the final one (the final one is the model saved). After
every epoch the full training state is saved (atomically), so a crash loses at most the unfinished epoch;
each epoch's randomness derives from (seed, epoch), so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from pih2t_deploy.atomic import atomic_file, write_text_atomic
from pih2t_deploy.checkpoint import build_meta, read_weights_only, save_checkpoint, versions
from pih2t_deploy.data.datasets import LabelledImages
from pih2t_deploy.data.longtail import softmax
from pih2t_deploy.data.samplers import make_sampler
from pih2t_deploy.data.sources import DataBundle, build_data
from pih2t_deploy.errors import ConfigError, DataError
from pih2t_deploy.evaluation import summarize
from pih2t_deploy.models import NetworkConfig, PIH2TNet, check_input_fits
from pih2t_deploy.models.pretrained import load_backbone_weights
from pih2t_deploy.models.timm_archs import pretrained_defaults
from pih2t_deploy.training import distributed as dist_utils
from pih2t_deploy.training.posthoc import PosthocChoice, balanced_accuracy, choose_posthoc, reliability_diagram
from pih2t_deploy.training.predict import predict
from pih2t_deploy.training.recipe import Recipe
from pih2t_deploy.training.stages import Stage1, Stage2
from pih2t_deploy.training.tracking import RunTracking

logger = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"
BEST_VAL_FILE = "best_val.pt"  # the stage-2 weights that scored best on validation so far
EpochHook = Callable[[int, int], None]


@dataclass
class TrainResult:
    """What a finished run wrote."""

    output: Path
    model_path: Path
    stage1_path: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    already_complete: bool = False


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; asking for CUDA without it is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("runtime.device=cuda but no CUDA GPU is available; use runtime.device=cpu")
    return torch.device(name)


class Trainer:
    """Runs both stages of one recipe into an output folder."""

    def __init__(
        self,
        recipe: Recipe,
        output: Path,
        *,
        resume: bool = False,
        on_epoch_end: EpochHook | None = None,
        log: Callable[[str], None] = logger.info,
    ) -> None:
        self.recipe, self.output, self.resume = recipe, Path(output), resume
        self.on_epoch_end = on_epoch_end or (lambda _stage, _epoch: None)
        self.device = resolve_device(recipe.runtime.device)
        self.world = dist_utils.init_world(self.device)
        if self.device.type == "cuda" and self.world.distributed:
            self.device = torch.device("cuda", self.world.local_rank)
        self.log = log if self.world.is_main else (lambda _msg: None)
        self.workers = loader_workers(recipe.runtime.workers, self.log)
        self.amp_dtype = torch.bfloat16 if self.device.type == "cuda" and recipe.runtime.amp else None
        self.memory_format = (
            torch.channels_last
            if self.device.type == "cuda" and recipe.runtime.channels_last
            else torch.preserve_format
        )
        self.best_val_score: float | None = None  # the best validation balanced accuracy kept in BEST_VAL_FILE

    # ----------------------------------------------------------------- set-up
    def _network(self, bundle: DataBundle) -> PIH2TNet:
        model = self.recipe.model
        prep = bundle.preprocessing
        check_input_fits(model.arch, prep.input_size, prep.channels)
        config = NetworkConfig(
            arch=model.arch,
            num_classes=bundle.train.num_classes,
            in_channels=bundle.preprocessing.channels,
            method=self.recipe.method,
            head=model.head,
            cosine_scale=model.cosine_scale,
            lws=model.lws,
            pif_activation=model.pif_activation,
        )
        torch.manual_seed(self.recipe.seed)
        net = PIH2TNet(config)
        if model.weights:
            self.log(load_backbone_weights(net.backbone, model.weights).describe())
        return net.to(self.device, memory_format=self.memory_format)  # type: ignore[call-overload]  # torch's stubs omit memory_format

    def loader(self, dataset, kind: str, batch_size: int, seed: int) -> DataLoader:
        """A loader of ``dataset`` with sampler ``kind``, sharded over the processes."""
        sampler = make_sampler(kind, dataset.targets, seed=seed, rank=self.world.rank, world_size=self.world.size)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            drop_last=len(sampler) > batch_size,
            persistent_workers=False,
        )

    def autocast(self):
        """Mixed precision (bfloat16) on CUDA when the recipe asks for it, else nothing."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def to_device(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch on the training device (channels-last images where set)."""
        images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
        return images, labels.to(self.device, non_blocking=True)

    # ----------------------------------------------------------------- state
    def _state_path(self) -> Path:
        return self.output / STATE_FILE

    def _load_state(self) -> dict[str, Any] | None:
        path = self._state_path()
        if not path.exists():
            if self.resume:
                self.log(f"no {STATE_FILE} in {self.output}: starting from the beginning")
            return None
        if not self.resume:
            raise ConfigError(
                f"{self.output} holds an unfinished run ({STATE_FILE}); pass --resume to continue it "
                "or choose another --output"
            )
        state = read_weights_only(path)
        if state.get("recipe") != self.recipe.to_dict():
            raise ConfigError(f"{path} was written by a different recipe; resume with the same settings")
        return state

    def save_state(self, stage: int, epoch: int, net: PIH2TNet, optimizer, scheduler, history) -> None:
        """Save the whole training state after ``epoch`` of ``stage`` (atomically) and its metrics line."""
        if self.world.is_main:
            with atomic_file(self._state_path()) as tmp:
                torch.save(
                    {
                        "stage": stage,
                        "next_epoch": epoch + 1,
                        "net": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "history": history,
                        "recipe": self.recipe.to_dict(),
                    },
                    tmp,
                )
            with (self.output / "metrics.jsonl").open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(history[-1]) + "\n")
            self.tracking.epoch(history[-1])
        dist_utils.barrier(self.world)
        self.on_epoch_end(stage, epoch)

    # ----------------------------------------------------------------- validation
    def _choose_on_validation(self, net: PIH2TNet, bundle: DataBundle, history: list[dict]) -> dict[str, Any]:
        """Restore the stage-2 epoch that scored the best balanced accuracy on validation, then choose tau and
        the temperature on validation (posthoc.py); what was chosen, for metrics.json."""
        assert bundle.val is not None
        net.load_state_dict(read_weights_only(self.output / BEST_VAL_FILE)["net"])
        scored = [entry for entry in history if entry.get("stage") == 2 and "val" in entry]
        best = max(scored, key=lambda entry: (entry["val"]["balanced"], -entry["epoch"]))
        self.log(
            f"stage 2: epoch {best['epoch']} of {len(scored)} kept, the best on validation (balanced accuracy "
            f"{100 * best['val']['balanced']:.1f})"
        )
        choice = choose_posthoc(*self.logits(net, bundle.val), bundle.train.class_counts)
        self.log(choice.describe())
        return {
            "split": bundle.validation.describe() if bundle.validation else None,
            "best_stage2_epoch": best["epoch"],
            "best_stage2_scores": best["val"],
            "posthoc": choice.to_dict(),
        }

    def _posthoc_on_test(
        self, posthoc: dict[str, Any], logits: np.ndarray, targets: np.ndarray, bundle: DataBundle
    ) -> dict[str, Any]:
        """The test set with the chosen tau and temperature applied (as the exported model answers), its
        reliability diagram before and after, written as reliability.png."""
        choice = PosthocChoice(**posthoc)
        adjusted = choice.apply(logits, bundle.train.class_counts)
        after = self.summarize(adjusted, targets, bundle)
        if self.world.is_main:
            reliability_diagram(softmax(logits), softmax(adjusted), targets, self.output / "reliability.png")
        self.log(_line("with tau and temperature", after))
        keys = ("top1", "top5", "many", "medium", "few", "ece")
        return {
            "before_posthoc": {"balanced": balanced_accuracy(logits, targets)},
            "after_posthoc": {**{k: after[k] for k in keys}, "balanced": balanced_accuracy(adjusted, targets)},
        }

    # ----------------------------------------------------------------- run
    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` wrapped for distributed training when there are several processes."""
        if not self.world.distributed:
            return module
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids)

    def logits(self, net: PIH2TNet, images: LabelledImages) -> tuple[np.ndarray, np.ndarray]:
        """``net``'s logits on ``images`` and their labels."""
        return predict(net, DataLoader(images, batch_size=256, num_workers=self.workers), self.device)

    def summarize(self, logits: np.ndarray, targets: np.ndarray, bundle: DataBundle) -> dict[str, Any]:
        """Top-1/top-5, Many/Medium/Few (by the training counts), ECE and per class, of ``logits``."""
        data = self.recipe.data
        return summarize(logits, targets, bundle.train.class_counts, data.thresholds, data.index_groups)

    def evaluate(self, net: PIH2TNet, bundle: DataBundle) -> dict[str, Any]:
        """The test-set summary of ``net`` (Many/Medium/Few, ECE, per class)."""
        return self.summarize(*self.logits(net, bundle.test), bundle)

    def score_validation(self, net: PIH2TNet, bundle: DataBundle) -> dict[str, float | None]:
        """``net``'s validation scores (balanced accuracy decides); its weights are kept in BEST_VAL_FILE
        when they beat every earlier epoch's (the first of equals stays)."""
        assert bundle.val is not None
        logits, targets = self.logits(net, bundle.val)
        summary = self.summarize(logits, targets, bundle)
        scores = {key: summary[key] for key in ("top1", "many", "medium", "few", "ece")}
        scores["balanced"] = balanced_accuracy(logits, targets)
        best_file = self.output / BEST_VAL_FILE
        if self.world.is_main:
            if self.best_val_score is None:  # first epoch of this process: a resumed run's best is in the file
                self.best_val_score = read_weights_only(best_file)["balanced"] if best_file.exists() else -1.0
            if scores["balanced"] > self.best_val_score:
                self.best_val_score = scores["balanced"]
                with atomic_file(best_file) as tmp:
                    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
                    torch.save({"balanced": scores["balanced"], "net": state}, tmp)
        return scores

    def _write_checkpoint(
        self, path: Path, net: PIH2TNet, bundle: DataBundle, stage: int, summary, chosen: dict | None = None
    ) -> None:
        if not self.world.is_main:
            return
        meta = build_meta(
            net.config,
            class_names=bundle.train.class_names,
            class_counts=bundle.train.class_counts,
            preprocessing=bundle.preprocessing,
            stage=stage,
            recipe=self.recipe.name,
            extra={
                "data": bundle.config.to_dict(),
                "training": self.recipe.to_dict(),
                "seed": self.recipe.seed,
                "test_metrics": {k: summary[k] for k in ("top1", "top5", "many", "medium", "few", "ece")},
                # what was chosen on validation, and the test set scored with it (the model card reports it)
                **({"posthoc": chosen["posthoc"], "posthoc_test": chosen["test"]["after_posthoc"]} if chosen else {}),
            },
        )
        save_checkpoint(path, net, meta)

    def _finished_run(self) -> TrainResult | None:
        """With --resume, a run that already finished in the output folder (no train state left, model.pt and
        metrics.json written): returned as it is, so nothing is retrained."""
        model_path, metrics_path = self.output / "model.pt", self.output / "metrics.json"
        if not self.resume or self._state_path().exists() or not (model_path.is_file() and metrics_path.is_file()):
            return None
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        if metrics.get("recipe") != self.recipe.name:
            raise ConfigError(
                f"{self.output} holds a finished run of recipe {metrics.get('recipe')!r}, not {self.recipe.name!r}; "
                "choose another --output"
            )
        self.log(f"{self.output} holds a finished run ({model_path.name}, {metrics_path.name}): nothing to resume")
        return TrainResult(self.output, model_path, self.output / "stage1.pt", metrics, already_complete=True)

    def run(self) -> TrainResult:
        """Train both stages (or continue them) and write stage1.pt, model.pt and metrics.json; with --resume
        on a finished run, return it untouched."""
        finished = self._finished_run()
        if finished is not None:
            return finished
        self.output.mkdir(parents=True, exist_ok=True)
        try:
            backbone = pretrained_defaults(self.recipe.model.arch)
            bundle = build_data(self.recipe.data, backbone)
        except OSError as exc:
            raise DataError(f"cannot read the data: {exc}") from None
        self.log(
            f"data {self.recipe.data.source}: {len(bundle.train)} training images in {bundle.train.num_classes} "
            f"classes (largest {max(bundle.train.class_counts)}, smallest {min(bundle.train.class_counts)}: "
            f"imbalance factor {bundle.imbalance_factor:.1f}), {len(bundle.test)} test images; "
            f"device {self.device}, {self.world.size} process(es)"
        )
        if bundle.survey is not None:
            prep = bundle.preprocessing
            self.log(
                f"{bundle.survey.describe()}: the network sees {prep.input_size}x{prep.input_size} {prep.mode} "
                f"(shorter side resized to {prep.resize})"
            )
        if bundle.validation is not None:
            self.log(bundle.validation.describe())
        if backbone is not None:
            described = backbone.describe(bundle.preprocessing.mode, sizes=bundle.survey is not None)
            self.log(f"preprocessing of {self.recipe.model.arch}'s pretrained configuration: {described}")
        runtime = self.recipe.runtime
        self.tracking = RunTracking(
            self.output,
            runtime.tracking,
            enabled=self.world.is_main,
            recipe=self.recipe.to_dict(),
            mlflow_uri=runtime.mlflow_uri,
            mlflow_experiment=runtime.mlflow_experiment,
            resume=self.resume,
            tags={"pih2t.run_folder": str(self.output.resolve()), **{f"version.{k}": v for k, v in versions().items()}},
            log=self.log,
        )
        try:
            result = self._train(bundle)
        except BaseException as exc:
            self.tracking.finish("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            raise
        self.tracking.finish()
        dist_utils.barrier(self.world)
        dist_utils.shutdown(self.world)
        return result

    def _train(self, bundle: DataBundle) -> TrainResult:
        """Both stages (from the saved state when resuming), the choices on validation, the test scores;
        model.pt and metrics.json written."""
        state = self._load_state()
        if state is None and self.world.is_main:
            (self.output / "metrics.jsonl").unlink(missing_ok=True)
        net = self._network(bundle)
        stage1_path, model_path = self.output / "stage1.pt", self.output / "model.pt"
        if state is not None:
            net.load_state_dict(state["net"])
        started = time.perf_counter()
        if state is None or state["stage"] == 1:
            Stage1(self, net, bundle).run(state)
            stage1_summary = self.evaluate(net, bundle)
            self._write_checkpoint(stage1_path, net, bundle, 1, stage1_summary)
            self.log(_line("stage 1", stage1_summary))
            state = None
        stage1_seconds = time.perf_counter() - started
        stage2 = Stage2(self, net, bundle).run(state)
        chosen: dict[str, Any] = {}
        if bundle.val is not None:
            chosen = self._choose_on_validation(net, bundle, stage2.history)
        test_logits, test_targets = self.logits(net, bundle.test)  # the test set, scored once
        summary = self.summarize(test_logits, test_targets, bundle)
        self.log(_line("stage 2", summary))
        if chosen:
            chosen["test"] = self._posthoc_on_test(chosen["posthoc"], test_logits, test_targets, bundle)
        self._write_checkpoint(model_path, net, bundle, 2, summary, chosen)
        digests = dist_utils.gather_strings(dist_utils.state_digest(net), self.world)
        metrics = {
            **summary,
            "recipe": self.recipe.name,
            "method": self.recipe.method,
            "final_epoch": self.recipe.stage2.epochs,
            **best_epoch_on_test(stage2.history),
            **({"validation": chosen} if chosen else {}),
            "class_counts": bundle.train.class_counts,
            "class_names": bundle.train.class_names,
            "seconds": {"stage1": round(stage1_seconds, 2), "total": round(time.perf_counter() - started, 2)},
            "world_size": self.world.size,
            "rank_weight_digests": digests,
        }
        self.tracking.final(summary)
        if chosen:
            self.tracking.final(chosen["test"]["after_posthoc"], "test_after_posthoc")
        if self.world.is_main:
            write_text_atomic(self.output / "metrics.json", json.dumps(metrics, indent=2) + "\n")
            self._state_path().unlink(missing_ok=True)
            (self.output / BEST_VAL_FILE).unlink(missing_ok=True)
        return TrainResult(self.output, model_path, stage1_path, metrics)


def loader_workers(requested: int, log: Callable[[str], None]) -> int:
    """``runtime.workers``, at most the CPUs this process may use (PyTorch warns every epoch otherwise); says
    so once when it lowers the number."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if requested > available:
        log(f"runtime.workers={requested} but {available} CPUs are available here: using {available} loader workers")
        return available
    return requested


def best_epoch_on_test(history: list[dict[str, Any]]) -> dict[str, Any]:
    """``best_stage2_epoch_on_test``: the stage-2 epoch with the highest test top-1 (the first of equals) and
    its scores, labelled as chosen on the test set (how the published numbers were picked: the authors'
    ``best_acc1``); empty when epochs were not scored."""
    scored = [entry for entry in history if entry.get("stage") == 2 and "test" in entry]
    if not scored:
        return {}
    best = max(scored, key=lambda entry: (entry["test"]["top1"], -entry["epoch"]))
    return {
        "best_stage2_epoch_on_test": {
            "epoch": best["epoch"],
            **best["test"],
            "note": "chosen on the test set as the authors' code reports best_acc1: optimistic, not the saved model",
        }
    }


def _line(label: str, summary: dict[str, Any]) -> str:
    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}"

    return (
        f"{label}: top-1 {pct(summary['top1'])}%  many {pct(summary['many'])}  medium {pct(summary['medium'])}  "
        f"few {pct(summary['few'])}  (ECE {summary['ece']:.3f})"
    )
