"""The model card every artifact carries: ``README.md``, which huggingface_hub's ``ModelCard.load`` reads (YAML
front matter with the evaluation results as model-index metrics, then Markdown).

What it says comes from the artifact's own record (``model.json``): the data and its classes with their training
counts and Many/Medium/Few groups, the accuracy per group and the calibration error, the tau and temperature
folded in and where they came from, and the intended use and limits of a long-tailed classifier. The accuracy
reported is, in order of preference: measured on the exported model with ``--eval-data``; the training run's
test scores for exactly the tau and temperature folded (the choice made on validation, or none); otherwise the
card says that this fold's accuracy was not measured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pih2t_deploy.artifact import Manifest
from pih2t_deploy.data.longtail import GroupThresholds

CARD_FILE = "README.md"
MAX_CLASS_ROWS = 200
GROUPS = ("top1", "many", "medium", "few")
METRIC_NAMES = {"top1": "top-1", "many": "Many-shot top-1", "medium": "Medium-shot top-1", "few": "Few-shot top-1"}


def card_accuracy(manifest: Manifest) -> tuple[dict[str, Any] | None, str]:
    """(scores, where they come from) for the model as exported (module docstring)."""
    measured = (manifest.accuracy or {}).get("exported")
    if measured:
        return measured, "measured on the exported model with --eval-data (labelled images at export)"
    meta, fold = manifest.meta, manifest.fold or {}
    tau, temperature = float(fold.get("logit_adjust_tau", 0.0)), float(fold.get("temperature", 1.0))
    chosen = meta.get("posthoc") or {}
    if chosen and (tau, temperature) == (chosen.get("tau"), chosen.get("temperature")) and meta.get("posthoc_test"):
        return meta["posthoc_test"], "the training run's test set, with the tau and temperature chosen on validation"
    if tau == 0.0 and temperature == 1.0 and meta.get("test_metrics"):
        return meta["test_metrics"], "the training run's test set"
    return None, "not measured for this fold (pass --eval-data to pih2t-export to measure it)"


def _front_matter(name: str, manifest: Manifest, scores: dict[str, Any] | None) -> str:
    from huggingface_hub import EvalResult, ModelCardData

    data = manifest.meta.get("data") or {}
    source = str(data.get("source", "unknown"))
    dataset = Path(str(data.get("root") or source)).name

    def result(metric_type: str, metric_name: str, value: float) -> EvalResult:
        return EvalResult(
            task_type="image-classification",
            dataset_type=source,
            dataset_name=dataset,
            metric_type=metric_type,
            metric_name=metric_name,
            metric_value=value,
        )

    scores = scores or {}
    results = [
        result("accuracy", METRIC_NAMES[key], round(100 * float(scores[key]), 2))
        for key in GROUPS
        if scores.get(key) is not None
    ]
    if scores.get("ece") is not None:
        results.append(result("ece", "expected calibration error", round(float(scores["ece"]), 4)))
    card = ModelCardData(
        model_name=name,
        library_name="pih2t-deploy",
        pipeline_tag="image-classification",
        tags=["image-classification", "long-tailed", "pi-h2t", manifest.model_format],
        eval_results=results or None,
    )
    return card.to_yaml()


def table_cell(text: str) -> str:
    """``text`` as one Markdown table cell that shows as written: a ``|`` would end the cell, ``<`` could start
    HTML, and a line break would end the row."""
    escaped = str(text).replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
    return " ".join(escaped.split())


def render_card(manifest: Manifest) -> str:
    """The card's text for the artifact ``manifest`` describes."""
    meta = manifest.meta
    name = str(meta.get("recipe") or "pih2t-model")
    scores, source = card_accuracy(manifest)
    fold = manifest.fold or {}
    names, counts = meta.get("class_names") or [], meta.get("class_counts") or []
    groups = GroupThresholds.from_meta(meta).groups(counts) if counts else ["-"] * len(names)
    data = meta.get("data") or {}
    chosen = meta.get("posthoc") or {}
    prep = meta.get("preprocessing") or {}
    lines = [
        "---",
        _front_matter(name, manifest, scores).rstrip(),
        "---",
        "",
        f"# {name}",
        "",
        f"A long-tailed image classifier: `{meta.get('arch')}` trained with method `{meta.get('method')}` "
        f"(PI-H2T's two stages), folded into a plain classifier and exported as `{manifest.model_format}` "
        f"(`{manifest.model_file}`) by pih2t-deploy. The train-time fusion is gone: it costs what the plain "
        "network costs.",
        "",
        "## Data",
        "",
        f"- source: {data.get('source', 'unknown')}" + (f" ({data.get('root')})" if data.get("root") else ""),
        f"- {len(names)} classes, {sum(counts)} training images, {max(counts, default=0)} to {min(counts, default=0)} "
        "per class"
        if counts
        else f"- {len(names)} classes (training counts not recorded)",
        f"- groups by training images: Many > {data.get('many_threshold', 100)}, Few < "
        f"{data.get('few_threshold', 20)}, Medium between",
        f"- input: {prep.get('input_size')}x{prep.get('input_size')} {prep.get('mode')}, shorter side resized to "
        f"{prep.get('resize')} ({prep.get('interpolation')}), mean {prep.get('mean')}, std {prep.get('std')}",
        "",
        "## Evaluation",
        "",
        f"Source: {source}.",
        "",
    ]
    if scores:
        lines += [
            "| top-1 | Many | Medium | Few | ECE |",
            "|---|---|---|---|---|",
            "| "
            + " | ".join("-" if scores.get(k) is None else f"{100 * scores[k]:.1f}" for k in GROUPS)
            + f" | {'-' if scores.get('ece') is None else format(scores['ece'], '.3f')} |",
            "",
        ]
    lines += [
        "## Folded post-hoc choices",
        "",
        f"- logit-adjustment tau {float(fold.get('logit_adjust_tau', 0.0)):g}, temperature "
        f"{float(fold.get('temperature', 1.0)):g}",
    ]
    if chosen:
        before, after = chosen["val_balanced_accuracy_before"], chosen["val_balanced_accuracy_after"]
        lines.append(
            f"- chosen on {chosen.get('val_images')} validation images: tau for the best {chosen.get('objective')} "
            f"({100 * before:.1f} -> {100 * after:.1f}), the temperature for the lowest NLL "
            f"(ECE {chosen['val_ece_before']:.3f} -> {chosen['val_ece_after']:.3f})"
        )
    lines += [
        "",
        "## Intended use and limits",
        "",
        "- Classifies images into the classes below, and only those: anything else is given one of them.",
        "- Accuracy differs by group: read the Few column before trusting a rare class's answer, and consider a "
        "human review below a confidence threshold (`pih2t-serve --log-low-confidence`).",
        "- The answers assume the class mix it was tuned for; when the deployed mix drifts, watch "
        "`/v1/label-shift` and the `pih2t_label_shift_total_variation` metric (pih2t-serve), and re-weight per "
        "request (`tau`, `prior`) rather than retraining first.",
        "- Images must be preprocessed as above; pih2t-serve, pih2t-predict, the demo and the generated Triton "
        "repository do this from `model.json`.",
        "",
        "## Classes",
        "",
        "| index | class | training images | group |",
        "|---|---|---|---|",
    ]
    for index, label in enumerate(names[:MAX_CLASS_ROWS]):
        count = counts[index] if index < len(counts) else "-"
        lines.append(f"| {index} | {table_cell(label)} | {count} | {groups[index] if index < len(groups) else '-'} |")
    if len(names) > MAX_CLASS_ROWS:
        lines.append(f"\n{len(names) - MAX_CLASS_ROWS} more classes: see labels.txt and model.json.")
    lines += ["", "## Use", "", "```bash", "pih2t-serve --model .", "```", ""]
    return "\n".join(lines)


def write_card(folder: Path, manifest: Manifest) -> Path:
    """Write ``README.md`` into ``folder`` for ``manifest``; returns its path."""
    path = folder / CARD_FILE
    path.write_text(render_card(manifest), encoding="utf-8")
    return path
