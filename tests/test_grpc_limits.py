"""The gRPC front end's limits, on a real server on 127.0.0.1 over a fake classifier: calls in progress at once,
message size, and errors that quote a client's long input only in part (so they still fit a message)."""

from __future__ import annotations

import asyncio
import threading

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from pih2t_deploy.serving.dataplane import DataPlane
from pih2t_deploy.serving.grpc_service import GrpcLimits, start_grpc_server
from pih2t_deploy.serving.process import free_port
from pih2t_deploy.serving.settings import ServeSettings
from tests.fakes import FakeClassifier


class GatedFake(FakeClassifier):
    """Once ``holding`` is set, holds every batch until ``gate`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.holding, self.gate = False, threading.Event()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        if self.holding:
            self.gate.wait(10)
        return super().predict(batch)


def infer_request(name: str = "input", model: str = "fake") -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name=name, datatype="FP32", shape=[1, 1, 4, 4])
    request.raw_input_contents.append(np.zeros(16, np.float32).tobytes())
    return request


async def serve_and(scenario, limits: GrpcLimits, classifier: FakeClassifier):
    plane = DataPlane(lambda: classifier, ServeSettings(max_batch=1, max_wait_ms=0))
    await plane.start()
    address = f"127.0.0.1:{free_port()}"
    server = await start_grpc_server(plane, address, limits)
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            return await scenario(service_pb2_grpc.GRPCInferenceServiceStub(channel), classifier)
    finally:
        await server.stop(grace=None)
        await plane.stop()


def test_calls_beyond_the_concurrency_limit_are_refused_and_the_others_answered():
    async def scenario(stub, classifier):
        classifier.holding = True
        held = [asyncio.ensure_future(stub.ModelInfer(infer_request())) for _ in range(2)]
        await asyncio.sleep(0.5)  # both are in progress, waiting for the gate
        try:
            await stub.ModelInfer(infer_request())
        except grpc.aio.AioRpcError as error:
            refused = error.code()
        else:
            refused = None
        classifier.gate.set()
        answers = await asyncio.gather(*held)
        return refused, answers

    refused, answers = asyncio.run(serve_and(scenario, GrpcLimits(1 << 20, max_concurrent_rpcs=2), GatedFake()))
    assert refused == grpc.StatusCode.RESOURCE_EXHAUSTED
    expected = FakeClassifier.expected(np.zeros((1, 1, 4, 4)))
    for answer in answers:
        np.testing.assert_allclose(np.frombuffer(answer.raw_output_contents[0], np.float32), expected.ravel())


def test_a_message_over_the_limit_and_a_long_name_get_short_clear_errors():
    async def scenario(stub, _classifier):
        codes = []
        big = infer_request()
        big.raw_input_contents[0] = b"\0" * 300_000
        long_name = infer_request(name="n" * 100_000)
        for request in (big, long_name, infer_request(model="m" * 100_000)):
            try:
                await stub.ModelInfer(request)
            except grpc.aio.AioRpcError as error:
                codes.append((error.code(), error.details()))
        return codes

    (too_big, _), (bad_name, name_text), (bad_model, model_text) = asyncio.run(
        serve_and(scenario, GrpcLimits(200_000), FakeClassifier())
    )
    assert too_big == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert bad_name == grpc.StatusCode.INVALID_ARGUMENT and len(name_text) < 300 and "(100002 characters)" in name_text
    assert bad_model == grpc.StatusCode.NOT_FOUND and len(model_text) < 300 and model_text.startswith("unknown model")


def test_the_limits_become_grpc_channel_arguments():
    options = dict(GrpcLimits(1000, idle_timeout_s=30, keepalive_s=5, min_client_ping_interval_s=2).options())
    assert options == {
        "grpc.max_receive_message_length": 1000,
        "grpc.max_send_message_length": 1000,
        "grpc.max_concurrent_streams": 100,
        "grpc.max_connection_idle_ms": 30_000,
        "grpc.keepalive_time_ms": 5000,
        "grpc.keepalive_timeout_ms": 20_000,
        "grpc.http2.min_ping_interval_without_data_ms": 2000,
        "grpc.http2.max_ping_strikes": 2,
    }


def test_the_prior_knob_over_grpc_answers_as_over_http():
    """tau as a double parameter and prior as comma-separated text: the answer equals the logits shifted by
    -(tau - 0) log p_train + log q, and says what applied."""

    async def scenario(stub, _classifier):
        request = infer_request()
        request.parameters["tau"].double_param = 1.0
        request.parameters["prior"].string_param = "1,1,2"
        return await stub.ModelInfer(request)

    answer = asyncio.run(serve_and(scenario, GrpcLimits(1 << 20), FakeClassifier()))
    counts = np.array([120, 30, 6], dtype=np.float64)
    shift = -np.log(counts / counts.sum()) + np.log([0.25, 0.25, 0.5])
    expected = FakeClassifier.expected(np.zeros((1, 1, 4, 4))) + shift
    np.testing.assert_allclose(np.frombuffer(answer.raw_output_contents[0], np.float32), expected.ravel(), rtol=1e-5)
    assert answer.parameters["tau"].double_param == 1.0 and answer.parameters["prior"].string_param == "given"
