"""The OpenAPI document of the API as it really answers (served at ``/openapi.json``).

FastAPI's own document cannot see the request bodies: every route reads its body with
``fluxrun.api.body.read_body`` (JSON, real forms, the seeds' JSON under a bare multipart
header) rather than through a pydantic model, and every answer is a plain dict. So:

- each route states its body fields, its answer and its error statuses next to the code
  that reads them, with ``**described(...)`` in its decorator;
- ``document`` adds what no single route knows: one Run path per tool whose body is that
  tool's inputs, generated from its spec (fluxrun.tools), the three authentication
  headers, the shapes of SPEC.md sections 3, 7 and 8; and it drops FastAPI's 422 answer,
  which this API never sends (a bad input is HTTP 200 with ``result: false``).

The fuzz tests (tests/integration/test_fuzz_api.py) generate their requests from this
document and check every answer against it, so it cannot drift from the code unnoticed.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from fluxrun.status import Status
from fluxrun.tools.catalog import TOOLS
from fluxrun.tools.spec import MAX_SEED, InputSpec, ToolSpec

RUN_PATH = "/v1/Run/{owner}/{project}"
# The body forms every endpoint accepts (SPEC.md section 1). The seeds' own curl lines send
# JSON text under a bare "Content-Type: multipart/form-data" (no boundary); that is read as
# JSON, and so is a body of any other content type.
BODY_MEDIA_TYPES = ("application/json", "multipart/form-data", "application/x-www-form-urlencoded")
# x-api-key alone (apikey-only projects), or with x-nonce and x-signature (SPEC.md section 2).
SIGNED: list[dict[str, list[str]]] = [{"apiKey": [], "nonce": [], "signature": []}, {"apiKey": []}]
SECURITY_SCHEMES = {
    "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key", "description": "The project's API key."},
    "nonce": {
        "type": "apiKey", "in": "header", "name": "x-nonce",
        "description": "A new value for every request: unix time in seconds or milliseconds (within 5 minutes "
                       "of the server's clock), or any random integer. A nonce is refused the second time.",
    },
    "signature": {
        "type": "apiKey", "in": "header", "name": "x-signature",
        "description": "hex(HMAC-SHA256(key = API key, message = API secret + x-nonce)).",
    },
}
ERROR_CODES = (0, 1, 96, 97, 98, 99)
_ERROR_STATUSES = {
    401: "Authentication failed (code 98 sign-in required, 99 token problem): under /v1 a missing, unknown or "
         "revoked key, a bad signature, a reused or stale nonce; at the playground's login a code that is "
         "unknown, used or expired.",
    404: "Not found.",
    413: "The body is larger than the server takes (FLUXRUN_MAX_BODY_BYTES): code 0 naming `body`.",
    429: "Too many requests from this API key (or address), or the server's queue is full; Retry-After says "
         "when to come back.",
    503: "This server is shutting down and takes no new tasks, or cannot reach its database for now; "
         "Retry-After says when to retry (elsewhere).",
}
_STRING = {"type": "string"}
_DIGITS = {"type": "string", "pattern": r"^[0-9]+$"}
_EMPTY_LIST = {"type": "array", "maxItems": 0}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties: Mapping[str, Any], required: Iterable[str] | None = None, **more: Any) -> dict[str, Any]:
    names = list(properties) if required is None else list(required)
    return {"type": "object", "properties": dict(properties), "required": names, **more}


def described(
    summary: str,
    body: Mapping[str, Any] | None,
    answer: str,
    errors: Iterable[int] = (401,),
    *,
    signed: bool = True,
) -> dict[str, Any]:
    """Keyword arguments for a POST route's decorator: its body schema (an object schema, in
    every body form), its answer (a schema of ``components``), the HTTP error statuses it may
    send besides 200 and whether it needs the authentication headers."""
    responses: dict[int | str, Any] = {
        200: {
            "description": f"{answer}, or an error (result false) with HTTP 200, as the hosted service answers",
            "content": {"application/json": {"schema": {"oneOf": [_ref(answer), _ref("Error")]}}},
        }
    }
    # Every POST is rate limited and its body size-capped (fluxrun.api.ratelimit, body.py), and
    # answers 503 while the database cannot be reached (errors.DatabaseUnavailable).
    for status in sorted({*errors, 413, 429, 503}):
        responses[status] = _error_response(status)
    extra: dict[str, Any] = {"security": SIGNED if signed else []}
    if body is not None:
        extra["requestBody"] = request_body(body)
    return {"summary": summary, "response_model": None, "responses": responses, "openapi_extra": extra}


def request_body(schema: Mapping[str, Any], required: bool = False) -> dict[str, Any]:
    return {
        "required": required,
        "description": "JSON, multipart/form-data or application/x-www-form-urlencoded, the same fields either "
                       "way; JSON text under a bare `Content-Type: multipart/form-data` (the seeds' curl lines) "
                       "works too. Numbers may be strings.",
        "content": {media: {"schema": copy.deepcopy(dict(schema))} for media in BODY_MEDIA_TYPES},
    }


def _error_response(status: int) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": _ERROR_STATUSES[status],
        "content": {"application/json": {"schema": _ref("Error")}},
    }
    if status in (429, 503):
        answer["headers"] = {"Retry-After": {"description": "seconds", "schema": _DIGITS}}
    return answer


# -- bodies ------------------------------------------------------------------------------

def whole(minimum: int | None = None, maximum: int | None = None) -> dict[str, Any]:
    """An integer, as a JSON number or as text."""
    number: dict[str, Any] = {"type": "integer"}
    if minimum is not None:
        number["minimum"] = minimum
    if maximum is not None:
        number["maximum"] = maximum
    return {"anyOf": [number, _DIGITS]}


TASK_REFERENCE = {
    "type": "object",
    "properties": {
        "taskid": {**whole(1), "description": "the task's id, as Run answered it"},
        "tasktoken": {**_STRING, "description": "the task's socketaccesstoken"},
        "socketaccesstoken": {**_STRING, "description": "the same as tasktoken"},
    },
    "anyOf": [{"required": ["taskid"]}, {"required": ["tasktoken"]}, {"required": ["socketaccesstoken"]}],
}


def tool_body(tool: ToolSpec) -> dict[str, Any]:
    """The Run body of one tool: its inputs as its spec reads them, plus callbackUrl."""
    properties = {spec.name: input_schema(spec) for spec in tool.inputs}
    properties["callbackUrl"] = {
        **_STRING,
        "description": "POSTed the task's Task/Detail answer when it ends (signed, Standard Webhooks). Text that "
                       "is not an absolute URL is ignored; a loopback or private address is refused.",
    }
    return _object(properties, [spec.name for spec in tool.inputs if spec.required], additionalProperties=True)


def input_schema(spec: InputSpec) -> dict[str, Any]:
    """One input: what ``InputSpec.parse`` accepts (numbers also as text; empty means the default)."""
    described_as = {"title": spec.label, "description": spec.help}
    if spec.kind == "string":
        text: dict[str, Any] = {"type": "string"}
        if spec.max_length is not None:
            text["maxLength"] = spec.max_length
        if spec.required:  # not blank; the seed's default of a required input is an example, not a default
            return {**described_as, **text, "pattern": r"\S", **({"examples": [spec.default]} if spec.default else {})}
        return {**described_as, **text, "default": spec.default}
    if spec.kind == "choice":
        return {**described_as, "type": "string", "enum": [o.value for o in spec.options], "default": spec.default}
    if spec.kind == "float":
        number: dict[str, Any] = {"type": "number"}
        _bounds(number, spec)
        return {**described_as, "anyOf": [number, {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?$"}],
                "default": float(spec.default)}
    if spec.kind == "seed":
        return {**described_as, "anyOf": [{"type": "integer", "minimum": 0, "maximum": MAX_SEED},
                                          {"type": "string", "pattern": r"^[0-9]*$"}, {"type": "null"}],
                "description": f"{spec.help} Empty or absent: a random seed, recorded in the task's parameters.",
                "examples": [int(spec.default)]}  # the tool page's value, not a default: absent is random
    integer: dict[str, Any] = {"type": "integer"}
    _bounds(integer, spec)
    if spec.multiple_of:
        integer["multipleOf"] = spec.multiple_of
    return {**described_as, "anyOf": [integer, _DIGITS], "default": int(spec.default)}


def _bounds(schema: dict[str, Any], spec: InputSpec) -> None:
    for key, value in (("minimum", spec.min), ("maximum", spec.max)):
        if value is not None:
            schema[key] = int(value) if float(value).is_integer() else value


# -- answers (SPEC.md sections 3, 7, 8) -------------------------------------------------

_TASK_STRINGS = (
    "id", "uuid", "name", "socketaccesstoken", "debugoutput", "debugerror", "starttime", "endtime",
    "elapsedseconds", "status", "cps", "totalcost", "projectid", "modelid", "modelslugowner", "modelslugproject",
    "description", "basemodelid", "runtype", "modelfolderid", "modelfileid", "callbackurl", "createtime",
    "canceltime", "assigntime", "accepttime", "preprocessstarttime", "preprocessendtime", "postprocessstarttime",
    "postprocessendtime", "pexit", "categories", "size",
)
_OUTPUT_STRINGS = ("id", "name", "contenttype", "parentid", "uuid", "size", "addedtime", "modifiedtime",
                   "accesskey", "foldercount", "filecount", "url")


def _schemas() -> dict[str, Any]:
    output = _object({
        **{name: _STRING for name in _OUTPUT_STRINGS},
        "ispublic": {"type": "integer"},
        "expiretime": {"type": "null"},
    })
    task = _object({
        **{name: _STRING for name in _TASK_STRINGS},
        "status": {"type": "string", "enum": [status.value for status in Status]},
        "parameters": {"type": "object", "additionalProperties": _STRING,
                       "description": "the inputs as validated, every value as text"},
        "guestid": {"type": "null"},
        "marketplaceid": {"type": "null"},
        "outputs": {"type": "array", "items": _ref("Output")},
    })
    tool_input = _object({
        "id": _STRING, "type": _STRING, "label": _STRING, "description": _STRING, "default": _STRING,
        "required": {"type": "boolean"},
        "options": {"type": "array", "items": _object({"label": _STRING, "value": _STRING})},
        "min": _STRING, "max": _STRING, "step": _STRING,
    })
    tool = _object({
        "id": _STRING, "title": _STRING, "slugowner": _STRING, "slugproject": _STRING,
        "cleanslugowner": _STRING, "cleanslugproject": _STRING, "description": _STRING,
        "categories": {"type": "array", "items": _STRING}, "tags": {"type": "array", "items": _STRING},
        "image": _STRING, "cps": _STRING,
        "parameters": {"type": "array", "items": _object({"title": _STRING,
                                                          "items": {"type": "array", "items": _ref("ToolInput")}})},
    })
    ok = {"const": True}
    return {
        "Error": _object({
            "result": {"const": False},
            "errors": {"type": "array", "minItems": 1, "items": _object({
                "code": {"type": "integer", "enum": list(ERROR_CODES),
                         "description": "0 general or validation (the message names the field and the rule), "
                                        "1 not found, 96 concurrency limit, 97 insufficient balance, "
                                        "98 sign-in required, 99 token problem"},
                "message": {"type": "string", "minLength": 1},
            }, additionalProperties=False)},
        }, additionalProperties=False, description="SPEC.md section 7"),
        "RunAnswer": _object({"errors": _EMPTY_LIST, "taskid": _DIGITS,
                              "socketaccesstoken": {"type": "string", "minLength": 30, "maxLength": 30},
                              "result": ok}),
        "TaskAnswer": _object({"total": _DIGITS, "errors": _EMPTY_LIST,
                               "tasklist": {"type": "array", "items": _ref("Task")}, "result": ok}),
        "TaskChangeAnswer": _object({"errors": _EMPTY_LIST, "tasklist": {"type": "array", "items": _ref("Task"),
                                                                         "minItems": 1, "maxItems": 1},
                                     "result": ok}),
        "ToolListAnswer": _object({"result": ok, "errors": _EMPTY_LIST, "total": _DIGITS,
                                   "tool": {"type": "array", "items": _ref("Tool")}}),
        "ToolDetailAnswer": _object({"result": ok, "errors": _EMPTY_LIST,
                                     "tool": {"type": "array", "items": _ref("Tool"), "minItems": 1,
                                              "maxItems": 1}}),
        "LoginAnswer": _object({"result": ok, "errors": _EMPTY_LIST, "api_key": _STRING,
                                "api_secret": {"type": ["string", "null"]},
                                "mode": {"type": "string", "enum": ["signature", "apikey"]}, "project": _STRING}),
        "Task": task,
        "Output": output,
        "Tool": tool,
        "ToolInput": tool_input,
    }


# -- the document ------------------------------------------------------------------------

def document(app: FastAPI) -> dict[str, Any]:
    """The whole document: FastAPI's, with per-tool Run paths, security and shapes added."""
    doc = get_openapi(
        title=app.title, version=app.version, routes=app.routes,
        description="The hosted task API's wire protocol (SPEC.md), self-hosted. Every endpoint is POST, "
                    "answers HTTP 200 with `result: false` for a refused request (SPEC.md section 7) except "
                    "authentication failures (401), a full queue (429) and a server shutting down (503).",
    )
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas.update(_schemas())
    components["securitySchemes"] = SECURITY_SCHEMES
    for operations in doc["paths"].values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
    generic = doc["paths"].get(RUN_PATH, {}).get("post")
    if generic is not None:
        for tool in TOOLS:
            doc["paths"][f"/v1/Run/{tool.slugowner}/{tool.slugproject}"] = {"post": _tool_run(generic, tool)}
    return doc


def _tool_run(generic: Mapping[str, Any], tool: ToolSpec) -> dict[str, Any]:
    operation = copy.deepcopy(dict(generic))
    operation.pop("parameters", None)
    operation["summary"] = f"Run {tool.title} ({tool.slug})"
    operation["operationId"] = "run_" + re.sub(r"[^A-Za-z0-9]+", "_", tool.slug)
    operation["description"] = (
        f"Queue a task of {tool.slug}. Inputs as Tool/Detail lists them; a missing or empty input takes its "
        "default; a refused input is named in the error's message."
    )
    operation["requestBody"] = request_body(tool_body(tool), required=True)
    return operation


def install(app: FastAPI) -> None:
    """Make ``app.openapi()`` (and so ``/openapi.json``) build ``document`` once."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
