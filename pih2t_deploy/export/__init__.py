"""Exporters: fold, convert (ONNX, ...), verify and write an artifact folder with its metadata."""
