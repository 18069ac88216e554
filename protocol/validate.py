"""Validation of JSON request bodies and query parameters (sans-IO).

Problems are collected, then raised together as one 422 whose ``detail`` is a
list of ``{"type", "loc", "msg", "input"}`` objects, the shape FastAPI clients
of the original V-Stack already parse.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final

from .errors import ProtocolError

__all__ = ["INT64_MAX", "INT64_MIN", "ValidationError", "Validator", "parse_json_object"]


class ValidationError(ProtocolError):
    def __init__(self, problems: list[dict[str, Any]]) -> None:
        first = problems[0]["msg"] if problems else "invalid request"
        super().__init__(f"Validation failed: {first}", 422)
        self.problems = problems


#: Deepest nesting of arrays and objects a request body may have.
MAX_JSON_DEPTH: Final = 32

#: JSON integers must fit SQLite's (and every peer's) signed 64-bit integers.
INT64_MIN: Final = -(1 << 63)
INT64_MAX: Final = (1 << 63) - 1


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses as inf
        raise ValueError(f"{text} is out of range")
    return value


def _int64(text: str) -> int:
    if len(text) > 20:  # int() of a 5000-digit string is slow, and out of range anyway
        raise ValueError(f"{text[:30]}... is out of range")
    value = int(text)
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"{text[:30]} is out of range")
    return value


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a 422.

    Stricter than :func:`json.loads`, because what it returns is stored and
    sent on: no ``NaN``/``Infinity`` (nor numbers that overflow to them), no
    integer outside 64 bits, no lone surrogate (``"\\ud800"``) in a string.
    """
    try:
        value = json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float,
                           parse_int=_int64)
        json.dumps(value, ensure_ascii=False).encode()  # UnicodeEncodeError on a lone surrogate
        if _depth(value) > MAX_JSON_DEPTH:
            raise RecursionError
    except RecursionError:
        raise _invalid(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    except UnicodeError:
        raise _invalid("a string is not valid UTF-8 (a lone surrogate)") from None
    except ValueError as exc:
        reason = str(exc) if "out of range" in str(exc) or "is not JSON" in str(exc) else ""
        raise _invalid(reason) from None
    if not isinstance(value, dict):
        raise ValidationError([{"type": "model_type", "loc": ["body"],
                                "msg": "body must be a JSON object", "input": value}])
    return value


def _invalid(reason: str) -> ValidationError:
    msg = f"body is not valid JSON: {reason}" if reason else "body is not valid JSON"
    return ValidationError([{"type": "json_invalid", "loc": ["body"], "msg": msg, "input": None}])


def _depth(value: Any, level: int = 1) -> int:
    """Nesting depth of a parsed JSON value; stops counting past the cap."""
    if level > MAX_JSON_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level)
    return level - 1


class Validator:
    """Collects problems while fields are read; :meth:`done` raises them."""

    def __init__(self, data: dict[str, Any], where: str = "body") -> None:
        self.data = data
        self.where = where
        self.problems: list[dict[str, Any]] = []

    def _fail(self, name: str, kind: str, msg: str, value: Any) -> None:
        self.problems.append({"type": kind, "loc": [self.where, name], "msg": msg, "input": value})

    def string(self, name: str, *, required: bool = True, min_len: int = 0, max_len: int | None = None,
               pattern: str | None = None, default: str | None = None) -> Any:
        if name not in self.data or self.data[name] is None:
            if required:
                self._fail(name, "missing", "Field required", None)
            return default
        value = self.data[name]
        if not isinstance(value, str):
            self._fail(name, "string_type", "Input should be a valid string", value)
            return default
        if len(value) < min_len:
            self._fail(name, "string_too_short", f"String should have at least {min_len} characters",
                       value)
        elif max_len is not None and len(value) > max_len:
            self._fail(name, "string_too_long", f"String should have at most {max_len} characters",
                       value)
        elif pattern is not None and not re.fullmatch(pattern, value):
            self._fail(name, "string_pattern_mismatch", f"String should match pattern '{pattern}'",
                       value)
        return value

    def integer(self, name: str, *, required: bool = True, gt: int | None = None, ge: int | None = None,
                le: int | None = None, default: int | None = None) -> Any:
        """An integer; integral floats and numeric strings are accepted (lax, as before)."""
        if name not in self.data or self.data[name] is None:
            if required:
                self._fail(name, "missing", "Field required", None)
            return default
        raw = self.data[name]
        value: int | None = None
        if isinstance(raw, bool):
            value = None
        elif isinstance(raw, int):
            value = raw
        elif (isinstance(raw, float) and raw.is_integer()) or (
            isinstance(raw, str) and re.fullmatch(r"\s*[-+]?\d{1,19}\s*", raw)
        ):
            value = int(raw)
        if value is not None and not INT64_MIN <= value <= INT64_MAX:
            value = None  # 1e300, "9" * 30: no column or peer holds it
        if value is None:
            self._fail(name, "int_parsing", "Input should be a valid integer", raw)
            return default
        if gt is not None and value <= gt:
            self._fail(name, "greater_than", f"Input should be greater than {gt}", raw)
        if ge is not None and value < ge:
            self._fail(name, "greater_than_equal", f"Input should be greater than or equal to {ge}",
                       raw)
        if le is not None and value > le:
            self._fail(name, "less_than_equal", f"Input should be less than or equal to {le}", raw)
        return value

    def number(self, name: str, *, required: bool = True, ge: float | None = None,
               le: float | None = None, default: float | None = None) -> Any:
        if name not in self.data or self.data[name] is None:
            if required:
                self._fail(name, "missing", "Field required", None)
            return default
        raw = self.data[name]
        try:
            if isinstance(raw, bool):
                raise ValueError
            value = float(raw)
        except (TypeError, ValueError):
            self._fail(name, "float_parsing", "Input should be a valid number", raw)
            return default
        if (ge is not None and not value >= ge) or (le is not None and not value <= le):  # NaN too
            self._fail(name, "range", f"Input should be between {ge} and {le}", raw)
        return value

    def choice(self, name: str, options: tuple[str, ...], *, required: bool = True,
               default: str | None = None) -> Any:
        value = self.string(name, required=required, default=default)
        if isinstance(value, str) and value not in options and name in self.data:
            self._fail(name, "enum", f"Input should be one of {', '.join(options)}", value)
        return value

    def array(self, name: str, *, required: bool = True, min_len: int = 0) -> Any:
        if name not in self.data or self.data[name] is None:
            if required:
                self._fail(name, "missing", "Field required", None)
            return None
        value = self.data[name]
        if not isinstance(value, list):
            self._fail(name, "list_type", "Input should be a valid list", value)
            return None
        if len(value) < min_len:
            self._fail(name, "too_short", f"List should have at least {min_len} item(s)", value)
        return value

    def done(self) -> None:
        if self.problems:
            raise ValidationError(self.problems)
