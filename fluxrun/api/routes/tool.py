"""Tool/List and Tool/Detail: the catalog in the shape of SPEC.md section 8."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from fluxrun.api.body import read_body
from fluxrun.api.openapi import described, whole
from fluxrun.api.security import authenticate
from fluxrun.wire import tool_wire
from fluxrun.errors import ValidationError
from fluxrun.store.base import Project
from fluxrun.tools.catalog import TOOLS, find_tool
from fluxrun.tools.spec import ToolSpec

router = APIRouter()

LIST_BODY = {
    "type": "object",
    "properties": {
        "start": {**whole(0), "default": 0},
        "limit": {**whole(0), "default": 20, "description": "0: the default"},
        "search": {"type": "string", "description": "words in the slug, title, description or tags"},
        "categories": {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "string"}],
                       "description": "any of these categories (a list, or text separated by commas)"},
    },
}
DETAIL_BODY = {
    "type": "object",
    "properties": {"slugowner": {"type": "string", "pattern": r"\S", "examples": [t.slugowner for t in TOOLS]},
                   "slugproject": {"type": "string", "pattern": r"\S", "examples": [t.slugproject for t in TOOLS]}},
    "required": ["slugowner", "slugproject"],
}


@router.post("/v1/Tool/List", **described("The tools, as SPEC.md section 8 shows them", LIST_BODY, "ToolListAnswer"))
def tool_list(caller: Project = Depends(authenticate), body: dict[str, Any] = Depends(read_body)) -> dict[str, Any]:
    search = str(body.get("search") or "").strip().lower()
    categories = _categories(body.get("categories"))
    matching = [t for t in TOOLS if _matches(t, search, categories)]
    start = _non_negative(body, "start", 0)
    limit = _non_negative(body, "limit", 20) or 20
    page = matching[start : start + limit]
    return {"result": True, "errors": [], "total": str(len(matching)), "tool": [tool_wire(t) for t in page]}


@router.post("/v1/Tool/Detail", **described("One tool and its inputs", DETAIL_BODY, "ToolDetailAnswer"))
def tool_detail(caller: Project = Depends(authenticate), body: dict[str, Any] = Depends(read_body)) -> dict[str, Any]:
    owner = str(body.get("slugowner") or "").strip()
    project = str(body.get("slugproject") or "").strip()
    if not owner or not project:
        raise ValidationError("slugowner", "slugowner and slugproject are required")
    return {"result": True, "errors": [], "tool": [tool_wire(find_tool(owner, project))]}


def _matches(tool: ToolSpec, search: str, categories: set[str]) -> bool:
    if categories and not categories & {c.lower() for c in tool.categories}:
        return False
    if not search:
        return True
    haystack = " ".join([tool.slug, tool.title, tool.description, *tool.tags]).lower()
    return search in haystack


def _categories(raw: Any) -> set[str]:
    if raw in (None, ""):
        return set()
    items = raw if isinstance(raw, list) else str(raw).split(",")
    return {str(item).strip().lower() for item in items if str(item).strip()}


def _non_negative(body: dict[str, Any], name: str, default: int) -> int:
    raw = body.get(name)
    if raw in (None, ""):
        return default
    text = str(raw).strip()
    if not text.isascii() or not text.isdigit():  # isdigit() alone also takes "²", which int() refuses
        raise ValidationError(name, "must be a non-negative integer")
    return int(text)
