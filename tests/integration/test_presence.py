"""A worker's row in the registry as its presence thread keeps it, on both databases."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from fluxrun.store.base import GpuMemory, TaskStore, WorkerRecord
from fluxrun.worker.presence import Presence
from tests.conftest import BACKENDS

pytestmark = pytest.mark.parametrize("database_url", BACKENDS, indirect=True)

PIXEL = "desertPixel/Flat-Pixel-Art-FLUX"
FLUX2 = "black-forest-labs/flux-2-flex-t2i"
GPU = (1 << 30, 2 << 30, 80 << 30)


@pytest.fixture
def presence(store: TaskStore) -> Iterator[Presence]:
    made = Presence(store, "host-a/42", [PIXEL, FLUX2], "real", "cuda:0", every=0.05, gpu_reader=lambda: GPU)
    yield made
    made.stop()


def _row(store: TaskStore, until: Callable[[WorkerRecord], bool]) -> WorkerRecord:
    deadline = time.monotonic() + 30
    while True:
        rows = store.list_workers()
        if rows and until(rows[0]):
            return rows[0]
        assert time.monotonic() < deadline, rows
        time.sleep(0.02)


def test_a_worker_registers_loading_then_says_what_it_serves_and_does(presence: Presence, store: TaskStore) -> None:
    presence.start()
    [loading] = store.list_workers()  # written before start() returns: operators see it load
    assert (loading.id, loading.state, loading.tools, loading.device) == ("host-a/42", "loading", (PIXEL, FLUX2), "cuda:0")
    assert loading.gpu == GpuMemory(*GPU) and loading.live(time.time())

    presence.serving([PIXEL])  # FLUX.2 did not load
    idle = _row(store, lambda w: w.state == "idle")
    assert idle.tools == (PIXEL,) and idle.started_at == loading.started_at

    presence.busy(7)
    assert _row(store, lambda w: w.state == "busy").task_id == 7
    beat = _row(store, lambda w: w.last_seen > idle.last_seen + 0.05)  # heartbeats keep coming
    assert beat.alive_until > beat.last_seen

    presence.stopping()
    presence.idle()  # the task ends: still stopping, no task
    stopping = _row(store, lambda w: w.task_id is None)
    assert stopping.state == "stopping"

    presence.stop()
    assert store.list_workers()[0].state == "stopped"


def test_a_forgotten_row_comes_back_at_the_next_heartbeat(presence: Presence, store: TaskStore) -> None:
    presence.start()
    presence.serving([PIXEL, FLUX2])
    _row(store, lambda w: w.state == "idle")
    store.forget_workers(before=time.time() + 60)
    back = _row(store, lambda w: True)
    assert (back.state, back.tools) == ("idle", (PIXEL, FLUX2))
