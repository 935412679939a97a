"""bench.json, bench.md and bench.png from a pih2t-bench report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pih2t_deploy.atomic import write_text_atomic

GROUPS = ("top1", "many", "medium", "few")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def to_markdown(report: dict[str, Any], command: str) -> str:
    """Markdown tables: latency and throughput per format and batch, ratios to PyTorch eager, accuracy."""
    lines = [
        f"# pih2t-bench: {report['arch']} ({report['method']}), input {report['input_shape']}",
        "",
        f"Command: `{command}`  ",
        f"Machine: {report['machine']}, device {report['device']}, {report['threads']} threads; date {report['date']}",
        f"CPU: {report['cpu']['model']}; flags: {', '.join(report['cpu']['flags']) or 'none of AMX/AVX-512/AVX2'}",
    ]
    peaks = report.get("peaks") or {}
    if peaks:
        lines.append(
            f"Model: {report['ops_per_image'] / 1e9:.3g} G operations per image. CPU peak on "
            + "; ".join(f"{p}: {v['gops_per_s']:.0f} G ops/s ({v['instruction']})" for p, v in peaks.items())
        )
    lines += [
        "",
        "| format | batch | p50 ms | p90 ms | p99 ms | images/s | x PyTorch eager | G ops/s | % of peak |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, per_batch in report["timings"].items():
        for batch, t in per_batch.items():
            of_peak = "-" if t.get("of_peak") is None else f"{100 * t['of_peak']:.1f}"
            lines.append(
                f"| {name} | {batch} | {t['p50_ms']:.2f} | {t['p90_ms']:.2f} | {t['p99_ms']:.2f} | "
                f"{t['images_per_s']:.1f} | {t['speedup_vs_torch']:.2f} | {t.get('gops_per_s', 0):.1f} | {of_peak} |"
            )
    skipped = {n: f for n, f in report["formats"].items() if f["status"] == "skipped"}
    if skipped:
        lines += ["", "Skipped formats:", *[f"- {n}: {f['reason']}" for n, f in skipped.items()]]
    if report["accuracy"]:
        lines += ["", "| format | top-1 | Many | Medium | Few |", "|---|---|---|---|---|"]
        for name, acc in report["accuracy"].items():
            lines.append(f"| {name} | " + " | ".join(_pct(acc[k]) for k in GROUPS) + " |")
    by_batch = report.get("recommended", {}).get("by_batch")
    if by_batch:
        gate = report["recommended"]["max_group_drop"]
        lines += [
            "",
            f"Recommended on this machine (fastest within {gate:g} points of PyTorch on top-1 and every group):",
        ]
        lines += [
            f"- batch {b}: **{r['format']}** ({r['speedup_vs_torch']:.2f}x PyTorch eager)" for b, r in by_batch.items()
        ]
        failed = report["recommended"]["failed_accuracy_gate"]
        if failed:
            lines.append(f"- failed the accuracy gate: {', '.join(failed)}")
    elif report.get("recommended"):
        lines += ["", f"Nothing recommended: {report['recommended']['reason']}"]
    if report.get("serve"):
        lines += ["", "| server | concurrency | requests/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|---|"]
        servers = {name: rows for name, rows in report["serve"].items() if name != "skipped"}
        for server, rows in servers.items():
            for row in rows:
                lines.append(
                    f"| {server} | {row['concurrency']} | {row['throughput']:.1f} | {row['p50_ms']:.1f} | "
                    f"{row['p99_ms']:.1f} | {row['errors']} |"
                )
        for server, reason in report["serve"].get("skipped", {}).items():
            lines.append(f"\nSkipped server {server}: {reason}")
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> Path:
    """PNG: throughput against batch size per format; accuracy per group per format (when measured)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if report["accuracy"] else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.5), squeeze=False)
    left = axes[0][0]
    for name, per_batch in report["timings"].items():
        batches = [int(b) for b in per_batch]
        left.plot(batches, [per_batch[str(b)]["images_per_s"] for b in batches], marker="o", label=name)
    left.set(xscale="log", xlabel="batch size", ylabel="images / s", title=f"{report['arch']} on {report['device']}")
    left.legend()
    if report["accuracy"]:
        right = axes[0][1]
        names = list(report["accuracy"])
        width = 0.8 / len(names)
        for index, name in enumerate(names):
            values = [100 * (report["accuracy"][name][g] or 0) for g in GROUPS]
            right.bar([g + index * width for g in range(len(GROUPS))], values, width, label=name)
        right.set_xticks([g + 0.4 - width / 2 for g in range(len(GROUPS))], ["top-1", "Many", "Medium", "Few"])
        right.set(ylabel="accuracy %", title="accuracy by group", ylim=(0, 100))
        right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_reports(report: dict[str, Any], folder: Path, command: str) -> list[Path]:
    """Write bench.json, bench.md and bench.png into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "bench.json", json.dumps({**report, "command": command}, indent=2) + "\n")
    write_text_atomic(folder / "bench.md", to_markdown(report, command))
    return [folder / "bench.json", folder / "bench.md", plot(report, folder / "bench.png")]
