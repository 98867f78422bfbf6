"""The tools this server offers: one spec module each, listed here."""

from __future__ import annotations

from fluxrun.errors import NotFoundError
from fluxrun.tools import flat_pixel_art_flux, flux_2_flex_t2i, realism_flux
from fluxrun.tools.spec import ToolSpec

TOOLS: tuple[ToolSpec, ...] = (flat_pixel_art_flux.TOOL, flux_2_flex_t2i.TOOL, realism_flux.TOOL)
_BY_SLUG = {tool.slug.lower(): tool for tool in TOOLS}


def find_tool(slugowner: str, slugproject: str) -> ToolSpec:
    """A tool by its slugs (case-insensitive, as URLs get retyped), or NotFoundError."""
    tool = _BY_SLUG.get(f"{slugowner}/{slugproject}".lower())
    if tool is None:
        raise NotFoundError(f"Tool {slugowner}/{slugproject} not found. Known tools: {', '.join(sorted(t.slug for t in TOOLS))}.")
    return tool


def tool_by_slug(slug: str) -> ToolSpec:
    owner, _, project = slug.partition("/")
    return find_tool(owner, project)


def tools_named(names: str) -> tuple[ToolSpec, ...]:
    """The tools a comma-separated list of slugs names (``owner/project``, any case), in the
    catalog's order; every tool when the list is empty. ValueError names an unknown slug and
    the known ones."""
    wanted = [name.strip() for name in names.split(",") if name.strip()]
    if not wanted:
        return TOOLS
    unknown = [name for name in wanted if name.lower() not in _BY_SLUG]
    if unknown:
        raise ValueError(f"unknown tool {unknown[0]!r} (known tools: {', '.join(sorted(t.slug for t in TOOLS))})")
    chosen = {name.lower() for name in wanted}
    return tuple(tool for tool in TOOLS if tool.slug.lower() in chosen)
