"""The request guard of the public services (``pipeline.serving.guard``), on a bare Starlette app:
JSON only, bounded bodies, errors that name the problem in the documented shape."""

from __future__ import annotations

import json

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from pipeline.serving.guard import MAX_BODY_BYTES, RequestGuard, patch_openapi

pytestmark = pytest.mark.fast


async def echo(request: Request):
    return JSONResponse({"got": json.loads(await request.body() or b"{}")})


async def docs(request: Request):
    return JSONResponse(
        {
            "paths": {"/recommend": {"post": {"responses": {"200": {}}}}},
            "components": {"schemas": {"InvalidArgument": {"properties": {"detail": {"type": "string"}}}}},
        }
    )


@pytest.fixture
def client():
    app = Starlette(
        routes=[
            Route("/recommend", echo, methods=["POST"]),
            Route("/metadata", echo, methods=["POST"]),
            Route("/docs.json", docs),
        ]
    )
    return TestClient(RequestGuard(app, auth=False))


def _detail(response):
    body = response.json()
    assert set(body) == {"error", "detail"} and isinstance(body["detail"], list)
    return body["detail"][0]


def test_json_passes_through_unchanged(client):
    r = client.post("/recommend", json={"user_id": "u1"})
    assert r.status_code == 200 and r.json() == {"got": {"user_id": "u1"}}


def test_a_post_without_a_content_type_is_415_not_read_as_json(client):
    r = client.post("/recommend", content=b'{"k": 3}')
    assert r.status_code == 415 and _detail(r)["loc"] == ["header", "content-type"], r.text
    assert "no content-type" in _detail(r)["msg"]


def test_deeply_nested_json_is_a_400_not_a_500(client):
    """100,000 brackets were a RecursionError in the parser (a 500); 40 levels, past the limit, too
    deep for any family's request; 4 levels, as a propensity request nests, pass."""
    for body in (b"[" * 100_000 + b"]" * 100_000, b'{"a": ' * 100_000 + b"1" + b"}" * 100_000):
        r = client.post("/recommend", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400 and _detail(r)["type"] == "json_too_deep", r.text[:200]
    deep = {"candidates": [{"features": {"x": 1.0}}]}
    assert client.post("/recommend", json=deep).status_code == 200
    nested: dict = {"a": 1}
    for _ in range(40):
        nested = {"a": nested}
    r = client.post("/recommend", json=nested)
    assert r.status_code == 400 and "deeper than 32" in _detail(r)["msg"]


def test_multipart_and_other_media_types_are_415(client):
    """The fuzzing finding: a multipart body that is not multipart was a 500 in BentoML."""
    r = client.post("/recommend", content=b'{"user_id":"u1009"}', headers={"content-type": "multipart/form-data"})
    assert r.status_code == 415 and _detail(r)["loc"] == ["header", "content-type"]
    r = client.post("/metadata", content=b"user_id=u1", headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415 and "application/x-www-form-urlencoded" in _detail(r)["msg"]


def test_bodies_that_are_not_json_objects_are_400_naming_the_problem(client):
    r = client.post("/recommend", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and _detail(r)["loc"] == ["body"] and "line 1 column 2" in _detail(r)["msg"]
    r = client.post("/recommend", content=b"\xff\xfe\x00", headers={"content-type": "application/json"})
    assert r.status_code == 400 and _detail(r)["type"] == "json_invalid"
    r = client.post("/recommend", json=[1, 2])
    assert r.status_code == 400 and "JSON object, not list" in _detail(r)["msg"]


def test_an_endpoint_without_inputs_refuses_fields(client):
    assert client.post("/metadata", json={}).status_code == 200
    r = client.post("/metadata", json={"user_id": "u1"})
    assert r.status_code == 400 and _detail(r)["loc"] == ["body", "user_id"]


def test_a_body_over_the_limit_is_413_without_reading_it_all(client):
    r = client.post(
        "/recommend", content=b"[" + b"1," * MAX_BODY_BYTES + b"1]", headers={"content-type": "application/json"}
    )
    assert r.status_code == 413 and _detail(r)["type"] == "body_too_large"


def test_the_openapi_document_describes_the_errors_as_sent(client):
    doc = client.get("/docs.json").json()
    assert doc["components"]["schemas"]["InvalidArgument"]["properties"]["detail"]["type"] == "array"
    assert {"400", "413", "415"} <= set(doc["paths"]["/recommend"]["post"]["responses"])
    rejected = patch_openapi({})["components"]["schemas"]["RequestRejected"]
    assert rejected["required"] == ["error", "detail"] and rejected["properties"]["detail"]["type"] == "array"


def test_a_keep_alive_connection_is_closed_after_its_quota_of_requests():
    """So that the connections of a pool opened together, all accepted by one worker, spread over
    the workers: every ``keepalive_requests``-th answer on a connection says ``connection: close``."""
    app = Starlette(routes=[Route("/recommend", echo, methods=["POST"])])
    client = TestClient(RequestGuard(app, keepalive_requests=3, auth=False))
    closes = [client.post("/recommend", json={}).headers.get("connection") for _ in range(7)]
    assert closes == [None, None, "close", None, None, "close", None]
    never = TestClient(RequestGuard(app, keepalive_requests=0, auth=False))
    assert all(never.post("/recommend", json={}).headers.get("connection") is None for _ in range(5))


@pytest.fixture
def keyed(tmp_path):
    """A guarded app with a keys file holding an admin key and a client key."""
    from pipeline.serving.auth import KeyStore

    async def headers(request: Request):
        return JSONResponse({"event_time": request.headers.get("x-shopml-event-time")})

    store = KeyStore.load(tmp_path / "keys.json")
    admin, client = store.add("ops", "admin"), store.add("checkout")
    app = Starlette(
        routes=[
            Route("/recommend", headers, methods=["POST"]),
            Route("/metadata", echo, methods=["POST"]),
            Route("/metrics", echo, methods=["GET"]),
            Route("/readyz", echo, methods=["GET"]),
        ]
    )
    return TestClient(RequestGuard(app, auth=True, keys=store.path)), admin, client, store


def test_nobody_gets_in_without_a_key(keyed):
    http, _, client, _ = keyed
    for headers in ({}, {"authorization": "Bearer shopml_wrong"}, {"authorization": f"Basic {client}"}):
        r = http.post("/recommend", json={}, headers=headers)
        # A 401 with no detail: nothing about which keys exist or why this one did not match.
        assert r.status_code == 401 and r.json() == {"error": "unauthorized"}, headers
        assert r.headers["www-authenticate"] == "Bearer"
    assert http.get("/metrics").status_code == 401
    assert http.post("/recommend", json={}, headers={"authorization": f"Bearer {client}"}).status_code == 200
    assert http.post("/recommend", json={}, headers={"x-api-key": client}).status_code == 200
    assert http.get("/readyz").status_code == 200  # probes need no key


def test_metadata_metrics_and_the_event_time_header_need_the_admin_key(keyed):
    http, admin, client, _ = keyed
    as_client, as_admin = {"authorization": f"Bearer {client}"}, {"authorization": f"Bearer {admin}"}
    assert http.post("/metadata", json={}, headers=as_client).status_code == 403
    assert http.get("/metrics", headers=as_client).status_code == 403
    assert http.post("/metadata", json={}, headers=as_admin).status_code == 200
    assert http.get("/metrics", headers=as_admin).status_code == 200
    past = {"x-shopml-event-time": "2020-01-01T00:00:00+00:00"}
    # A client cannot write its answers into a past hour: the header does not reach the service.
    assert http.post("/recommend", json={}, headers={**as_client, **past}).json() == {"event_time": None}
    assert http.post("/recommend", json={}, headers={**as_admin, **past}).json() == {
        "event_time": past["x-shopml-event-time"]
    }


def test_keys_are_kept_hashed_and_a_revoked_key_stops_working(keyed, tmp_path):
    import stat
    import time as clock

    http, admin, client, store = keyed
    text = store.path.read_text()
    assert client not in text and admin not in text and stat.S_IMODE(store.path.stat().st_mode) == 0o600
    store.revoke("checkout")
    clock.sleep(1.1)  # the guard looks at the file at most once a second
    assert http.post("/recommend", json={}, headers={"authorization": f"Bearer {client}"}).status_code == 401
    assert http.post("/recommend", json={}, headers={"authorization": f"Bearer {admin}"}).status_code == 200


def test_no_keys_file_lets_nobody_in_and_a_broken_one_stops_the_server(tmp_path):
    from pipeline.serving.auth import KeyFileError

    app = Starlette(routes=[Route("/recommend", echo, methods=["POST"])])
    empty = TestClient(RequestGuard(app, auth=True, keys=tmp_path / "missing.json"))
    assert empty.post("/recommend", json={}).status_code == 401
    broken = tmp_path / "broken.json"
    broken.write_text('{"keys": [{"name": "x", "role": "root", "sha256": "00"}]}')
    with pytest.raises(KeyFileError, match="role 'root'"):
        RequestGuard(app, auth=True, keys=broken)
