"""Experiments: the PyTorch baseline, benchmarks and config files (not part of the library)."""
