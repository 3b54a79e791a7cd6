"""stemworker: split songs into stems with DEMUCS, fed by a Redis list and an S3 store.

`handle` is imported on first use, so importing a light module (`function.messages`, `function.config`)
does not load torch and demucs.
"""

from __future__ import annotations

from typing import Any

__all__ = ["handle"]


def __getattr__(name: str) -> Any:
    if name == "handle":
        from function.core import handle

        return handle
    raise AttributeError(f"module 'function' has no attribute {name!r}")
