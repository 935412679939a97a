"""Fine-tuning settings of stage 1: AdamW, a lower learning rate for the pretrained backbone than for the new head,
frozen modules whose weights and BatchNorm statistics stay as loaded; and the imagefolder-finetune recipe."""

from __future__ import annotations

import pytest
import torch

from pih2t_deploy.checkpoint import load_checkpoint
from pih2t_deploy.data.sources import build_data
from pih2t_deploy.errors import ConfigError
from pih2t_deploy.training.engine import Trainer
from pih2t_deploy.training.recipe import load_recipe
from pih2t_deploy.training.stages import Stage1

FINETUNE = [
    "stage1.optimizer=adamw",
    "stage1.lr=0.002",
    "stage1.backbone_lr_scale=0.1",
    "stage1.frozen=[backbone.features.0]",
    "runtime.progress=false",
]


def test_the_backbone_learns_at_a_tenth_of_the_heads_rate_with_adamw_and_frozen_parts_are_left_out(tmp_path):
    recipe = load_recipe("digits-lt", FINETUNE)
    trainer = Trainer(recipe, tmp_path, log=lambda _m: None)
    bundle = build_data(recipe.data)
    net = trainer._network(bundle)
    stage = Stage1(trainer, net, bundle)
    assert isinstance(stage.optimizer, torch.optim.AdamW)
    backbone, rest = stage.optimizer.param_groups
    assert (backbone["initial_lr"], rest["initial_lr"]) == (
        pytest.approx(0.0002),
        pytest.approx(0.002),
    )  # before warm-up
    frozen = {id(p) for p in net.backbone.features[0].parameters()}
    expected = [p for p in net.backbone.parameters() if id(p) not in frozen]
    assert [id(p) for p in backbone["params"]] == [id(p) for p in expected]
    assert {id(p) for p in rest["params"]} == {id(p) for p in [*net.pif.parameters(), *net.head.fc.parameters()]}


def test_a_frozen_module_keeps_its_weights_and_statistics_while_the_rest_trains(tmp_path):
    recipe = load_recipe("digits-lt", [*FINETUNE, "stage1.epochs=1", "stage2.epochs=1"])
    trainer = Trainer(recipe, tmp_path / "run", log=lambda _m: None)
    initial = trainer._network(build_data(recipe.data)).state_dict()  # the weights run() starts from (seeded)
    trainer.run()
    after = load_checkpoint(tmp_path / "run" / "stage1.pt").net.state_dict()
    frozen = [k for k in initial if k.startswith("backbone.features.0.")]
    assert {k.rsplit(".", 1)[-1] for k in frozen} >= {"weight", "running_mean", "running_var"}
    assert all(torch.equal(initial[k], after[k]) for k in frozen)
    assert not torch.equal(initial["backbone.features.1.conv.weight"], after["backbone.features.1.conv.weight"])
    assert not torch.equal(initial["backbone.features.1.bn.running_mean"], after["backbone.features.1.bn.running_mean"])


def test_an_unknown_frozen_module_is_refused_with_the_backbones_parts(tmp_path):
    recipe = load_recipe("digits-lt", ["stage1.frozen=[backbone.layer1]", "runtime.progress=false"])
    trainer = Trainer(recipe, tmp_path, log=lambda _m: None)
    bundle = build_data(recipe.data)
    with pytest.raises(ConfigError, match=r"no module 'backbone.layer1'; the backbone's parts are backbone.features"):
        Stage1(trainer, trainer._network(bundle), bundle)


def test_the_finetune_recipe_is_adamw_with_a_slower_pretrained_backbone_and_the_published_stage_2():
    recipe = load_recipe("imagefolder-finetune", ["data.root=/data/mine", "model.weights=resnet50.safetensors"])
    assert recipe.model.arch == "timm/resnet50" and recipe.data.val_fraction == 0.1
    one, two = recipe.stage1, recipe.stage2
    assert (one.optimizer, one.backbone_lr_scale, one.warmup_epochs, one.schedule) == ("adamw", 0.1, 1, "cosine")
    assert one.frozen == ("backbone.body.conv1", "backbone.body.bn1")
    assert (two.optimizer, two.sampler, two.donor_sampler) == ("sgd", "class", "instance")
    assert recipe.method == "pih2t"
