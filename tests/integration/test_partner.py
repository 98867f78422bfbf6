"""The partner relay (FLUX.2 [flex] at Black Forest Labs' API) against a fake partner on loopback:
the backend alone, the worker in-process on both stores, and one real `fluxrun serve`."""

from __future__ import annotations

import dataclasses
import io
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from fluxrun.backends.base import BackendOptions, RecordingJob
from fluxrun.backends.partner import PartnerBackend
from fluxrun.backends.registry import BackendCache, load_backend
from fluxrun.config import Settings
from fluxrun.errors import GenerationRefused, PartnerError, TaskStopped
from fluxrun.imaging.encode import EncodedImage
from fluxrun.status import Status
from fluxrun.storage.local import LocalStorage
from fluxrun.store.base import TaskStore
from fluxrun.tools.catalog import find_tool
from fluxrun.tools.request import GenerationRequest
from fluxrun.worker.loop import Worker
from fluxrun.worker.main import backend_options
from tests.conftest import BACKENDS
from tests.fakes.partner import FakePartner, Reply
from tests.integration.server import FLUX2_SEED, SeedCurl, Server

FLUX2 = find_tool("black-forest-labs", "flux-2-flex-t2i")
BODY_FIELDS = {"prompt", "width", "height", "guidance", "steps", "seed", "safety_tolerance", "output_format"}


@pytest.fixture
def fake() -> Iterator[FakePartner]:
    with FakePartner() as running:
        yield running


def _options(fake: FakePartner, tmp_path: Path, **overrides: object) -> BackendOptions:
    values: dict[str, object] = dict(models="tiny", models_dir=tmp_path / "models", bfl_api_key=fake.key,
                                     bfl_base_url=fake.url, bfl_poll_seconds=0.02, bfl_deadline_seconds=30.0,
                                     bfl_request_timeout_seconds=5.0)
    values.update(overrides)
    return BackendOptions(**values)  # type: ignore[arg-type]


def _backend(fake: FakePartner, tmp_path: Path, **overrides: object) -> PartnerBackend:
    return PartnerBackend(_options(fake, tmp_path, **overrides), retry_base_seconds=0.05)


def _request(samples: int = 1, **inputs: object) -> GenerationRequest:
    params = FLUX2.validate({"prompt": "a lighthouse at dawn", "width": 256, "height": 128, "steps": 4, **inputs})
    return dataclasses.replace(FLUX2.to_request(params), samples=samples)


# -- the backend alone -------------------------------------------------------------------------
@pytest.mark.parametrize("output_format", ["png", "jpeg"])
def test_each_image_is_the_partners_file_made_from_the_tasks_inputs(
    fake: FakePartner, tmp_path: Path, output_format: str
) -> None:
    fake.script.pending_polls = 2
    fake.script.sample_downloads = 1  # a result URL that works once: the relay downloads each once
    backend = _backend(fake, tmp_path)
    job = RecordingJob()
    images = backend.generate(_request(samples=2, seed=500, guidance=7.5, safetyTolerance=4,
                                       outputFormat=output_format), job)

    assert [image.data for image in images] == fake.served() and len(images) == 2
    for image in images:
        assert isinstance(image, EncodedImage)
        assert (image.content_type, image.extension) == (f"image/{output_format}", output_format)
        with Image.open(io.BytesIO(image.data)) as opened:
            assert opened.format == output_format.upper() and opened.size == (256, 128)

    bodies = [seen.body for seen in fake.submissions()]
    assert bodies == [
        {"prompt": "a lighthouse at dawn", "width": 256, "height": 128, "guidance": 7.5, "steps": 4,
         "seed": seed, "safety_tolerance": 4, "output_format": output_format}
        for seed in (500, 501)
    ]
    api_calls = fake.submissions() + fake.polls()
    assert len(fake.polls()) == 2 * 3 and all(seen.headers["x-key"] == fake.key for seen in api_calls)
    # The signed delivery URL gets no key; each file was fetched once.
    assert len(fake.downloads()) == 2 and all("x-key" not in seen.headers for seen in fake.downloads())
    assert job.steps[0] == (0, 8) and job.steps[-1] == (8, 8) and (4, 8) in job.steps
    assert job.notes == []
    assert backend.description == f"FLUX.2 [flex] relayed to the partner API at {fake.url}"


def test_the_registry_relays_flux2_when_a_key_is_set(fake: FakePartner, tmp_path: Path) -> None:
    backend = load_backend("flux2", _options(fake, tmp_path))
    assert isinstance(backend, PartnerBackend) and fake.url in backend.description
    assert fake.key not in repr(_options(fake, tmp_path))


def test_safety_tolerance_6_is_sent_as_the_partners_5_with_a_note(fake: FakePartner, tmp_path: Path) -> None:
    job = RecordingJob()
    _backend(fake, tmp_path).generate(_request(safetyTolerance=6), job)
    assert fake.submissions()[0].body["safety_tolerance"] == 5
    assert job.notes == ["safetyTolerance 6 is above the partner's maximum of 5: sent 5, its least strict level"]


def test_the_partners_progress_moves_the_tasks_progress(fake: FakePartner, tmp_path: Path) -> None:
    fake.script.pending_polls, fake.script.progress = 3, True  # Pending at 0.25, 0.5, 0.75
    job = RecordingJob()
    _backend(fake, tmp_path).generate(_request(steps=8), job)
    assert job.steps == [(0, 8), (2, 8), (4, 8), (6, 8), (8, 8)]


@pytest.mark.parametrize(("status", "what"), [("Request Moderated", "the prompt"),
                                              ("Content Moderated", "the generated image")])
def test_moderation_ends_the_task_with_a_message_that_says_so(
    fake: FakePartner, tmp_path: Path, status: str, what: str
) -> None:
    fake.script.final = status
    with pytest.raises(GenerationRefused) as refused:
        _backend(fake, tmp_path).generate(_request(safetyTolerance=1), RecordingJob())
    assert str(refused.value) == (
        f"Moderated by the partner (Black Forest Labs): its moderation refused {what} ({status}). A higher "
        "safetyTolerance may allow it (this task sent 1; 0 is the strictest, 5 the least strict the partner allows)."
    )
    assert fake.downloads() == []


def test_moderation_at_the_least_strict_level_asks_for_another_prompt(fake: FakePartner, tmp_path: Path) -> None:
    fake.script.final = "Request Moderated"
    with pytest.raises(GenerationRefused, match=r"already sent the least strict safetyTolerance the partner allows "
                                                r"\(5\): a different prompt is needed\.$"):
        _backend(fake, tmp_path).generate(_request(safetyTolerance=6), RecordingJob())


@pytest.mark.parametrize(("status", "message"), [
    ("Error", "Black Forest Labs reported an error while generating the image (task "),
    ("Task not found", "Black Forest Labs no longer knows this generation (Task not found)"),
])
def test_partner_failures_end_the_task_clearly(fake: FakePartner, tmp_path: Path, status: str, message: str) -> None:
    fake.script.final = status
    with pytest.raises(PartnerError) as failed:
        _backend(fake, tmp_path).generate(_request(), RecordingJob())
    assert not isinstance(failed.value, GenerationRefused) and str(failed.value).startswith(message)
    assert len(fake.submissions()) == 1


def test_429_is_retried_after_its_retry_after(fake: FakePartner, tmp_path: Path) -> None:
    fake.script.submit_replies = [Reply(429, {"detail": "Too many active tasks"}, {"Retry-After": "1"})]
    images = _backend(fake, tmp_path).generate(_request(), RecordingJob())
    first, second = fake.submissions()
    assert second.at - first.at >= 1.0  # Retry-After: 1 was honoured
    assert second.body == first.body and images[0].data == fake.served()[0]


def test_5xx_and_dropped_polls_are_retried(fake: FakePartner, tmp_path: Path) -> None:
    fake.script.submit_replies = [Reply(500), Reply(503)]
    fake.script.poll_replies = [Reply(502), Reply(504)]
    images = _backend(fake, tmp_path).generate(_request(), RecordingJob())
    assert len(fake.submissions()) == 3 and len(images) == 1 and images[0].data == fake.served()[0]
    assert len(fake.tasks) == 1  # the failed submissions made no task at the partner


def test_timeouts_are_retried(fake: FakePartner, tmp_path: Path) -> None:
    class FirstCallTimesOut(httpx.BaseTransport):
        """The real transport to the fake, but the first call times out (as a stalled partner's would)."""

        def __init__(self) -> None:
            self.real, self.timed_out = httpx.HTTPTransport(), 0

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if not self.timed_out:
                self.timed_out += 1
                raise httpx.ReadTimeout("timed out", request=request)
            return self.real.handle_request(request)

    transport = FirstCallTimesOut()
    backend = PartnerBackend(_options(fake, tmp_path), transport=transport, retry_base_seconds=0.05)
    [image] = backend.generate(_request(), RecordingJob())
    assert transport.timed_out == 1 and len(fake.submissions()) == 1 and image.data == fake.served()[0]


def test_402_is_not_retried(fake: FakePartner, tmp_path: Path) -> None:
    fake.script.submit_replies = [Reply(402, {"detail": "Insufficient credits"})]
    with pytest.raises(PartnerError) as failed:
        _backend(fake, tmp_path).generate(_request(), RecordingJob())
    assert str(failed.value) == ("Black Forest Labs refused to make the image: the partner account has no credits "
                                 "(HTTP 402): Insufficient credits")
    assert len(fake.submissions()) == 1 and fake.polls() == []


def test_a_request_the_partner_rejects_names_the_field_and_is_not_retried(fake: FakePartner, tmp_path: Path) -> None:
    request = dataclasses.replace(_request(), steps=60, width=100)  # past the tool's own checks
    with pytest.raises(PartnerError) as failed:
        _backend(fake, tmp_path).generate(request, RecordingJob())
    assert str(failed.value) == ("Black Forest Labs rejected the request (HTTP 422): steps: Input should be an integer "
                                 "between 1 and 50; width: Input should be a multiple of 16 and at least 64")
    assert len(fake.submissions()) == 1


def test_a_wrong_key_says_which_setting_and_not_the_key(fake: FakePartner, tmp_path: Path) -> None:
    with pytest.raises(PartnerError) as failed:
        _backend(fake, tmp_path, bfl_api_key="wrong-key-123").generate(_request(), RecordingJob())
    assert "refused the API key (HTTP 403)" in str(failed.value) and "FLUXRUN_BFL_API_KEY" in str(failed.value)
    assert "wrong-key-123" not in str(failed.value) and len(fake.submissions()) == 1


def test_an_expired_result_url_fails_clearly(fake: FakePartner, tmp_path: Path) -> None:
    fake.script.sample_downloads = 0  # gone before the relay came for it
    with pytest.raises(PartnerError, match=r"result URL answered HTTP 403 while downloading the result: it expires "
                                           "within minutes"):
        _backend(fake, tmp_path).generate(_request(), RecordingJob())
    assert len(fake.downloads()) == 1


def test_a_redirected_result_is_followed_without_the_key(fake: FakePartner, tmp_path: Path) -> None:
    fake.script.redirect_sample = True
    images = _backend(fake, tmp_path).generate(_request(), RecordingJob())
    assert images[0].data == fake.served()[0]
    assert [seen.path.split("/")[1] for seen in fake.downloads()] == ["sample", "delivery"]
    assert all("x-key" not in seen.headers for seen in fake.downloads())


def test_a_file_in_another_format_is_converted(fake: FakePartner, tmp_path: Path) -> None:
    fake.script.served_format = "jpeg"
    job = RecordingJob()
    [image] = _backend(fake, tmp_path).generate(_request(outputFormat="png"), job)
    assert image.content_type == "image/png" and image.data.startswith(b"\x89PNG")
    assert image.data != fake.served()[0] and fake.served()[0].startswith(b"\xff\xd8\xff")
    with Image.open(io.BytesIO(image.data)) as opened:
        assert opened.size == (256, 128)
    assert job.notes == ["image 0: the partner sent JPEG for a png request; converted to png"]


def test_a_partner_that_never_finishes_meets_the_deadline(fake: FakePartner, tmp_path: Path) -> None:
    fake.script.pending_polls = 10**9
    with pytest.raises(PartnerError, match=r"Waited 1 s for the partner to finish the image \(task .*\) and gave up "
                                           r"\(FLUXRUN_BFL_DEADLINE_SECONDS\)"):
        _backend(fake, tmp_path, bfl_deadline_seconds=1.0).generate(_request(), RecordingJob())


def test_an_unreachable_partner_is_retried_until_the_deadline(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    options = BackendOptions(models="tiny", models_dir=tmp_path, bfl_api_key="k", bfl_base_url=f"http://127.0.0.1:{port}",
                             bfl_deadline_seconds=1.0)
    with pytest.raises(PartnerError, match=r"Black Forest Labs could not be reached \(ConnectError: .*\) while "
                                           r"submitting the image; gave up after \d+ tries, at this task's deadline "
                                           r"of 1 s \(FLUXRUN_BFL_DEADLINE_SECONDS\)"):
        PartnerBackend(options, retry_base_seconds=0.05).generate(_request(), RecordingJob())


def test_a_stopped_job_stops_the_wait(fake: FakePartner, tmp_path: Path) -> None:
    fake.script.pending_polls = 10**9
    job = RecordingJob(stop_at=0)  # stopped as soon as the partner has the image
    with pytest.raises(TaskStopped):
        _backend(fake, tmp_path).generate(_request(), job)
    assert len(fake.polls()) == 0


def test_settings_carry_the_key_to_the_worker_and_hide_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLUXRUN_BFL_API_KEY", "sk-secret-42")
    monkeypatch.setenv("FLUXRUN_BFL_BASE_URL", "https://api.eu.bfl.ai/")
    settings = Settings(data_dir=tmp_path)
    assert "sk-secret-42" not in repr(settings) and "sk-secret-42" not in str(settings.model_dump())
    assert settings.to_env()["FLUXRUN_BFL_API_KEY"] == "sk-secret-42"  # the workers serve gets it
    options = backend_options(settings, "tiny", "cpu")
    assert options.bfl_api_key == "sk-secret-42" and options.bfl_base_url == "https://api.eu.bfl.ai"
    assert "sk-secret-42" not in repr(options)
    monkeypatch.setenv("FLUXRUN_BFL_API_KEY", "")
    assert Settings(data_dir=tmp_path).bfl_api_key is None


# -- the worker in-process, on both stores ------------------------------------------------------
def _worker(store: TaskStore, fake: FakePartner, tmp_path: Path, lease_seconds: float = 1.0) -> Worker:
    settings = Settings(data_dir=tmp_path, lease_seconds=lease_seconds, max_attempts=2)
    backends = BackendCache(_options(fake, tmp_path))
    return Worker(settings, store, LocalStorage(settings.outputs_dir), backends, worker_id="test/1")


def _submit(store: TaskStore, **inputs: object):
    project = store.list_projects()[0] if store.list_projects() else store.create_project("p", "apikey")
    params = FLUX2.validate({"prompt": "a lighthouse at dawn", "width": 256, "height": 128, "steps": 4, **inputs})
    return project, store.create_task(project.id, FLUX2.slug, params, FLUX2.cps)


def _assert_no_key(fake: FakePartner, task) -> None:
    assert fake.key not in task.debugoutput and fake.key not in task.debugerror


@pytest.mark.parametrize("database_url", BACKENDS, indirect=True)
@pytest.mark.parametrize("output_format", ["png", "jpeg"])
def test_worker_stores_the_partners_file(store: TaskStore, fake: FakePartner, tmp_path: Path,
                                         output_format: str) -> None:
    worker = _worker(store, fake, tmp_path)
    project, task = _submit(store, outputFormat=output_format, seed=77, safetyTolerance=6)
    assert worker.run_once()
    done = store.get_task(project.id, task_id=task.id)
    assert done.status is Status.POSTPROCESS_END and done.pexit == 0, done.debugerror
    [output] = done.outputs
    assert (output.name, output.content_type) == (f"0.{output_format}", f"image/{output_format}")
    stored = worker.storage.path(done.output_key, output.name).read_bytes()
    assert stored == fake.served()[0] and output.size == len(stored)
    with Image.open(io.BytesIO(stored)) as opened:
        assert opened.size == (256, 128)
    assert fake.submissions()[0].body["seed"] == 77 and set(fake.submissions()[0].body) == BODY_FIELDS
    assert f"FLUX.2 [flex] relayed to the partner API at {fake.url}" in done.debugoutput
    assert "safetyTolerance 6 is above the partner's maximum of 5" in done.debugoutput
    assert done.progress["stepCurrent"] == "4" and done.progress["percentage"] == "100"
    _assert_no_key(fake, done)


@pytest.mark.parametrize("database_url", BACKENDS, indirect=True)
def test_worker_moderated_task_fails_with_the_partners_reason(store: TaskStore, fake: FakePartner,
                                                              tmp_path: Path) -> None:
    fake.script.final = "Content Moderated"
    worker = _worker(store, fake, tmp_path)
    project, task = _submit(store)
    assert worker.run_once()
    failed = store.get_task(project.id, task_id=task.id)
    assert failed.status is Status.POSTPROCESS_END and failed.pexit == 1 and failed.outputs == ()
    assert failed.debugerror.startswith("Moderated by the partner (Black Forest Labs): its moderation refused the "
                                        "generated image (Content Moderated). A higher safetyTolerance may allow it")
    _assert_no_key(fake, failed)


@pytest.mark.parametrize("database_url", BACKENDS, indirect=True)
def test_worker_no_credits_fails_at_once(store: TaskStore, fake: FakePartner, tmp_path: Path) -> None:
    fake.script.submit_replies = [Reply(402, {"detail": "Insufficient credits"})]
    worker = _worker(store, fake, tmp_path)
    project, task = _submit(store)
    assert worker.run_once()
    failed = store.get_task(project.id, task_id=task.id)
    assert failed.pexit == 1 and failed.outputs == () and "the partner account has no credits" in failed.debugerror
    assert len(fake.submissions()) == 1
    _assert_no_key(fake, failed)


@pytest.mark.parametrize("database_url", BACKENDS, indirect=True)
def test_worker_kill_while_the_partner_is_pending_stops_the_wait(store: TaskStore, fake: FakePartner,
                                                                 tmp_path: Path) -> None:
    fake.script.pending_polls = 10**9
    # A 60 s lease heartbeats every 20 s: the kill must be noticed by the relay's own checks.
    worker = _worker(store, fake, tmp_path, lease_seconds=60.0)
    project, task = _submit(store)
    thread = threading.Thread(target=worker.run_once)
    thread.start()
    give_up = time.monotonic() + 60
    while len(fake.polls()) < 3:
        assert time.monotonic() < give_up and thread.is_alive(), store.get_task(project.id, task_id=task.id)
        time.sleep(0.02)
    assert store.get_task(project.id, task_id=task.id).status is Status.OUTPUT
    store.kill(project.id, task.id, time.time())
    thread.join(timeout=5)  # well before the next heartbeat (20 s)
    assert not thread.is_alive()
    polls_at_stop = len(fake.polls())
    final = store.get_task(project.id, task_id=task.id)
    assert final.status is Status.CANCEL and final.outputs == () and fake.downloads() == []
    time.sleep(0.5)
    assert len(fake.polls()) == polls_at_stop  # nothing left polling behind the worker's back


# -- a real `fluxrun serve` ---------------------------------------------------------------------
@pytest.mark.slow
def test_serve_relays_the_flux2_seed_line_to_the_partner(fake: FakePartner, tmp_path: Path) -> None:
    server = Server(tmp_path / "data", FLUXRUN_BFL_API_KEY=fake.key, FLUXRUN_BFL_BASE_URL=fake.url,
                    FLUXRUN_BFL_POLL_SECONDS="0.05").start()
    try:
        curl = SeedCurl(server, FLUX2_SEED)
        run = curl.run(curl.line("/v1/Run/black-forest-labs/flux-2-flex-t2i"),
                       {'"prompt": ""': '"prompt": "A cinematic view of skyscrapers piercing through clouds"'})
        assert run["result"] is True, run
        task = server.wait_for(run["taskid"])
        assert task["status"] == "task_postprocess_end" and task["pexit"] == "0", (task, server.log()[-4000:])
        [output] = task["outputs"]
        assert output["name"] == "0.png" and output["contenttype"] == "image/png"
        download = httpx.get(output["url"])
        assert download.status_code == 200 and download.headers["content-type"] == "image/png"
        assert download.content == fake.served()[0] and int(output["size"]) == len(download.content)
        with Image.open(io.BytesIO(download.content)) as opened:
            assert opened.size == (1024, 1024)
        [submission] = fake.submissions()
        assert submission.headers["x-key"] == fake.key
        assert submission.body == {"prompt": "A cinematic view of skyscrapers piercing through clouds",
                                   "width": 1024, "height": 1024, "guidance": 4.5, "steps": 50, "seed": 123,
                                   "safety_tolerance": 2, "output_format": "png"}
        assert fake.key not in str(task) and fake.key not in server.log()
    finally:
        server.stop()
