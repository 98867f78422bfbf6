"""The client's shell commands as a user runs them: `python -m fluxrun run ...` against a real
`fluxrun serve`, in a pseudo-terminal where the progress bar and Ctrl-C matter, piped where
the output is read by a program. Also the README's two copy-paste examples, run as written.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from tests.integration.server import Server, free_port
from tests.integration.terminal import Terminal

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PIXEL = "desertPixel/Flat-Pixel-Art-FLUX"
FLUX2 = "black-forest-labs/flux-2-flex-t2i"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Small images: the tiny models' steps are fast, the VAE's decode of a large image is not.
SMALL = ["--width", "256", "--height", "256"]
# Long enough to press Ctrl-C in the middle: 4 images of 50 steps, counted as 200 steps.
LONG = ["--samples", "4", "--steps", "50", "--width", "768", "--height", "768"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("cli-client") / "data").start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def env(server: Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """What a user's shell has after `pip install fluxrun` and exporting the key: `fluxrun`
    on the PATH (this checkout's), and the FLUXRUN_* variables of the running server.
    Each test runs its commands in its own empty tmp_path."""
    home = tmp_path_factory.mktemp("home")
    bin_dir = home / "bin"
    bin_dir.mkdir()
    launcher = bin_dir / "fluxrun"
    launcher.write_text(f'#!/bin/sh\nexec {sys.executable} -m fluxrun "$@"\n')
    launcher.chmod(0o755)
    return {
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(home),
        "PYTHONPATH": str(REPO),
        "LC_ALL": "C.UTF-8",
        "TERM": "xterm-256color",
        "FLUXRUN_BASE_URL": server.base_url,
        "FLUXRUN_API_KEY": server.key,
        "FLUXRUN_API_SECRET": server.secret,
    }


def fluxrun(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The command with its output piped (not a terminal), as a script runs it."""
    return subprocess.run([sys.executable, "-m", "fluxrun", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def in_terminal(env: dict[str, str], cwd: Path, *args: str) -> Terminal:
    return Terminal([sys.executable, "-m", "fluxrun", *args], env=env, cwd=cwd)


def task_count(server: Server) -> int:
    answer = server.post("/v1/Task/List", {"limit": "100"}).json()
    return len(answer["tasklist"])


def test_run_in_a_terminal_shows_the_progress_and_ends_with_the_path(
        server: Server, env: dict[str, str], tmp_path: Path) -> None:
    terminal = in_terminal(env, tmp_path, "run", PIXEL, "--prompt", "a fox, dpixeBw style", "--steps", "30",
                           *SMALL, "-o", "images")
    try:
        assert terminal.wait() == 0, terminal.text
    finally:
        terminal.close()
    text = terminal.text
    steps = [int(n) for n in re.findall(r"step (\d+)/30\b", text)]
    # The bar advanced: several distinct step counts, in order, up to the last.
    assert len(set(steps)) >= 5 and steps == sorted(steps) and steps[-1] == 30, text
    assert re.search(r"\d+\.\d\d it/s", text) and "ETA" in text, text
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    taskid = re.search(r"task (\d+)", text).group(1)
    assert lines[-1] == f"images/{taskid}-0.png", text
    assert (tmp_path / lines[-1]).read_bytes().startswith(PNG_MAGIC)
    assert server.detail(taskid)["status"] == "task_postprocess_end"


def test_run_json_prints_only_the_task_and_paths_go_to_stdout_alone(
        server: Server, env: dict[str, str], tmp_path: Path) -> None:
    done = fluxrun(env, tmp_path, "run", PIXEL, "--prompt", "a fox, dpixeBw style", "--steps", "3", *SMALL, "--json")
    assert done.returncode == 0, done.stderr
    task = json.loads(done.stdout)
    assert task["status"] == "task_postprocess_end" and task["pexit"] == "0"
    assert task["parameters"]["steps"] == "3" and task["outputs"][0]["url"].endswith("/0.png")
    assert isinstance(task["outputs"][0]["size"], str)  # the task as the server sent it: numbers are strings
    assert list(tmp_path.iterdir()) == []  # --json without -o writes no file

    # Piped, the files' paths are all of stdout (no bar drawn without a terminal), the stage
    # lines go to stderr, and a file already there is not written over.
    newest = server.post("/v1/Task/List", {"limit": "1"}).json()["tasklist"][0]["id"]
    taskid = str(int(newest) + 1)  # the next task's id on this one-project server
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / f"{taskid}-1.png").write_bytes(b"mine")
    again = fluxrun(env, tmp_path, "run", PIXEL, "--prompt", "a fox", "--steps", "2", "--samples", "2", *SMALL,
                    "-o", "out")
    assert again.returncode == 0, again.stderr
    assert f"task {taskid} started" in again.stderr and "step" not in again.stderr
    assert again.stdout.splitlines() == [f"out/{taskid}-0.png", f"out/{taskid}-1-2.png"]
    assert (tmp_path / "out" / f"{taskid}-1.png").read_bytes() == b"mine"
    assert (tmp_path / "out" / f"{taskid}-1-2.png").read_bytes().startswith(PNG_MAGIC)


# Runs `python -m fluxrun` with the server's packages made unimportable, as on a machine
# with the base install alone (`pip install fluxrun`: httpx, pydantic, typer, rich, websockets).
BASE_INSTALL_ONLY = """
import runpy, sys
SERVER_ONLY = ("fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "psycopg", "pydantic_settings",
               "boto3", "torch", "diffusers", "transformers", "PIL", "numpy")
class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in SERVER_ONLY:
            raise ModuleNotFoundError(f"No module named {name!r} (not in the base install)")
sys.meta_path.insert(0, NotInstalled())
sys.argv = ["fluxrun", *sys.argv[1:]]
runpy.run_module("fluxrun", run_name="__main__")
"""


def test_the_client_commands_need_only_the_base_install(env: dict[str, str], tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", BASE_INSTALL_ONLY, "run", PIXEL, "--prompt", "a fox", "--steps",
                           "2", *SMALL, "-o", "out"], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / done.stdout.strip()).read_bytes().startswith(PNG_MAGIC)
    # The guard works: a server command cannot start there.
    serve = subprocess.run([sys.executable, "-c", BASE_INSTALL_ONLY, "serve", "--data-dir", str(tmp_path / "d")],
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert serve.returncode != 0 and "ModuleNotFoundError" in serve.stderr


@pytest.mark.parametrize(("tool", "args", "names"), [
    (PIXEL, ["--width", "1000"], "--width 1000: width must be an integer from 64 to 2048 in steps of 16"),
    (PIXEL, ["--samples", "99"], "--samples 99: samples must be an integer from 1 to 4"),
    (FLUX2, ["--outputFormat", "gif"], "--outputFormat gif: outputFormat must be one of jpeg, png"),
    (FLUX2, ["--samples", "2"], f"{FLUX2} has no input --samples; its inputs: --prompt, --width,"),
])
def test_a_bad_input_is_one_line_and_exit_2_and_nothing_is_sent(
        server: Server, env: dict[str, str], tmp_path: Path, tool: str, args: list[str], names: str) -> None:
    before = task_count(server)
    done = fluxrun(env, tmp_path, "run", tool, "--prompt", "a fox", *args)
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith(f"error: {names}"), done.stderr
    assert task_count(server) == before


def test_the_servers_refusal_is_one_line_too(server: Server, env: dict[str, str], tmp_path: Path) -> None:
    # Passes each input's own range; the server's pixel budget (4 megapixels) refuses it.
    done = fluxrun(env, tmp_path, "run", FLUX2, "--prompt", "a fox", "--width", "4096", "--height", "4096")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == ["error: width: width x height must be at most 4194304 pixels "
                                        "(got 4096x4096 = 16777216)"]


def test_connection_problems(server: Server, env: dict[str, str], tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    done = fluxrun(env, tmp_path, "tasks", "--base-url", nowhere)
    assert done.returncode == 4 and len(done.stderr.splitlines()) == 1 and nowhere in done.stderr, done.stderr
    done = fluxrun(env, tmp_path, "tasks", "--api-secret", "not-the-secret")
    assert done.returncode == 3 and done.stderr.splitlines() == ["error: Project authorization is not valid."]
    without = {k: v for k, v in env.items() if not k.startswith("FLUXRUN_")}
    done = fluxrun(without, tmp_path, "tools")
    assert done.returncode == 3 and len(done.stderr.splitlines()) == 1 and "--api-key" in done.stderr
    done = fluxrun(env, tmp_path, "run", "nobody/nothing", "--prompt", "x")
    assert done.returncode == 1 and len(done.stderr.splitlines()) == 1 and "nobody/nothing" in done.stderr


def test_ctrl_c_then_yes_kills_the_task(server: Server, env: dict[str, str], tmp_path: Path) -> None:
    terminal = in_terminal(env, tmp_path, "run", PIXEL, "--prompt", "a fox", *LONG, "-o", "out")
    try:
        terminal.expect(r"step ([2-9]|\d\d+)/200")
        taskid = re.search(r"task (\d+)", terminal.text).group(1)
        terminal.type(b"\x03")
        terminal.expect(rf"Kill task {taskid}\?")
        terminal.type(b"y\r")
        assert terminal.wait() == 130, terminal.text
    finally:
        terminal.close()
    assert f"task {taskid} cancelled" in terminal.text
    assert server.detail(taskid)["status"] == "task_cancel"
    assert not (tmp_path / "out").exists()


def test_ctrl_c_then_no_leaves_it_running_and_kill_stops_it(
        server: Server, env: dict[str, str], tmp_path: Path) -> None:
    terminal = in_terminal(env, tmp_path, "run", PIXEL, "--prompt", "a fox", *LONG)
    try:
        terminal.expect(r"step ([2-9]|\d\d+)/200")
        taskid = re.search(r"task (\d+)", terminal.text).group(1)
        terminal.type(b"\x03")
        terminal.expect(rf"Kill task {taskid}\?")
        terminal.type(b"n\r")
        assert terminal.wait() == 130, terminal.text
    finally:
        terminal.close()
    assert f"task {taskid} goes on" in terminal.text
    assert server.detail(taskid)["status"] in ("task_start", "task_output")

    killed = fluxrun(env, tmp_path, "kill", taskid)
    assert killed.returncode == 0, killed.stderr
    assert killed.stderr.splitlines()[-1] == f"task {taskid} cancelled"
    assert server.detail(taskid)["status"] == "task_cancel"


def test_ctrl_c_without_a_terminal_leaves_the_task_running(
        server: Server, env: dict[str, str], tmp_path: Path) -> None:
    # A script's `fluxrun run` interrupted: nobody to ask, so nothing is killed.
    stderr = tmp_path / "stderr.txt"
    with stderr.open("w") as sink:
        process = subprocess.Popen([sys.executable, "-m", "fluxrun", "run", PIXEL, "--prompt", "a fox", *LONG],
                                   env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=sink, text=True)
        try:
            deadline = time.monotonic() + 60
            while not (started := re.search(r"task (\d+) started", stderr.read_text())):
                assert process.poll() is None and time.monotonic() < deadline, stderr.read_text()
                time.sleep(0.05)
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=60) == 130
        finally:
            if process.poll() is None:
                process.kill()
    taskid = started.group(1)
    assert process.stdout is not None and process.stdout.read() == ""
    assert stderr.read_text().splitlines()[-1] == (
        f"error: interrupted; task {taskid} goes on (`fluxrun kill {taskid}` stops it)")
    assert server.detail(taskid)["status"] in ("task_start", "task_output")
    assert server.post("/v1/Task/Kill", {"taskid": taskid}).json()["result"]
    server.wait_for(taskid)


def test_cancel_a_queued_task_task_and_tasks(server: Server, env: dict[str, str], tmp_path: Path) -> None:
    running = fluxrun(env, tmp_path, "run", PIXEL, "--prompt", "a fox", *LONG, "--no-wait")
    assert running.returncode == 0 and running.stdout.strip().isdigit(), running.stderr
    first = running.stdout.strip()
    queued = json.loads(fluxrun(env, tmp_path, "run", PIXEL, "--prompt", "a cat", "--no-wait", "--json").stdout)
    second = queued["taskid"]
    assert len(queued["socketaccesstoken"]) == 30
    server.wait_for(first, ("task_start", "task_output"))  # one worker: the second waits behind it

    cancelled = fluxrun(env, tmp_path, "cancel", second)
    assert cancelled.returncode == 0 and cancelled.stderr.strip() == f"task {second} cancelled"
    refused = fluxrun(env, tmp_path, "cancel", first)  # running: only kill stops it
    assert refused.returncode == 1 and refused.stderr.splitlines() == [
        "error: Task is not in a cancellable state."]
    assert fluxrun(env, tmp_path, "kill", first).returncode == 0

    detail = fluxrun(env, tmp_path, "task", first)
    assert detail.returncode == 0
    assert f"task {first}  {PIXEL}" in detail.stdout and "cancelled (task_cancel, pexit" in detail.stdout
    shown = json.loads(fluxrun(env, tmp_path, "task", second, "--json").stdout)
    assert (shown["id"], shown["status"], shown["parameters"]["prompt"]) == (second, "task_cancel", "a cat")
    missing = fluxrun(env, tmp_path, "task", "999999")
    assert missing.returncode == 1 and missing.stderr.splitlines() == ["error: There is no task yet."]

    done = json.loads(fluxrun(env, tmp_path, "run", PIXEL, "--prompt", "a fox", "--steps", "2", *SMALL,
                              "--json").stdout)
    listed = json.loads(fluxrun(env, tmp_path, "tasks", "--limit", "3", "--json").stdout)
    assert [(t["id"], t["status"]) for t in listed] == [
        (done["id"], "task_postprocess_end"), (second, "task_cancel"), (first, "task_cancel")]
    table = fluxrun(env, tmp_path, "tasks", "--limit", "3", "--tool", PIXEL).stdout
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in table.splitlines() if "│" in line]
    assert [(row[0], row[1], row[2]) for row in rows] == [
        (done["id"], PIXEL, "done"), (second, PIXEL, "cancelled"), (first, PIXEL, "cancelled")]
    assert rows[0][4] == format(Decimal(done["totalcost"]).normalize(), "f") and Decimal(rows[0][4]) > 0
    assert rows[1][4] == rows[2][4] == "0"  # cancellations cost nothing
    assert fluxrun(env, tmp_path, "tasks", "--tool", FLUX2).stderr.strip() == f"no task yet of {FLUX2}"


def test_tools_lists_every_tool_with_its_inputs(env: dict[str, str], tmp_path: Path) -> None:
    table = fluxrun(env, tmp_path, "tools")
    assert table.returncode == 0, table.stderr
    for line in (PIXEL, FLUX2, "fluxrun/Realism-FLUX", "--steps 12  an integer from 1 to 50",
                 "--outputFormat png  one of jpeg, png", "--width 1024  an integer from 64 to 4096 in steps of 16",
                 "--pixelOutput upscaled  one of upscaled, sprite"):
        assert line in table.stdout, line
    listed = json.loads(fluxrun(env, tmp_path, "tools", "flex", "--json").stdout)
    assert [(t["slugowner"], t["slugproject"]) for t in listed] == [("black-forest-labs", "flux-2-flex-t2i")]


def readme_block(name: str) -> str:
    """A README example marked <!-- readme-test: NAME -->, as a user copies it."""
    readme = (REPO / "README.md").read_text()
    found = re.search(rf"<!-- readme-test: {name} -->\n```\w+\n(.*?)```", readme, flags=re.S)
    assert found, f"no README block marked {name}"
    return found.group(1)


def test_readme_python_example_runs(env: dict[str, str], tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", readme_block("python")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "step 12/12" in done.stdout and "[PosixPath('out/0.png')]" in done.stdout
    assert "width -> must be a multiple of 16 (got 1000)" in done.stdout
    assert (tmp_path / "out" / "0.png").read_bytes().startswith(PNG_MAGIC)


def test_readme_shell_example_runs(env: dict[str, str], tmp_path: Path) -> None:
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", readme_block("shell")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    written = re.search(r"^(out/\d+-0\.png)$", done.stdout, flags=re.M)
    assert written and (tmp_path / written.group(1)).read_bytes().startswith(PNG_MAGIC)
    assert re.search(r"^task_postprocess_end http://\S+/0\.png$", done.stdout, flags=re.M), done.stdout
    assert re.search(r"task \d+ cancelled", done.stderr)
