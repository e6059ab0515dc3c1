"""Bulk indexing of ECG corpora into the vector store, in-process or through a running server."""
