"""gRPC calls handed between workers: pih2t-serve --workers 2 with and without --grpc-handoff, measured with
perf_analyzer over gRPC, each run labelled with where its connections landed.

Question: how much does handing calls to a less busy worker give when the kernel puts a client's few HTTP/2
connections on one worker, and what does it cost when they are spread? perf_analyzer's 16 request contexts share
a channel among ``--channel-share`` (Triton's client default: 6, so 3 connections), and the kernel hashes each
connection to one worker, so the split differs from run to run: every run records it (established connections
on the gRPC port per worker, read from /proc while the run goes on), the calls handed off and the mean batch.
Both servers run one after the other, ``--runs`` runs each, alternating.

    python benchmarks/grpc_handoff.py [--artifact runs/quickstart/export] [--runs 6] [--seconds 5]
        [--channel-share 6]
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import tempfile
import threading
import time
from pathlib import Path

import httpx
from perf_analyzer_vs_triton import SAMPLE, measure, perf_analyzer

from pih2t_deploy.bench.machine import cpu_info
from pih2t_deploy.serving.process import free_port, start_rest_server
from pih2t_deploy.serving.v2_codec import serialize_bytes

WORKERS = 2


def connections_per_process(port: int) -> list[int]:
    """Established TCP connections on local ``port``, counted per process that holds them, most first (a worker
    holding none is not seen: the table pads to WORKERS)."""
    sockets = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":  # 01: ESTABLISHED
                sockets.add(f"socket:[{fields[9]}]")
    counts = []
    for process in Path("/proc").glob("[0-9]*"):
        try:
            held = sum(1 for fd in (process / "fd").iterdir() if str(fd.readlink()) in sockets)
        except OSError:  # a process that ended, or one this user cannot read
            continue
        if held:
            counts.append(held)
    return sorted(counts, reverse=True)


COUNTERS = ("pih2t_grpc_handoffs_total", "pih2t_batch_size_sum", "pih2t_batch_size_count")


def counters(url: str) -> dict[str, float]:
    """The server's handed-off calls, images batched and batches run so far (summed over its workers)."""
    text = httpx.get(f"{url}/metrics").text
    return {name: float(next(iter(re.findall(rf"^{name} (\S+)$", text, flags=re.M)), 0.0)) for name in COUNTERS}


def look(port: int, into: list[list[int]]) -> None:
    """Note the connections per process on ``port`` (run while perf_analyzer measures)."""
    into.append(connections_per_process(port))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path, default=Path("runs/quickstart/export"))
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--channel-share", type=int, default=6)
    args = parser.parse_args()
    tool = perf_analyzer()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "data.json"
        encoded = base64.b64encode(serialize_bytes([SAMPLE.read_bytes()])).decode()
        data.write_text(json.dumps({"data": [{"image": {"b64": encoded}}]}))
        servers = {}
        for label, options in (("--grpc-handoff", ()), ("--no-grpc-handoff", ("--no-grpc-handoff",))):
            http, grpc = free_port(), free_port()
            process = start_rest_server(
                args.artifact, http, "--grpc-port", str(grpc), "--workers", str(WORKERS), *options
            )
            url = f"http://127.0.0.1:{http}"
            servers[label] = process, url, grpc, httpx.get(f"{url}/v1/model").json()["name"] + "_image"
        try:
            time.sleep(3)  # both workers of each server loaded
            for run in range(args.runs):
                for label in list(servers) if run % 2 == 0 else list(servers)[::-1]:
                    _, url, grpc, model = servers[label]
                    before = counters(url)
                    split: list[list[int]] = []
                    looker = threading.Timer(args.seconds * 0.7, look, (grpc, split))
                    looker.start()
                    result = measure(
                        tool, model, f"127.0.0.1:{grpc}", "grpc", 16, data, args.seconds, args.channel_share
                    )
                    looker.join()
                    handed, images, batches = (counters(url)[name] - before[name] for name in COUNTERS)
                    rows.append({"server": label, "run": run, "connections": split[0] if split else [], **result,
                                 "handed_off": handed / images, "mean_batch": images / batches})  # fmt: skip
                    print(rows[-1], flush=True)
        finally:
            for process, *_ in servers.values():
                process.terminate()
                process.wait(timeout=60)
    print(f"\nCPU: {cpu_info()}; perf_analyzer gRPC, concurrency 16, {args.channel_share} contexts per channel")
    print("\n| server | connections per worker | requests/s | p50 ms | p99 ms | calls handed off | mean batch |")
    print("|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["server"], r["connections"], r["run"])):
        split = ":".join(map(str, r["connections"] + [0] * (WORKERS - len(r["connections"]))))
        print(f"| {r['server']} | {split} | {r['requests_per_s']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
              f"{r['handed_off']:.0%} | {r['mean_batch']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
