"""A stand-in for the `DEMUCS_PRECISION` setting until `function/config.py` declares it.

The worker reads `settings.demucs_precision` with a fp32 fallback (function/core.py). Until the settings
class has that field, the benchmark's reduced-precision variants set BENCH_PRECISION, and this module hands
the worker a copy of its settings carrying that value. Once the field exists, the environment variable
DEMUCS_PRECISION works directly and this shim changes nothing.

    BENCH_PRECISION=bf16 python bench/precision_shim.py [--max-messages N]   # python -m function.job, bf16
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from function.config import Settings


def with_precision(settings: Settings) -> Settings:
    """`settings` with `demucs_precision` from BENCH_PRECISION when the settings class lacks the field."""
    value = os.environ.get("BENCH_PRECISION")
    if not value or "demucs_precision" in type(settings).model_fields:
        return settings
    return settings.model_copy(update={"demucs_precision": value})


def main() -> int:
    from function import job

    read_settings = job.get_settings
    job.get_settings = lambda: with_precision(read_settings())  # type: ignore[assignment]
    return job.main()


if __name__ == "__main__":
    raise SystemExit(main())
