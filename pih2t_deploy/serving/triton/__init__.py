"""Triton Inference Server: model repository builder, validator, local server launcher and client."""
