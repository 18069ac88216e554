"""Request validation: the problem list FastAPI clients parse, and its 422."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import ProtocolError
from protocol.validate import INT64_MAX, INT64_MIN, ValidationError, Validator, parse_json_object


def problems_of(data: dict[str, Any], read: str, name: str, **kwargs: Any) -> tuple[Any, list[Any]]:
    v = Validator(data)
    value = getattr(v, read)(name, **kwargs)
    return value, v.problems


def problem(kind: str, name: str, msg: str, value: Any, where: str = "body") -> dict[str, Any]:
    return {"type": kind, "loc": [where, name], "msg": msg, "input": value}


def test_missing_fields() -> None:
    for read in ("string", "integer", "number", "array"):
        assert problems_of({}, read, "f") == (None, [problem("missing", "f", "Field required", None)])
        assert problems_of({"f": None}, read, "f")[1] == [
            problem("missing", "f", "Field required", None)]
    assert problems_of({}, "string", "f", required=False, default="d") == ("d", [])
    assert problems_of({}, "integer", "f", required=False, default=7) == (7, [])
    assert problems_of({}, "choice", "f", options=("a",), required=False, default="a") == ("a", [])


def test_string() -> None:
    assert problems_of({"t": "ok"}, "string", "t", min_len=1, max_len=5) == ("ok", [])
    assert problems_of({"t": 5}, "string", "t")[1] == [
        problem("string_type", "t", "Input should be a valid string", 5)]
    assert problems_of({"t": ""}, "string", "t", min_len=1)[1] == [
        problem("string_too_short", "t", "String should have at least 1 characters", "")]
    assert problems_of({"t": "abcdef"}, "string", "t", max_len=5)[1] == [
        problem("string_too_long", "t", "String should have at most 5 characters", "abcdef")]
    assert problems_of({"t": "ab-1"}, "string", "t", pattern="[a-z]+")[1] == [
        problem("string_pattern_mismatch", "t", "String should match pattern '[a-z]+'", "ab-1")]
    assert problems_of({"t": "abc"}, "string", "t", pattern="[a-z]+") == ("abc", [])


@pytest.mark.parametrize(("raw", "expected"), [
    (5, 5), (-3, -3), (4.0, 4), ("12", 12), (" +7 ", 7), (INT64_MAX, INT64_MAX),
    (INT64_MIN, INT64_MIN), (str(INT64_MAX), INT64_MAX),
])
def test_integer_accepts_integral_values(raw: Any, expected: int) -> None:
    assert problems_of({"n": raw}, "integer", "n") == (expected, [])


@pytest.mark.parametrize("raw", [True, False, 4.5, "4.0", "1e3", "", "x", [], {}, math.inf, math.nan,
                                 # beyond 64 bits: crashed the metadata flusher (OverflowError)
                                 10**20, INT64_MIN - 1, 1e300, "9" * 30, "9" * 5000])
def test_integer_refuses_the_rest(raw: Any) -> None:
    assert problems_of({"n": raw}, "integer", "n") == (
        None, [problem("int_parsing", "n", "Input should be a valid integer", raw)])


def test_integer_bounds() -> None:
    assert problems_of({"n": 0}, "integer", "n", gt=0)[1] == [
        problem("greater_than", "n", "Input should be greater than 0", 0)]
    assert problems_of({"n": "-1"}, "integer", "n", ge=0)[1] == [
        problem("greater_than_equal", "n", "Input should be greater than or equal to 0", "-1")]
    assert problems_of({"n": 101}, "integer", "n", le=100)[1] == [
        problem("less_than_equal", "n", "Input should be less than or equal to 100", 101)]
    assert problems_of({"n": 1}, "integer", "n", gt=0, ge=1, le=1) == (1, [])


def test_number() -> None:
    assert problems_of({"x": 2.5}, "number", "x", ge=0, le=100) == (2.5, [])
    assert problems_of({"x": "7.25"}, "number", "x") == (7.25, [])
    assert problems_of({"x": 3}, "number", "x") == (3.0, [])
    bad: Any
    for bad in ("abc", True, [], {}):
        assert problems_of({"x": bad}, "number", "x")[1] == [
            problem("float_parsing", "x", "Input should be a valid number", bad)]
    for out in (-0.1, 100.5, math.inf, "-inf"):
        assert problems_of({"x": out}, "number", "x", ge=0, le=100)[1] == [
            problem("range", "x", "Input should be between 0 and 100", out)]


@pytest.mark.parametrize("raw", [math.nan, "nan", "NaN"])
def test_number_within_bounds_is_not_nan(raw: Any) -> None:
    # json.loads reads a bare NaN, so a peer can send one.
    assert problems_of({"x": raw}, "number", "x", ge=0, le=100)[1] == [
        problem("range", "x", "Input should be between 0 and 100", raw)]


def test_choice() -> None:
    opts = ("replication", "erasure_coding")
    assert problems_of({"m": "replication"}, "choice", "m", options=opts) == ("replication", [])
    assert problems_of({"m": "raid5"}, "choice", "m", options=opts)[1] == [
        problem("enum", "m", "Input should be one of replication, erasure_coding", "raid5")]
    assert problems_of({"m": 3}, "choice", "m", options=opts)[1] == [
        problem("string_type", "m", "Input should be a valid string", 3)]


def test_array() -> None:
    assert problems_of({"a": ["x"]}, "array", "a", min_len=1) == (["x"], [])
    assert problems_of({"a": "x"}, "array", "a")[1] == [
        problem("list_type", "a", "Input should be a valid list", "x")]
    assert problems_of({"a": []}, "array", "a", min_len=1)[1] == [
        problem("too_short", "a", "List should have at least 1 item(s)", [])]


def test_problems_are_collected_then_raised_together_as_422() -> None:
    v = Validator({"title": "", "duration_sec": "x"}, where="query")
    v.string("title", min_len=1)
    v.integer("duration_sec", gt=0)
    v.array("node_urls")
    assert v.problems == [
        problem("string_too_short", "title", "String should have at least 1 characters", "", "query"),
        problem("int_parsing", "duration_sec", "Input should be a valid integer", "x", "query"),
        problem("missing", "node_urls", "Field required", None, "query"),
    ]
    with pytest.raises(ValidationError) as err:
        v.done()
    assert isinstance(err.value, ProtocolError)
    assert err.value.status == 422
    assert err.value.msg == "Validation failed: String should have at least 1 characters"
    assert err.value.problems == v.problems
    Validator({"t": "fine"}).done()  # nothing wrong: no error


def test_validation_error_without_problems() -> None:
    err = ValidationError([])
    assert (err.status, err.msg, err.problems) == (422, "Validation failed: invalid request", [])


def test_parse_json_object() -> None:
    assert parse_json_object(b'{"a": [1, {"b": null}]}') == {"a": [1, {"b": None}]}
    for raw in (b"", b"{", b"not json", b"\xff\xfe{}", b'{"a": 1} trailing'):
        with pytest.raises(ValidationError) as err:
            parse_json_object(raw)
        assert err.value.problems == [{"type": "json_invalid", "loc": ["body"],
                                       "msg": "body is not valid JSON", "input": None}]
    for raw, value in ((b"[1, 2]", [1, 2]), (b'"s"', "s"), (b"3", 3), (b"null", None)):
        with pytest.raises(ValidationError) as err:
            parse_json_object(raw)
        assert err.value.problems == [{"type": "model_type", "loc": ["body"],
                                       "msg": "body must be a JSON object", "input": value}]


@pytest.mark.parametrize("raw", [
    b'{"n": 1180591620717411303424}', b'{"n": -9223372036854775809}', b'{"n": 1e400}',
    b'{"n": -1e400}', b'{"n": NaN}', b'{"n": Infinity}', b'{"n": -Infinity}',
    b'{"s": "\\ud800"}', b'{"s": ["ok", {"k": "x\\udfff"}]}', b'{"\\ud800": 1}',
])
def test_what_no_column_or_peer_holds_is_a_422(raw: bytes) -> None:
    # Such values reached the metadata tables and killed the replica (OverflowError,
    # UnicodeEncodeError in the flusher), at every restart too.
    with pytest.raises(ValidationError) as err:
        parse_json_object(raw)
    assert err.value.problems[0]["type"] == "json_invalid"


def test_the_64_bit_limits_and_paired_surrogates_pass() -> None:
    raw = b'{"a": 9223372036854775807, "b": -9223372036854775808, "c": 1e308, "d": "\\ud83d\\ude00"}'
    assert parse_json_object(raw) == {"a": INT64_MAX, "b": INT64_MIN, "c": 1e308, "d": "\U0001f600"}


def test_deeply_nested_json_is_a_422() -> None:
    with pytest.raises(ValidationError) as err:
        parse_json_object(b"[" * 100_000)
    assert err.value.status == 422


json_values = st.recursive(st.none() | st.booleans()
                           | st.integers(min_value=INT64_MIN, max_value=INT64_MAX)
                           | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=3), inner, max_size=3), max_leaves=10)


@given(json_values)
def test_parse_json_object_round_trip(value: Any) -> None:
    raw = json.dumps(value).encode()
    if isinstance(value, dict):
        assert parse_json_object(raw) == value
    else:
        with pytest.raises(ValidationError):
            parse_json_object(raw)


@given(st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_parse_json_object_fails_only_with_422(raw: bytes) -> None:
    try:
        value: object = parse_json_object(raw)
    except ValidationError as exc:
        value = exc.status
    assert isinstance(value, dict) or value == 422
