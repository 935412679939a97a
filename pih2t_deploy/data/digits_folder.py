"""Write Digits-LT as an image folder (``ROOT/train/<class>/*.png``, ``ROOT/test/<class>/*.png``): the worked
example of training on your own folder, made from scikit-learn's bundled 8x8 digits.

    python -m pih2t_deploy.data.digits_folder data/digits-folder [--imbalance-factor 50] [--seed 0]

Class folders are named ``zero`` .. ``nine`` so that the served labels are words; the training split is the
same long-tailed selection as the ``digits-lt`` recipe (largest class 120 images at IF 50 down to 2), the test
split 50 images per class.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from pih2t_deploy.data.sources import DataConfig, build_data

CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def write_digits_folder(root: Path, imbalance_factor: float = 50.0, seed: int = 0) -> dict[str, Counter[str]]:
    """Write the PNG tree under ``root`` (which must not exist yet); returns images per class per split."""
    root = Path(root)
    if root.exists():
        raise FileExistsError(f"{root} already exists; choose a new folder")
    bundle = build_data(DataConfig(source="digits-lt", imbalance_factor=imbalance_factor, seed=seed))
    written: dict[str, Counter[str]] = {}
    for split, images in (("train", bundle.train), ("test", bundle.test)):
        counts: Counter[str] = Counter()
        for index, label in enumerate(images.targets):
            name = CLASS_NAMES[label]
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            images.image(index).save(folder / f"{name}_{counts[name]:04d}.png")
            counts[name] += 1
        written[split] = counts
    return written


def main() -> None:
    """``python -m pih2t_deploy.data.digits_folder ROOT``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--imbalance-factor", type=float, default=50.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    written = write_digits_folder(args.root, args.imbalance_factor, args.seed)
    for split, counts in written.items():
        per_class = ", ".join(f"{name} {count}" for name, count in counts.items())
        print(f"{args.root / split}: {sum(counts.values())} images ({per_class})")


if __name__ == "__main__":
    main()
