"""`fluxrun serve` as a user runs it: a subprocess, the seeds' curl lines, real files."""

from __future__ import annotations

import io
import os
import re
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest
from PIL import Image

from tests.integration.server import FLUX2_SEED, PIXEL_SEED, SeedCurl, Server

pytestmark = pytest.mark.slow

SEED_TOKEN = "eDcCm5yyUfIvMFspTwww49OUfgXkQt"
TIME_ORDER = ["createtime", "accepttime", "assigntime", "preprocessstarttime", "preprocessendtime", "starttime",
              "endtime", "postprocessstarttime", "postprocessendtime"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("serve") / "data").start()
    yield running
    running.stop()


def test_first_start_writes_credentials(server: Server) -> None:
    path = server.data_dir / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert f'"base_url": "{server.base_url}"' in text and server.key in text and server.secret in text
    assert server.key in server.log() and server.secret in server.log()
    server.wait_for_log("TINY RANDOM-WEIGHT MODELS")


def test_pixel_art_seed_lines_end_to_end(server: Server) -> None:
    curl = SeedCurl(server, PIXEL_SEED)
    run = curl.run(curl.line("/v1/Run/desertPixel/Flat-Pixel-Art-FLUX"))
    assert run["result"] is True and run["errors"] == [] and run["taskid"].isdigit()
    token = run["socketaccesstoken"]

    seen = []
    for _ in range(120):
        answer = curl.run(curl.line("/v1/Task/Detail"), {SEED_TOKEN: token})
        assert answer["result"] is True, answer
        task = answer["tasklist"][0]
        if not seen or seen[-1] != task["status"]:
            seen.append(task["status"])
        if task["status"] in ("task_postprocess_end", "task_cancel"):
            break
    assert seen[-1] == "task_postprocess_end", (seen, server.log())
    assert task["pexit"] == "0" and task["debugerror"] == ""
    assert task["parameters"]["seed"] == "71942193" and task["parameters"]["width"] == "1024"
    assert "callbackUrl ignored" in task["debugoutput"] and "tiny random-weight" in task["debugoutput"]
    times = [int(task[name]) for name in TIME_ORDER]
    assert all(times) and times == sorted(times), dict(zip(TIME_ORDER, times))
    assert Decimal(task["totalcost"]) == Decimal(task["cps"]) * Decimal(task["elapsedseconds"])
    assert Decimal(task["totalcost"]) > 0

    [output] = task["outputs"]
    assert output["name"] == "0.png" and output["contenttype"] == "image/png"
    assert re.fullmatch(rf"{re.escape(server.base_url)}/files/[0-9a-f]{{40}}/0\.png", output["url"])
    download = httpx.get(output["url"])  # no headers, like the hosted CDN links
    assert download.status_code == 200 and download.headers["content-type"] == "image/png"
    assert int(output["size"]) == len(download.content) == int(task["size"])
    image = Image.open(io.BytesIO(download.content))
    assert image.format == "PNG" and image.size == (1024, 1024)

    key = output["url"].split("/")[-2]
    for path in ["/files/../credentials.json", f"/files/{key}/../../credentials.json", f"/files/{key}/1.png",
                 "/files/../fluxrun.db/0.png", f"/files/{key}/%2e%2e%2f%2e%2e%2fcredentials.json"]:
        code = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--path-as-is",
                               server.base_url + path], capture_output=True, text=True).stdout
        assert code == "404", path


def test_flux2_seed_lines_end_to_end_on_the_local_pipeline(server: Server) -> None:
    curl = SeedCurl(server, FLUX2_SEED)
    # The seed's own Run line, with a prompt and a small, quick image.
    run = curl.run(curl.line("/v1/Run/black-forest-labs/flux-2-flex-t2i"), {
        '"prompt": ""': '"prompt": "a lighthouse"', '"width": 1024': '"width": 256', '"height": 1024': '"height": 192',
        '"steps": 50': '"steps": 2',
    })
    assert run["result"] is True, run
    task = server.wait_for(run["taskid"])
    assert task["status"] == "task_postprocess_end" and task["pexit"] == "0", (task, server.log()[-6000:])
    assert task["debugerror"] == "" and "FLUX.2 [dev] tiny random-weight" in task["debugoutput"]
    assert Decimal(task["totalcost"]) == Decimal(task["cps"]) * Decimal(task["elapsedseconds"])
    [output] = task["outputs"]
    assert output["name"] == "0.png" and output["contenttype"] == "image/png"
    download = httpx.get(output["url"])
    assert download.status_code == 200 and download.headers["content-type"] == "image/png"
    assert int(output["size"]) == len(download.content)
    image = Image.open(io.BytesIO(download.content))
    assert image.format == "PNG" and image.size == (256, 192)

    by_id = curl.run(curl.line("/v1/Task/Detail", 0), {'"taskid": "2221"': f'"taskid": "{run["taskid"]}"'})
    by_token = curl.run(curl.line("/v1/Task/Detail", 1), {SEED_TOKEN: run["socketaccesstoken"]})
    assert by_id["result"] and by_token["result"], (by_id, by_token)
    assert by_id["tasklist"][0]["id"] == by_token["tasklist"][0]["id"] == run["taskid"]
    parameters = by_id["tasklist"][0]["parameters"]
    assert parameters["prompt"] == "a lighthouse" and parameters["seed"] == "123" and parameters["guidance"] == "4.5"


def test_cancel_queued_and_kill_running_with_the_seed_lines(server: Server) -> None:
    curl = SeedCurl(server, FLUX2_SEED)
    # A long task holds the only worker; the next one waits in the queue.
    long = server.post("/v1/Run/desertPixel/Flat-Pixel-Art-FLUX",
                       {"prompt": "long", "steps": 50, "width": 2048, "height": 2048}).json()
    queued = server.post("/v1/Run/desertPixel/Flat-Pixel-Art-FLUX", {"prompt": "queued"}).json()
    cancelled = curl.run(curl.line("/v1/Task/Cancel"), {'"taskid": "634574"': f'"taskid": "{queued["taskid"]}"'})
    assert cancelled["result"] is True and cancelled["tasklist"][0]["status"] == "task_cancel"

    running = server.wait_for(long["taskid"], ("task_output",))
    assert running["status"] == "task_output"
    not_cancellable = curl.run(curl.line("/v1/Task/Cancel"), {'"taskid": "634574"': f'"taskid": "{long["taskid"]}"'})
    assert not_cancellable["errors"][0]["message"] == "Task is not in a cancellable state."
    after = server.post("/v1/Run/desertPixel/Flat-Pixel-Art-FLUX",
                        {"prompt": "after", "steps": 2, "width": 256, "height": 256}).json()
    killed = curl.run(curl.line("/v1/Task/Kill", 1), {"ZpYote30on42O4jjHXNiKmrWAZqbRE": long["socketaccesstoken"]})
    assert killed["result"] is True and killed["tasklist"][0]["status"] == "task_cancel"
    killed_at = time.time()

    # The worker drops the killed task at its next step and takes the next one.
    done = server.wait_for(after["taskid"], timeout=60)
    assert done["status"] == "task_postprocess_end" and done["pexit"] == "0"
    assert int(done["starttime"]) - killed_at < 10, server.log()
    final = server.detail(long["taskid"])
    assert final["status"] == "task_cancel" and final["outputs"] == []
    assert server.detail(queued["taskid"])["status"] == "task_cancel"


def test_samples_have_per_image_seeds(server: Server) -> None:
    two = server.post("/v1/Run/desertPixel/Flat-Pixel-Art-FLUX",
                      {"prompt": "p", "samples": 2, "steps": 2, "width": 256, "height": 256, "seed": 10}).json()
    one = server.post("/v1/Run/desertPixel/Flat-Pixel-Art-FLUX",
                      {"prompt": "p", "samples": 1, "steps": 2, "width": 256, "height": 256, "seed": 11}).json()
    pair = server.wait_for(two["taskid"])["outputs"]
    single = server.wait_for(one["taskid"])["outputs"]
    assert [o["name"] for o in pair] == ["0.png", "1.png"]
    assert httpx.get(pair[1]["url"]).content == httpx.get(single[0]["url"]).content
    assert httpx.get(pair[0]["url"]).content != httpx.get(pair[1]["url"]).content


@pytest.fixture(scope="module")
def crashy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose leases expire fast, so lost workers are noticed in seconds."""
    running = Server(tmp_path_factory.mktemp("crashy") / "data", FLUXRUN_LEASE_SECONDS="3",
                     FLUXRUN_MAX_ATTEMPTS="2").start()
    yield running
    running.stop()


def _kill_current_worker(server: Server, taskid: str, attempt: int) -> int:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        task = server.detail(taskid)
        found = re.search(rf"attempt {attempt}: worker [^/\s]+/(\d+)", task["debugoutput"])
        if found and task["status"] in ("task_start", "task_output"):
            pid = int(found.group(1))
            os.kill(pid, signal.SIGKILL)
            return pid
        assert task["status"] not in ("task_postprocess_end", "task_cancel"), task
        time.sleep(0.05)
    raise AssertionError(f"attempt {attempt} of task {taskid} never started:\n{server.log()}")


def test_killed_worker_task_runs_again_and_ends_once(crashy: Server) -> None:
    run = crashy.post("/v1/Run/desertPixel/Flat-Pixel-Art-FLUX",
                      {"prompt": "crash once", "steps": 30, "width": 1024, "height": 1024}).json()
    first_pid = _kill_current_worker(crashy, run["taskid"], attempt=1)
    task = crashy.wait_for(run["taskid"], timeout=180)
    assert task["status"] == "task_postprocess_end" and task["pexit"] == "0", task
    assert len(task["outputs"]) == 1
    assert "attempt 1: lost worker" in task["debugoutput"]
    second = re.search(r"attempt 2: worker [^/\s]+/(\d+)", task["debugoutput"])
    assert second and int(second.group(1)) != first_pid
    assert crashy.worker_pids() and first_pid not in crashy.worker_pids()


def test_task_that_kills_its_worker_every_time_fails_at_the_limit(crashy: Server) -> None:
    run = crashy.post("/v1/Run/desertPixel/Flat-Pixel-Art-FLUX",
                      {"prompt": "crash always", "steps": 30, "width": 1024, "height": 1024}).json()
    _kill_current_worker(crashy, run["taskid"], attempt=1)
    _kill_current_worker(crashy, run["taskid"], attempt=2)
    task = crashy.wait_for(run["taskid"], timeout=60)
    assert task["status"] == "task_postprocess_end" and task["pexit"] == "1"
    assert "stopped responding on each of 2 attempts" in task["debugerror"]
    assert task["outputs"] == []
