"""Quality of reduced precision on a trained separator: a synthetic multi-track generator, a small HTDemucs
trained on it, and a gate comparing fp32 / bf16 / int8 stems by SDR (see docs/quality.md)."""
