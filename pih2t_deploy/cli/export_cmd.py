"""``pih2t-export``: fold a checkpoint, export it and prove the export exact."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pih2t_deploy.artifact import MANIFEST_FILE, Manifest
from pih2t_deploy.cli.common import console, log, parse_int_list, parse_str_list
from pih2t_deploy.export.options import DEFAULT_OPSET, ExportOptions
from pih2t_deploy.formats import formats_help

Opt = typer.Option


def graph_summary(graph: dict, arch: str) -> str:
    """One line comparing the exported graph's operators with the vanilla backbone's."""
    if graph["identical"]:
        return f"graph: {graph['exported_nodes']} nodes, operator counts identical to the vanilla {arch}"
    extra = ", ".join(f"{count:+d} {op}" for op, count in graph["difference"].items())
    return (
        f"graph: {graph['exported_nodes']} nodes ({graph['vanilla_nodes']} in the vanilla {arch}); "
        f"operators beyond it: {extra}"
    )


def _gated(block: dict) -> bool:
    """Whether a manifest's parity block decided the export (a tolerance applied); records written before
    ``gated`` existed say so by their tolerance."""
    return bool(block.get("gated", block["tolerance"] is not None))


def verification_table(manifest: Manifest) -> Table:
    """Every parity block of the manifest: per batch the differences and agreements, and whether the block
    gates the export (a tolerance applies) or is only reported (INT8, judged on accuracy instead)."""
    table = Table(title=f"verification of {manifest.model_file} against the unfolded PyTorch model")
    for column in ("inputs", "batch", "max |diff|", "rel diff", "top-1 agree", "top-5 agree", "check"):
        table.add_column(column, justify="right")
    for block in manifest.verification:
        if _gated(block):
            check = f"<= {block['tolerance']:.0e} x max(1, |output|): {'passed' if block['passed'] else 'FAILED'}"
        else:
            check = "reported, not gated"
        for row in block["results"]:
            table.add_row(
                block["source"],
                str(row["batch"]),
                f"{row['max_abs_diff']:.2e}",
                f"{row['max_rel_diff']:.2e}",
                f"{row['top1_agreement']:.1%}",
                f"{row['top5_agreement']:.1%}",
                check,
            )
    return table


def gate_line(manifest: Manifest, options: ExportOptions) -> str:
    """One line saying which checks decided the export, on what data, with which limits: parity within the
    tolerance where one applies, and for INT8 / bf16 the accuracy kept on real images (or, without labels,
    the top-1 agreement with PyTorch)."""
    from pih2t_deploy.export.gates import MIN_TOP1_AGREEMENT

    checks = []
    gated = ["random inputs" if b["source"] == "random" else b["source"] for b in manifest.verification if _gated(b)]
    if gated:
        checks.append(f"outputs within the tolerance of the PyTorch model on {' and '.join(gated)}")
    if options.reduced_precision:
        what = "INT8 quantization" if options.quantized else "bf16 inference"
        source = next((b["source"] for b in manifest.verification if b["source"].startswith("real images")), "")
        drops = (manifest.accuracy or {}).get("drop_points")
        if drops:
            lost = ", ".join(f"{group} {points:.1f}" for group, points in drops.items())
            checks.append(
                f"{what} may lose at most {options.max_group_drop:g} points of accuracy on top-1 and on each of "
                f"Many/Medium/Few, measured on {source}; it lost {lost} points"
            )
        else:
            checks.append(f"{what} agrees with PyTorch's top-1 on at least {MIN_TOP1_AGREEMENT:.0%} of {source}")
    line = "gate: " + "; ".join(checks) + ": passed"
    if options.quantized:
        line += (
            ". The differences on random inputs are reported only (quantized outputs are judged by accuracy, "
            "not by parity)"
        )
    return line


def export(
    ckpt: Annotated[Path, Opt("--ckpt", help="model.pt (pih2t/1), or a file saved by the authors' H2T code")],
    output: Annotated[Path, Opt("--output", "-o", help="artifact folder to write")] = Path("exports/model"),
    format: Annotated[str, Opt("--format", help=formats_help())] = "onnx",
    opset: Annotated[int, Opt(help="ONNX opset (onnx, onnx-int8, trt, openvino)")] = DEFAULT_OPSET,
    static_batch: Annotated[int | None, Opt(help="fix the batch axis to N (default: dynamic)")] = None,
    max_batch: Annotated[int, Opt(min=1, help="largest verified batch; TensorRT profile maximum")] = 8,
    opt_batch: Annotated[int | None, Opt(help="TensorRT profile optimum (default: --max-batch)")] = None,
    half: Annotated[bool, Opt("--half", help="fp16 compute (onnx, trt)")] = False,
    int8: Annotated[bool, Opt("--int8", help="INT8 TensorRT plan (needs --calib-data)")] = False,
    bf16: Annotated[
        bool, Opt("--bf16", help="run the OpenVINO IR in bfloat16 (openvino; needs --eval-data for the accuracy gate)")
    ] = False,
    simplify: Annotated[bool, Opt("--simplify", help="run onnxsim on the graph (onnx)")] = False,
    embed_preprocessing: Annotated[
        bool, Opt("--embed-preprocessing", help="graph takes uint8 NHWC pixels (onnx)")
    ] = False,
    probs: Annotated[bool, Opt("--probs", help="softmax in the graph (onnx)")] = False,
    logit_adjust: Annotated[
        float | None,
        Opt(
            "--logit-adjust",
            min=0,
            help="fold post-hoc logit adjustment TAU (default: the tau training chose on validation, else 0)",
        ),
    ] = None,
    temperature: Annotated[
        float | None,
        Opt(help="fold a temperature T: logits / T (default: the one training fitted on validation, else 1)"),
    ] = None,
    fuse_bn: Annotated[bool, Opt("--fuse-bn", help="fold BatchNorm into convolutions")] = False,
    tolerance: Annotated[
        float | None, Opt(help="largest allowed abs output difference (default 1e-3, 5e-2 fp16)")
    ] = None,
    calib_data: Annotated[str | None, Opt(help="calibration images: a folder, or 'recipe' (training set)")] = None,
    calib_count: Annotated[int, Opt(min=1, help="calibration images to use")] = 256,
    eval_data: Annotated[
        str | None, Opt(help="real images to verify on: a folder (class sub-folders) or 'recipe'")
    ] = None,
    max_group_drop: Annotated[float, Opt(help="INT8: largest allowed accuracy drop in points, any group")] = 2.0,
    workspace_gb: Annotated[float, Opt(help="TensorRT builder workspace")] = 4.0,
    timing_cache: Annotated[Path | None, Opt(help="TensorRT timing cache file (read and updated)")] = None,
    force: Annotated[bool, Opt("--force", help="replace an existing artifact in --output")] = False,
    sign_key: Annotated[
        Path | None, Opt(help="PEM elliptic-curve private key: sign the artifact (model.sig, OpenSSF model-signing)")
    ] = None,
    class_counts: Annotated[
        str | None, Opt(help="comma-separated training counts per class (files from the authors' code)")
    ] = None,
    class_names: Annotated[str | None, Opt(help="comma-separated class names (files from the authors' code)")] = None,
    seed: Annotated[int, Opt(help="seed of the verification inputs")] = 0,
    push_to_hub: Annotated[
        str | None,
        Opt(help="upload the verified folder to this Hugging Face model repo (owner/name; HF_TOKEN or hf auth login)"),
    ] = None,
    private: Annotated[bool, Opt("--private", help="with --push-to-hub: create the repo private")] = False,
) -> None:
    """Fold the train-time fusion away, export, verify against PyTorch and write the artifact folder."""
    from pih2t_deploy.export.exporter import export_checkpoint
    from pih2t_deploy.export.hub import check_hub_target, push_folder

    if push_to_hub:
        check_hub_target(push_to_hub)

    options = ExportOptions(
        output=output,
        format=format,
        opset=opset,
        static_batch=static_batch,
        max_batch=max_batch,
        opt_batch=opt_batch,
        half=half,
        int8=int8,
        bf16=bf16,
        simplify=simplify,
        embed_preprocessing=embed_preprocessing,
        probs=probs,
        logit_adjust_tau=logit_adjust,
        temperature=temperature,
        fuse_bn=fuse_bn,
        tolerance=tolerance,
        seed=seed,
        calib_data=calib_data,
        calib_count=calib_count,
        eval_data=eval_data,
        max_group_drop=max_group_drop,
        workspace_gb=workspace_gb,
        timing_cache=timing_cache,
        force=force,
        sign_key=sign_key,
        class_counts=parse_int_list(class_counts, "--class-counts"),
        class_names=parse_str_list(class_names),
    )
    result = export_checkpoint(ckpt, options, log=log)
    manifest = result.manifest
    console.print(verification_table(manifest))
    console.print(gate_line(manifest, options), markup=False, highlight=False)
    graph = manifest.graph
    if graph:
        console.print(graph_summary(graph, manifest.meta["arch"]), markup=False, highlight=False)
    console.print(f"wrote {result.folder}/ ({', '.join(manifest.files)}, {MANIFEST_FILE})")
    if push_to_hub:
        message = f"pih2t-export: {format} artifact of {ckpt.name} ({manifest.meta['arch']})"
        url = push_folder(result.folder, push_to_hub, private=private, message=message, log=log)
        console.print(f"pushed to {url}", markup=False, highlight=False)
