"""Naming storage nodes: URL normalisation, the ALIASES syntax, and the alias table."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vstack.node_urls import AliasTable, normalize_url, parse_aliases


@pytest.mark.parametrize(("raw", "expected"), [
    ("http://storage-node-1:8081", "http://storage-node-1:8081"),
    ("HTTP://Storage-Node-1:8081/", "http://storage-node-1:8081"),
    ("  http://127.0.0.1:9001//  ", "http://127.0.0.1:9001"),
    ("https://Example.COM/Some/Path/", "https://example.com/Some/Path"),  # the path keeps its case
    ("Storage-Node-1:8081/", "Storage-Node-1:8081"),  # no scheme: only trimmed
])
def test_normalize_url(raw: str, expected: str) -> None:
    assert normalize_url(raw) == expected


@st.composite
def urls(draw: st.DrawFn) -> tuple[str, str, str, str]:
    """A URL as an operator might type it, and its scheme, host and path."""
    scheme = draw(st.sampled_from(["http", "https", "HTTP", "Https"]))
    host = draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9.-]{0,20}(:[0-9]{1,5})?", fullmatch=True))
    path = draw(st.from_regex(r"(/[A-Za-z0-9._~-]+){0,3}", fullmatch=True))
    slashes = draw(st.sampled_from(["", "/", "//"]))
    pad = draw(st.sampled_from(["", " ", "\t"]))
    return f"{pad}{scheme}://{host}{path}{slashes}{pad}", scheme, host, path


@given(urls())
def test_normalized_urls_compare_equal_and_are_stable(parts: tuple[str, str, str, str]) -> None:
    raw, scheme, host, path = parts
    url = normalize_url(raw)
    assert url == f"{scheme.lower()}://{host.lower()}{path}"
    assert not url.endswith("/")
    assert normalize_url(url) == url


def test_parse_aliases() -> None:
    text = ("http://storage-node-1:8081=http://127.0.0.1:9001, "
            " HTTP://Storage-Node-2:8081/ = http://127.0.0.1:9002/ ,,")
    assert parse_aliases(text) == (
        ("http://storage-node-1:8081", "http://127.0.0.1:9001"),
        ("http://storage-node-2:8081", "http://127.0.0.1:9002"),
    )
    assert parse_aliases("") == ()
    assert parse_aliases(" , ") == ()


@pytest.mark.parametrize("text", [
    "http://node-1:8081",
    "=http://127.0.0.1:9001",
    "http://node-1:8081=",
    "http://node-1:8081=  ",
    "http://node-1:8081=http://127.0.0.1:9001,http://node-2:8081",
])
def test_malformed_aliases_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not name=url"):
        parse_aliases(text)


ALIASES = parse_aliases("http://storage-node-1:8081=http://127.0.0.1:9001,"
                        "http://node-one:8081=http://127.0.0.1:9001,"
                        "http://storage-node-2:8081=http://127.0.0.1:9002")


def test_resolve_maps_an_alias_and_passes_other_urls_through() -> None:
    table = AliasTable(ALIASES)
    assert table.resolve("http://storage-node-1:8081") == "http://127.0.0.1:9001"
    assert table.resolve("HTTP://Storage-Node-1:8081/") == "http://127.0.0.1:9001"
    assert table.resolve("http://storage-node-2:8081") == "http://127.0.0.1:9002"
    assert table.resolve("http://Other-Node:8081/") == "http://other-node:8081"
    assert AliasTable().resolve("http://storage-node-1:8081") == "http://storage-node-1:8081"


def test_public_is_what_a_caller_can_reach() -> None:
    table = AliasTable(ALIASES)
    assert table.public("http://storage-node-2:8081/") == "http://127.0.0.1:9002"
    assert table.public("http://127.0.0.1:9002") == "http://127.0.0.1:9002"


def test_same_node_across_names() -> None:
    table = AliasTable(ALIASES)
    assert table.same_node("http://storage-node-1:8081", "http://127.0.0.1:9001/")
    assert table.same_node("http://storage-node-1:8081", "http://node-one:8081")
    assert table.same_node("http://Other:1/", "http://other:1")
    assert not table.same_node("http://storage-node-1:8081", "http://storage-node-2:8081")
    assert not table.same_node("http://storage-node-1:8081", "http://127.0.0.1:9002")


def test_as_dict_is_a_copy() -> None:
    table = AliasTable(ALIASES)
    table.as_dict().clear()
    assert table.as_dict() == {
        "http://storage-node-1:8081": "http://127.0.0.1:9001",
        "http://node-one:8081": "http://127.0.0.1:9001",
        "http://storage-node-2:8081": "http://127.0.0.1:9002",
    }
    assert table.resolve("http://node-one:8081") == "http://127.0.0.1:9001"
