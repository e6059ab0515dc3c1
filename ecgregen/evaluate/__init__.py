"""Evaluation: the paper's Table I (report generation) and Table II (ECG-QA)."""
