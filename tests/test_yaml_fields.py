"""qkdops.yaml_fields.FieldReader: the one validator behind links.yaml, the jobs file, SLO specs and game-day
scenarios. Both modes (fail fast, collect every problem), messages that name the file and the field path,
and input echoed only as a short excerpt however hostile it is."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from qkdops.yaml_fields import FieldError, FieldReader, describe


class DemoError(FieldError):
    """A file type of its own, as each reader's caller has."""


def _fast() -> FieldReader:
    return FieldReader(Path("conf/demo.yaml"), DemoError)


def test_failing_fast_raises_the_files_error_at_the_first_problem() -> None:
    reader = _fast()
    with pytest.raises(DemoError) as caught:
        reader.number("fast", "links[0].distance_km", 0.0, 500.0)
    assert str(caught.value) == "conf/demo.yaml: links[0].distance_km: expected a finite number, got 'fast' (a string)"
    assert caught.value.problems == [str(caught.value)] and reader.problems == []
    assert caught.value.__suppress_context__   # raised from an accessor, not "during handling of" something


def test_collecting_records_every_problem_and_raises_them_once() -> None:
    reader = FieldReader("slo/demo.yaml", DemoError, collect=True)
    data = reader.mapping({"name": "", "objective": True, "extra": 1}, "slos[0]", ["objective"], required=["name", "sli"])
    assert data is not None
    assert reader.string(data["name"], "slos[0].name") is None
    assert reader.integer(data["objective"], "slos[0].objective", 0) is None
    assert reader.number(2.5, "slos[0].ok", 0, 10) == 2.5   # a valid value still reads
    with pytest.raises(DemoError) as caught:
        reader.finish()
    assert caught.value.problems == [
        "slo/demo.yaml: slos[0].extra: expected one of the keys name, objective, sli, got 'extra' (a string)",
        "slo/demo.yaml: slos[0].sli: required field is missing",
        "slo/demo.yaml: slos[0].name: expected a non-empty string, got '' (a string)",
        "slo/demo.yaml: slos[0].objective: expected a finite number, got true (a boolean)",
    ]
    assert str(caught.value) == "\n".join(caught.value.problems)


def test_finish_without_problems_and_the_document_itself() -> None:
    reader = FieldReader("x.yaml", DemoError, collect=True)
    reader.finish()
    reader.mapping([1], "", None)
    assert reader.problems == ["x.yaml: top level: expected a mapping, got a list [1]"]


@pytest.mark.parametrize(("read", "expected"), [
    (lambda r: r.choice("jaeger", "runtime.tracing", ("none", "otlp")), "runtime.tracing: expected one of none, otlp, got 'jaeger'"),
    (lambda r: r.boolean("no", "jobs.x.enabled"), "jobs.x.enabled: expected true or false, got 'no' (a string)"),
    (lambda r: r.integer(1.5, "runtime.port", 1, 65535), "runtime.port: expected a whole number, got 1.5"),
    (lambda r: r.integer(70000, "runtime.port", 1, 65535), "runtime.port: expected a whole number in [1, 65535], got 70000"),
    (lambda r: r.integer(-1, "qkdops.min_events", 0), "qkdops.min_events: expected a whole number >= 0, got -1"),
    (lambda r: r.number(float("nan"), "a.b"), "a.b: expected a finite number, got nan"),
    (lambda r: r.number(10 ** 400, "a.b"), "a.b: expected a finite number, got 1000"),
    (lambda r: r.number(2.0, "a.b", None, 1.0), "a.b: expected a number <= 1.0, got 2.0"),
    (lambda r: r.duration("5 minutes", "alert.for"), "alert.for: expected a Prometheus duration such as 5m, 30d or 1h30m, got '5 minutes'"),
    (lambda r: r.duration("0s", "alert.for"), "alert.for: expected a Prometheus duration"),
    (lambda r: r.host("lab north!", "runtime.bind"), "runtime.bind: expected an IP address or host name, got 'lab north!'"),
    (lambda r: r.http_url("http://x:99999/", "runtime.otlp_endpoint"), "runtime.otlp_endpoint: expected an http(s) URL"),
    (lambda r: r.fs_path("a\0b", "runtime.state_dir"), "runtime.state_dir: expected a path (no NUL characters)"),
    (lambda r: r.string("my id\n", "links[0].id", re.compile(r"[a-z]+"), "lower-case letters"),
     "links[0].id: expected lower-case letters, got 'my id\\n'"),
    (lambda r: r.sequence([], "links", "a non-empty list of links"), "links: expected a non-empty list of links, got a list []"),
    (lambda r: r.mapping({"plugin": {}}, "sli", [], rejected={"plugin": "plugins are not supported"}),
     "sli.plugin: plugins are not supported"),
])
def test_every_accessor_names_the_file_and_the_field(read, expected: str) -> None:
    with pytest.raises(DemoError) as caught:
        read(_fast())
    assert str(caught.value).startswith(f"conf/demo.yaml: {expected}"), str(caught.value)


def test_valid_values_come_back_typed() -> None:
    reader = _fast()
    assert reader.number("1e9", "a") == 1e9                       # YAML 1.1 reads 1e9 as a string
    assert reader.integer(2 ** 62 + 1, "a", 0, 2 ** 63) == 2 ** 62 + 1   # exact, not through a float
    assert reader.integer(8.0, "a") == 8
    assert reader.host("::1", "a") == "::1" and reader.host("lab-north.example", "a") == "lab-north.example"
    assert reader.http_url("https://prom:9090/", "a") == "https://prom:9090/"
    assert reader.fs_path("var/qkdops", "a") == Path("var/qkdops")
    assert reader.duration("1h30m", "a") == "1h30m"
    assert reader.sequence([], "a", "a list", empty=True) == []
    assert reader.mapping({"a": 1}, "x", {"a"}, required=["a"]) == {"a": 1}


def test_a_hostile_value_key_or_path_is_clipped_in_the_message() -> None:
    huge = "x" * 100_000
    deep: list = []
    for _ in range(500):
        deep = [deep, deep]
    for read in (lambda r: r.number(huge, "a"), lambda r: r.mapping(deep, "a"), lambda r: r.string(huge, "a", re.compile("y"), "y"),
                 lambda r: r.mapping({huge: 1}, "a", {"b"}), lambda r: r.problem(huge, huge)):
        with pytest.raises(DemoError) as caught:
            read(_fast())
        message = str(caught.value)
        assert message.startswith("conf/demo.yaml: ") and len(message) < 1000 and "x" * 601 not in message, message[:300]
    with pytest.raises(DemoError) as caught:
        _fast().number(huge, "links[0].distance_km")
    assert str(caught.value) == f"conf/demo.yaml: links[0].distance_km: expected a finite number, got '{'x' * 27}...{'x' * 28}' (a string)"


def test_describe_says_the_yaml_type_where_an_excerpt_misleads() -> None:
    assert describe(None) == "nothing (null)"
    assert describe(False) == "false (a boolean)"
    assert describe("99.9") == "'99.9' (a string)"
    assert describe(99.9) == "99.9"
    assert describe({"a": 1}) == "a mapping {'a': 1}"
    assert describe(list(range(100))) == "a list [0, 1, 2, 3, ...]"


def test_loading_refusals_raise_the_files_error_in_either_mode(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("a: 1\na: 2\n")
    for collect in (False, True):
        with pytest.raises(DemoError, match=rf"^{re.escape(str(path))}: line 2, column 1: invalid YAML: duplicate key 'a'$"):
            FieldReader(path, DemoError, collect=collect).load()
    assert FieldReader("t.yaml", DemoError).load("a: [1, 2]\n") == {"a": [1, 2]}
