"""JSON from untrusted senders, decoded within limits: bounded nesting, bounded numbers, finite values only.

`json.loads` recurses once per nesting level (about 1,000 levels of `[` raise RecursionError), turns a number of
more than 4,300 digits into a ValueError (Python's integer digit limit) and accepts `NaN`, `Infinity` and
`1e309` (an infinite float). A message is small (MAX_MESSAGE_BYTES), so none of that is ever needed: the depth
is checked by a scan that does not recurse, before decoding, and numbers and constants are checked while
decoding. Every breach raises `JSONLimitError` (a ValueError) naming the limit.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_DEPTH = 64  # nesting of arrays and objects; a job message uses 3, a callback's data a few more
MAX_NUMBER_CHARS = 40  # characters of one number literal (a float's 17 digits, sign and exponent fit easily)

# A JSON scalar that is not a string: what a bare message must not be taken for (it is not an id).
SCALAR = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|-?[0-9]+|null|true|false|-?Infinity|NaN")
# What changes the nesting or the string state; everything else is skipped by the regex engine in C.
_TOKENS = re.compile(r'[\[\]{}"\\]')


class JSONLimitError(ValueError):
    """The text breaks one of the limits (or holds a non-finite number)."""


def nesting_depth(text: str, limit: int = MAX_DEPTH) -> int:
    """The deepest nesting of arrays and objects outside strings; JSONLimitError as soon as it passes `limit`.
    Linear in the text and never recursive, so it is safe on any input, valid JSON or not."""
    depth = deepest = 0
    in_string = False
    escaped_until = -1
    for match in _TOKENS.finditer(text):
        position, char = match.start(), match.group()
        if position < escaped_until:
            continue
        if in_string:
            if char == "\\":
                escaped_until = position + 2
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                raise JSONLimitError(f"JSON nested deeper than {limit} levels")
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _number(text: str) -> None:
    if len(text) > MAX_NUMBER_CHARS:
        raise JSONLimitError(f"JSON number of {len(text)} characters, over the limit of {MAX_NUMBER_CHARS}")


def _int(text: str) -> int:
    _number(text)
    return int(text)


def _float(text: str) -> float:
    _number(text)
    value = float(text)
    if not math.isfinite(value):
        raise JSONLimitError(f"JSON number {text} is out of range")
    return value


def _constant(name: str) -> Any:
    raise JSONLimitError(f"{name} is not a JSON value")


def loads(text: str | bytes) -> Any:
    """`json.loads` within the limits above; raises json.JSONDecodeError for text that is not JSON and
    JSONLimitError (also a ValueError) for JSON that breaks a limit."""
    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode("utf-8")
    nesting_depth(text)
    return json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
