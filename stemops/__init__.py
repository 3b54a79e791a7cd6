"""stemops: the operator's side of stemworker, shipped in the image beside the worker but not part of it.

`stemworker` (stemops/cli.py) reads the worker's settings and talks to Redis (and S3 for `flood`): queue stats,
recent jobs, a live view of one job, dead-letter operations, a load test, and the Prometheus exporter
(stemops/exporter.py). It imports `function` (settings, clients, keys); `function` never imports it.
"""
