"""cuecard's benchmarks: standalone scripts, and the comparison harness (``python -m benchmarks.harness``)."""
