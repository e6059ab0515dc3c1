"""Benchmarks of the service's parts at scale (vector store, ...), as libraries the CLI calls."""
