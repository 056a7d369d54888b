"""trialfed benchmarks: federated runs against the pooled lifelines fit (``python -m benchmarks.run``)."""
