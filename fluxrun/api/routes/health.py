"""GET /health, /ready and /metrics: for load balancers, orchestrators and Prometheus.

No authentication (probes and scrapers carry no API key), and cheap:
- ``/health`` is liveness: the process answers. It touches nothing, so a database outage
  does not get healthy API processes restarted.
- ``/ready`` is readiness: database, output storage, not draining (api/lifecycle.py); 503
  with the failing parts named, in JSON.
- ``/metrics`` is the Prometheus text format (api/metrics.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

router = APIRouter()


@router.api_route("/health", methods=["GET", "HEAD"], include_in_schema=False)
async def health() -> dict[str, Any]:
    return {"status": "ok"}


@router.api_route("/ready", methods=["GET", "HEAD"], include_in_schema=False)
async def ready(request: Request) -> JSONResponse:
    is_ready, body = await request.app.state.fluxrun_readiness.check()
    return JSONResponse(body, status_code=200 if is_ready else 503, headers={"Cache-Control": "no-store"})


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    # A sync route: the store's queries run on the thread pool, not on the event loop.
    return Response(generate_latest(request.app.state.fluxrun_metrics.registry), media_type=CONTENT_TYPE_LATEST)
