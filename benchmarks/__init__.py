"""ember's benchmark suite: `python -m benchmarks.run` (or `make bench`); see run.py."""
