"""Python-backend model files copied into generated Triton repositories as ``<version>/model.py``."""
