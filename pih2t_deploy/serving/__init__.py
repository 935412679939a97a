"""Serving an exported artifact: where each change goes.

- ``dataplane.py``: every inference operation (readiness, metadata, config, infer on decoded tensors,
  classify), knowing no HTTP and no gRPC; ``errors.py`` its named errors; ``settings.py`` the limits
  (checked when built); ``batcher.py`` the micro-batcher (it counts the requests on their way to it);
  ``images.py`` decoding uploads with their limits.
- Front ends, thin adapters over the data plane: ``v1.py`` (/v1 routes) and ``v2.py`` (Open Inference
  Protocol over HTTP) are FastAPI routers, ``http_edge.py`` maps the named errors to HTTP statuses;
  ``grpc_service.py`` is the same protocol over gRPC with its own table of codes; ``v2_codec.py`` reads and
  writes the protocol's JSON and binary bodies; ``schemas.py`` the response models (OpenAPI).
- ``rest.py`` builds the FastAPI app (routers, handlers, middleware); ``body_limit.py``, ``metrics.py`` and
  ``header_deadline.py`` are the middleware and protocol limits; ``log_limit.py`` rate-limits repeated logs;
  ``runner.py`` runs HTTP and gRPC under uvicorn with SIGTERM draining; ``process.py`` starts a server process.
- ``demo.py`` is the Gradio demo, ``smoke.py`` the quickstart's check, ``triton/`` the Triton repository
  builder, validator, local server and client.
"""
