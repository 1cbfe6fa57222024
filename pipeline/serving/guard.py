"""What every request passes before BentoML parses it, and the OpenAPI document that says so.

Fuzzing the served APIs found that BentoML 1.4 parses any Content-Type as its own input format: a
``multipart/form-data`` body that is not valid multipart was a 500, an unterminated one a 200 with
the fields silently dropped, and a JSON endpoint answered ``text/plain`` bodies as if they were
JSON. Its 400 for a body that is not JSON had an empty ``loc``, and its OpenAPI document says an
error's ``detail`` is a string where the server sends a list of validation errors.

``RequestGuard`` (a plain ASGI middleware, added to each public service) therefore, for every
``POST``:

* answers 415 unless the body is ``application/json`` (a request without a Content-Type too);
* answers 413 for a body over ``MAX_BODY_BYTES`` (read incrementally, never buffered whole);
* answers 400 naming the position when the body is not JSON, or not a JSON object, or nested
  deeper than ``MAX_DEPTH`` (a RecursionError further on was a 500);
* for an endpoint without inputs (``/metadata``), answers 400 naming any field sent;

each with ``{"error": message, "detail": [{"loc": [...], "msg": ..., "type": ...}]}``, the shape
of BentoML's validation errors, and rewrites ``/docs.json`` so that the document describes those
errors and status codes.

Before any of that it checks the request's API key (``pipeline.serving.auth``): 401 without a
valid one, 403 for ``/metadata``, ``/metrics`` and ``/chargebacks`` without the admin key, and
``x-shopml-event-time`` removed from a request without the admin key.

It also ends a keep-alive connection after ``SHOPML_KEEPALIVE_REQUESTS`` requests (default 100;
0: never), with ``connection: close`` on the last answer, as nginx's ``keepalive_requests`` does.
BentoML's workers share one listening socket and the first awake accepts every connection
waiting, so the eight connections of a load balancer's pool that open together can all land on
one worker while the other idles (``make bench-fraud-serve``: 358 requests/s with 8 connections on
one worker, 735 with 5 and 3). A recycled connection reconnects to whichever worker accepts first,
usually the less busy one, so the pool spreads over the workers within seconds.

Hand-written: BentoML has no setting for any of this, and Starlette's
middleware base class buffers streaming responses.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

MAX_BODY_BYTES = 1 << 20  # 1 MiB: 1,000 propensity candidates with all features fit in a third
NO_INPUT_ROUTES = ("/metadata",)
# No request of any family nests deeper than 4 levels; parsers and validators further on recurse
# per level (a body of 100,000 brackets was a RecursionError, a 500).
MAX_DEPTH = 32
EVENT_TIME = b"x-shopml-event-time"  # a replay's answer logged at a past hour: the admin key only


def _depth_over(value, limit: int) -> bool:
    """Whether ``value`` nests containers deeper than ``limit`` (iterative: no recursion of its own)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


Scope = dict
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

ERROR_DETAIL = {
    "title": "Error Detail",
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
            "msg": {"type": "string"},
            "type": {"type": "string"},
        },
        "required": ["loc", "msg", "type"],
    },
}
ERROR_SCHEMA = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "detail": ERROR_DETAIL},
    "required": ["error", "detail"],
}


def error_body(message: str, loc: list, kind: str) -> bytes:
    return json.dumps({"error": message, "detail": [{"loc": loc, "msg": message, "type": kind}]}).encode()


async def _answer(send: Send, status: int, body: bytes, extra: list | None = None) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(extra or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _media_type(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"content-type":
            return value.decode("latin-1").split(";")[0].strip().lower()
    return None


def patch_openapi(doc: dict) -> dict:
    """The error responses as they are sent: ``detail`` a list, and 413/415 on every POST."""
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in ("InvalidArgument", "NotFound", "InternalServerError"):
        if name in schemas:
            schemas[name].setdefault("properties", {})["detail"] = ERROR_DETAIL
    schemas["RequestRejected"] = {**ERROR_SCHEMA, "title": "RequestRejected"}
    content = {"application/json": {"schema": {"$ref": "#/components/schemas/RequestRejected"}}}
    for path, item in doc.get("paths", {}).items():
        operation = item.get("post")
        if operation is None:
            continue
        responses = operation.setdefault("responses", {})
        responses["400"] = {"description": "the body is not valid JSON, or a field is wrong", "content": content}
        responses["413"] = {"description": f"the body is over {MAX_BODY_BYTES} bytes", "content": content}
        responses["415"] = {"description": "the body is not application/json", "content": content}
        responses["503"] = {"description": "the server is starting or stopping: retry"}
        if path in NO_INPUT_ROUTES:
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
            body["schema"] = {"type": "object", "additionalProperties": False, "properties": {}}
    return doc


class RequestGuard:
    """ASGI middleware: see the module's docstring."""

    def __init__(
        self, app, keepalive_requests: int | None = None, keys: Path | None = None, auth: bool | None = None
    ) -> None:
        """``keys``: the keys file (default ``auth.keys_path()``); ``auth``: whether keys are checked
        (default: unless ``SHOPML_AUTH=off``)."""
        from pipeline.serving.auth import auth_off, keys_path

        self.app = app
        self.auth = not auth_off() if auth is None else auth
        self._keys_file = keys or keys_path()
        self._keys_checked, self._keys_stamp = 0.0, None
        self._keys = None
        if self.auth:
            self._keys = self._load_keys()  # a keys file that cannot be read stops the server here
        self.keepalive_requests = (
            int(os.environ.get("SHOPML_KEEPALIVE_REQUESTS", "100"))
            if keepalive_requests is None
            else keepalive_requests
        )
        self._served: dict[tuple, int] = {}  # requests answered per open connection (client address)

    def _recycling(self, scope: Scope, send: Send) -> Send:
        """``send``, adding ``connection: close`` to the answer that ends this connection's quota."""
        client = scope.get("client")
        if self.keepalive_requests <= 0 or client is None:
            return send
        key = tuple(client)
        count = self._served.pop(key, 0) + 1
        if count < self.keepalive_requests:
            if len(self._served) >= 65_536:  # connections closed by their clients leave their counts
                self._served.clear()
            self._served[key] = count
            return send

        async def closing(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        return closing

    def _load_keys(self):
        """The keys file, read again when it changed (checked at most once a second), so a key
        added or revoked takes effect without a restart."""
        from pipeline.serving.auth import KeyStore

        now = time.monotonic()
        if self._keys is not None and now - self._keys_checked < 1.0:
            return self._keys
        self._keys_checked = now
        try:
            stat = self._keys_file.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            stamp = None
        if self._keys is None or stamp != self._keys_stamp:
            self._keys, self._keys_stamp = KeyStore.load(self._keys_file), stamp
        return self._keys

    def _allowed(self, scope: Scope) -> tuple[int, Scope]:
        """(0, the scope to pass on) for a request its key lets in; (401 or 403, scope) otherwise. A
        request without the admin key has ``x-shopml-event-time`` removed."""
        from pipeline.serving.auth import ADMIN_PATHS, PROBES, presented_key

        path = scope.get("path", "")
        if not self.auth or path in PROBES:
            return 0, scope
        headers = scope.get("headers", [])
        role = self._load_keys().role_of(presented_key(headers))
        if role is None:
            return 401, scope
        if role != "admin":
            if path in ADMIN_PATHS:
                return 403, scope
            if any(name == EVENT_TIME for name, _ in headers):
                scope = {**scope, "headers": [(n, v) for n, v in headers if n != EVENT_TIME]}
        return 0, scope

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refused, scope = self._allowed(scope)
        if refused:
            # No detail: nothing about which keys exist, or why this one did not match.
            return await _answer(
                send,
                refused,
                b'{"error": "unauthorized"}' if refused == 401 else b'{"error": "forbidden"}',
                [(b"www-authenticate", b"Bearer")] if refused == 401 else [],
            )
        send = self._recycling(scope, send)
        if scope["method"] == "GET" and scope["path"] == "/docs.json":
            return await self._openapi(scope, receive, send)
        if scope["method"] != "POST":
            return await self.app(scope, receive, send)
        media = _media_type(scope)
        if media != "application/json":
            return await _answer(
                send,
                415,
                error_body(
                    f"the body must be application/json, not {media}"
                    if media
                    else "the body must be application/json: the request has no content-type",
                    ["header", "content-type"],
                    "unsupported_media_type",
                ),
            )
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                return await _answer(
                    send, 413, error_body(f"the body is over {MAX_BODY_BYTES} bytes", ["body"], "body_too_large")
                )
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body.strip():
            try:
                parsed = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                return await _answer(
                    send, 400, error_body(f"Invalid JSON: the body is not JSON ({exc})", ["body"], "json_invalid")
                )
            except RecursionError:
                return await _answer(
                    send, 400, error_body("Invalid JSON: the body is nested too deeply", ["body"], "json_too_deep")
                )
            if _depth_over(parsed, MAX_DEPTH):
                return await _answer(
                    send,
                    400,
                    error_body(f"the body is nested deeper than {MAX_DEPTH} levels", ["body"], "json_too_deep"),
                )
            if not isinstance(parsed, dict):
                return await _answer(
                    send,
                    400,
                    error_body(f"the body must be a JSON object, not {type(parsed).__name__}", ["body"], "object_type"),
                )
            if scope["path"] in NO_INPUT_ROUTES and parsed:
                field = sorted(parsed)[0]
                return await _answer(
                    send,
                    400,
                    error_body(
                        f"{scope['path']} takes no fields; got {', '.join(sorted(parsed))}",
                        ["body", field],
                        "extra_forbidden",
                    ),
                )

        sent = False

        async def replay() -> dict:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _openapi(self, scope: Scope, receive: Receive, send: Send) -> None:
        start, chunks = {}, []

        async def capture(message: dict) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            else:
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, capture)
        body = b"".join(chunks)
        if start.get("status") == 200:
            body = json.dumps(patch_openapi(json.loads(body))).encode()
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
