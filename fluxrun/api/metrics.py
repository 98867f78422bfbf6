"""Prometheus metrics for ``GET /metrics``.

Shared state is read from the database at scrape time by ``StoreCollector`` (a few small
queries; the duration histogram is kept as tasks end, not computed from every finished
task), so every API process behind a load balancer reports the same numbers for the
queue, the workers and the finished tasks, and none of them has to have seen the events:

    fluxrun_queue_depth{tool}                      tasks waiting in the queue
    fluxrun_tasks_running{tool}                    tasks held by a worker
    fluxrun_task_duration_seconds{tool,outcome}    histogram of finished tasks' generation time;
                                                   outcome: succeeded | failed | cancelled
    fluxrun_workers{state}                         live workers: loading | idle | busy | stopping
    fluxrun_tool_workers{tool}                     live workers that serve the tool (idle or busy)
    fluxrun_worker_gpu_memory_{allocated,reserved,total}_bytes{worker,device}
    fluxrun_database_up                            1 when the numbers above could be read

What only this process knows is counted here, the usual way:

    fluxrun_http_requests_total{method,route,status}
    fluxrun_http_request_duration_seconds{method,route}
    process_*, python_*                            the client library's process collectors

Each app has its own registry, so several apps in one process (tests) do not collide.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fluxrun.store.base import TaskStore
from fluxrun.tools.catalog import TOOLS

log = logging.getLogger("fluxrun.api")

WORKER_STATES = ("loading", "idle", "busy", "stopping")
OUTCOMES = ("succeeded", "failed", "cancelled")


class StoreCollector(Collector):
    """The shared numbers, read from the store at each scrape."""

    def __init__(self, store: TaskStore, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    def describe(self) -> list[Metric]:
        return []  # nothing to check at registration: no query until the first scrape

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("fluxrun_database_up", "1 when the database answered this scrape's queries")
        try:
            now = self._clock()
            counts = self._store.task_counts()
            histograms = self._store.duration_histograms()
            workers = self._store.live_workers(now)
        except Exception:  # the process metrics still go out; this says why the rest did not
            log.warning("metrics: the database could not be read", exc_info=True)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up

        tools = sorted({tool.slug for tool in TOOLS} | set(counts))
        queued = GaugeMetricFamily("fluxrun_queue_depth", "Tasks waiting in the queue", labels=["tool"])
        running = GaugeMetricFamily("fluxrun_tasks_running", "Tasks held by a worker", labels=["tool"])
        for tool in tools:
            found = counts.get(tool)
            queued.add_metric([tool], found.queued if found else 0)
            running.add_metric([tool], found.running if found else 0)
        yield queued
        yield running

        durations = HistogramMetricFamily(
            "fluxrun_task_duration_seconds",
            "Generation time of finished tasks (elapsed for a success, start to end otherwise, 0 if never started)",
            labels=["tool", "outcome"],
        )
        for item in histograms:
            buckets = [(_bound(bound), float(count)) for bound, count in item.buckets] + [("+Inf", float(item.count))]
            durations.add_metric([item.tool, item.outcome], buckets, item.total_seconds)
        yield durations

        by_state = GaugeMetricFamily("fluxrun_workers", "Live workers by state", labels=["state"])
        for state in WORKER_STATES:
            by_state.add_metric([state], sum(1 for w in workers if w.state == state))
        yield by_state
        serving = GaugeMetricFamily("fluxrun_tool_workers", "Live workers that serve the tool", labels=["tool"])
        for tool in tools:
            serving.add_metric([tool], sum(1 for w in workers if w.takes_tasks(now) and tool in w.tools))
        yield serving

        labels = ["worker", "device"]
        allocated = GaugeMetricFamily("fluxrun_worker_gpu_memory_allocated_bytes",
                                      "GPU memory held by a worker's tensors", labels=labels)
        reserved = GaugeMetricFamily("fluxrun_worker_gpu_memory_reserved_bytes",
                                     "GPU memory held by a worker's caching allocator", labels=labels)
        total = GaugeMetricFamily("fluxrun_worker_gpu_memory_total_bytes", "A worker's GPU memory", labels=labels)
        for worker in workers:
            if worker.gpu is not None:
                allocated.add_metric([worker.id, worker.device], worker.gpu.allocated)
                reserved.add_metric([worker.id, worker.device], worker.gpu.reserved)
                total.add_metric([worker.id, worker.device], worker.gpu.total)
        yield allocated
        yield reserved
        yield total


def _bound(value: float) -> str:
    return repr(float(value))


class Metrics:
    """One app's registry: the store's numbers, this process's requests, the process itself."""

    def __init__(self, store: TaskStore) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(StoreCollector(store))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.requests = Counter("fluxrun_http_requests", "HTTP requests this API process answered",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("fluxrun_http_request_duration_seconds", "Time to answer an HTTP request",
                                 ["method", "route"], registry=self.registry)


class RequestMetrics:
    """ASGI middleware: counts each HTTP request by its route's template (not its path, so
    task ids and file keys do not become labels) and answer status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def send_and_see(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_see)
        finally:
            route = _route(scope)
            method = scope.get("method", "")
            self.metrics.requests.labels(method, route, str(status[0])).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - started)


def _route(scope: dict[str, Any]) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"
