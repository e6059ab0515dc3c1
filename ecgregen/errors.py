"""The errors `ecgregen` prints as one line and exits 1 on, instead of a traceback.

They are defined here, stdlib only, rather than beside the code that raises them, so that the command line can
catch them without importing that code: the store (Qdrant), the encoders (PyTorch, SciPy) or the gRPC client.
"""

from __future__ import annotations


class ClientError(RuntimeError):
    """A failed call to the server, worded for the terminal (``INVALID_ARGUMENT: expected 12 leads, got 3``)."""


class StoreError(RuntimeError):
    """The engine or the disk failed, the store is closed, or it has no collection yet."""


class EncoderUnavailable(RuntimeError):
    """A remote encoder (Triton) cannot answer now; the request may be retried later."""
