"""Serving: the FastAPI REST service with micro-batching (and, later, the demo and Triton tooling)."""
