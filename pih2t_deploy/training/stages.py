"""The two training stages as objects: each holds its settings, loss, loaders, optimizer and schedule, runs its
epochs and returns a typed summary.

``Stage1`` trains backbone + PIF + head end to end (instance-balanced sampling, mixup, the base loss).
``Stage2`` freezes backbone and PIF (run under no_grad; with shift-BN their BatchNorm layers stay in train
mode and re-estimate statistics) and re-trains the head on H2TF-fused features: class-balanced receivers,
instance-balanced donors, ratio p. The epoch loop, the per-epoch state save and the progress display are
shared (``Stage.run``); each stage says what one step computes.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from pih2t_deploy.data.sources import DataBundle
from pih2t_deploy.errors import ConfigError
from pih2t_deploy.fusion import h2t_fuse
from pih2t_deploy.models import PIH2TNet
from pih2t_deploy.training import distributed as dist_utils
from pih2t_deploy.training.losses import build_loss
from pih2t_deploy.training.progress import epoch_progress
from pih2t_deploy.training.recipe import StageSettings
from pih2t_deploy.training.schedule import lr_factor

if TYPE_CHECKING:
    from pih2t_deploy.training.engine import Trainer


def epoch_seed(seed: int, stage: int, epoch: int) -> int:
    """The seed of one epoch's randomness (sampling, augmentation, mixup, fusion channels)."""
    return seed * 1_000_003 + stage * 10_007 + epoch


@dataclass
class EpochTotals:
    """Running sums of one epoch: loss x images, correct predictions (weighted by mixup), images."""

    loss_sum: float = 0.0
    correct: float = 0.0
    images: int = 0

    def add(self, loss: float, correct: float, images: int) -> None:
        """Count one step's mean loss, its (mixup-weighted) correct predictions and its images."""
        self.loss_sum += loss * images
        self.correct += correct
        self.images += images

    @property
    def loss(self) -> float:
        """Mean loss per image so far."""
        return self.loss_sum / max(self.images, 1)

    @property
    def accuracy(self) -> float:
        """Correct predictions per image so far."""
        return self.correct / max(self.images, 1)


@dataclass(frozen=True)
class StageSummary:
    """What a stage did: one record per epoch (loss, training accuracy, lr, seconds, test scores when taken)
    and, for stage 2 scored every epoch, the full test summary of its last epoch (that of the saved model)."""

    stage: int
    history: list[dict[str, Any]]
    last_test_summary: dict[str, Any] | None = None


@dataclass(frozen=True)
class Step:
    """The result of one training step: the loss to minimise and how many of its images it got right."""

    loss: torch.Tensor
    correct: float


@dataclass
class Stage:
    """One stage of a run (see the module docstring); ``run`` trains its epochs."""

    trainer: Trainer
    net: PIH2TNet
    bundle: DataBundle
    number: int = 0
    accuracy_label: str = "acc"
    settings: StageSettings = field(init=False)

    def __post_init__(self) -> None:
        recipe = self.trainer.recipe
        self.settings = recipe.stage1 if self.number == 1 else recipe.stage2
        model = recipe.model
        self.loss_fn = build_loss(
            recipe.loss.name,
            self.bundle.train.class_counts,
            head=model.head,
            cosine_scale=model.cosine_scale,
            **recipe.loss.for_stage(self.number),
        ).to(self.trainer.device)
        batch = self.settings.batch_size
        self.receivers = self.trainer.loader(self.bundle.train, self.settings.sampler, batch, recipe.seed)
        self.donors = self.trainer.loader(self.bundle.train, self.settings.donor_sampler, batch, recipe.seed + 1)
        steps_per_epoch = max(1, -(-len(self.receivers) // self.settings.accumulate))
        self.optimizer = build_optimizer(self.settings, self.parameter_groups())
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(self.settings, steps_per_epoch))

    # what each stage defines
    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters this stage optimises (the others are frozen)."""
        raise NotImplementedError

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The optimiser's parameter groups: the trainable parameters at the stage's lr; in stage 1 the
        backbone's at ``lr * backbone_lr_scale`` (fine-tuning a pretrained backbone)."""
        trainable = self.trainable_parameters()
        scale = self.settings.backbone_lr_scale
        if self.number != 1 or scale == 1.0:
            return [{"params": trainable, "lr": self.settings.lr}]
        backbone = {id(p) for p in self.net.backbone.parameters()}
        groups = [
            {"params": [p for p in trainable if id(p) in backbone], "lr": self.settings.lr * scale},
            {"params": [p for p in trainable if id(p) not in backbone], "lr": self.settings.lr},
        ]
        return [group for group in groups if group["params"]]

    def set_train_mode(self) -> None:
        """Put the network in this stage's training mode."""
        self.net.train()

    def step(self, images: torch.Tensor, labels: torch.Tensor, donor: Any, epoch: int) -> Step:
        """One step's loss and correct count."""
        raise NotImplementedError

    def end_epoch(self) -> dict[str, Any]:
        """Work after an epoch's steps; extra fields for its history record."""
        return {}

    # the shared epoch loop
    def run(self, state: dict[str, Any] | None) -> StageSummary:
        """Train this stage's epochs (continuing from ``state`` when it is this stage's), saving the whole
        training state after each epoch."""
        settings, trainer = self.settings, self.trainer
        start, history = 0, []
        if state is not None and state["stage"] == self.number:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            start, history = state["next_epoch"], list(state["history"])
            trainer.log(f"resuming stage {self.number} at epoch {start + 1}/{settings.epochs}")
        self.model = trainer.wrap(self.net if self.number == 1 else self.net.head)
        show = trainer.world.is_main and trainer.recipe.runtime.progress
        with epoch_progress(show, self.accuracy_label) as progress:
            for epoch in range(start, settings.epochs):
                started = time.perf_counter()
                seed = epoch_seed(trainer.recipe.seed, self.number, epoch)
                torch.manual_seed(seed)
                self.generator = torch.Generator().manual_seed(seed)
                self.rng = np.random.default_rng(seed)
                for loader in (self.receivers, self.donors):
                    loader.sampler.set_epoch(seed)  # type: ignore[attr-defined]  # our samplers (data.samplers) have it
                task = progress.add_task(
                    f"stage {self.number} epoch {epoch + 1}/{settings.epochs}",
                    total=len(self.receivers),
                    loss=0.0,
                    acc=0.0,
                )
                totals = self._epoch(epoch, progress, task)
                history.append(
                    {
                        "stage": self.number,
                        "epoch": epoch + 1,
                        "loss": float(totals.loss),
                        "train_acc": float(totals.accuracy),
                        "lr": self.optimizer.param_groups[0]["lr"],
                        "seconds": round(time.perf_counter() - started, 3),
                        **self.end_epoch(),
                    }
                )
                trainer.save_state(self.number, epoch, self.net, self.optimizer, self.scheduler, history)
        return self.summary(history)

    def _epoch(self, epoch: int, progress, task) -> EpochTotals:
        settings, trainer = self.settings, self.trainer
        self.set_train_mode()
        donors = self.donors if self.uses_donors else itertools.repeat(None)
        totals = EpochTotals()
        for index, ((images, labels), donor) in enumerate(zip(self.receivers, donors, strict=False)):
            images, labels = trainer.to_device(images, labels)
            with trainer.autocast():
                result = self.step(images, labels, donor, epoch)
            (result.loss / settings.accumulate).backward()
            if (index + 1) % settings.accumulate == 0 or index + 1 == len(self.receivers):
                if settings.clip_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(self.net.parameters(), settings.clip_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
            if not torch.isfinite(result.loss):
                raise FloatingPointError(
                    f"stage {self.number} epoch {epoch + 1}: the loss is {result.loss.item()}; lower the lr"
                )
            totals.add(result.loss.item(), result.correct, len(labels))
            progress.update(task, advance=1, loss=totals.loss, acc=totals.accuracy)
        return totals

    @property
    def uses_donors(self) -> bool:
        """Whether a step reads a donor batch beside its receivers."""
        return False

    def summary(self, history: list[dict[str, Any]]) -> StageSummary:
        """This stage's summary of ``history``."""
        return StageSummary(self.number, history)


def frozen_modules(net: nn.Module, names: tuple[str, ...]) -> list[nn.Module]:
    """The modules of ``net`` named in ``names`` (``stage1.frozen``); ConfigError naming the first unknown one
    with the names of the backbone's top-level parts."""
    modules = dict(net.named_modules())
    unknown = [name for name in names if name not in modules]
    if unknown:
        prefix = "backbone.body." if "backbone.body" in modules else "backbone."
        parts = [n for n in modules if n.startswith(prefix) and "." not in n.removeprefix(prefix)]
        raise ConfigError(f"stage1.frozen: no module {unknown[0]!r}; the backbone's parts are {', '.join(parts)}")
    return [modules[name] for name in names]


def build_optimizer(settings: StageSettings, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov) or AdamW over ``groups``, with the stage's weight decay."""
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=settings.lr, weight_decay=settings.weight_decay)
    return torch.optim.SGD(
        groups,
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
        nesterov=settings.nesterov and settings.momentum > 0,
    )


@dataclass
class Stage1(Stage):
    """Representation learning: everything but LWS trains; mixup when the recipe asks for it."""

    number: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.settings.mixup_alpha > 0:
            self.accuracy_label = "mixup acc"

    def trainable_parameters(self) -> list[nn.Parameter]:
        frozen = {id(p) for module in frozen_modules(self.net, self.settings.frozen) for p in module.parameters()}
        for name, param in self.net.named_parameters():
            param.requires_grad_(not name.endswith("lws") and id(param) not in frozen)
        return [p for p in self.net.parameters() if p.requires_grad]

    def set_train_mode(self) -> None:
        """Training mode, but frozen modules in eval mode (their BatchNorm statistics stay as loaded)."""
        self.net.train()
        for module in frozen_modules(self.net, self.settings.frozen):
            module.eval()

    def step(self, images: torch.Tensor, labels: torch.Tensor, donor: Any, epoch: int) -> Step:
        """The base loss; under mixup, the loss and the accuracy are weighted between both images' labels
        (the share of each prediction that matches the label of the image it mostly shows counts lam)."""
        if self.settings.mixup_alpha <= 0:
            logits = self.model(images)
            return Step(self.loss_fn(logits, labels, epoch), float((logits.argmax(1) == labels).sum()))
        lam = float(self.rng.beta(self.settings.mixup_alpha, self.settings.mixup_alpha))
        perm = torch.randperm(len(labels), generator=self.generator).to(self.trainer.device)
        logits = self.model(lam * images + (1 - lam) * images[perm])
        loss = lam * self.loss_fn(logits, labels, epoch) + (1 - lam) * self.loss_fn(logits, labels[perm], epoch)
        predicted = logits.argmax(1)
        correct = lam * float((predicted == labels).sum()) + (1 - lam) * float((predicted == labels[perm]).sum())
        return Step(loss, correct)


@dataclass
class Stage2(Stage):
    """Classifier re-training on H2TF-fused features of the frozen backbone (see the module docstring)."""

    number: int = 2
    last_test_summary: dict[str, Any] | None = None

    def trainable_parameters(self) -> list[nn.Parameter]:
        for param in self.net.parameters():
            param.requires_grad_(False)
        trainable = list(self.net.head.parameters())
        for param in trainable:
            param.requires_grad_(True)
        return trainable

    @property
    def uses_donors(self) -> bool:
        return self.net.config.uses_h2tf

    def set_train_mode(self) -> None:
        self.net.train()
        if not self.settings.shift_bn:
            self.net.backbone.eval()
            if self.net.pif is not None:
                self.net.pif.eval()

    def step(self, images: torch.Tensor, labels: torch.Tensor, donor: Any, epoch: int) -> Step:
        """The head's loss on the frozen backbone's pooled features, fused from head to tail with H2TF."""
        net = self.net
        with torch.no_grad():
            if self.uses_donors:
                donor_images, _ = self.trainer.to_device(*donor)
                receiver_maps, donor_maps = net.features(images), net.features(donor_images)
                maps, _ = h2t_fuse(
                    receiver_maps, donor_maps, self.settings.fusion_ratio, generator=self.generator, inplace=True
                )
            else:
                maps = net.features(images)
            pooled = net.backbone.pool(maps)
        logits = self.model(pooled.float() if self.trainer.amp_dtype is None else pooled)
        return Step(self.loss_fn(logits, labels, epoch), float((logits.argmax(1) == labels).sum()))

    def end_epoch(self) -> dict[str, Any]:
        """Shift-BN statistics averaged over the processes; the validation scores of this epoch (the best epoch
        on them is kept: ``Trainer.keep_if_best``); the test scores when the recipe asks for them
        (``runtime.test_each_stage2_epoch``, for the authors' best-epoch report)."""
        if self.settings.shift_bn:
            dist_utils.average_buffers(self.net.backbone, self.trainer.world)
        record: dict[str, Any] = {}
        if self.bundle.val is not None:
            record["val"] = self.trainer.score_validation(self.net, self.bundle)
        if self.trainer.recipe.runtime.test_each_stage2_epoch:
            self.last_test_summary = self.trainer.evaluate(self.net, self.bundle)
            record["test"] = {key: self.last_test_summary[key] for key in ("top1", "many", "medium", "few")}
        return record

    def summary(self, history: list[dict[str, Any]]) -> StageSummary:
        return StageSummary(self.number, history, self.last_test_summary)
