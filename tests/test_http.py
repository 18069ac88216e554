"""protocol.http: routing, request targets, JSON responses and file-range bodies."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import ProtocolError, RemoteProtocolError
from protocol.http import FileRange, Request, Response, Router, error_response, json_response, parse_target


def router() -> Router[str]:
    r: Router[str] = Router()
    r.add("GET", "/health", "health")
    r.add("PUT", "/chunk/{chunk_id}", "put")
    r.add("get", "/chunk/{chunk_id}", "get")  # methods are case-insensitive
    r.add("HEAD", "/chunk/{chunk_id}", "head")
    r.add("POST", "/nodes/{node_id}/heartbeat", "heartbeat")
    r.add("GET", "/a.b/{x}", "dotted")
    return r


def test_routes_by_method_and_path_with_params() -> None:
    r = router()
    assert r.match("GET", "/health") == ("health", {})
    assert r.match("PUT", "/chunk/v1-chunk-000") == ("put", {"chunk_id": "v1-chunk-000"})
    assert r.match("get", "/chunk/v1-chunk-000") == ("get", {"chunk_id": "v1-chunk-000"})
    assert r.match("HEAD", "/chunk/x") == ("head", {"chunk_id": "x"})
    assert r.match("POST", "/nodes/n-1/heartbeat") == ("heartbeat", {"node_id": "n-1"})


def test_params_are_percent_decoded_and_never_span_segments() -> None:
    r = router()
    assert r.match("GET", "/chunk/a%20b%2Fc") == ("get", {"chunk_id": "a b/c"})
    with pytest.raises(ProtocolError) as err:
        r.match("GET", "/chunk/a/b")
    assert err.value.status == 404


@pytest.mark.parametrize("path", ["/", "/healthz", "/health/", "/chunk", "/chunk/", "/nodes//heartbeat",
                                  "/aXb/1", "/HEALTH"])
def test_unknown_paths_are_404(path: str) -> None:
    with pytest.raises(ProtocolError) as err:
        router().match("GET", path)
    assert (err.value.status, err.value.msg) == (404, "Not Found")


def test_known_path_with_another_method_is_405_listing_the_allowed() -> None:
    with pytest.raises(ProtocolError) as err:
        router().match("DELETE", "/chunk/x")
    assert err.value.status == 405
    assert err.value.msg == "Method Not Allowed (allowed: GET, HEAD, PUT)"


def test_head_is_routed_only_where_declared() -> None:
    with pytest.raises(ProtocolError) as err:
        router().match("HEAD", "/health")
    assert err.value.status == 405
    assert "allowed: GET)" in err.value.msg


def test_a_later_route_that_allows_the_method_is_found() -> None:
    r: Router[str] = Router()
    r.add("DELETE", "/nodes/{node_id}", "delete node")
    r.add("GET", "/nodes/healthy", "healthy")
    assert r.match("GET", "/nodes/healthy") == ("healthy", {})
    assert r.match("DELETE", "/nodes/n1") == ("delete node", {"node_id": "n1"})
    with pytest.raises(ProtocolError) as err:
        r.match("POST", "/nodes/healthy")
    assert err.value.status == 405
    assert "allowed: DELETE, GET)" in err.value.msg


def test_decorator_form_registers_and_returns_the_handler() -> None:
    r: Router[Any] = Router()

    @r.route("POST", "/video/{video_id}/view")
    def view(video_id: str) -> str:
        return f"viewed {video_id}"

    handler, params = r.match("POST", "/video/v9/view")
    assert handler is view
    assert handler(**params) == "viewed v9"


def test_parse_target_splits_path_and_query() -> None:
    assert parse_target(b"/videos?limit=10&offset=&q=a%20b+c") == (
        "/videos", {"limit": "10", "offset": "", "q": "a b c"})
    assert parse_target(b"/chunk/x") == ("/chunk/x", {})
    assert parse_target(b"?x=1") == ("/", {"x": "1"})
    assert parse_target(b"http://host:1/p?x=1") == ("/p", {"x": "1"})  # absolute form


def test_parse_target_refuses_non_ascii() -> None:
    with pytest.raises(RemoteProtocolError) as err:
        parse_target("/vidéo".encode())
    assert err.value.status == 400


def test_origin_form_targets_are_paths_not_urls() -> None:
    # RFC 9112 3.2.1: a target starting with "/" is a path, and "//" may begin it;
    # h11 accepts any visible ASCII in it.
    assert parse_target(b"//chunk/x?y=1") == ("//chunk/x", {"y": "1"})
    assert parse_target(b"//[") == ("//[", {})
    assert parse_target(b"//x]/y") == ("//x]/y", {})


def test_a_malformed_absolute_target_is_a_400() -> None:
    with pytest.raises(RemoteProtocolError) as err:
        parse_target(b"http://[::1/x")
    assert err.value.status == 400


TARGET_PIECES = ["/", "//", "?", "#", "&", "=", "[", "]", ":", "@", "%", "%2F", "a", "Z9", "http:", "*"]


@given(start=st.sampled_from(["/", "//", "http://", "*", ""]),
       pieces=st.lists(st.sampled_from(TARGET_PIECES), max_size=10))
def test_parse_target_fails_only_with_a_protocol_error(start: str, pieces: list[str]) -> None:
    try:
        path, query = parse_target((start + "".join(pieces)).encode())
    except RemoteProtocolError as exc:
        status = exc.status
    else:
        status = 200
        assert isinstance(path, str)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in query.items())
    assert status in (200, 400)


@given(path=st.from_regex(r"(/[A-Za-z0-9._~%!$&'()*+,;=:@-]+)*/?", fullmatch=True),
       query=st.dictionaries(st.text(min_size=1, max_size=5), st.text(max_size=5), max_size=4))
def test_parse_target_round_trip(path: str, query: dict[str, str]) -> None:
    target = path + ("?" + urlencode(query) if query else "")
    assert parse_target(target.encode()) == (path or "/", query)


def test_json_response_shape() -> None:
    resp = json_response(201, {"video_id": "v1", "n": [1, 2]}, headers=[("Location", "/video/v1")])
    assert resp.status == 201
    assert resp.headers == [("Content-Type", "application/json"), ("Location", "/video/v1")]
    assert isinstance(resp.body, bytes)
    assert json.loads(resp.body) == {"video_id": "v1", "n": [1, 2]}
    assert resp.header_pairs()[0] == (b"Content-Type", b"application/json")


def test_error_response_shape() -> None:
    resp = error_response(404, "Video not found")
    assert resp.status == 404
    assert isinstance(resp.body, bytes)
    assert json.loads(resp.body) == {"error": "Video not found", "detail": "Video not found"}
    problems = [{"type": "missing", "loc": ["body", "title"], "msg": "Field required", "input": None}]
    resp = error_response(422, "Validation failed", problems)
    assert isinstance(resp.body, bytes)
    assert json.loads(resp.body) == {"error": "Validation failed", "detail": problems}


def test_file_range_length_frames_the_body() -> None:
    body = FileRange(fd=3, offset=1000, length=4096)
    assert len(body) == 4096
    assert len(Response(status=206, body=body).body) == 4096
    assert len(FileRange(fd=3, offset=0, length=0)) == 0


def test_request_headers_and_content_length() -> None:
    req = Request(method="PUT", target="/chunk/x", path="/chunk/x", query={},
                  headers={"content-length": "12", "x-checksum": "abc"})
    assert req.content_length == 12
    assert req.header("X-Checksum") == "abc"
    assert req.header("missing", "dflt") == "dflt"
    assert Request(method="GET", target="/", path="/", query={}, headers={}).content_length is None
