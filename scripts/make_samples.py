"""Write the bundled sample images: one real Digits test-set image per class, as 8x8 grayscale PNGs.

Run once; the PNGs are committed under pih2t_deploy/samples/. They come from the balanced test split that
Digits-LT uses (seed 0), so no sample was seen in training.
"""

from __future__ import annotations

from pathlib import Path

from pih2t_deploy.data.sources import DataConfig, build_data

OUT = Path(__file__).resolve().parents[1] / "pih2t_deploy" / "samples"


def main() -> None:
    test = build_data(DataConfig(source="digits-lt", seed=0)).test
    OUT.mkdir(parents=True, exist_ok=True)
    written = set()
    for index, label in enumerate(test.targets):
        if label not in written:
            test.image(index).save(OUT / f"digit_{label}.png")
            written.add(label)
    print(f"wrote {len(written)} images to {OUT}")


if __name__ == "__main__":
    main()
