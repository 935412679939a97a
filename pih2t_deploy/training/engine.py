"""The two-stage PI-H2T training engine (docs METHOD.md).

Stage 1 trains backbone + PIF + head end to end (instance-balanced sampling, mixup, the base loss).
Stage 2 loads stage 1, freezes backbone and PIF (run under no_grad; with shift-BN their BatchNorm layers stay
in train mode and re-estimate statistics, receivers and donors in two separate passes as the authors' code
runs them, so each batch updates the statistics once), keeps the head from stage 1 and re-trains it on
H2TF-fused features: class-balanced receivers, instance-balanced donors, ratio p. With
``runtime.test_each_stage2_epoch`` every stage-2 epoch is scored on the test set, so metrics.json can report
the best epoch as the authors' code does, beside the final one (the final one is the model saved). After
every epoch the full training state is saved (atomically), so a crash loses at most the unfinished epoch;
each epoch's randomness derives from (seed, epoch), so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import itertools
import json
import logging
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
from pih2t_deploy.checkpoint import build_meta, read_weights_only, save_checkpoint
from pih2t_deploy.data.samplers import make_sampler
from pih2t_deploy.data.sources import DataBundle, build_data
from pih2t_deploy.errors import ConfigError, DataError
from pih2t_deploy.evaluation import summarize
from pih2t_deploy.fusion import h2t_fuse
from pih2t_deploy.models import NetworkConfig, PIH2TNet, check_input_fits
from pih2t_deploy.training import distributed as dist_utils
from pih2t_deploy.training.losses import build_loss
from pih2t_deploy.training.predict import predict
from pih2t_deploy.training.progress import epoch_progress
from pih2t_deploy.training.recipe import Recipe, StageSettings
from pih2t_deploy.training.schedule import lr_factor

logger = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"
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


def epoch_seed(seed: int, stage: int, epoch: int) -> int:
    """The seed of one epoch's randomness (sampling, augmentation, mixup, fusion channels)."""
    return seed * 1_000_003 + stage * 10_007 + epoch


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
        self.last_stage2_summary: dict[str, Any] | None = None
        self.amp_dtype = torch.bfloat16 if self.device.type == "cuda" and recipe.runtime.amp else None
        self.memory_format = (
            torch.channels_last
            if self.device.type == "cuda" and recipe.runtime.channels_last
            else torch.preserve_format
        )

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
        if model.backbone_weights:
            state = read_weights_only(model.backbone_weights)
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            missing = net.backbone.load_state_dict(state, strict=False)
            if missing.unexpected_keys or missing.missing_keys:
                raise ConfigError(f"{model.backbone_weights} does not fit {model.arch}: {missing}")
        return net.to(self.device, memory_format=self.memory_format)

    def _loader(self, dataset, kind: str, batch_size: int, seed: int) -> DataLoader:
        sampler = make_sampler(kind, dataset.targets, seed=seed, rank=self.world.rank, world_size=self.world.size)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.recipe.runtime.workers,
            pin_memory=self.device.type == "cuda",
            drop_last=len(sampler) > batch_size,
            persistent_workers=False,
        )

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _to(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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

    def _save_state(self, stage: int, epoch: int, net: PIH2TNet, optimizer, scheduler, history) -> None:
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
        dist_utils.barrier(self.world)
        self.on_epoch_end(stage, epoch)

    # ----------------------------------------------------------------- stages
    def _optimizer(self, params, settings: StageSettings, steps_per_epoch: int):
        optimizer = torch.optim.SGD(
            params,
            lr=settings.lr,
            momentum=settings.momentum,
            weight_decay=settings.weight_decay,
            nesterov=settings.nesterov and settings.momentum > 0,
        )
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(settings, steps_per_epoch))

    def _run_epochs(self, stage: int, net: PIH2TNet, bundle: DataBundle, state: dict[str, Any] | None) -> list:
        settings = self.recipe.stage1 if stage == 1 else self.recipe.stage2
        counts = bundle.train.class_counts
        model = self.recipe.model
        loss_fn = build_loss(
            self.recipe.loss.name,
            counts,
            head=model.head,
            cosine_scale=model.cosine_scale,
            **self.recipe.loss.for_stage(stage),
        ).to(self.device)
        receivers = self._loader(bundle.train, settings.sampler, settings.batch_size, self.recipe.seed)
        donors = self._loader(bundle.train, settings.donor_sampler, settings.batch_size, self.recipe.seed + 1)
        steps_per_epoch = max(1, -(-len(receivers) // settings.accumulate))
        if stage == 1:
            trainable = [p for name, p in net.named_parameters() if not name.endswith("lws")]
            for name, param in net.named_parameters():
                param.requires_grad_(not name.endswith("lws"))
        else:
            for param in net.parameters():
                param.requires_grad_(False)
            trainable = list(net.head.parameters())
            for param in trainable:
                param.requires_grad_(True)
        optimizer, scheduler = self._optimizer(trainable, settings, steps_per_epoch)
        start, history = 0, []
        if state is not None and state["stage"] == stage:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            start, history = state["next_epoch"], list(state["history"])
            self.log(f"resuming stage {stage} at epoch {start + 1}/{settings.epochs}")
        wrapped = self._wrap(net, stage)
        fuses = stage == 2 and net.config.uses_h2tf
        with epoch_progress(self.world.is_main and self.recipe.runtime.progress) as progress:
            for epoch in range(start, settings.epochs):
                started = time.perf_counter()
                seed = epoch_seed(self.recipe.seed, stage, epoch)
                torch.manual_seed(seed)
                generator = torch.Generator().manual_seed(seed)
                rng = np.random.default_rng(seed)
                for loader in (receivers, donors):
                    loader.sampler.set_epoch(seed)
                task = progress.add_task(
                    f"stage {stage} epoch {epoch + 1}/{settings.epochs}", total=len(receivers), loss=0.0, acc=0.0
                )
                self._train_mode(net, stage, settings)
                pairs = zip(receivers, donors if fuses else itertools.repeat(None), strict=False)
                totals = np.zeros(3)
                for step, ((images, labels), donor) in enumerate(pairs):
                    images, labels = self._to(images, labels)
                    with self._autocast():
                        if stage == 1:
                            loss, correct = self._stage1_loss(
                                wrapped, loss_fn, images, labels, settings, generator, rng, epoch
                            )
                        else:
                            loss, correct = self._stage2_loss(
                                net, wrapped, loss_fn, images, labels, donor, settings, generator, epoch, fuses
                            )
                    (loss / settings.accumulate).backward()
                    if (step + 1) % settings.accumulate == 0 or step + 1 == len(receivers):
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                        scheduler.step()
                    if not torch.isfinite(loss):
                        raise FloatingPointError(
                            f"stage {stage} epoch {epoch + 1}: the loss is {loss.item()}; lower the lr"
                        )
                    totals += (loss.item() * len(labels), correct, len(labels))
                    progress.update(task, advance=1, loss=totals[0] / totals[2], acc=totals[1] / totals[2])
                if stage == 2 and settings.shift_bn:
                    dist_utils.average_buffers(net.backbone, self.world)
                history.append(
                    {
                        "stage": stage,
                        "epoch": epoch + 1,
                        "loss": float(totals[0] / max(totals[2], 1)),
                        "train_acc": float(totals[1] / max(totals[2], 1)),
                        "lr": optimizer.param_groups[0]["lr"],
                        "seconds": round(time.perf_counter() - started, 3),
                        **self._epoch_test_scores(stage, net, bundle),
                    }
                )
                self._save_state(stage, epoch, net, optimizer, scheduler, history)
        return history

    def _wrap(self, net: PIH2TNet, stage: int) -> nn.Module:
        module = net if stage == 1 else net.head
        if not self.world.distributed:
            return module
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids)

    @staticmethod
    def _train_mode(net: PIH2TNet, stage: int, settings: StageSettings) -> None:
        net.train()
        if stage == 2 and not settings.shift_bn:
            net.backbone.eval()
            if net.pif is not None:
                net.pif.eval()

    def _stage1_loss(self, model, loss_fn, images, labels, settings, generator, rng, epoch):
        if settings.mixup_alpha > 0:
            lam = float(rng.beta(settings.mixup_alpha, settings.mixup_alpha))
            perm = torch.randperm(len(labels), generator=generator).to(self.device)
            logits = model(lam * images + (1 - lam) * images[perm])
            loss = lam * loss_fn(logits, labels, epoch) + (1 - lam) * loss_fn(logits, labels[perm], epoch)
        else:
            logits = model(images)
            loss = loss_fn(logits, labels, epoch)
        return loss, int((logits.argmax(1) == labels).sum())

    def _epoch_test_scores(self, stage: int, net: PIH2TNet, bundle: DataBundle) -> dict[str, Any]:
        """Test-set scores of a stage-2 epoch (for the authors' best-epoch report), or nothing."""
        if stage != 2 or not self.recipe.runtime.test_each_stage2_epoch:
            return {}
        summary = self._evaluate(net, bundle)
        self.last_stage2_summary = summary  # the final model's evaluation once the last epoch is done
        return {"test": {key: summary[key] for key in ("top1", "many", "medium", "few")}}

    def _stage2_loss(self, net, head, loss_fn, images, labels, donor, settings, generator, epoch, fuses):
        with torch.no_grad():
            if fuses:
                donor_images, _ = self._to(*donor)
                receiver_maps = net.features(images)
                donor_maps = net.features(donor_images)
                maps, _ = h2t_fuse(receiver_maps, donor_maps, settings.fusion_ratio, generator=generator, inplace=True)
            else:
                maps = net.features(images)
            pooled = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(maps, 1), 1)
        logits = head(pooled.float() if self.amp_dtype is None else pooled)
        return loss_fn(logits, labels, epoch), int((logits.argmax(1) == labels).sum())

    # ----------------------------------------------------------------- run
    def _evaluate(self, net: PIH2TNet, bundle: DataBundle) -> dict[str, Any]:
        loader = DataLoader(bundle.test, batch_size=256, num_workers=self.recipe.runtime.workers)
        logits, targets = predict(net, loader, self.device)
        data = self.recipe.data
        return summarize(logits, targets, bundle.train.class_counts, data.thresholds, data.index_groups)

    def _write_checkpoint(self, path: Path, net: PIH2TNet, bundle: DataBundle, stage: int, summary) -> None:
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
                "data": self.recipe.data.to_dict(),
                "training": self.recipe.to_dict(),
                "seed": self.recipe.seed,
                "test_metrics": {k: summary[k] for k in ("top1", "top5", "many", "medium", "few", "ece")},
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
            bundle = build_data(self.recipe.data)
        except OSError as exc:
            raise DataError(f"cannot read the data: {exc}") from None
        self.log(
            f"data {self.recipe.data.source}: {len(bundle.train)} training images in {bundle.train.num_classes} "
            f"classes (largest {max(bundle.train.class_counts)}, smallest {min(bundle.train.class_counts)}), "
            f"{len(bundle.test)} test images; device {self.device}, {self.world.size} process(es)"
        )
        state = self._load_state()
        if state is None and self.world.is_main:
            (self.output / "metrics.jsonl").unlink(missing_ok=True)
        net = self._network(bundle)
        stage1_path, model_path = self.output / "stage1.pt", self.output / "model.pt"
        if state is not None:
            net.load_state_dict(state["net"])
        started = time.perf_counter()
        if state is None or state["stage"] == 1:
            self._run_epochs(1, net, bundle, state)
            stage1_summary = self._evaluate(net, bundle)
            self._write_checkpoint(stage1_path, net, bundle, 1, stage1_summary)
            self.log(_line("stage 1", stage1_summary))
            state = None
        stage1_seconds = time.perf_counter() - started
        self.last_stage2_summary = None
        history = self._run_epochs(2, net, bundle, state)
        summary = self.last_stage2_summary or self._evaluate(net, bundle)
        self._write_checkpoint(model_path, net, bundle, 2, summary)
        self.log(_line("stage 2", summary))
        digests = dist_utils.gather_strings(dist_utils.state_digest(net), self.world)
        metrics = {
            **summary,
            "recipe": self.recipe.name,
            "method": self.recipe.method,
            "final_epoch": self.recipe.stage2.epochs,
            **best_epoch_on_test(history),
            "class_counts": bundle.train.class_counts,
            "class_names": bundle.train.class_names,
            "seconds": {"stage1": round(stage1_seconds, 2), "total": round(time.perf_counter() - started, 2)},
            "world_size": self.world.size,
            "rank_weight_digests": digests,
        }
        if self.world.is_main:
            write_text_atomic(self.output / "metrics.json", json.dumps(metrics, indent=2) + "\n")
            self._state_path().unlink(missing_ok=True)
        dist_utils.barrier(self.world)
        dist_utils.shutdown(self.world)
        return TrainResult(self.output, model_path, stage1_path, metrics)


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
