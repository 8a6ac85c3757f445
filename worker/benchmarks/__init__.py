"""Benchmarks run by `make bench` / `tailtune bench`: ratios measured side by side in one run."""
