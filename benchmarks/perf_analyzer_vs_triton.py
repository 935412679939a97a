"""pih2t-serve beside the real Triton server, measured from outside with Triton's own client.

Question: how many requests/s does pih2t-serve answer, and at what tail latency, compared with tritonserver
(nvidia-pytriton's binary) serving the repository ``pih2t-triton build --cpu-python`` generates for the same
artifact, on the same cores, with the same client? Client: perf_analyzer (set up by perf_analyzer.sh), one
encoded PNG per request as a BYTES tensor in Triton's binary extension, to the model whose metadata lists that
input (``<name>_image`` on pih2t-serve, the ensemble ``pih2t`` on Triton). Each server runs alone, one after
the other, in one run. Rows: HTTP at concurrency 16 and 1, gRPC at 16, pih2t-serve with --max-wait-ms 0
at concurrency 1 (the cost of the gathering window for a lone client), pih2t-serve --workers 2 (two
processes on the port) at 16 over HTTP and gRPC, and gRPC at 16 through the native front end (``--grpc-front
native``, built by ``make grpc-front``) with one worker and with two.

gRPC rows are measured once per ``--grpc-channel-share`` value, for both servers alike: how many of
perf_analyzer's request contexts share one gRPC channel (one HTTP/2 connection), its environment variable
TRITON_CLIENT_GRPC_CHANNEL_MAX_SHARE_COUNT. Triton's client shares a channel among 6 by default, so its 16
contexts hold about 3 connections; the kernel spreads connections, not requests, over --workers processes.

    python benchmarks/perf_analyzer_vs_triton.py [--artifact EXPORT] [--seconds 4] [--grpc-channel-share 6 1]
        [--output runs/bench-pa]

Without --artifact a small Digits-LT model is trained (a few epochs; speed does not depend on its accuracy).
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import os
import subprocess
import tempfile
from pathlib import Path

import httpx

from pih2t_deploy.bench.machine import cpu_info
from pih2t_deploy.serving.process import free_port, start_rest_server
from pih2t_deploy.serving.triton.repository import RepositorySettings, build_repository
from pih2t_deploy.serving.triton.server import Ports, start_server, wait_until_ready
from pih2t_deploy.serving.v2_codec import serialize_bytes

HERE = Path(__file__).resolve().parent
SAMPLE = HERE.parent / "pih2t_deploy" / "samples" / "digit_3.png"


def perf_analyzer() -> str:
    """The perf_analyzer wrapper, set up on first use."""
    done = subprocess.run(["bash", str(HERE / "perf_analyzer.sh")], capture_output=True, text=True, check=True)
    return done.stdout.strip().splitlines()[-1]


def digits_artifact(folder: Path) -> Path:
    """A small Digits-LT PI-H2T model, exported to ONNX."""
    from pih2t_deploy.export.exporter import export_checkpoint
    from pih2t_deploy.export.options import ExportOptions
    from pih2t_deploy.training.engine import Trainer
    from pih2t_deploy.training.recipe import load_recipe

    recipe = load_recipe("digits-lt", ["stage1.epochs=3", "stage2.epochs=1", "runtime.progress=false"])
    result = Trainer(recipe, folder / "run", log=lambda _m: None).run()
    return export_checkpoint(result.model_path, ExportOptions(output=folder / "export")).folder


MAX_TRIALS = 20  # windows perf_analyzer may take to find 3 within 10% of each other (its default, 10, gave up
# on tritonserver's gRPC row with 8 s windows on 2026-12-07)
DEFAULT_CHANNEL_SHARE = 6  # Triton's client library: request contexts per gRPC channel unless told otherwise


def measure(
    tool: str, model: str, url: str, protocol: str, concurrency: int, data: Path, seconds: float, share: int | None
) -> dict:
    """One perf_analyzer measurement, its gRPC contexts ``share`` to a channel (the client's default when None):
    requests/s, latency percentiles (ms)."""
    env = {**os.environ, "TRITON_CLIENT_GRPC_CHANNEL_MAX_SHARE_COUNT": str(share or DEFAULT_CHANNEL_SHARE)}
    with tempfile.NamedTemporaryFile(suffix=".csv") as report:
        done = subprocess.run(
            [tool, "-m", model, "-u", url, "-i", protocol, "--input-data", str(data), "--shape", "image:1",
             "--concurrency-range", str(concurrency), "--measurement-interval", str(int(seconds * 1000)),
             "--max-trials", str(MAX_TRIALS), "-f", report.name],
            capture_output=True, text=True, timeout=600, env=env,
        )  # fmt: skip
        if done.returncode:
            raise SystemExit(f"perf_analyzer failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        row = next(csv.DictReader(open(report.name)))  # noqa: SIM115 - read once
    return {
        "requests_per_s": float(row["Inferences/Second"]),
        "p50_ms": float(row["p50 latency"]) / 1000,
        "p99_ms": float(row["p99 latency"]) / 1000,
    }


def cases(wanted: tuple[tuple[str, int], ...], shares: list[int]) -> list[tuple[str, int, int | None]]:
    """(protocol, concurrency, channel share) for each wanted pair: gRPC once per share, HTTP once."""
    return [(p, c, share) for p, c in wanted for share in (shares if p == "grpc" else [None])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path)
    parser.add_argument("--seconds", type=float, default=4.0, help="perf_analyzer measurement window")
    parser.add_argument(
        "--grpc-channel-share", type=int, nargs="+", default=[DEFAULT_CHANNEL_SHARE],
        help="perf_analyzer's gRPC request contexts per channel; each value measures every gRPC row",
    )  # fmt: skip
    parser.add_argument("--output", type=Path, default=Path("runs/bench-pa"))
    args = parser.parse_args()
    tool = perf_analyzer()
    shares: list[int] = args.grpc_channel_share
    rows: list[dict] = []

    def record(server: str, protocol: str, concurrency: int, share: int | None, result: dict) -> None:
        rows.append({"server": server, "protocol": protocol, "concurrency": concurrency, "channel_share": share})
        rows[-1].update(result)
        print(rows[-1], flush=True)

    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        artifact = args.artifact or digits_artifact(work)
        data = work / "data.json"  # perf_analyzer's b64 of a BYTES tensor is its serialized form
        encoded = base64.b64encode(serialize_bytes([SAMPLE.read_bytes()])).decode()
        data.write_text(json.dumps({"data": [{"image": {"b64": encoded}}]}))

        build_repository(artifact, work / "repo", RepositorySettings(cpu_python=True, max_batch=32, name="pih2t"))
        ports = Ports(free_port(), free_port(), free_port())
        triton = start_server(work / "repo", ports, work / "triton", log_path=work / "triton.log")
        try:
            wait_until_ready(triton, ports)
            for protocol, concurrency, share in cases((("http", 16), ("http", 1), ("grpc", 16)), shares):
                port = ports.http if protocol == "http" else ports.grpc
                url = f"127.0.0.1:{port}"
                result = measure(tool, "pih2t", url, protocol, concurrency, data, args.seconds, share)
                record("tritonserver", protocol, concurrency, share, result)
        finally:
            triton.terminate()
            triton.wait(timeout=60)

        variants = (
            ("pih2t-serve", (), (("http", 16), ("http", 1), ("grpc", 16))),
            ("pih2t-serve --max-wait-ms 0", ("--max-wait-ms", "0"), (("http", 1),)),
            ("pih2t-serve --workers 2", ("--workers", "2"), (("http", 16), ("grpc", 16))),
            ("pih2t-serve --grpc-front native", ("--grpc-front", "native"), (("grpc", 16),)),
            (
                "pih2t-serve --workers 2 --grpc-front native",
                ("--workers", "2", "--grpc-front", "native"),
                (("grpc", 16),),
            ),
        )
        for label, options, wanted in variants:
            http, grpc = free_port(), free_port()
            server = start_rest_server(artifact, http, "--grpc-port", str(grpc), *options)
            try:
                name = httpx.get(f"http://127.0.0.1:{http}/v1/model").json()["name"] + "_image"
                for protocol, concurrency, share in cases(wanted, shares):
                    url = f"127.0.0.1:{http if protocol == 'http' else grpc}"
                    result = measure(tool, name, url, protocol, concurrency, data, args.seconds, share)
                    record(label, protocol, concurrency, share, result)
            finally:
                server.terminate()
                server.wait(timeout=60)

    def row(server: str, protocol: str, concurrency: int, share: int | None = None) -> dict:
        wanted = (server, protocol, concurrency, share)
        return next(r for r in rows if (r["server"], r["protocol"], r["concurrency"], r["channel_share"]) == wanted)

    print("\n| server | protocol | concurrency | gRPC channel share | requests/s | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['server']} | {r['protocol']} | {r['concurrency']} | {r['channel_share'] or '-'} | "
              f"{r['requests_per_s']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |")  # fmt: skip
    ratios = {}
    grpc_rows = [("grpc", share) for share in shares]
    for label, suffix, protocols in (
        ("pih2t-serve", "", [("http", None), *grpc_rows]),
        ("pih2t-serve --workers 2", "_workers_2", [("http", None), *grpc_rows]),
        ("pih2t-serve --grpc-front native", "_native_front", grpc_rows),
        ("pih2t-serve --workers 2 --grpc-front native", "_workers_2_native_front", grpc_rows),
    ):
        for protocol, share in protocols:
            ours, theirs = row(label, protocol, 16, share), row("tritonserver", protocol, 16, share)
            key = f"{protocol}{'' if share is None else f'_share_{share}'}"
            ratios[f"{key}_requests_per_s_vs_triton_c16{suffix}"] = ours["requests_per_s"] / theirs["requests_per_s"]
            ratios[f"{key}_p99_vs_triton_c16{suffix}"] = ours["p99_ms"] / theirs["p99_ms"]
    ratios["p50_c1_window_vs_no_window"] = (
        row("pih2t-serve", "http", 1)["p50_ms"] / row("pih2t-serve --max-wait-ms 0", "http", 1)["p50_ms"]
    )
    print("\n" + "\n".join(f"{k}: {v:.2f}" for k, v in ratios.items()))
    args.output.mkdir(parents=True, exist_ok=True)
    report = {"machine": cpu_info(), "rows": rows, "ratios": ratios}
    (args.output / "perf_analyzer.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
