"""Encoder export for Triton (issue 8); see README.md in this folder."""
