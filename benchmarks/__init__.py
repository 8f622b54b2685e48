"""The benches behind BENCHMARKS.md: `python -m benchmarks WHAT` from a checkout."""
