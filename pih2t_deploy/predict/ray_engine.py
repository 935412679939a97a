"""The same prediction job on a Ray cluster: Ray Data reads the paths, a pool of classifier actors runs the
per-batch code of the single-machine pipeline, and the rows land as Parquet shards in the output folder.

Every worker must see the images at the same paths (a shared file system or the same mount on every node)
and have pih2t-deploy installed with an ONNX Runtime. The work goes in chunks of ``chunk_images``; each
chunk's shards are written to a staging folder and moved into the output when the chunk is complete, so an
interrupted run loses at most the chunk in flight and ``--resume`` skips the paths the shards hold.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pih2t_deploy.errors import ConfigError
from pih2t_deploy.predict.inputs import InputItem, resolve_inputs
from pih2t_deploy.predict.job import PredictResult, finish_run
from pih2t_deploy.predict.rows import PredictionRow
from pih2t_deploy.predict.writers import parquet_schema
from pih2t_deploy.runtime.loader import read_artifact_info

logger = logging.getLogger(__name__)

STAGING_PREFIX = ".staging-"
ACTOR_START_TIMEOUT_S = 300  # how long a run waits for its whole actor pool to start
NODE_COLUMN = "ray_node"  # which node classified a row: counted for the summary, never written


class ClassifierActor:
    """A Ray actor holding one loaded classifier; maps a batch of paths to a table of PredictionRows, with the
    id of the node it runs on in the column ``NODE_COLUMN``."""

    def __init__(self, model: str, backend: str, threads: int | None, top_k: int, workers: int) -> None:
        from pih2t_deploy.runtime.loader import load_classifier

        self.classifier = load_classifier(model, backend, threads=threads)
        self.top_k, self.workers = top_k, workers

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa
        import ray

        from pih2t_deploy.predict.local import stream_rows

        items = [
            InputItem(path, label)
            for path, label in zip(batch["path"].to_pylist(), batch["true_label"].to_pylist(), strict=True)
        ]
        rows = stream_rows(
            self.classifier, items, top_k=self.top_k, batch_size=max(1, len(items)), workers=self.workers
        )
        table = pa.Table.from_pylist([row.to_dict() for row in rows], schema=parquet_schema())
        node = ray.get_runtime_context().get_node_id()
        return table.append_column(NODE_COLUMN, pa.array([node] * table.num_rows, pa.string()))


def shard_rows(folder: Path) -> Iterator[PredictionRow]:
    """Every row of the Parquet shards in ``folder`` (staging folders ignored), in file-name order."""
    import pyarrow.parquet as pq

    for shard in sorted(folder.glob("*.parquet")):
        for batch in pq.ParquetFile(shard).iter_batches():
            yield from (PredictionRow.from_dict(record) for record in batch.to_pylist())


def local_ray_options(address: str | None) -> dict[str, Any]:
    """``ray.init`` options for the Ray instance a run starts itself (no ``--address``): the node advertises
    127.0.0.1 and no dashboard is started (Ray's own gRPC servers still listen on every interface in Ray
    2.60; its token authentication guards them, see docs/security.md). A named cluster is used as it is."""
    if address is not None:
        return {}
    return {"_node_ip_address": "127.0.0.1", "include_dashboard": False}


def run_on_ray(
    model: str | Path,
    source: str,
    output: Path,
    *,
    address: str | None = None,
    num_workers: int = 2,
    top_k: int = 5,
    batch_size: int = 64,
    backend: str = "onnxruntime",
    threads: int | None = None,
    resume: bool = False,
    chunk_images: int = 10_000,
    progress: bool = True,
    log: Callable[[str], None] = logger.info,
) -> PredictResult:
    """Classify ``source`` with ``num_workers`` actors on the Ray cluster at ``address`` (``auto``, HOST:PORT,
    or None for a local instance); rows go to Parquet shards in the folder ``output``."""
    import ray

    model_dir = Path(model)
    if not model_dir.is_dir():
        raise ConfigError(f"--engine ray needs an artifact folder as --model (got {model})")
    if output.suffix.lower() in (".jsonl", ".csv"):
        raise ConfigError(f"--engine ray writes Parquet shards into a folder: pass --output FOLDER, not {output}")
    if num_workers < 1:
        raise ConfigError(f"--num-workers must be at least 1, got {num_workers}")
    info = read_artifact_info(model_dir)
    inputs = resolve_inputs(source, info.labels)
    if output.exists() and any(output.glob("*.parquet")) and not resume:
        raise ConfigError(f"--output {output} holds results: pass --resume to continue it, or choose another")
    output.mkdir(parents=True, exist_ok=True)
    for stale in output.glob(STAGING_PREFIX + "*"):  # an interrupted chunk: its rows were never published
        shutil.rmtree(stale, ignore_errors=True)
    done = {row.path for row in shard_rows(output)}
    pending = (item for item in inputs if item.path not in done)
    ray.init(
        address=address,
        **local_ray_options(address),
        ignore_reinit_error=True,
        log_to_driver=False,
        logging_level=logging.ERROR,
    )
    cpus, needed = int(ray.cluster_resources().get("CPU", 0)), num_workers * (threads or 1)
    if address is None and needed > cpus:  # a local instance cannot grow: say so now, not after the timeout
        raise ConfigError(
            f"--num-workers {num_workers} x {threads or 1} thread(s) needs {needed} CPUs and this machine's Ray has "
            f"{cpus}; lower --num-workers, or pass --address of a larger cluster"
        )
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    # every actor of the pool up before the first batch: otherwise the first one ready may classify a small job
    # alone, and a cluster that cannot hold the pool fails here with a reason instead of running short-handed
    context.wait_for_min_actors_s = ACTOR_START_TIMEOUT_S
    started, written, per_node = time.perf_counter(), 0, Counter[str]()
    actor_args = {
        "model": str(model_dir.resolve()),
        "backend": backend,
        "threads": threads,
        "top_k": top_k,
        "workers": threads or 1,
    }
    while chunk := list(itertools.islice(pending, chunk_images)):
        staging = output / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
        dataset = ray.data.from_items([{"path": i.path, "true_label": i.true_label} for i in chunk])
        try:
            classified = dataset.map_batches(
                ClassifierActor,
                fn_constructor_kwargs=actor_args,
                batch_size=batch_size,
                batch_format="pyarrow",
                concurrency=num_workers,
                num_cpus=threads or 1,
            ).materialize()
        except ray.exceptions.GetTimeoutError:
            raise ConfigError(
                f"Ray did not start {num_workers} classifier actors of {threads or 1} CPU(s) each within "
                f"{ACTOR_START_TIMEOUT_S} s: the cluster lacks the CPUs; lower --num-workers or --threads"
            ) from None
        per_node.update(row[NODE_COLUMN] for row in classified.select_columns([NODE_COLUMN]).iter_rows())
        classified.drop_columns([NODE_COLUMN]).write_parquet(str(staging))
        for shard in sorted(staging.glob("*.parquet")):
            os.replace(shard, output / f"{staging.name.removeprefix(STAGING_PREFIX)}-{shard.name}")
        shutil.rmtree(staging, ignore_errors=True)
        written += len(chunk)
        log(f"{written} images classified on Ray ({len(per_node)} nodes)")
    seconds = time.perf_counter() - started
    engine = {
        "model": str(model),
        "engine": "ray",
        "address": address,
        "num_workers": num_workers,
        "images_per_node": dict(sorted(per_node.items())),  # Ray node id -> images its actors classified
    }
    return finish_run(
        output, shard_rows(output), info, inputs=inputs, written=written, skipped=len(done), seconds=seconds,
        engine=engine,
    )  # fmt: skip
