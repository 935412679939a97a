"""A folder of one's own images is inspected before training: what the recipe leaves open (colour mode, input
size, resize) is chosen from the images, a resize that would blow them up is refused with the overrides that
fit, and the imbalance factor shown anywhere is the one measured from the folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from pih2t_deploy.data.sources import AUGMENTATIONS, DataConfig, build_data
from pih2t_deploy.errors import ConfigError, DataError
from pih2t_deploy.export.exporter import export_checkpoint
from pih2t_deploy.export.options import ExportOptions
from pih2t_deploy.runtime import load_classifier
from pih2t_deploy.serving.demo import LongTailExplainer
from pih2t_deploy.training.engine import Trainer
from pih2t_deploy.training.recipe import RECIPES, load_recipe

COUNTS = {"ant": 20, "bee": 5, "cow": 2}  # imbalance factor 10


def _folder(root: Path, size: tuple[int, int], mode: str, counts: dict[str, int] = COUNTS) -> Path:
    for split, per_class in (("train", counts), ("test", dict.fromkeys(counts, 2))):
        for name, count in per_class.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.new(mode, size, 30 * i % 255 if mode == "L" else (30 * i % 255, 90, 160)).save(
                    root / split / name / f"{i}.png"
                )
    return root


@pytest.mark.parametrize(
    ("size", "mode", "expected"),
    [
        ((28, 28), "L", (28, 28, "L")),  # small grayscale: its own size and mode, no resizing
        ((40, 30), "RGB", (30, 30, "RGB")),  # small colour: the shorter side, centre-cropped
        ((400, 300), "RGB", (224, 256, "RGB")),  # photos: ImageNet's geometry
        ((300, 240), "L", (224, 240, "L")),  # resize never beyond the images' own shorter side
    ],
)
def test_what_the_recipe_leaves_open_is_chosen_from_the_images(tmp_path, size, mode, expected):
    bundle = build_data(DataConfig(source="imagefolder", root=str(_folder(tmp_path, size, mode))))
    prep = bundle.preprocessing
    assert (prep.input_size, prep.resize, prep.mode) == expected
    assert (bundle.config.input_size, bundle.config.resize, bundle.config.mode) == expected, "recorded as decided"
    assert tuple(bundle.train[0][0].shape) == (3 if expected[2] == "RGB" else 1, expected[0], expected[0])
    assert bundle.imbalance_factor == 10.0 and bundle.config.imbalance_factor is None
    assert bundle.survey is not None and bundle.survey.images_read == 27


@pytest.mark.parametrize(
    ("arch", "given", "expected"),
    [
        ("timm/resnet50", {}, (224, 236)),  # timm: input 224, crop_pct 0.95 -> 224 / 0.95 = 235.8
        ("timm/resnet10t", {}, (176, 201)),  # input 176, crop_pct 0.875 -> 201.1
        ("timm/resnet50", {"input_size": 200}, (200, 211)),  # a given size keeps the backbone's crop
        ("timm/resnet50", {"input_size": 200, "resize": 220}, (200, 220)),  # given sizes win
    ],
)
def test_a_pretrained_backbones_input_size_and_crop_fit_photos_the_recipe_leaves_open(tmp_path, arch, given, expected):
    from pih2t_deploy.models.timm_archs import pretrained_defaults

    backbone = pretrained_defaults(arch)
    root = _folder(tmp_path, (400, 300), "RGB")
    prep = build_data(DataConfig(source="imagefolder", root=str(root), **given), backbone).preprocessing
    assert (prep.input_size, prep.resize, prep.interpolation) == (*expected, "bicubic")
    assert prep.mean == backbone.mean == (0.485, 0.456, 0.406)


def test_a_data_set_of_fixed_sizes_keeps_them_under_a_pretrained_backbone():
    from pih2t_deploy.models.timm_archs import pretrained_defaults

    prep = build_data(DataConfig(source="digits-lt"), pretrained_defaults("timm/resnet50")).preprocessing
    assert (prep.input_size, prep.resize, prep.interpolation) == (8, 8, "bicubic"), "digits are 8x8"


def test_a_resize_far_beyond_the_images_is_refused_with_the_overrides_that_fit(tmp_path):
    root = str(_folder(tmp_path, (28, 28), "L"))
    with pytest.raises(ConfigError) as refused:
        build_data(DataConfig(source="imagefolder", root=root, input_size=224, resize=256))
    assert str(refused.value) == (
        "data.input_size=224 data.resize=256 upscale this data's images (median 28x28) 9.1x; pass "
        "data.input_size=28 data.resize=28 (their own size, with a model.arch built for it), or "
        "data.max_upscale=9.2 to train on images enlarged that much (the limit is 2)"
    )
    allowed = build_data(DataConfig(source="imagefolder", root=root, input_size=224, resize=256, max_upscale=9.2))
    assert (allowed.preprocessing.resize, allowed.preprocessing.mode) == (256, "L")
    assert build_data(DataConfig(source="imagefolder", root=root, input_size=48, resize=56)).preprocessing.resize == 56


def test_an_unreadable_image_is_named_before_training(tmp_path):
    root = _folder(tmp_path, (28, 28), "L")
    (root / "train" / "bee" / "notes.png").write_text("not an image")
    with pytest.raises(DataError, match=r"bee/notes\.png is not a readable image .*; remove or replace it$"):
        build_data(DataConfig(source="imagefolder", root=str(root)))


def test_a_folder_takes_no_subsampling_factor_and_old_records_of_one_are_dropped():
    with pytest.raises(ConfigError, match=r"^data\.imbalance_factor=100 subsamples the built-in data sets"):
        DataConfig(source="imagefolder", root="x", imbalance_factor=100)
    recorded = {"source": "imagefolder", "root": "x", "imbalance_factor": 50.0, "mode": "RGB"}
    assert DataConfig.from_dict(recorded).imbalance_factor is None
    assert DataConfig(source="digits-lt").imbalance_factor == 50.0
    assert DataConfig.from_dict({"source": "cifar10-lt", "imbalance_factor": 100}).imbalance_factor == 100


def test_the_model_records_and_shows_the_measured_imbalance_and_the_sizes_chosen(tmp_path):
    """Trained on a folder with counts 20/5/2, the checkpoint's data record holds the sizes the images decided
    and no recipe factor, the log says factor 10.0, and the demo's model card shows the measured 10.0."""
    root = _folder(tmp_path / "data", (12, 12), "L")
    recipe = load_recipe(
        "imagefolder",
        [
            f"data.root={root}",
            "model.arch=digits_net",
            "data.augment=none",
            "stage1.epochs=1",
            "stage1.warmup_epochs=0",
            "stage2.epochs=1",
            "stage1.batch_size=8",
            "stage2.batch_size=8",
            "runtime.workers=0",
            "runtime.progress=false",
        ],
    )
    lines: list[str] = []
    result = Trainer(recipe, tmp_path / "run", log=lines.append).run()
    assert any("(largest 20, smallest 2: imbalance factor 10.0)" in line for line in lines), lines
    assert any(
        line.startswith("images 12x12 (median of 27 read), grayscale: the network sees 12x12 L") for line in lines
    )
    meta = torch.load(result.model_path, weights_only=True)["meta"]
    assert (meta["data"]["imbalance_factor"], meta["data"]["input_size"], meta["data"]["mode"]) == (None, 12, "L")

    export_checkpoint(result.model_path, ExportOptions(output=tmp_path / "artifact"))
    card = LongTailExplainer(load_classifier(tmp_path / "artifact")).model_card()
    assert "- data **imagefolder** (imbalance factor 10.0, measured: 20 to 2 training images per class)" in card


def test_the_imagefolder_recipe_lists_every_augment_choice():
    text = (RECIPES / "imagefolder.yaml").read_text(encoding="utf-8")
    described = text[text.index("#   data.augment") :].split("\n#   ", 2)[0] if "#   data.augment" in text else ""
    assert all(choice in described for choice in AUGMENTATIONS), described
