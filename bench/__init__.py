"""The benchmark harness (never imported by `function/`)."""
