"""The data plane: every inference operation of the service, knowing no HTTP and no gRPC.

``DataPlane`` holds the served model's state (classifier, micro-batcher, decode threads, metrics, readiness)
and offers the operations both front ends expose: readiness, server and model metadata, the Triton model
configuration, Open Inference Protocol inference on decoded tensors (``infer``) and image classification
(``classify``). Failures are the named errors of ``serving.errors``; the front ends (``v1.py``/``v2.py`` over
HTTP, ``grpc_service.py`` over gRPC) parse their wire format into the requests below, call these operations
and map the errors in one table each.

One artifact is served under two model names, as the generated Triton repository serves it, so that each
model's metadata lists exactly what a client sends:
- ``<name>``: input ``input`` (FP32 [N, C, H, W], preprocessed; UINT8 [N, H, W, C] pixels for an artifact
  exported with --embed-preprocessing). Encoded images in ``image`` are accepted here too.
- ``<name>_image``: input ``image`` (BYTES [N] or [N, 1], encoded images that the service preprocesses).
Output: ``logits`` (FP32 [N, K]); with ``parameters.classification = k`` the top k as BYTES strings
``"value:index:label"`` (Triton's classification extension).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from pih2t_deploy import __version__
from pih2t_deploy.artifact import LABELS_FILE
from pih2t_deploy.data import longtail
from pih2t_deploy.runtime import Classifier
from pih2t_deploy.serving import schemas
from pih2t_deploy.serving.batcher import MicroBatcher
from pih2t_deploy.serving.client_numbers import parse_whole_number
from pih2t_deploy.serving.errors import (
    InvalidInput,
    InvalidParameter,
    ModelNotFound,
    NotSupported,
    PayloadTooLarge,
    Unavailable,
    quote,
)
from pih2t_deploy.serving.images import decode_batch, peek_batch
from pih2t_deploy.serving.metrics import ServiceMetrics
from pih2t_deploy.serving.prior_knob import PriorRequest
from pih2t_deploy.serving.prior_knob import parse_request as parse_prior_request
from pih2t_deploy.serving.settings import ServeSettings
from pih2t_deploy.serving.v2_codec import Tensor
from pih2t_deploy.serving.watch import LongTail

OUTPUT = "logits"
TENSOR_INPUT, IMAGE_INPUT = "input", "image"
IMAGE_MODEL_SUFFIX = "_image"
EXTENSIONS = ["classification", "binary_tensor_data"]
INLINE_DECODE_PIXELS = 64 * 64  # decoding this few pixels takes less time than handing it to a thread

Read = TypeVar("Read")


@dataclass
class InferRequest:
    """An Open Inference Protocol request, decoded by a front end: its input tensors, the outputs asked for
    (each ``{"name": ..., "parameters": {...}}``; none means ``logits``), its id and its request-level
    parameters (``tau``, ``prior``: the long-tail knob)."""

    tensors: list[Tensor]
    outputs: list[dict[str, Any]] = field(default_factory=list)
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class OutputTensor:
    """One output of an answer: FP32 logits (a numpy array) or BYTES classification strings (a list)."""

    name: str
    datatype: str
    shape: list[int]
    values: Any


@dataclass
class InferResult:
    """The answer to an InferRequest: the model and version that computed it, the request's id, the outputs
    in the order they were asked for, and the answer's parameters (what prior applied; empty when none)."""

    model_name: str
    model_version: str
    id: str | None
    outputs: list[OutputTensor]
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class ClassifyRequest:
    """Encoded images (``(name, bytes)`` pairs) and the raw ``top_k``, ``tau`` and ``prior`` a client sent
    (None: the default)."""

    images: list[tuple[str, bytes]]
    top_k: object = None
    tau: object = None
    prior: object = None


class DataPlane:
    """One served model: ``start`` loads and warms it up, ``stop`` drains it; the operations in between."""

    def __init__(self, load: Callable[[], Classifier], settings: ServeSettings | None = None) -> None:
        self.load = load
        self.settings = settings or ServeSettings()
        self.metrics = ServiceMetrics()
        self.classifier: Classifier | None = None
        self.batcher: MicroBatcher | None = None
        self.longtail: LongTail | None = None
        self.load_error: str | None = None
        self.draining = False
        self._loaded = False
        # a few dedicated decode threads: bounded CPU contention with inference and bounded per-thread memory
        self.decode_pool = ThreadPoolExecutor(self.settings.decode_workers, thread_name_prefix="pih2t-decode")

    # ------------------------------------------------------------------ lifecycle and health
    @property
    def live(self) -> bool:
        """False once the model failed to load (an orchestrator should restart the process)."""
        return self.load_error is None

    @property
    def serving(self) -> bool:
        """Loaded, warmed up and its batch worker running: requests are answered (also while draining)."""
        return self._loaded and self.batcher is not None and self.batcher.healthy

    @property
    def ready(self) -> bool:
        """Serving and not shutting down: what readiness probes report."""
        return self.serving and not self.draining

    async def start(self) -> None:
        """Load the classifier in a thread, run one batch of each served size, start the batcher. A load
        failure is kept in ``load_error`` (liveness reports it)."""
        started = time.perf_counter()
        try:
            classifier = await asyncio.to_thread(self.load)
            for size in sorted({1, self.settings.max_batch}):
                await asyncio.to_thread(
                    classifier.predict, np.zeros((size, *classifier.input_shape), classifier.input_dtype)
                )
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            return
        self.metrics.load_seconds.set(time.perf_counter() - started)
        self.longtail = LongTail(classifier.info, self.settings, self.metrics)
        self.classifier = classifier
        self.batcher = MicroBatcher(
            classifier.predict,
            max_batch=self.settings.max_batch,
            max_wait_ms=self.settings.max_wait_ms,
            max_queue=self.settings.max_queue,
            timeout_s=self.settings.timeout_s,
            on_batch=self.metrics.batch_size.observe,
            hold_for_arrivals=True,
            parallel_batches=classifier.parallel_batches,
        )
        self.batcher.start()
        self._loaded = True

    async def stop(self) -> None:
        """Not ready from now on; finish queued work, then release the decode threads."""
        self.draining, self._loaded = True, False
        if self.batcher is not None:
            await self.batcher.stop()
        if self.longtail is not None:
            self.longtail.close()
        self.decode_pool.shutdown(wait=True)

    def require_ready(self) -> Classifier:
        """The classifier; Unavailable while loading or after shutdown began (draining still serves)."""
        if not self.serving or self.classifier is None:
            raise Unavailable("the model is not ready yet")
        return self.classifier

    def resolve(self, name: str, version: str | None = None) -> tuple[Classifier, str]:
        """The classifier behind model ``name`` (and ``version``, when given) and the input its metadata lists;
        ModelNotFound for any other name or version."""
        classifier = self.require_ready()
        served = classifier.info.name
        listed = IMAGE_INPUT if name == served + IMAGE_MODEL_SUFFIX else TENSOR_INPUT
        if name not in (served, served + IMAGE_MODEL_SUFFIX):
            raise ModelNotFound(f"unknown model {quote(name)}; this server serves {served!r}")
        if version is not None and version != classifier.info.version:
            raise ModelNotFound(
                f"unknown version {quote(version)} of model {quote(name)}; this server serves "
                f"{classifier.info.version!r}"
            )
        return classifier, listed

    def model_ready(self, name: str, version: str | None = None) -> bool:
        """Ready, and ``name`` (and version) is served here."""
        try:
            self.resolve(name, version)
        except (ModelNotFound, Unavailable):
            return False
        return self.ready

    # ------------------------------------------------------------------ metadata
    @staticmethod
    def server_metadata() -> schemas.ServerMetadata:
        """Server name, version and protocol extensions."""
        return schemas.ServerMetadata(name="pih2t-serve", version=__version__, extensions=EXTENSIONS)

    def model_metadata(self, name: str, version: str | None = None) -> schemas.ModelMetadata:
        """The one input a client sends to ``name``, and the output."""
        classifier, listed = self.resolve(name, version)
        if listed == IMAGE_INPUT:
            inputs = [schemas.TensorMetadata(name=IMAGE_INPUT, datatype="BYTES", shape=[-1, 1])]
        else:
            shape = [-1, *classifier.input_shape]
            inputs = [schemas.TensorMetadata(name=TENSOR_INPUT, datatype=_datatype(classifier), shape=shape)]
        return schemas.ModelMetadata(
            name=name,
            versions=[classifier.info.version],
            platform=f"pih2t_{classifier.backend}",
            inputs=inputs,
            outputs=[schemas.TensorMetadata(name=OUTPUT, datatype="FP32", shape=[-1, classifier.info.num_classes])],
            parameters=self.request_parameters() or None,
        )

    def model_config(self, name: str, version: str | None = None) -> dict[str, Any]:
        """The model configuration of ``name`` in Triton's JSON form: the largest batch, the input, and the
        output with its labels file."""
        classifier, listed = self.resolve(name, version)
        pixels = classifier.info.pixel_input
        if listed == IMAGE_INPUT:
            model_input = {"name": IMAGE_INPUT, "data_type": "TYPE_STRING", "dims": [1]}
        else:
            model_input = {
                "name": TENSOR_INPUT,
                "data_type": "TYPE_UINT8" if pixels else "TYPE_FP32",
                "format": "FORMAT_NHWC" if pixels else "FORMAT_NCHW",
                "dims": list(classifier.input_shape),
            }
        output = {"name": OUTPUT, "data_type": "TYPE_FP32", "dims": [classifier.info.num_classes]}
        return {
            "name": name,
            "platform": f"pih2t_{classifier.backend}",
            "max_batch_size": self.settings.max_batch,
            "input": [model_input],
            "output": [{**output, "label_filename": LABELS_FILE}],
            "dynamic_batching": {"max_queue_delay_microseconds": int(self.settings.max_wait_ms * 1000)},
            "parameters": {key: {"string_value": text} for key, text in self.request_parameters().items()},
        }

    def request_parameters(self) -> dict[str, str]:
        """The request parameters this model takes beyond the protocol's, described for its metadata."""
        longtail = self._long_tail()
        if longtail.model is None:
            return {}
        names = ", ".join(sorted(longtail.registered)) or "none registered"
        return {
            "tau": f"number in [0, 10]: logit-adjustment strength (folded at export: {longtail.model.folded_tau:g})",
            "prior": f"deployment class prior: one non-negative number per class, or a registered name ({names})",
        }

    # ------------------------------------------------------------------ inference
    async def _arriving(self, read: Callable[[], Awaitable[Read]], then: Callable[[Read], Awaitable[Any]]) -> Any:
        """``then(await read())`` counted as on its way to the batcher (so a batch waits for it)."""
        self.require_ready()
        batcher = self.batcher
        assert batcher is not None  # ready implies a batcher
        with batcher.arriving():
            return await then(await read())

    async def predict(self, batch: np.ndarray) -> np.ndarray:
        """Logits through the micro-batcher (Unavailable when its queue is full, DeadlineExceeded on timeout)."""
        self.require_ready()
        batcher = self.batcher
        assert batcher is not None  # ready implies a batcher
        try:
            return await batcher.submit(batch)
        finally:
            self.metrics.queue_depth.set(batcher.depth)

    async def decode(self, blobs: list[tuple[str, bytes]]) -> np.ndarray:
        """Preprocessed batch for encoded images. Small images (at most INLINE_DECODE_PIXELS in all, from
        their headers) are decoded on the event loop, where a hand-off to a thread would cost more than the
        decoding; larger ones in a decode thread."""
        classifier = self.require_ready()
        if len(blobs) > self.settings.max_batch:
            raise PayloadTooLarge(f"{len(blobs)} images in one request; the limit is {self.settings.max_batch}")
        peeked, pixels = peek_batch(blobs, self.settings.max_pixels, self.settings.max_request_pixels)
        if pixels <= INLINE_DECODE_PIXELS:
            return decode_batch(peeked, classifier.prepare)
        return await asyncio.get_running_loop().run_in_executor(
            self.decode_pool, decode_batch, peeked, classifier.prepare
        )

    async def infer(self, name: str, version: str | None, read: Callable[[], Awaitable[InferRequest]]) -> InferResult:
        """Open Inference Protocol inference: ``read`` (the front end's parser, awaited while the request is
        counted as on its way) gives the decoded request; the answer holds the outputs asked for."""
        classifier, _ = self.resolve(name, version)
        request, prior, batch = await self._arriving(read, lambda req: self._with_batch(req, classifier))
        for output in request.outputs:
            if output.get("name") != OUTPUT:
                raise InvalidInput(f"unknown output {quote(output.get('name'))}; this model has one output, {OUTPUT!r}")
        logits = await self.predict(batch)
        if not np.isfinite(logits).all():
            raise InvalidInput("the model's outputs for this input are not finite numbers; check the input's range")
        tensor = request.tensors[0]
        answer = self._long_tail().answer(logits, prior, tensor.data if tensor.name == IMAGE_INPUT else batch)
        outputs = [self._output(answer.logits, classifier, item) for item in request.outputs or [{"name": OUTPUT}]]
        return InferResult(name, classifier.info.version, request.id, outputs, answer.parameters)

    def _long_tail(self) -> LongTail:
        assert self.longtail is not None  # ready implies loaded
        return self.longtail

    def prior_request(self, tau: object, prior: object) -> PriorRequest:
        """A request's tau / prior, checked (InvalidInput, HTTP 400, for a bad value)."""
        longtail = self._long_tail()
        return parse_prior_request(tau, prior, longtail.model, longtail.registered)

    async def _with_batch(
        self, request: InferRequest, classifier: Classifier
    ) -> tuple[InferRequest, PriorRequest, np.ndarray]:
        if len(request.tensors) != 1:
            raise InvalidInput(f"send exactly one input ('input' or 'image'), got {len(request.tensors)}")
        prior = self.prior_request(request.parameters.get("tau"), request.parameters.get("prior"))
        return request, prior, await self._batch_from(request.tensors[0], classifier)

    async def _batch_from(self, tensor: Tensor, classifier: Classifier) -> np.ndarray:
        """The model-ready batch of an ``input`` tensor, or of the encoded images of an ``image`` tensor."""
        dims = ", ".join(map(str, classifier.input_shape))
        max_batch = self.settings.max_batch
        if tensor.name == TENSOR_INPUT:
            if tensor.datatype != _datatype(classifier):
                raise InvalidInput(f"input 'input' must be {_datatype(classifier)}, got {tensor.datatype}")
            if len(tensor.shape) != 4 or tuple(tensor.shape[1:]) != classifier.input_shape or tensor.shape[0] < 1:
                raise InvalidInput(f"input 'input' must have shape [N, {dims}] with N >= 1, got {tensor.shape}")
            if tensor.shape[0] > max_batch:
                raise PayloadTooLarge(f"batch of {tensor.shape[0]} exceeds the limit of {max_batch}")
            return np.ascontiguousarray(tensor.data, dtype=classifier.input_dtype)
        if tensor.name == IMAGE_INPUT:
            if tensor.datatype != "BYTES":
                raise InvalidInput(f"input 'image' must be BYTES (encoded images), got {tensor.datatype}")
            if not (len(tensor.shape) == 1 or (len(tensor.shape) == 2 and tensor.shape[1] == 1)) or not tensor.data:
                raise InvalidInput(f"input 'image' must have shape [N] or [N, 1], got {tensor.shape}")
            return await self.decode([(f"image[{i}]", blob) for i, blob in enumerate(tensor.data)])
        raise InvalidInput(
            f"unknown input {quote(tensor.name)}; send 'input' ({_datatype(classifier)} [N, {dims}]) or 'image' (BYTES)"
        )

    @staticmethod
    def _output(logits: np.ndarray, classifier: Classifier, item: dict[str, Any]) -> OutputTensor:
        """Logits (FP32), or with ``parameters.classification = k`` the top k as "value:index:label" (BYTES)."""
        k = (item.get("parameters") or {}).get("classification")
        if k is None:
            return OutputTensor(OUTPUT, "FP32", list(logits.shape), logits.astype(np.float32))
        if type(k) is not int or not 1 <= k <= classifier.info.num_classes:
            raise InvalidInput(f"classification must be an integer between 1 and {classifier.info.num_classes}")
        labels = classifier.info.labels
        order = longtail.top_k(logits, k)
        values = [f"{row[i]:f}:{i}:{labels[i]}".encode() for row, idx in zip(logits, order, strict=True) for i in idx]
        return OutputTensor(OUTPUT, "BYTES", [len(logits), k], values)

    async def classify(self, read: Callable[[], Awaitable[ClassifyRequest]]) -> schemas.ClassifyResponse:
        """Top-k labels with probabilities for each encoded image that ``read`` gives (awaited while the
        request is counted as on its way)."""
        classifier = self.require_ready()

        async def decoded(request: ClassifyRequest) -> tuple[ClassifyRequest, int, PriorRequest, np.ndarray]:
            k = parse_top_k(request.top_k, classifier.info.num_classes, self.settings.default_top_k)
            prior = self.prior_request(request.tau, request.prior)
            return request, k, prior, await self.decode(request.images)

        request, k, prior, batch = await self._arriving(read, decoded)
        logits = await self.predict(batch)
        self.metrics.images.inc(len(request.images))
        answer = self._long_tail().answer(logits, prior, [blob for _, blob in request.images])
        probs = answer.probabilities
        labels = classifier.info.labels
        results = [
            schemas.ImageResult(
                filename=image_name,
                predictions=[schemas.Prediction(label=labels[i], index=int(i), score=float(row[i])) for i in idx],
            )
            for (image_name, _), row, idx in zip(request.images, probs, longtail.top_k(probs, k), strict=True)
        ]
        response = schemas.ClassifyResponse(
            model=classifier.info.name, version=classifier.info.version, results=results
        )
        if answer.parameters:
            response.prior = answer.parameters  # set only when applied: without it the answer is unchanged
        return response

    def label_shift(self) -> dict[str, Any]:
        """The label-shift report of the served model (NotSupported without a watch). Runs EM when due: call
        it off the event loop."""
        report = self._long_tail().report() if self.serving else None
        if report is None:
            self.require_ready()
            raise NotSupported(
                "label shift is not watched here: the server runs with --no-watch, or the model records no "
                "training counts per class"
            )
        return report


def parse_top_k(raw: object, num_classes: int, default: int) -> int:
    """top_k from a query/form/JSON value (ASCII digits only): 1 <= k <= classes, else InvalidParameter."""
    if raw is None or raw == "":
        return min(default, num_classes)
    k = parse_whole_number(raw)
    if k is None:
        raise InvalidParameter(f"top_k must be a whole number, got {quote(raw)}")
    if not 1 <= k <= num_classes:
        raise InvalidParameter(f"top_k must be between 1 and {num_classes}, got {k}")
    return k


def _datatype(classifier: Classifier) -> str:
    return "UINT8" if classifier.info.pixel_input else "FP32"
