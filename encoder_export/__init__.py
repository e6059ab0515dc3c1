"""Encoder export for Triton (export.py) and a local tritonserver for development and tests (local_triton.py)."""
