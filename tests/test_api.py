"""Messages between services: identifiers, checksums, JSON round trips, bad requests and answers."""

from __future__ import annotations

import contextlib
import itertools
import json
import string
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.api import (
    CHUNK_ID_RE,
    REDUNDANCY_MODES,
    VIDEO_STATUSES,
    ChunkCommit,
    CommitResult,
    Fragment,
    Manifest,
    ManifestChunk,
    StatusChange,
    VideoCreate,
    VideoCreated,
    chunk_id,
    decode_answer,
    format_sha256,
    parse_sha256,
)
from protocol.errors import ProtocolError, RemoteProtocolError
from protocol.node_api import Heartbeat, NodeHealth, NodeRecord, NodeRegistration
from protocol.validate import ValidationError

SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


hexes = st.text("0123456789abcdef", min_size=64, max_size=64)


def wire(obj: dict[str, Any]) -> Any:
    """What the receiver gets: the JSON text, parsed again."""
    return json.loads(json.dumps(obj))


# -- identifiers ------------------------------------------------------------------------


def test_chunk_id_format() -> None:
    assert chunk_id("0b7c6e2a-video", 0) == "0b7c6e2a-video-chunk-000"
    assert chunk_id("v", 42) == "v-chunk-042"
    assert chunk_id("v", 1234) == "v-chunk-1234"
    assert CHUNK_ID_RE.match(chunk_id("A_z-9", 7))


@pytest.mark.parametrize(("video_id", "seq"), [
    ("v", -1), ("a b", 0), ("v/../x", 1), ("vidéo", 1), ("v\n", 1), ("x" * 55, 0),
])
def test_chunk_id_refuses_what_breaks_the_rule(video_id: str, seq: int) -> None:
    with pytest.raises(ValueError, match="no valid chunk id"):
        chunk_id(video_id, seq)


def test_chunk_id_rule_has_no_trailing_newline_loophole() -> None:
    # Storage nodes check ids from URLs with this rule; "%0A" decodes to "\n".
    assert CHUNK_ID_RE.match("abc")
    assert not CHUNK_ID_RE.match("abc\n")
    assert not CHUNK_ID_RE.match("a" * 65)


@given(video_id=st.text(string.ascii_letters + string.digits + "_-", min_size=1, max_size=60),
       seq=st.integers(0, 10**6))
def test_chunk_ids_obey_the_rule_or_are_refused(video_id: str, seq: int) -> None:
    try:
        cid = chunk_id(video_id, seq)
    except ValueError:
        assert len(f"{video_id}-chunk-{seq:03d}") > 64
        return
    assert CHUNK_ID_RE.match(cid)
    assert cid.startswith(video_id + "-chunk-")
    assert int(cid.rsplit("-", 1)[1]) == seq


@pytest.mark.parametrize("written", [
    SHA, SHA.upper(), f"sha256:{SHA}", f"SHA256:{SHA.upper()}", f'"{SHA}"', f'"sha256:{SHA}"',
    f"  {SHA}  ",
])
def test_parse_sha256_forms(written: str) -> None:
    assert parse_sha256(written) == SHA


@pytest.mark.parametrize("bad", [
    None, 42, b"abc", "", SHA[:-1], SHA + "0", "sha256:", f"md5:{SHA}", f"sha256: {SHA}",
    SHA[:-1] + "g", f"W/\"{SHA}\"", f"{SHA} {SHA}",
])
def test_parse_sha256_refuses_the_rest_with_400(bad: object) -> None:
    with pytest.raises(ProtocolError) as err:
        parse_sha256(bad)
    assert err.value.status == 400
    assert "SHA-256" in err.value.msg


def test_parse_sha256_every_wrapping() -> None:
    for prefix, digits, quote, tail in itertools.product(
            ["", "sha256:", "SHA256:", "md5:"], [SHA, SHA.upper(), SHA[:-1], SHA + "0", SHA[:-1] + "g"],
            ["", '"'], ["", " ", "\n", '"']):
        written = quote + prefix + digits + tail + quote
        good = prefix in ("", "sha256:", "SHA256:") and len(digits) == 64 and "g" not in digits
        if good and not tail:  # the documented forms
            assert parse_sha256(written) == SHA, written
        elif not good:
            with pytest.raises(ProtocolError):
                parse_sha256(written)
        else:  # stray characters: refused, or read as the same digest, never kept
            with contextlib.suppress(ProtocolError):
                assert parse_sha256(written) == SHA, written


@given(st.one_of(st.just(SHA), hexes, st.text("0123456789abcdefABCDEF", max_size=70)),
       st.text(' "\t\n\r:sha256SHA', max_size=9), st.text(' "\t\n\r', max_size=3))
def test_parse_sha256_gives_64_lowercase_hex_or_400(digits: str, before: str, after: str) -> None:
    try:
        parsed = parse_sha256(before + digits + after)
    except ProtocolError as exc:
        status = exc.status
    else:
        status = 200
    if status != 200:
        assert status == 400
        return
    assert len(parsed) == 64
    assert set(parsed) <= set("0123456789abcdef")
    assert parsed == digits.lower()
    assert parse_sha256(format_sha256(parsed)) == parsed


# -- round trips --------------------------------------------------------------------------

texts = st.text(max_size=20)
names = st.text(min_size=1, max_size=20)
urls = st.from_regex(r"https?://[a-z0-9.-]{1,20}(:[0-9]{1,5})?", fullmatch=True)
base_urls = st.builds(lambda scheme, host, port: f"{scheme}://{host}{port}",
                      st.sampled_from(["http", "https"]), st.from_regex(r"[a-z][a-z0-9]{0,19}",
                                                                         fullmatch=True),
                      st.just("") | st.integers(1, 65535).map(lambda p: f":{p}"))
floats = st.floats(0, 1e6, allow_nan=False, allow_infinity=False)
opt_floats = st.none() | floats
counts = st.integers(0, 2**53)

chunk_ids = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
chunk_sizes = st.integers(1, 2**31)
fragments = st.builds(Fragment, fragment_id=chunk_ids, fragment_index=st.integers(0, 20),
                      node_url=urls, size_bytes=chunk_sizes, checksum=hexes)
manifest_chunks = st.builds(
    ManifestChunk, chunk_id=names, sequence_num=st.integers(0, 10**6), size_bytes=counts,
    checksum=hexes, redundancy_mode=st.sampled_from(REDUNDANCY_MODES), duration_sec=opt_floats,
    start_sec=opt_floats, replicas=st.lists(urls, max_size=3).map(tuple),
    fragments=st.none() | st.lists(fragments, min_size=1, max_size=3).map(tuple))


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    chunks = draw(st.lists(manifest_chunks, max_size=4, unique_by=lambda c: c.sequence_num))
    return draw(st.builds(
        Manifest, video_id=names, title=texts, duration_sec=st.integers(1, 10**6),
        total_chunks=st.integers(0, 10**4), chunk_size_bytes=counts, created_at=texts,
        status=st.sampled_from(VIDEO_STATUSES), chunk_duration_sec=st.integers(1, 60),
        chunks=st.just(tuple(sorted(chunks, key=lambda c: c.sequence_num)))))


MESSAGES: list[tuple[Callable[[Any], Any], st.SearchStrategy[Any]]] = [
    (VideoCreate.from_json, st.builds(VideoCreate, title=st.text(min_size=1, max_size=255),
                                      duration_sec=st.integers(1, 30 * 24 * 3600))),
    (VideoCreated.from_json, st.builds(VideoCreated, video_id=names, upload_url=texts)),
    (StatusChange.from_json, st.builds(StatusChange, status=st.sampled_from(VIDEO_STATUSES))),
    (Fragment.from_json, fragments),
    (ChunkCommit.from_json, st.builds(
        ChunkCommit, node_urls=st.lists(urls, min_size=1, max_size=3).map(tuple), checksum=hexes,
        size_bytes=chunk_sizes, video_id=st.text(min_size=1, max_size=128),
        sequence_num=st.integers(0, 10**6),
        redundancy_mode=st.sampled_from(REDUNDANCY_MODES), duration_sec=opt_floats,
        start_sec=opt_floats,
        fragments=st.none() | st.lists(fragments, min_size=1, max_size=5).map(tuple))),
    (CommitResult.from_json, st.builds(CommitResult, success=st.booleans(),
                                       committed_nodes=st.lists(urls, max_size=3).map(tuple),
                                       message=texts)),
    (ManifestChunk.from_json, manifest_chunks),
    (Manifest.from_json, manifests()),
    (NodeRegistration.from_json, st.builds(NodeRegistration, node_url=base_urls,
                                           node_id=st.from_regex(r"[A-Za-z0-9._-]{1,128}",
                                                                 fullmatch=True),
                                           version=st.text(max_size=64))),
    (Heartbeat.from_json, st.builds(Heartbeat, disk_usage_percent=st.floats(0, 100),
                                    chunk_count=counts, free_bytes=st.none() | counts,
                                    version=st.none() | st.text(max_size=64))),
    (NodeRecord.from_json, st.builds(
        NodeRecord, node_url=urls, node_id=names, status=st.sampled_from(["healthy", "down"]),
        disk_usage_percent=st.floats(0, 100), chunk_count=counts, free_bytes=st.none() | counts,
        last_heartbeat=st.none() | texts, version=st.none() | texts)),
]


@pytest.mark.parametrize(("parse", "messages"), MESSAGES,
                         ids=[p.__qualname__.split(".")[0] for p, _ in MESSAGES])
@given(data=st.data())
def test_round_trip(parse: Callable[[Any], Any], messages: st.SearchStrategy[Any],
                    data: st.DataObject) -> None:
    msg = data.draw(messages)
    assert parse(wire(msg.to_json())) == msg


def test_manifest_chunks_come_back_in_sequence_order() -> None:
    chunks = [ManifestChunk(chunk_id=chunk_id("v", i), sequence_num=i, size_bytes=10, checksum=SHA,
                            redundancy_mode="replication", duration_sec=2.0, start_sec=2.0 * i,
                            replicas=("http://n1:8081",), fragments=None) for i in range(3)]
    m = Manifest(video_id="v", title="t", duration_sec=6, total_chunks=3, chunk_size_bytes=10,
                 created_at="2024-01-01T00:00:00", status="active", chunk_duration_sec=2,
                 chunks=tuple(chunks))
    shuffled = m.to_json()
    shuffled["chunks"].reverse()
    assert Manifest.from_json(wire(shuffled)) == m
    assert m.to_json()["chunks"][0]["checksum"] == f"sha256:{SHA}"  # the manifests' wire form


@given(st.builds(NodeHealth, node_id=names, status=st.sampled_from(["healthy", "degraded"]),
                 disk_usage=st.floats(0, 100), chunk_count=counts, free_bytes=st.none() | counts,
                 version=st.text(min_size=1, max_size=64), binary_port=st.integers(0, 65535)))
def test_node_health_becomes_a_heartbeat(health: NodeHealth) -> None:
    body = {"node_id": health.node_id, "status": health.status, "disk_usage": health.disk_usage,
            "chunk_count": health.chunk_count, "free_bytes": health.free_bytes,
            "version": health.version, "binary_port": health.binary_port, "extra": "ignored"}
    assert NodeHealth.from_json(wire(body)) == health
    beat = health.heartbeat()
    assert Heartbeat.from_json(wire(beat.to_json())) == beat
    assert (beat.disk_usage_percent, beat.chunk_count, beat.free_bytes, beat.version) == (
        health.disk_usage, health.chunk_count, health.free_bytes, health.version)


# -- requests that break the rules ----------------------------------------------------------


def problems(parse: Callable[[Any], Any], body: Any) -> list[tuple[str, str]]:
    """(type, field) of each problem, after checking the 422 and its shape."""
    with pytest.raises(ValidationError) as err:
        parse(body)
    assert err.value.status == 422
    for p in err.value.problems:
        assert set(p) == {"type", "loc", "msg", "input"}
        assert p["loc"][0] == "body"
        json.dumps(p)  # it goes on the wire
    return [(p["type"], p["loc"][-1]) for p in err.value.problems]


def test_video_create_problems() -> None:
    assert problems(VideoCreate.from_json, {}) == [("missing", "title"), ("missing", "duration_sec")]
    assert problems(VideoCreate.from_json, {"title": "", "duration_sec": 0}) == [
        ("string_too_short", "title"), ("greater_than", "duration_sec")]
    assert problems(VideoCreate.from_json, {"title": "x" * 256, "duration_sec": "ten"}) == [
        ("string_too_long", "title"), ("int_parsing", "duration_sec")]
    assert problems(VideoCreate.from_json, [1, 2]) == [("model_type", "body")]
    assert VideoCreate.from_json({"title": "x" * 255, "duration_sec": "10"}) == VideoCreate(
        title="x" * 255, duration_sec=10)


GOOD_COMMIT: dict[str, Any] = {"node_urls": ["http://n1:8081"], "checksum": SHA, "size_bytes": 10,
                               "video_id": "v", "sequence_num": 0}


@pytest.mark.parametrize(("change", "expected"), [
    ({"node_urls": []}, [("too_short", "node_urls")]),
    ({"node_urls": "http://n1:8081"}, [("list_type", "node_urls")]),
    ({"node_urls": ["", 5]}, [("string_type", "node_urls")]),
    ({"checksum": "abc"}, [("string_pattern_mismatch", "checksum")]),
    ({"checksum": None}, [("missing", "checksum")]),
    ({"size_bytes": 0}, [("greater_than", "size_bytes")]),
    ({"video_id": ""}, [("string_too_short", "video_id")]),
    ({"sequence_num": -1}, [("greater_than_equal", "sequence_num")]),
    ({"redundancy_mode": "raid5"}, [("enum", "redundancy_mode")]),
    ({"duration_sec": -1.0, "start_sec": "soon"}, [("range", "duration_sec"),
                                                   ("float_parsing", "start_sec")]),
    ({"fragments_metadata": [{"fragment_id": "f"}]}, [("list_type", "fragments_metadata")]),
    ({"fragments_metadata": {"a": 1}}, [("list_type", "fragments_metadata")]),
])
def test_chunk_commit_problems(change: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert problems(ChunkCommit.from_json, {**GOOD_COMMIT, **change}) == expected


def test_chunk_commit_reports_every_problem_at_once() -> None:
    assert problems(ChunkCommit.from_json, {}) == [
        ("missing", "node_urls"), ("missing", "checksum"), ("missing", "size_bytes"),
        ("missing", "video_id"), ("missing", "sequence_num")]


def test_chunk_commit_accepts_a_checksum_in_any_form() -> None:
    commit = ChunkCommit.from_json({**GOOD_COMMIT, "checksum": f"sha256:{SHA.upper()}"})
    assert commit.checksum == SHA
    assert commit.redundancy_mode == "replication"
    assert commit.fragments is None


@pytest.mark.parametrize(("body", "expected"), [
    ({}, [("missing", "disk_usage_percent"), ("missing", "chunk_count")]),
    ({"disk_usage_percent": 100.5, "chunk_count": -1},
     [("range", "disk_usage_percent"), ("greater_than_equal", "chunk_count")]),
    ({"disk_usage_percent": "full", "chunk_count": 1, "free_bytes": -5, "version": "v" * 65},
     [("float_parsing", "disk_usage_percent"), ("greater_than_equal", "free_bytes"),
      ("string_too_long", "version")]),
])
def test_heartbeat_problems(body: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert problems(Heartbeat.from_json, body) == expected


def test_heartbeat_with_nan_usage_is_refused() -> None:
    # Python's json reads a bare NaN, and a NaN usage would sort anywhere in placement.
    assert problems(Heartbeat.from_json, json.loads('{"disk_usage_percent": NaN, "chunk_count": 1}')
                    ) == [("range", "disk_usage_percent")]


def test_node_registration() -> None:
    reg = NodeRegistration.from_json({"node_url": "http://n1:8081", "node_id": "n1"},
                                     default_version="1.2")
    assert reg == NodeRegistration(node_url="http://n1:8081", node_id="n1", version="1.2")
    assert problems(NodeRegistration.from_json, {}) == [("missing", "node_url"), ("missing", "node_id")]
    assert problems(NodeRegistration.from_json, {"node_url": "http://n1", "node_id": "n" * 129}) == [
        ("string_too_long", "node_id")]
    # Ids go to logs and URLs: no control characters; URLs are bases, nothing more.
    assert problems(NodeRegistration.from_json, {"node_url": "http://n1",
                                                 "node_id": "n1\n2026 WARNING forged"}) == [
        ("string_pattern_mismatch", "node_id")]
    for url in ("http://", "http://n1:99999", "http://user:pw@n1", "http://n1/x", "http://n1?q",
                "http://n1#f"):
        with pytest.raises(ProtocolError) as bad:
            NodeRegistration.from_json({"node_url": url, "node_id": "n1"})
        assert bad.value.status == 400, url


@pytest.mark.parametrize("url", ["ftp://n1:8081", "n1:8081", "HTTP//n1", "file:///etc/passwd"])
def test_node_registration_needs_an_http_url(url: str) -> None:
    with pytest.raises(ProtocolError) as err:
        NodeRegistration.from_json({"node_url": url, "node_id": "n1"})
    assert not isinstance(err.value, ValidationError)
    assert err.value.status == 400
    assert "node_url" in err.value.msg


def test_status_change() -> None:
    for status in VIDEO_STATUSES:
        assert StatusChange.from_json({"status": status}) == StatusChange(status=status)
    for bad in ({"status": "paused"}, {}, {"status": None}):
        with pytest.raises(ProtocolError) as err:
            StatusChange.from_json(bad)
        assert err.value.status == 400


# -- answers that break the rules -----------------------------------------------------------

GOOD_CHUNK = {"chunk_id": "v-chunk-000", "sequence_num": 0, "size_bytes": 10,
              "checksum": f"sha256:{SHA}", "replicas": ["http://n1:8081"]}
GOOD_MANIFEST = {"video_id": "v", "title": "t", "duration_sec": 5, "total_chunks": 1,
                 "chunk_size_bytes": 10, "created_at": "now", "status": "active",
                 "chunks": [GOOD_CHUNK]}


def test_decode_answer_passes_a_good_answer_through() -> None:
    m = decode_answer(Manifest.from_json, wire(GOOD_MANIFEST), "GET /manifest/v")
    assert m.chunks[0].checksum == SHA
    assert m.chunk_duration_sec == 10  # older replicas leave it out


@pytest.mark.parametrize(("parse", "data"), [
    (Manifest.from_json, {"video_id": "v"}),                              # KeyError
    (Manifest.from_json, {**GOOD_MANIFEST, "chunks": "all"}),             # ValueError
    (Manifest.from_json, {**GOOD_MANIFEST, "chunks": [{**GOOD_CHUNK, "checksum": "x"}]}),  # 400
    (Manifest.from_json, {**GOOD_MANIFEST, "duration_sec": "long"}),      # ValueError
    (Manifest.from_json, None),                                           # TypeError
    (Manifest.from_json, [GOOD_MANIFEST]),                                # TypeError
    (CommitResult.from_json, "yes"),                                      # AttributeError
    (CommitResult.from_json, {"success": True, "committed_nodes": "n1"}),
    (NodeHealth.from_json, {"node_id": "n", "binary_port": 70000}),
    (NodeHealth.from_json, {"node_id": "n", "disk_usage": 250}),
    (NodeRecord.from_json, {"node_url": "http://n1"}),
    (VideoCreated.from_json, {"upload_url": "/x"}),
    (ChunkCommit.from_json, {}),                                          # a 422 from a peer
])
def test_decode_answer_turns_malformed_answers_into_502(parse: Callable[[Any], Any],
                                                        data: Any) -> None:
    with pytest.raises(RemoteProtocolError) as err:
        decode_answer(parse, data, "GET /some/answer")
    assert err.value.status == 502
    assert err.value.msg.startswith("malformed answer to GET /some/answer: ")


def test_a_commit_out_of_bounds_is_refused_before_it_is_proposed() -> None:
    good = {"node_urls": ["http://n1:8081"], "checksum": "ab" * 32, "size_bytes": 10,
            "video_id": "v", "sequence_num": 0}
    assert ChunkCommit.from_json(good).size_bytes == 10
    for field, bad in (("size_bytes", 2**32), ("sequence_num", 10**7), ("video_id", "v" * 129),
                       ("duration_sec", 1e12), ("start_sec", float("inf")),
                       ("node_urls", [f"http://n{i}:8081" for i in range(33)]),
                       ("fragments_metadata", [{"fragment_id": "a/b", "fragment_index": 0,
                                                "node_url": "http://n1:8081", "size_bytes": 1,
                                                "checksum": "ab" * 32}]),
                       ("fragments_metadata", [{"fragment_id": "f0", "fragment_index": 2**70,
                                                "node_url": "http://n1:8081", "size_bytes": 1,
                                                "checksum": "ab" * 32}])):
        with pytest.raises(ValidationError):
            ChunkCommit.from_json({**good, field: bad})
