"""A fake of the partner API (Black Forest Labs), as SPEC.md section 10 describes it.

A real HTTP server on loopback (``http.server`` in a thread), so the relay is tested through
its real HTTP client: ``POST /v1/flux-2-flex`` checks ``x-key`` and the partner's limits
(422 with FastAPI's ``detail`` list, as the real API answers), returns ``{id, polling_url}``;
``GET /v1/get_result?id=`` answers Pending a scripted number of times, then the scripted
final status; a Ready result's ``sample`` URL serves a real image made with Pillow at the
requested size and format, from ``/delivery/`` on the same server (no key needed there, as
with the real signed delivery URLs).

A test scripts it through ``fake.script`` (a ``Script``) and reads what it received from
``fake.requests``.
"""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from PIL import Image

MAX_PIXELS = 4 * 1024 * 1024  # the partner's "4 megapixels", as fluxrun's tool spec reads it


@dataclass
class Reply:
    """An HTTP answer given in place of the normal one (a 429, a 503, a 402...)."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Script:
    pending_polls: int = 1  # Pending answers to each task's polls before its final status
    final: str = "Ready"  # or "Request Moderated", "Content Moderated", "Error", "Task not found"
    submit_replies: list[Reply] = field(default_factory=list)  # given to the next submissions, in order
    poll_replies: list[Reply] = field(default_factory=list)  # given to the next polls, in order
    sample_downloads: int | None = None  # downloads a result URL serves before it "expires" (403)
    served_format: str | None = None  # serve this format whatever was asked ("png" | "jpeg")
    progress: bool = False  # Pending answers carry a progress fraction
    redirect_sample: bool = False  # the sample URL answers 302 to the file


@dataclass(frozen=True)
class Seen:
    """One request the fake received."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: Any
    at: float  # time.monotonic() on arrival


@dataclass
class _Task:
    id: str
    body: dict[str, Any]
    polls: int = 0
    downloads: int = 0
    sample: bytes | None = None
    content_type: str = ""


class FakePartner:
    def __init__(self, key: str = "bfl-test-key-7c0ffee5-do-not-log") -> None:
        self.key = key
        self.script = Script()
        self.requests: list[Seen] = []
        self.tasks: dict[str, _Task] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-partner", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakePartner:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    # -- what it saw ------------------------------------------------------------------------
    def seen(self, path_prefix: str, method: str | None = None) -> list[Seen]:
        with self._lock:
            return [r for r in self.requests if r.path.startswith(path_prefix) and method in (None, r.method)]

    def submissions(self) -> list[Seen]:
        return self.seen("/v1/flux-2-flex", "POST")

    def polls(self) -> list[Seen]:
        return self.seen("/v1/get_result", "GET")

    def downloads(self) -> list[Seen]:
        return sorted(self.seen("/delivery/") + self.seen("/sample/"), key=lambda seen: seen.at)

    def served(self) -> list[bytes]:
        """The image files the fake made, in the order it made them."""
        with self._lock:
            return [t.sample for t in self.tasks.values() if t.sample is not None]

    # -- answers ----------------------------------------------------------------------------
    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.requests.append(seen)

    def _next_reply(self, queue: list[Reply]) -> Reply | None:
        with self._lock:
            return queue.pop(0) if queue else None

    def submit(self, body: Any) -> Reply:
        errors = _validate(body)
        if errors:
            return Reply(422, {"detail": errors})
        task = _Task(id=str(uuid.uuid4()), body=body)
        with self._lock:
            self.tasks[task.id] = task
        megapixels = body["width"] * body["height"] / 1_000_000
        return Reply(200, {"id": task.id, "polling_url": f"{self.url}/v1/get_result?id={task.id}",
                           "cost": round(1.5 * megapixels, 3), "input_mp": 0, "output_mp": round(megapixels, 3)})

    def poll(self, task_id: str) -> Reply:
        with self._lock:
            task = self.tasks.get(task_id)
            if task is not None:
                task.polls += 1
        if task is None or self.script.final == "Task not found" and task.polls > self.script.pending_polls:
            return Reply(200, {"id": task_id, "status": "Task not found", "result": None, "progress": None})
        if task.polls <= self.script.pending_polls:
            progress = min(0.99, task.polls / (self.script.pending_polls + 1)) if self.script.progress else None
            return Reply(200, {"id": task_id, "status": "Pending", "result": None, "progress": progress})
        if self.script.final != "Ready":
            details = {"reason": "scripted"} if self.script.final == "Error" else None
            return Reply(200, {"id": task_id, "status": self.script.final, "result": None, "details": details})
        with self._lock:
            if task.sample is None:
                task.sample, task.content_type = _make_image(task.body, self.script.served_format)
        kind = "sample" if self.script.redirect_sample else "delivery"
        sample = f"{self.url}/{kind}/{task.id}?se=2026-11-23T10%3A10%3A00Z&sig=fake"
        return Reply(200, {"id": task_id, "status": "Ready", "progress": None,
                           "result": {"sample": sample, "prompt": task.body["prompt"], "seed": task.body.get("seed")}})

    def deliver(self, task_id: str) -> tuple[int, bytes, str]:
        with self._lock:
            task = self.tasks.get(task_id)
            if task is None or task.sample is None:
                return 404, b"<Error><Code>BlobNotFound</Code></Error>", "application/xml"
            task.downloads += 1
            allowed = self.script.sample_downloads
            if allowed is not None and task.downloads > allowed:
                return 403, b"<Error><Code>AuthenticationFailed</Code><Message>Signed expiry time has passed</Message>" \
                            b"</Error>", "application/xml"
            return 200, task.sample, task.content_type


def _validate(body: Any) -> list[dict[str, Any]]:
    """The partner's limits (SPEC.md section 10), as FastAPI-style field errors."""
    if not isinstance(body, dict):
        return [{"loc": ["body"], "msg": "Input should be a valid dictionary", "type": "dict_type"}]
    errors: list[dict[str, Any]] = []

    def error(name: str, msg: str) -> None:
        errors.append({"loc": ["body", name], "msg": msg, "type": "value_error", "input": body.get(name)})

    if not isinstance(body.get("prompt"), str):
        error("prompt", "Field required")
    for name, low, high in (("steps", 1, 50), ("safety_tolerance", 0, 5)):
        value = body.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high):
            error(name, f"Input should be an integer between {low} and {high}")
    guidance = body.get("guidance")
    if guidance is not None and (not isinstance(guidance, (int, float)) or not 1.5 <= guidance <= 10):
        error("guidance", "Input should be between 1.5 and 10")
    for name in ("width", "height"):
        value = body.get(name)
        if not isinstance(value, int) or value < 64 or value % 16:
            error(name, "Input should be a multiple of 16 and at least 64")
    width, height = body.get("width"), body.get("height")
    if isinstance(width, int) and isinstance(height, int) and width * height > MAX_PIXELS:
        error("width", f"width x height should be at most {MAX_PIXELS} pixels")
    if body.get("output_format", "jpeg") not in ("jpeg", "png"):
        error("output_format", "Input should be 'jpeg' or 'png'")
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        error("seed", "Input should be a valid integer")
    return errors


def _make_image(body: dict[str, Any], served_format: str | None) -> tuple[bytes, str]:
    """A real image at the requested size: a gradient whose colour depends on the seed."""
    width, height = body["width"], body["height"]
    seed = int(body.get("seed") or 0)
    base = Image.new("RGB", (width, height), ((seed * 37) % 256, (seed * 91) % 256, (seed * 53) % 256))
    ramp = Image.linear_gradient("L").resize((width, height))
    image = Image.merge("RGB", (ramp, base.getchannel(1), base.getchannel(2)))
    fmt = served_format or body.get("output_format", "jpeg")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG" if fmt == "png" else "JPEG")
    return buffer.getvalue(), "image/png" if fmt == "png" else "image/jpeg"


def _handler_for(fake: FakePartner) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_: Any) -> None:  # quiet
            pass

        def _seen(self, body: Any) -> Seen:
            parts = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            headers = {k.lower(): v for k, v in self.headers.items()}
            seen = Seen(self.command, parts.path, query, headers, body, time.monotonic())
            fake._record(seen)
            return seen

        def _send(self, status: int, body: Any, headers: dict[str, str] | None = None,
                  content_type: str = "application/json") -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def _reply(self, reply: Reply) -> None:
            self._send(reply.status, reply.body if reply.body is not None else {"detail": "scripted"}, reply.headers)

        def _authorised(self, seen: Seen) -> bool:
            if seen.headers.get("x-key") != fake.key:
                self._send(403, {"detail": "Not authenticated - Invalid Authentication"})
                return False
            return True

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            seen = self._seen(body)
            if seen.path != "/v1/flux-2-flex":
                self._send(404, {"detail": "Not Found"})
                return
            if not self._authorised(seen):
                return
            scripted = fake._next_reply(fake.script.submit_replies)
            self._reply(scripted or fake.submit(body))

        def do_GET(self) -> None:  # noqa: N802
            seen = self._seen(None)
            if seen.path == "/v1/get_result":
                if not self._authorised(seen):
                    return
                scripted = fake._next_reply(fake.script.poll_replies)
                self._reply(scripted or fake.poll(seen.query.get("id", "")))
            elif seen.path.startswith("/sample/"):
                task_id = seen.path.removeprefix("/sample/")
                self._send(302, b"", {"location": f"{fake.url}/delivery/{task_id}?sig=fake"}, "text/plain")
            elif seen.path.startswith("/delivery/"):
                status, data, content_type = fake.deliver(seen.path.removeprefix("/delivery/"))
                self._send(status, data, content_type=content_type)
            else:
                self._send(404, {"detail": "Not Found"})

    return Handler
