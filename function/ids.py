"""What a job id is: the one alphabet, and the message fields it is read from (in this order)."""

from __future__ import annotations

import re

ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,128}", re.ASCII)
ID_FIELDS = ("songhash", "hash", "id")
