"""What only a GPU can check: CUDA training steps with AMP and channels_last (PIF and H2TF active), fold
parity on the GPU, and torch-backend timings (eager, torch.compile, CUDA graphs) for resnet50 at batch
1/64/256 against the minimum time that its FLOPs and the measured matrix-multiply rate allow.

Run through benchmarks/gpu_check.sh. ``--allow-cpu --quick`` runs the same code on the CPU with tiny sizes
(used by the test suite so that the script cannot rot on machines without a GPU).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from pih2t_deploy.fold import fold
from pih2t_deploy.fusion import h2t_fuse
from pih2t_deploy.models import NetworkConfig, PIH2TNet

RESNET50_GFLOP = 8.18  # 4.09 G multiply-adds per 224x224 image (torchvision's ResNet50 card)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(function, device: torch.device, repeats: int) -> float:
    """Median seconds of ``function`` over ``repeats`` calls (after two warm-up calls)."""
    for _ in range(2):
        function()
    sync(device)
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        sync(device)
        samples.append(time.perf_counter() - started)
    return sorted(samples)[len(samples) // 2]


def training_check(device: torch.device, quick: bool) -> dict:
    """Both stages of the real engine on Digits-LT, on this device, with AMP and channels_last."""
    from pih2t_deploy.checkpoint import load_checkpoint
    from pih2t_deploy.training.engine import Trainer
    from pih2t_deploy.training.recipe import load_recipe

    epochs = ["stage1.epochs=2", "stage2.epochs=1"] if quick else ["stage1.epochs=20", "stage2.epochs=5"]
    recipe = load_recipe("digits-lt", [*epochs, f"runtime.device={device.type}", "runtime.progress=false"])
    with tempfile.TemporaryDirectory() as work:
        result = Trainer(recipe, Path(work) / "run", log=lambda _m: None).run()
        stage1, final = load_checkpoint(result.stage1_path).net, load_checkpoint(result.model_path).net
    moved = any(not torch.equal(a, b) for a, b in zip(stage1.head.parameters(), final.head.parameters(), strict=True))
    frozen = all(torch.equal(a, b) for a, b in zip(stage1.pif.parameters(), final.pif.parameters(), strict=True))
    return {
        "top1": result.metrics["top1"],
        "few": result.metrics["few"],
        "amp": recipe.runtime.amp and device.type == "cuda",
        "stage2_head_trained": moved,
        "stage2_pif_frozen": frozen,
        "seconds": result.metrics["seconds"],
    }


def resnet_steps(device: torch.device, quick: bool) -> dict:
    """Stage-1 (PIF) and stage-2 (H2TF) steps of resnet50 under bf16 autocast and channels_last."""
    size, batch = (64, 4) if quick else (224, 64)
    net = PIH2TNet(NetworkConfig(arch="resnet50", num_classes=1000, method="pih2t")).to(
        device, memory_format=torch.channels_last
    )
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=device)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def stage1() -> float:
        optimizer.zero_grad()
        with autocast:
            loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()
        return loss.item()

    losses = [stage1() for _ in range(3)]
    pif_grad = float(net.pif.phi[0].weight.grad.abs().sum())
    step1 = timed(stage1, device, 3 if quick else 10)

    def stage2() -> float:
        with torch.no_grad(), autocast:
            maps = net.features(torch.cat((x, x.flip(0))))
            fused, _ = h2t_fuse(*maps.split(batch), 0.3, inplace=True)
        with autocast:
            loss = torch.nn.functional.cross_entropy(net.classify(fused), y)
        loss.backward()
        return loss.item()

    step2 = timed(stage2, device, 3 if quick else 10)
    finite = all(torch.isfinite(torch.tensor(v)) for v in [*losses, stage2()])
    return {
        "batch": batch,
        "size": size,
        "losses_finite": bool(finite),
        "pif_gradient": pif_grad,
        "stage1_step_ms": 1000 * step1,
        "stage2_step_ms": 1000 * step2,
        "images_per_s_stage1": batch / step1,
    }


def fold_parity(device: torch.device, quick: bool) -> dict:
    """The fold's float32 parity when both models run on this device (and under bf16 autocast)."""
    size = 64 if quick else 224
    net = PIH2TNet(NetworkConfig(arch="resnet50", num_classes=1000, method="pih2t", lws=True))
    with torch.no_grad():
        net.head.lws.uniform_(0.5, 1.5)
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = None
        net.train()(torch.randn(8, 3, size, size))
    net.eval()
    folded, report = fold(net, input_shape=(3, size, size), logit_adjust_tau=1.0, class_counts=list(range(1000, 0, -1)))
    x = torch.randn(8, 3, size, size, device=device)
    prior = torch.log(torch.arange(1000, 0, -1, dtype=torch.float64) / sum(range(1, 1001))).to(device)
    with torch.no_grad():
        reference = net.to(device)(x).double() - prior
        plain = folded.to(device)(x).double()
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            low = folded(x).double()
    scale = float(reference.abs().max())
    return {
        "fp64_check_cpu": report.max_abs_diff,
        "fp32_max_abs_diff": float((reference - plain).abs().max()),
        "bf16_max_abs_diff": float((reference - low).abs().max()),
        "logit_scale": scale,
        "top1_agreement_bf16": float((reference.argmax(1) == low.argmax(1)).float().mean()),
    }


def matmul_rate(device: torch.device, quick: bool) -> float:
    """Measured bf16 (CUDA) or fp32 (CPU) matrix-multiply rate in TFLOP/s."""
    n = 1024 if quick else 8192
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    seconds = timed(lambda: a @ b, device, 5 if quick else 20)
    return 2 * n**3 / seconds / 1e12


def _time_batch(
    model, batch: int, size: int, device: torch.device, budget_end: float, compile_it: bool = True
) -> dict[str, float | str]:
    x = torch.randn(batch, 3, size, size, device=device)
    x_cl = x.to(memory_format=torch.channels_last)
    model_cl = model.to(memory_format=torch.channels_last)
    low = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    results: dict[str, float | str] = {}
    with torch.inference_mode():
        results["eager_fp32"] = timed(lambda: model(x), device, 10)
        with low:
            results["eager_bf16_cl"] = timed(lambda: model_cl(x_cl), device, 10)
        if not compile_it:
            results["compile_bf16_cl"] = "skipped: --quick compiles the first batch size only"
        elif time.perf_counter() < budget_end:
            try:
                compiled = torch.compile(model_cl, dynamic=False)
                with low:
                    results["compile_bf16_cl"] = timed(lambda: compiled(x_cl), device, 10)
            except Exception as exc:  # report, do not abort the whole check
                results["compile_bf16_cl"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        else:
            results["compile_bf16_cl"] = "skipped: time budget"
    if device.type == "cuda":
        try:
            static_x = x_cl.clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream), torch.inference_mode(), low:
                for _ in range(3):
                    model_cl(static_x)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            uncached = torch.autocast(device_type="cuda", dtype=torch.bfloat16, cache_enabled=False)
            with torch.cuda.graph(graph), torch.inference_mode(), uncached:  # autocast's cache must stay out
                model_cl(static_x)
            results["cuda_graph_bf16_cl"] = timed(graph.replay, device, 20)
        except Exception as exc:  # report, do not abort the whole check
            results["cuda_graph_bf16_cl"] = f"failed: {type(exc).__name__}"
    return results


def inference_timings(device: torch.device, quick: bool, tflops: float) -> list[dict]:
    """resnet50 folded: eager fp32, eager bf16 channels_last, torch.compile, CUDA graphs; per batch size."""
    size = 64 if quick else 224
    gflop = RESNET50_GFLOP * (size / 224) ** 2
    net = PIH2TNet(NetworkConfig(arch="resnet50", num_classes=1000, method="pih2t")).eval()
    folded, _ = fold(net, input_shape=(3, size, size))
    model = folded.to(device).eval()
    budget_end = time.perf_counter() + (60 if quick else 200)
    rows = []
    for batch in [1, 4] if quick else [1, 64, 256]:
        minimum = batch * gflop / (tflops * 1e3)
        row: dict[str, float | str] = {"batch": batch, "theoretical_min_ms": 1000 * minimum}
        compile_it = not quick or not rows  # on a CPU, one compilation shows the path works; each takes ~15 s
        for name, value in _time_batch(model, batch, size, device, budget_end, compile_it).items():
            if isinstance(value, float):
                row.update(
                    {
                        f"{name}_ms": 1000 * value,
                        f"{name}_images_per_s": batch / value,
                        f"{name}_of_peak": minimum / value,
                    }
                )
            else:
                row[name] = value
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu-results"))
    parser.add_argument("--allow-cpu", action="store_true", help="run on the CPU when there is no GPU (for tests)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.allow_cpu:
        raise SystemExit("gpu_check needs a CUDA GPU (pass --allow-cpu --quick to exercise the script on a CPU)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "date": time.strftime("%Y-%m-%d"),
        "capability": ".".join(map(str, torch.cuda.get_device_capability(0))) if device.type == "cuda" else None,
    }
    print(f"gpu_check on {report['device']} (torch {report['torch']}, CUDA {report['cuda']})", flush=True)
    report["training"] = training_check(device, args.quick)
    print("training:", report["training"], flush=True)
    report["resnet50_steps"] = resnet_steps(device, args.quick)
    print("resnet50 steps:", report["resnet50_steps"], flush=True)
    report["fold_parity"] = fold_parity(device, args.quick)
    print("fold parity:", report["fold_parity"], flush=True)
    report["matmul_tflops"] = matmul_rate(device, args.quick)
    report["inference"] = inference_timings(device, args.quick, report["matmul_tflops"])
    report["seconds"] = time.perf_counter() - started
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    print(f"\nsummary ({report['device']}, matmul {report['matmul_tflops']:.1f} TFLOP/s, {report['seconds']:.0f} s)")
    training, steps = report["training"], report["resnet50_steps"]
    print(
        f"training on digits-lt: top-1 {100 * training['top1']:.1f}%, Few {100 * training['few']:.1f}%; "
        f"resnet50 stage-1 step {steps['stage1_step_ms']:.1f} ms, losses finite {steps['losses_finite']}; "
        f"fold fp32 max |diff| {report['fold_parity']['fp32_max_abs_diff']:.2e}"
    )
    print("| batch | min ms | eager fp32 | eager bf16 | compile bf16 | CUDA graph bf16 |")
    print("|---|---|---|---|---|---|")
    for row in report["inference"]:
        cells = [
            f"{row[k + '_ms']:.2f} ({100 * row[k + '_of_peak']:.0f}%)" if k + "_ms" in row else str(row.get(k, "-"))
            for k in ("eager_fp32", "eager_bf16_cl", "compile_bf16_cl", "cuda_graph_bf16_cl")
        ]
        print(f"| {row['batch']} | {row['theoretical_min_ms']:.2f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
