"""trialfed benchmarks: federated runs vs pooled lifelines fits (``python -m benchmarks.run``)."""
