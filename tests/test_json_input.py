"""qkdops.json_input: the one JSON body reader of the control API, the pager sink and the KMEs."""

from __future__ import annotations

import pytest

from qkdops.json_input import MAX_DEPTH, JsonInputError, load_json


@pytest.mark.parametrize(("body", "fragment"), [
    (b"[" * 100_000, "nested deeper than 32"),                        # RecursionError inside json
    (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "nested deeper than 32"),   # parses, too deep
    (b'{"a": {"b": ' * 40 + b"1" + b"}}" * 40, "nested deeper than 32"),
    (b'{"x": NaN}', "NaN is not a JSON number"), (b"[Infinity]", "Infinity is not a JSON number"),
    (b"\xff\xfe", "not UTF-8"), (b"{not json", "not valid JSON"),
])
def test_hostile_bodies_are_refused_with_a_short_message(body: bytes, fragment: str) -> None:
    with pytest.raises(JsonInputError) as refused:
        load_json(body)
    assert fragment in str(refused.value) and len(str(refused.value)) < 200


def test_ordinary_bodies_parse() -> None:
    nested = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    assert load_json(nested) == eval(nested.decode())          # exactly MAX_DEPTH levels is fine
    assert load_json(b'{"number": 2, "size": 256, "key_IDs": [{"key_ID": "x"}]}')["number"] == 2
