"""One reader for every JSON request body a qkdops server accepts: control API, pager sink, KMEs.

``json.loads`` on its own accepts ``NaN`` and ``Infinity`` (not JSON), and on a deeply nested body
raises ``RecursionError`` — not a ``ValueError`` — which a server that catches only ``ValueError``
turns into a dropped connection with no answer (a KME did, issue 15). ``load_json`` refuses bodies
that are not UTF-8, not JSON, use those constants or nest deeper than ``MAX_DEPTH``, always with a
``JsonInputError`` whose message is short (it never quotes the body), for the server to answer 400.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

__all__ = ["MAX_DEPTH", "JsonInputError", "load_json"]

MAX_DEPTH = 32
"""Deepest nesting of arrays and objects accepted (the deepest body any API here takes has 4 levels)."""


class JsonInputError(ValueError):
    """A request body refused; the message says why in a few words."""


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), iteratively: the value may be ~1,000 levels deep."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth + 1)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def load_json(raw: bytes) -> Any:
    """The JSON value of a request body, or ``JsonInputError``."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise JsonInputError("request body is not UTF-8 text") from None
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise JsonInputError(f"request body is not valid JSON here: nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError, and NaN/Infinity
        message = str(exc)
        raise JsonInputError(f"request body is not valid JSON: {message[:120]}") from None
    if _depth(value) > MAX_DEPTH:
        raise JsonInputError(f"request body is not valid JSON here: nested deeper than {MAX_DEPTH} levels")
    return value
