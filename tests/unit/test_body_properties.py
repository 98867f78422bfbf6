"""Properties of the lenient body reader (fluxrun/api/body.py).

- Any JSON object, however it is formatted, reads back as the same dict.
- The near-JSON a shell makes of it (single quotes, bare words, trailing commas) reads as
  the same fields.
- Any text or bytes at all, under any content type, reads as a dict or is refused with
  ValidationError naming "body" (the client's error says "body: ...") or, for text holding
  NUL, the field that holds it; nothing else is raised, and nothing takes long (inputs are
  bounded; deep nesting included).
- The seeds' own curl bodies read as the fields they mean.
"""

from __future__ import annotations

import asyncio
import json
import re
import string
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from hypothesis import HealthCheck, example, given, settings, strategies as st
from starlette.requests import Request

from fluxrun.api.body import parse_lenient, read_body
from fluxrun.config import Settings
from fluxrun.errors import ValidationError

SEEDS = Path(__file__).resolve().parents[1] / "seeds"


class _Server:
    """What read_body needs of the app's state: the settings (the default body cap)."""

    settings = Settings()


_SERVER: Any = _Server()
# A generous bound per example: a parse that takes longer is a hang, not slowness.
PROFILE = settings(max_examples=400, deadline=2000, suppress_health_check=[HealthCheck.too_slow])

KEYS = st.text(max_size=12)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30)
)
JSON_VALUES = st.recursive(
    SCALARS, lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=4),
    max_leaves=12,
)
JSON_OBJECTS = st.dictionaries(KEYS, JSON_VALUES, max_size=8)
CONTENT_TYPES = st.sampled_from([
    "", "application/json", "text/plain", "multipart/form-data", "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=xyz", "application/json; charset=utf-8", "image/png",
])


NUL_RULE = "must not contain the NUL character (U+0000)"


def refused_as_body(call: Any) -> Any:
    """call()'s value, or None when it raised ValidationError naming the body, or the field
    whose text holds NUL (the only refusal that names a field)."""
    try:
        return call()
    except ValidationError as refused:
        assert refused.field == "body" or refused.rule == NUL_RULE, refused
        assert str(refused).startswith(f"{refused.field}: "), refused
        return None


@PROFILE
@given(document=JSON_OBJECTS, indent=st.sampled_from([None, 0, 2, "\t"]), ascii_only=st.booleans(),
       separators=st.sampled_from([None, (",", ":"), (" , ", " : ")]))
def test_any_json_object_reads_back_the_same(document: dict[str, Any], indent: Any, ascii_only: bool,
                                             separators: Any) -> None:
    text = json.dumps(document, indent=indent, ensure_ascii=ascii_only, separators=separators)
    assert parse_lenient(text) == document


# Words a shell leaves bare that read back as themselves: not numbers or JSON literals, and
# free of the characters that end a bare word.
BARE_WORDS = st.text(alphabet=string.ascii_letters + "_-./", min_size=1, max_size=20).filter(
    lambda word: word not in ("true", "false", "null") and not re.match(r"^-?\d", word)
)
SHELL_VALUES = st.one_of(st.none(), st.booleans(), st.integers(), st.text(alphabet=string.printable, max_size=20))


@PROFILE
@given(fields=st.dictionaries(BARE_WORDS, SHELL_VALUES, max_size=6), data=st.data())
def test_shell_mangled_json_reads_the_same_fields(fields: dict[str, Any], data: st.DataObject) -> None:
    parts = []
    for key, value in fields.items():
        key_text = data.draw(st.sampled_from([json.dumps(key), key, _single_quoted(key)]))
        if isinstance(value, str):
            options = [json.dumps(value), _single_quoted(value)]
            if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_./-]*", value) and value not in ("true", "false", "null"):
                options.append(value)  # the seed's token: quotes eaten by the shell
            value_text = data.draw(st.sampled_from(options))
        else:
            value_text = json.dumps(value)
        parts.append(f"{key_text}: {value_text}")
    trailing = data.draw(st.sampled_from(["", ",", " , "]))
    text = "{ " + ", ".join(parts) + trailing + " }"
    assert parse_lenient(text) == fields, text


def _single_quoted(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


@PROFILE
@example(text="[" * 5000)
@example(text='{"a": ' * 3000)
@example(text='{"a": ' + "[" * 3000 + "]" * 3000 + "}")
@example(text="{a: " + "1" * 5000 + "}")
@example(text='{"steps": ' + "9" * 4400 + "}")
@example(text="{'a': 'b', }")
@given(text=st.text(max_size=300) | st.text(alphabet='{}[]"\':, \\abn01.-e', max_size=300))
def test_any_text_is_a_document_or_a_body_error(text: str) -> None:
    refused_as_body(lambda: parse_lenient(text))


def read(raw: bytes, content_type: str) -> dict[str, Any]:
    """read_body on a request carrying these bytes under this content type."""
    headers = [(b"content-type", content_type.encode("latin-1"))] if content_type else []
    scope = {"type": "http", "method": "POST", "path": "/v1/Task/Detail", "headers": headers, "query_string": b""}
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": raw, "more_body": False}

    return asyncio.run(read_body(Request(scope, receive), _SERVER))


@PROFILE
@example(raw=b"--xyz\r\nContent-Disposition: form-data\r\n\r\nx\r\n--xyz--\r\n", content_type="multipart/form-data; boundary=xyz")
@example(raw=b"garbage", content_type="multipart/form-data; boundary=xyz")
@example(raw="taskid=12&x=%FF".encode(), content_type="application/x-www-form-urlencoded")
@example(raw=b"\xff\xfe{}", content_type="application/json")
@example(raw=b"[1, 2]", content_type="application/json")
@example(raw=b'{"a": ' + b"[" * 900 + b"]" * 900 + b"}", content_type="application/json")  # json.loads reads it
@given(raw=st.binary(max_size=300) | st.text(max_size=300).map(str.encode), content_type=CONTENT_TYPES)
def test_any_bytes_under_any_content_type_read_as_fields_or_a_body_error(raw: bytes, content_type: str) -> None:
    fields = refused_as_body(lambda: read(raw, content_type))
    assert fields is None or (isinstance(fields, dict) and all(isinstance(key, str) for key in fields))


FIELD_NAMES = st.text(alphabet=string.ascii_letters, min_size=1, max_size=10)
CLEAN_TEXT = st.text(alphabet=st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=30)


@PROFILE
@given(fields=st.dictionaries(FIELD_NAMES, CLEAN_TEXT, max_size=6))
def test_form_fields_read_as_themselves(fields: dict[str, str]) -> None:
    assert read(urlencode(fields).encode(), "application/x-www-form-urlencoded") == fields
    assert read(json.dumps(fields).encode(), "multipart/form-data") == fields  # the seeds' form


@PROFILE
@given(fields=st.dictionaries(FIELD_NAMES, st.none() | st.integers() | CLEAN_TEXT, min_size=1, max_size=4),
       data=st.data())
def test_nul_in_any_text_is_refused_naming_its_field(fields: dict[str, Any], data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(fields)))
    text = data.draw(st.text(max_size=10))
    fields[name] = data.draw(st.sampled_from([f"{text}\x00", [1, f"\x00{text}"], {"k": "\x00"}, {"\x00": 1}]))
    for raw, content_type in ((json.dumps(fields).encode(), "application/json"),
                              (urlencode({name: "\x00"}).encode(), "application/x-www-form-urlencoded")):
        try:
            read(raw, content_type)
        except ValidationError as refused:
            assert str(refused) == f"{name}: {NUL_RULE}"
        else:
            raise AssertionError(f"accepted {raw!r}")


def test_the_seeds_curl_bodies_read_as_their_fields() -> None:
    bodies = []
    for page in sorted(SEEDS.glob("*.txt")):
        # Each curl line's -d '...' as the shell passes it: quotes inside the single-quoted
        # string end it and start it again, so they vanish.
        for quoted in re.findall(r"-d '(.*?)' *;", page.read_text(), flags=re.S):
            bodies.append(quoted.replace("'", ""))
    assert len(bodies) >= 8, bodies
    for body in bodies:
        fields = read(body.encode(), "multipart/form-data")
        assert fields and all(isinstance(value, (str, int, float)) for value in fields.values()), (body, fields)
    detail = next(body for body in bodies if "tasktoken" in body and ", }" in body)
    assert read(detail.encode(), "multipart/form-data") == {"tasktoken": "eDcCm5yyUfIvMFspTwww49OUfgXkQt"}
