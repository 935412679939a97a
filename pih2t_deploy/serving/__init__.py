"""Serving an exported artifact: where each change goes.

- ``service.py``: the InferenceService every protocol shares (settings checked when built, ApiError,
  readiness, decode and micro-batched inference); ``batcher.py`` the micro-batcher; ``images.py`` decoding
  uploads with their limits.
- ``v1.py`` (/v1 routes) and ``v2.py`` (Open Inference Protocol over HTTP: models, metadata, config, infer)
  are FastAPI routers; ``v2_codec.py`` reads and writes the protocol's JSON and binary bodies;
  ``grpc_service.py`` is the same protocol over gRPC; ``schemas.py`` the response models (OpenAPI).
- ``rest.py`` builds the FastAPI app (routers, handlers, middleware); ``body_limit.py``, ``metrics.py`` and
  ``header_deadline.py`` are the middleware and protocol limits; ``log_limit.py`` rate-limits repeated logs;
  ``runner.py`` runs HTTP and gRPC under uvicorn with SIGTERM draining; ``process.py`` starts a server process.
- ``demo.py`` is the Gradio demo, ``smoke.py`` the quickstart's check, ``triton/`` the Triton repository
  builder, validator, local server and client.
"""
