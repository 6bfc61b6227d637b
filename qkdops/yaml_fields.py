"""One validator for every YAML file people hand us: links.yaml, calibration jobs, SLO specs, game-day
scenarios.

``qkdops.yaml_input`` turns a file into plain data safely; :class:`FieldReader` checks that data field
by field, so every file reports a mistake the same way — ``FILE: FIELD.PATH: expected …, got …`` — with
whatever the file holds clipped to a short excerpt (a hostile value must not make a 300 MB message).

Two modes, because the files' users want two things:

* **fail fast** (the default): the first problem raises, so an accessor's return value is always
  valid — links.yaml and the jobs file build settings from each value as they read it;
* **collecting** (``collect=True``): every problem is recorded and :meth:`FieldReader.finish` raises
  them all at once — SLO spec authors want every mistake of a file in one run. A failed accessor then
  returns None and reading goes on (accessors are typed ``… | None`` for this mode only: failing fast,
  they never return None).

Each file keeps its own error type (``ConfigError``, ``SpecError``, ``ScenarioError``), all
:class:`FieldError`: callers catch the one they know, tools may catch them all.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from qkdops.durations import is_duration
from qkdops.durations import seconds as duration_seconds
from qkdops.yaml_input import YamlInputError, clip, excerpt, load_documents, load_file, load_text

__all__ = ["FieldError", "FieldReader", "describe", "field_path"]

_HOST_NAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")
"""A host name of RFC 1123 labels (letters, digits, inner hyphens; ≤ 63 per label, ≤ 253 in all)."""


class FieldError(ValueError):
    """An invalid file (or files); one line per problem, each ``FILE: FIELD: what``; ``problems`` lists them."""

    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


def describe(value: Any) -> str:
    """What a file held, for a message: a short excerpt with its YAML type where the excerpt alone misleads
    (``'99.9' (a string)``, ``true (a boolean)``, ``nothing (null)``, ``a list [1, 2, …]``)."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, str):
        return f"{excerpt(value)} (a string)"
    if isinstance(value, list):
        return f"a list {excerpt(value)}"
    if isinstance(value, dict):
        return f"a mapping {excerpt(value)}"
    return excerpt(value)


def field_path(where: str, key: Any) -> str:
    """The path of ``key`` inside the field ``where`` (``""``: the document)."""
    return f"{where}.{key}" if where else str(key)


class FieldReader:
    """Typed access to one parsed YAML document; every problem names the file and the field path.

    ``source`` names the file in messages, ``error`` is the file's error type, ``collect`` chooses the
    mode (module docstring). Field paths read ``links[0].detector.efficiency``; the document itself is
    ``top level``.
    """

    def __init__(self, source: str | Path, error: type[FieldError], *, collect: bool = False) -> None:
        self.source = str(source)
        self.error = error
        self.collect = collect
        self.problems: list[str] = []

    # ---- reporting ------------------------------------------------------------------------------------
    def problem(self, where: str, message: str) -> None:
        """Report ``message`` about the field ``where``: raise now, or (collecting) record it. Both may
        quote the input (a key, a site name), so both are clipped."""
        line = f"{self.source}: {clip(where or 'top level', 200)}: {clip(message, 600)}"
        if not self.collect:
            raise self.error(line) from None
        self.problems.append(line)

    def fail(self, where: str, expected: str, got: Any) -> None:
        """Report ``expected …, got …``: the usual problem, with what the file held described briefly."""
        self.problem(where, f"expected {clip(expected, 400)}, got {describe(got)}")

    def finish(self) -> None:
        """Raise every recorded problem at once (collecting mode); nothing if there was none."""
        if self.problems:
            raise self.error(self.problems)

    def load(self, text: str | None = None) -> Any:
        """The document (``text``, else the file ``source``) through ``qkdops.yaml_input``. A refusal
        raises in either mode: without a document there is nothing to check."""
        try:
            return load_file(Path(self.source)) if text is None else load_text(text, self.source)
        except YamlInputError as exc:
            raise self.error(str(exc)) from None

    def documents(self, text: str) -> list[Any]:
        """Every document of the YAML stream ``text`` (``---``-separated), refused as :meth:`load` refuses."""
        try:
            return load_documents(text, self.source)
        except YamlInputError as exc:
            raise self.error(str(exc)) from None

    # ---- shapes ---------------------------------------------------------------------------------------
    def mapping(self, raw: Any, where: str, allowed: Collection[str] | None = None, required: Collection[str] = (),
                rejected: Mapping[str, str] | None = None) -> dict[Any, Any] | None:
        """``raw`` as a mapping whose keys are ``allowed`` (None: any) and include every ``required``
        one; a ``rejected`` key is reported with its own explanation (a feature we do not support)."""
        if not isinstance(raw, dict):
            self.fail(where, "a mapping", raw)
            return None
        for key in raw:
            if rejected and key in rejected:
                self.problem(field_path(where, key), rejected[key])
            elif allowed is not None and key not in allowed and key not in required:
                self.fail(field_path(where, key), f"one of the keys {', '.join(sorted({*allowed, *required}))}", key)
        for key in required:
            if key not in raw:
                self.problem(field_path(where, key), "required field is missing")
        return raw

    def sequence(self, raw: Any, where: str, what: str, *, empty: bool = False) -> list[Any] | None:
        """``raw`` as a list, non-empty unless ``empty``; ``what`` is what was expected (``a non-empty list of SLOs``)."""
        if not isinstance(raw, list) or not (raw or empty):
            self.fail(where, what, raw)
            return None
        return raw

    # ---- scalars --------------------------------------------------------------------------------------
    def string(self, raw: Any, where: str, pattern: re.Pattern[str] | None = None, what: str = "") -> str | None:
        """A non-empty string; with ``pattern``, one it matches in full (``what`` describes the pattern)."""
        return self._text(raw, where, None if pattern is None else pattern.fullmatch, what)

    def choice(self, raw: Any, where: str, options: Sequence[str]) -> str | None:
        if not isinstance(raw, str) or raw not in options:
            self.fail(where, f"one of {', '.join(options)}", raw)
            return None
        return raw

    def boolean(self, raw: Any, where: str) -> bool | None:
        if not isinstance(raw, bool):
            self.fail(where, "true or false", raw)
            return None
        return raw

    def number(self, raw: Any, where: str, minimum: float | None = None, maximum: float | None = None) -> float | None:
        """A finite number within the bounds (inclusive). YAML 1.1 reads ``1e9`` (no dot) as a string:
        a string that is a number counts as one."""
        value = self._finite(raw, where)
        if value is None or not self._within(value, raw, where, "a number", minimum, maximum):
            return None
        return float(value)

    def integer(self, raw: Any, where: str, minimum: int | None = None, maximum: int | None = None) -> int | None:
        """A whole number within the bounds (inclusive); ``5.0`` counts, large integers stay exact."""
        value = self._finite(raw, where)
        if value is None:
            return None
        if value != int(value):
            self.fail(where, "a whole number", raw)
            return None
        if not self._within(value, raw, where, "a whole number", minimum, maximum):
            return None
        return int(value)

    def duration(self, raw: Any, where: str) -> str | None:
        """A positive Prometheus duration (``qkdops.durations``)."""
        return self._text(raw, where, _is_positive_duration, "a Prometheus duration such as 5m, 30d or 1h30m")

    def host(self, raw: Any, where: str) -> str | None:
        """An address to listen on: an IPv4/IPv6 literal or a host name (RFC 1123 labels)."""
        return self._text(raw, where, _is_host, "an IP address or host name")

    def http_url(self, raw: Any, where: str) -> str | None:
        """An http(s) URL with a host (and a valid port, if any)."""
        return self._text(raw, where, _is_http_url, "an http(s) URL such as http://127.0.0.1:4318/v1/traces")

    def fs_path(self, raw: Any, where: str) -> Path | None:
        """A file-system path (no NUL character, which no OS call accepts)."""
        text = self._text(raw, where, lambda t: "\0" not in t, "a path (no NUL characters)")
        return None if text is None else Path(text)

    # ---- helpers --------------------------------------------------------------------------------------
    def _text(self, raw: Any, where: str, valid: Callable[[str], object] | None, expected: str) -> str | None:
        """A non-empty string that ``valid`` accepts; one it refuses is quoted without its type (it is text:
        its form is the problem)."""
        if not isinstance(raw, str) or not raw.strip():
            self.fail(where, "a non-empty string", raw)
            return None
        if valid is not None and not valid(raw):
            self.problem(where, f"expected {clip(expected, 400)}, got {excerpt(raw)}")
            return None
        return raw

    def _finite(self, raw: Any, where: str) -> int | float | None:
        """``raw`` as a finite int or float (ints kept exact), or the problem reported."""
        value = raw
        if isinstance(raw, str):
            try:
                value = float(raw)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(where, "a finite number", raw)
            return None
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an int beyond any float
            finite = False
        if not finite:
            self.fail(where, "a finite number", raw)
            return None
        return value

    def _within(self, value: float, raw: Any, where: str, noun: str, minimum: float | None, maximum: float | None) -> bool:
        if (minimum is None or value >= minimum) and (maximum is None or value <= maximum):
            return True
        if minimum is not None and maximum is not None:
            self.fail(where, f"{noun} in [{minimum}, {maximum}]", raw)
        elif minimum is not None:
            self.fail(where, f"{noun} >= {minimum}", raw)
        else:
            self.fail(where, f"{noun} <= {maximum}", raw)
        return False


def _is_positive_duration(text: str) -> bool:
    return is_duration(text) and duration_seconds(text) > 0


def _is_host(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return _HOST_NAME.fullmatch(text) is not None
    return True


def _is_http_url(text: str) -> bool:
    try:
        parts = urlsplit(text)
        return parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port or 1) > 0
    except ValueError:  # a port that is not a number in 0…65535
        return False
