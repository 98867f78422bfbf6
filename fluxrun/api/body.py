"""Request bodies in every form the hosted service's clients send (SPEC.md section 1).

- ``application/json``;
- real ``multipart/form-data`` (with a boundary) and ``application/x-www-form-urlencoded``;
- the seeds' own curl lines: ``Content-Type: multipart/form-data`` with no boundary and a
  JSON text as the body, sometimes not quite JSON. The first seed's Task/Detail line puts
  single quotes inside a shell single-quoted string, so the token arrives unquoted, followed
  by a trailing comma: ``{ "tasktoken": eDcCm5..., }``. ``parse_lenient`` reads that.

Whatever the form, a body over FLUXRUN_MAX_BODY_BYTES is refused (HTTP 413) as soon as that
is known: from its Content-Length before any of it is read, else while it streams in.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl

from fastapi import Depends
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.types import Message

from fluxrun.api.state import AppState, app_state
from fluxrun.errors import BodyTooLarge, ValidationError

_NUMBER = re.compile(r"^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?$")
_LITERALS: dict[str, Any] = {"true": True, "false": False, "null": None}
# No request of this API nests more than a level or two; deeper is refused before Python's
# recursion limit is (json.loads raises RecursionError, not ValueError, on deep nesting).
MAX_DEPTH = 64


async def read_body(request: Request, state: AppState = Depends(app_state)) -> dict[str, Any]:
    """The request's fields as a dict, whatever form the body came in.

    Text holding NUL (U+0000) is refused, naming the field: no input has a use for it, and
    PostgreSQL cannot store or even compare text that holds it. So is nesting deeper than
    MAX_DEPTH, however the body came.
    """
    raw = await read_capped(request, state.settings.max_body_bytes)
    fields = await _read_fields(request, raw)
    for key, value in fields.items():
        if "\x00" in key:
            raise ValidationError("body", "field names must not contain the NUL character (U+0000)")
        if _holds_nul(value, depth=2):
            raise ValidationError(key, "must not contain the NUL character (U+0000)")
    return fields


def _holds_nul(value: Any, depth: int) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, (dict, list)) and depth > MAX_DEPTH:
        raise ValidationError("body", f"is nested too deeply (at most {MAX_DEPTH} levels)")
    if isinstance(value, dict):
        return any(_holds_nul(key, depth) or _holds_nul(item, depth + 1) for key, item in value.items())
    if isinstance(value, list):
        return any(_holds_nul(item, depth + 1) for item in value)
    return False


async def _read_fields(request: Request, raw: bytes) -> dict[str, Any]:
    """The fields of a body already read (``raw``, within the size cap)."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data") and "boundary=" in content_type:
        try:
            async with _replay(request, raw).form() as form:
                return {key: value for key, value in form.multi_items() if not isinstance(value, UploadFile)}
        except (HTTPException, MultiPartException) as exc:  # Starlette's 400: a body error like any other
            detail = exc.detail if isinstance(exc, HTTPException) else exc.message
            raise ValidationError("body", f"is not valid multipart/form-data: {detail}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError("body", "must be UTF-8 text") from None
    if not text.strip():
        return {}
    if content_type.startswith("application/x-www-form-urlencoded") and not text.lstrip().startswith("{"):
        return dict(parse_qsl(text, keep_blank_values=True))
    document = parse_lenient(text)
    if not isinstance(document, dict):
        raise ValidationError("body", "must be a JSON object or form fields")
    return document


async def read_capped(request: Request, limit: int) -> bytes:
    """The whole body, or BodyTooLarge once it is known to be over ``limit`` bytes (0: no limit).

    A declared Content-Length over the limit is refused before a byte is read; a body without
    one (chunked) is counted as it arrives, so at most ``limit`` bytes and one chunk are held.
    """
    if limit <= 0:
        return await request.body()
    declared = request.headers.get("content-length", "").strip()
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit, int(declared))
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _replay(request: Request, raw: bytes) -> Request:
    """The request again, its body the bytes already read, for Starlette's form parser."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": raw, "more_body": False}

    return Request(request.scope, receive)


def parse_lenient(text: str) -> Any:
    """JSON, or the near-JSON that shell quoting makes of it (bare words, single quotes,
    trailing commas)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValidationError("body", f"is nested too deeply (at most {MAX_DEPTH} levels)") from None
    except ValueError:
        pass
    parser = _LenientParser(text)
    value = parser.value(top=True)
    parser.skip_space()
    if parser.pos != len(text):
        parser.fail("unexpected text after the end")
    return value


class _LenientParser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.depth = 0

    def fail(self, why: str) -> None:
        raise ValidationError("body", f"is not valid JSON: {why} at character {self.pos}")

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        self.skip_space()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def value(self, top: bool = False) -> Any:
        char = self.peek()
        if char in "{[":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                self.fail(f"nested more than {MAX_DEPTH} levels")
            found = self.object() if char == "{" else self.array()
            self.depth -= 1
            return found
        if char in "\"'":
            return self.string()
        if not char:
            self.fail("missing value")
        if top:
            self.fail("expected an object")
        return self.bare_word(stop=",}]")

    def object(self) -> dict[str, Any]:
        self.pos += 1
        result: dict[str, Any] = {}
        while True:
            char = self.peek()
            if char == "}":
                self.pos += 1
                return result
            if char == ",":  # stray or trailing comma
                self.pos += 1
                continue
            if not char:
                self.fail("unclosed object")
            key = self.string() if char in "\"'" else self.bare_word(stop=":,}")
            if self.peek() != ":":
                self.fail(f"expected ':' after {key!r}")
            self.pos += 1
            result[str(key)] = self.value()

    def array(self) -> list[Any]:
        self.pos += 1
        items: list[Any] = []
        while True:
            char = self.peek()
            if char == "]":
                self.pos += 1
                return items
            if char == ",":
                self.pos += 1
                continue
            if not char:
                self.fail("unclosed array")
            items.append(self.value())

    def string(self) -> str:
        quote = self.text[self.pos]
        start = self.pos
        self.pos += 1
        chars: list[str] = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == "\\" and self.pos + 1 < len(self.text):
                chars.append(self.text[self.pos : self.pos + 2])
                self.pos += 2
                continue
            if char == quote:
                self.pos += 1
                body = "".join(chars)
                if quote == "'":
                    body = body.replace("\\'", "'").replace('"', '\\"')
                try:  # not strict: a line break typed inside the quotes stays a line break
                    return json.loads(f'"{body}"', strict=False)
                except ValueError:
                    return body
            chars.append(char)
            self.pos += 1
        self.pos = start
        self.fail("unclosed string")
        raise AssertionError  # unreachable: fail() raises

    def bare_word(self, stop: str) -> Any:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in stop:
            self.pos += 1
        word = self.text[start : self.pos].strip()
        if not word:
            self.fail("missing value")
        if word in _LITERALS:
            return _LITERALS[word]
        if _NUMBER.match(word):
            try:
                return json.loads(word)
            except ValueError:  # more digits than Python converts (4300): left as text, for the field's rule
                return word
        return word
