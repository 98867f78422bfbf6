"""The synchronous client: one httpx.Client, signed requests, typed answers."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urljoin

import httpx
from websockets.sync.client import connect as websocket_connect

from fluxrun.client import protocol
from fluxrun.client.connection import resolve
from fluxrun.client.errors import NotFound, RateLimited, TransportError
from fluxrun.client.models import Output, TaskInfo, ToolInfo
from fluxrun.client.task import Task

#: Reads (Task/Detail, Task/List, Tool/*) answered 429/503 with a Retry-After are tried again
#: this many times, when the wait asked for is at most MAX_RETRY_WAIT_S.
READ_RETRIES = 3
MAX_RETRY_WAIT_S = 30.0
MAX_PAGE = 100  # the most Task/List returns at once


class Client:
    """A client of a fluxrun server or of the hosted service; the same requests for both.

    ``api_key``, ``api_secret`` and ``base_url`` come from the arguments, else from
    FLUXRUN_API_KEY / FLUXRUN_API_SECRET / FLUXRUN_BASE_URL, else from the credentials file a
    local ``fluxrun serve`` writes (``credentials_path``, default $FLUXRUN_DATA_DIR's or
    ./data/credentials.json). No secret means apikey-only mode (x-api-key alone); with one,
    every request is signed with a fresh nonce. ``base_url`` may end in /v1 or not.

    ``socket_url`` (or FLUXRUN_SOCKET_URL): the WebSocket, by default beside the base URL
    (http -> ws, https -> wss). The hosted service's socket lives on another host:
    ``socket_url="wss://socket.wiro.ai/v1"``. ``websocket=False``: wait() always polls.
    ``transport``: an httpx transport (httpx.MockTransport in tests).
    """

    def __init__(
        self,
        api_key: str | None = None,
        api_secret: str | None = None,
        base_url: str | None = None,
        *,
        socket_url: str | None = None,
        credentials_path: str | Path | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
        websocket: bool = True,
        socket_connect: Callable[..., Any] | None = None,
    ) -> None:
        connection = resolve(api_key, api_secret, base_url, socket_url, credentials_path)
        self.api_key = connection.api_key
        self._api_secret = connection.api_secret
        self.base_url = connection.base_url
        self.socket_url = connection.socket_url
        self.credentials_path = connection.credentials_path
        self.timeout = timeout
        self.websocket = websocket
        # No redirects: a protocol answer is never a redirect, and a signed request must not
        # be replayed elsewhere.
        self._http = httpx.Client(transport=transport, timeout=timeout, follow_redirects=False)
        self._socket_connect: Callable[..., Any] = socket_connect or websocket_connect
        self._nonces = protocol.PROCESS_NONCES
        self._sleep: Callable[[float], None] = time.sleep
        self._clock: Callable[[], float] = time.monotonic

    @property
    def signed(self) -> bool:
        """Whether requests carry x-nonce and x-signature (a secret was found)."""
        return self._api_secret is not None

    def __repr__(self) -> str:
        mode = "signed" if self.signed else "apikey-only"
        return f"<fluxrun.client.Client {self.base_url} key={self.api_key[:6]}... {mode}>"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- tools ---

    def tools(self, search: str | None = None) -> list[ToolInfo]:
        """Tool/List: every tool (whose text contains ``search``, when given)."""
        found: list[ToolInfo] = []
        while True:
            answer = self._post(protocol.TOOL_LIST, protocol.tool_list_body(len(found), MAX_PAGE, search))
            page = protocol.tools_from(answer, protocol.TOOL_LIST)
            found.extend(page)
            total = protocol.total_from(answer)
            if not page or total is None or len(found) >= total:
                return found

    def tool(self, name: str) -> ToolInfo:
        """Tool/Detail of "owner/project": its description and inputs (``.inputs``)."""
        answer = self._post(protocol.TOOL_DETAIL, protocol.tool_body(name))
        tools = protocol.tools_from(answer, protocol.TOOL_DETAIL)
        if not tools:
            raise NotFound(f"Tool {name} not found.", 1, 200)
        return tools[0]

    # --- tasks ---

    def run(self, tool: str, /, callback_url: str | None = None, **inputs: Any) -> Task:
        """Run: queue a task of ``tool`` ("owner/project") with ``inputs``; returns its handle.

        Inputs left None are not sent (the tool's default applies). Never retried: see _post.
        """
        path = protocol.run_path(tool)
        answer = self._post(path, protocol.run_body(inputs, callback_url), idempotent=False)
        taskid, token = protocol.run_answer(answer, path)
        return Task(self, taskid, socket_token=token)

    def task(self, taskid: str | int) -> Task:
        """A handle on an existing task of this project (read once: NotFound if there is none)."""
        handle = Task(self, str(taskid))
        handle.refresh()
        return handle

    def tasks(self, limit: int = 20, start: int = 0, tool: str | None = None) -> list[TaskInfo]:
        """Task/List: this project's tasks, newest first (of one tool, when given)."""
        found: list[TaskInfo] = []
        while len(found) < limit:
            size = min(MAX_PAGE, limit - len(found))
            answer = self._post(protocol.TASK_LIST, protocol.task_list_body(start + len(found), size, tool))
            page = protocol.tasks_from(answer, protocol.TASK_LIST)
            found.extend(page)
            if len(page) < size:
                break
        return found

    def cancel(self, taskid: str | int) -> TaskInfo:
        """Task/Cancel of a queued task; returns it (task_cancel)."""
        return self._task_command(protocol.TASK_CANCEL, str(taskid))

    def kill(self, taskid: str | int) -> TaskInfo:
        """Task/Kill of a running or queued task; returns it."""
        return self._task_command(protocol.TASK_KILL, str(taskid))

    # --- the requests ---

    def _detail(self, taskid: str) -> TaskInfo:
        answer = self._post(protocol.TASK_DETAIL, {"taskid": taskid})
        return protocol.one_task(answer, protocol.TASK_DETAIL)

    def _task_command(self, endpoint: str, taskid: str) -> TaskInfo:
        # Cancel and Kill change the task: not retried either (a second Kill after a first that
        # worked would answer "not in a killable state").
        answer = self._post(endpoint, {"taskid": taskid}, idempotent=False)
        tasks = protocol.tasks_from(answer, endpoint)
        return tasks[0] if tasks else self._detail(taskid)

    def _post(self, endpoint: str, body: dict[str, Any], idempotent: bool = True) -> dict[str, Any]:
        """POST a JSON body to base_url/endpoint; the answer's JSON, or the tree's error.

        Reads (``idempotent``) answered 429/503 with a Retry-After are tried again a few
        times. A Run never is: a 503 or 429 may come from a proxy in front of a server that
        did queue the task, and a transport error may strike after the server queued it, so
        a second Run could submit the task twice. The caller sees RateLimited (with
        retry_after) or TransportError and decides.
        """
        url = f"{self.base_url}/{endpoint}"
        what = f"POST {url}"
        attempt = 0
        while True:
            headers = protocol.request_headers(self.api_key, self._api_secret, self._nonces.next())
            try:
                response = self._http.post(url, json=body, headers=headers)
            except httpx.TimeoutException as exc:
                raise TransportError(f"{what}: no answer within {self.timeout:g} s ({type(exc).__name__})") from exc
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                raise TransportError(f"{what}: {exc or type(exc).__name__}") from exc
            try:
                return protocol.parse_answer(response.status_code, response.headers, response.content, what)
            except RateLimited as exc:
                wait = exc.retry_after
                if not idempotent or attempt >= READ_RETRIES or wait is None or wait > MAX_RETRY_WAIT_S:
                    raise
                attempt += 1
                self._sleep(wait)

    def _download(self, outputs: list[Output], directory: Path) -> list[Path]:
        """GET each output's URL with no headers (it carries its own access part, like the
        hosted CDN's links) into ``directory``: a temporary file, renamed when complete."""
        directory.mkdir(parents=True, exist_ok=True)
        paths: list[Path] = []
        for index, output in enumerate(outputs):
            name = Path(output.name).name
            if name in ("", ".", ".."):
                name = str(index)
            target = directory / name
            self._fetch(urljoin(self.base_url + "/", output.url), target, output.size)
            paths.append(target)
        return paths

    def _fetch(self, url: str, target: Path, expected_size: int) -> None:
        what = f"GET {url}"
        handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        try:
            written = 0
            with os.fdopen(handle, "wb") as temp:
                try:
                    with self._http.stream("GET", url, headers={"User-Agent": protocol.USER_AGENT}) as response:
                        if response.status_code == 404:
                            raise NotFound(f"{what}: HTTP 404 (the file is gone or the link expired)", 1, 404)
                        if response.status_code != 200:
                            raise TransportError(f"{what}: HTTP {response.status_code}")
                        for chunk in response.iter_bytes():
                            temp.write(chunk)
                            written += len(chunk)
                except httpx.TimeoutException as exc:
                    raise TransportError(f"{what}: no answer within {self.timeout:g} s") from exc
                except (httpx.HTTPError, httpx.InvalidURL) as exc:
                    raise TransportError(f"{what}: {exc or type(exc).__name__}") from exc
                if expected_size and written != expected_size:
                    raise TransportError(f"{what}: got {written} bytes, the task says {expected_size}")
                temp.flush()
                os.fsync(temp.fileno())
            os.replace(temp_name, target)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise
