"""Benchmarks of worker components; run as modules (``python -m worker.benchmarks.NAME``), not
collected by pytest."""
