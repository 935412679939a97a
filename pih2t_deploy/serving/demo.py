"""``pih2t-demo``: a Gradio page that shows what long-tailed recognition does with an exported model.

Upload, paste or capture an image (or click an example) and see the top-k classes with probabilities, each
tagged Many/Medium/Few by its training count; move the logit-adjustment slider tau to re-rank live between
head and tail classes (z - tau * log prior); see the training class distribution, titled with the prediction,
and a model card with the training results and the export's verification.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pih2t_deploy.data.images import IMAGE_SUFFIXES, open_image
from pih2t_deploy.data.longtail import GroupThresholds, log_prior, logit_adjusted, measured_imbalance, softmax, top_k
from pih2t_deploy.errors import DataError
from pih2t_deploy.runtime import Classifier

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
GROUP_NAMES = {"many": "Many", "medium": "Medium", "few": "Few"}
GROUP_COLOURS = {"Many": "#4c78a8", "Medium": "#f58518", "Few": "#e45756"}


@dataclass(frozen=True)
class DemoSettings:
    """Page limits and examples."""

    max_file_mb: float = 5.0
    max_pixels: int = 20_000_000
    concurrency: int = 2
    queue_size: int = 32
    top_k: int = 5
    examples: tuple[Path, ...] = ()


class LongTailExplainer:
    """Turns model outputs into tagged, logit-adjustable predictions (no UI code: testable alone)."""

    def __init__(self, classifier: Classifier, max_pixels: int = 20_000_000) -> None:
        self.classifier, self.max_pixels = classifier, max_pixels
        info = classifier.info
        self.counts = np.asarray(info.class_counts or [1] * info.num_classes, dtype=np.float64)
        thresholds = GroupThresholds.from_meta(info.meta)
        self.groups = thresholds.groups(self.counts.astype(int).tolist())
        self.log_prior = log_prior(self.counts)

    def scores(self, path: str | Path) -> np.ndarray:
        """Log-probabilities of one image file (DataError for an unreadable or oversized file)."""
        image = open_image(str(path), name=Path(path).name, max_pixels=self.max_pixels)
        outputs = self.classifier.predict(self.classifier.prepare([image]))
        return np.log(np.clip(self.classifier.probabilities(outputs)[0], 1e-30, None))

    def ranked(self, log_probs: np.ndarray, tau: float, k: int) -> dict[str, float]:
        """Top-k ``"label (Group)": probability`` after logit adjustment z - tau * log prior."""
        probs = softmax(logit_adjusted(log_probs, self.counts, tau))
        order = top_k(probs, k)
        labels = self.classifier.info.labels
        return {f"{labels[i]} ({GROUP_NAMES[self.groups[i]]})": float(probs[i]) for i in order}

    def distribution(self) -> Any:
        """Training images per class (head first) with their group, as a DataFrame."""
        import pandas as pd

        order = top_k(self.counts, len(self.counts))
        labels = self.classifier.info.labels
        return pd.DataFrame(
            {
                "class": [labels[i] for i in order],
                "training images": [int(self.counts[i]) for i in order],
                "group": [GROUP_NAMES[self.groups[i]] for i in order],
            }
        )

    def distribution_title(self, predicted: int) -> str:
        """The plot's title naming the predicted class, its group and its training count."""
        label = self.classifier.info.labels[predicted]
        group = GROUP_NAMES[self.groups[predicted]]
        return (
            f"training class distribution: predicted {label} ({group}, {int(self.counts[predicted])} training images)"
        )

    def model_card(self) -> str:
        """Markdown: architecture, method, data, Many/Medium/Few accuracy, export verification."""
        info = self.classifier.info
        meta, manifest = info.meta, info.manifest
        lines = [
            f"### {info.name}",
            f"- architecture **{meta.get('arch', '?')}**, method **{meta.get('method', '?')}**, "
            f"{info.num_classes} classes, input {list(self.classifier.input_shape)}",
        ]
        data, counts = meta.get("data"), meta.get("class_counts")
        if data:
            measured = (
                f" (imbalance factor {measured_imbalance(counts):.1f}, measured: {max(counts)} to "
                f"{min(counts)} training images per class)"
                if counts
                else ""
            )
            lines.append(
                f"- data **{data.get('source')}**{measured}, Many > {data.get('many_threshold')}, "
                f"Few < {data.get('few_threshold')} training images"
            )
        results = meta.get("test_metrics")
        if results:
            cells = " / ".join(
                "-" if results.get(k) is None else f"{100 * results[k]:.1f}%" for k in ("top1", "many", "medium", "few")
            )
            lines.append(f"- test accuracy top-1 / Many / Medium / Few: **{cells}**")
        checks = manifest.verification if manifest else []
        if manifest and checks:
            worst = max(block["max_abs_diff"] for block in checks)
            lines.append(
                f"- export `{manifest.model_file}` verified against PyTorch: max |diff| {worst:.1e}, "
                f"{'passed' if all(b['passed'] is not False for b in checks) else 'FAILED'}"
            )
        graph = manifest.graph if manifest else None
        if graph:
            lines.append(
                f"- deployed graph: {graph['exported_nodes']} nodes, "
                + ("same operators as the plain backbone" if graph["identical"] else f"extra {graph['difference']}")
            )
        return "\n".join(lines)


MAX_EXAMPLES = 12


def default_examples(meta: dict[str, Any]) -> list[Path]:
    """Example images from the model's own test data when its metadata says where they are: the bundled
    Digits samples for a Digits-LT model, the first image of each class of ROOT/test (at most MAX_EXAMPLES)
    for an image-folder model whose folder is on this machine; none otherwise (examples of another domain
    would only mislead)."""
    data = meta.get("data") or {}
    if data.get("source") == "digits-lt":
        return sorted(SAMPLES.glob("*.png"))
    root = data.get("root")
    if data.get("source") != "imagefolder" or not root:
        return []
    test = Path(root) / (data.get("test_split") or "test")
    if not test.is_dir():
        return []
    found = []
    for folder in sorted(p for p in test.iterdir() if p.is_dir() and not p.name.startswith(".")):
        first = next((f for f in sorted(folder.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()), None)
        if first is not None:
            found.append(first)
        if len(found) == MAX_EXAMPLES:
            break
    return found


def build_demo(classifier: Classifier, settings: DemoSettings | None = None):
    """The Gradio Blocks app (not launched)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    settings = settings or DemoSettings()
    explainer = LongTailExplainer(classifier, settings.max_pixels)
    k = min(settings.top_k, classifier.info.num_classes)

    def predict(path: str | None, tau: float) -> tuple[dict[str, float], Any]:
        """Top-k after logit adjustment, and the distribution plot titled with the predicted class."""
        if not path:
            raise gr.Error("Upload, paste or capture an image first.")
        try:
            log_probs = explainer.scores(path)
        except DataError as exc:
            raise gr.Error(str(exc)) from None
        predicted = int(top_k(logit_adjusted(log_probs, explainer.counts, tau), 1)[0])
        return explainer.ranked(log_probs, float(tau), k), gr.BarPlot(label=explainer.distribution_title(predicted))

    examples = [str(p) for p in settings.examples or default_examples(classifier.info.meta)]
    with gr.Blocks(title=f"pih2t demo: {classifier.info.name}", analytics_enabled=False) as demo:
        gr.Markdown(
            "# Long-tailed image classification with PI-H2T\nUpload an image; move **tau** to shift "
            "predictions between head (Many) and tail (Few) classes."
        )
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="filepath", sources=["upload", "webcam", "clipboard"], label="image")
                tau = gr.Slider(0.0, 2.0, value=0.0, step=0.1, label="logit adjustment tau (0 = as trained)")
                button = gr.Button("Classify", variant="primary")
                if examples:
                    gr.Examples(examples=[[e] for e in examples], inputs=[image])
            with gr.Column():
                label = gr.Label(num_top_classes=k, label="prediction")
                plot = gr.BarPlot(
                    x="class",
                    y="training images",
                    color="group",
                    color_map=GROUP_COLOURS,
                    label="training class distribution",
                    sort=None,
                    value=explainer.distribution(),
                )
        gr.Markdown(explainer.model_card())
        button.click(predict, inputs=[image, tau], outputs=[label, plot], api_name="predict")
        # api_name=False keeps the slider's event out of the API (Gradio 6 accepts it; its stubs say str | None)
        tau.release(predict, inputs=[image, tau], outputs=[label, plot], api_name=False)  # type: ignore[arg-type]
    demo.queue(default_concurrency_limit=settings.concurrency, max_size=settings.queue_size)
    return demo


def launch(classifier: Classifier, host: str, port: int, settings: DemoSettings, **kwargs: Any) -> None:
    """Serve the demo (blocking); never shares a public link. Gradio's own start-up lines (its hint to set
    share=True among them) are silenced: the CLI prints the address itself."""
    demo = build_demo(classifier, settings)
    kwargs.setdefault("quiet", True)
    demo.launch(
        server_name=host,
        server_port=port,
        share=False,
        max_file_size=int(settings.max_file_mb * 1024 * 1024),
        show_error=True,
        **kwargs,
    )
