"""stemworker: split songs into stems with DEMUCS, fed by a Redis list and an S3 store."""

from function.core import handle

__all__ = ["handle"]
