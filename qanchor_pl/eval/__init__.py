"""Evaluation: the linear probe, the baselines, significance, the report, diagnostics."""
