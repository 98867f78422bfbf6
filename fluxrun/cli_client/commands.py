"""The client's shell commands: run | tools | task | tasks | cancel | kill.

They talk through ``fluxrun.client`` only, to a fluxrun server or to the hosted service
alike (its URL, its key): nothing here knows which. They need the base install alone
(httpx, pydantic, typer, rich): nothing of the server is imported.

Exit codes (the README's "Use it from the shell" lists them too):
    0  done
    1  the task failed or was cancelled, or the server refused the request (not found,
       concurrency limit, rate limit...)
    2  a bad input or usage: nothing was sent, or the server named the input it refused
    3  no credentials, or the server refused them (HTTP 401)
    4  the server could not be reached, or its answer was not the protocol's
    130  interrupted (Ctrl-C)
Data goes to stdout (file paths, tables, JSON), everything else to stderr, one line per error.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.prompt import Confirm
from rich.table import Table

from fluxrun.cli_client.inputs import InputProblem, allowed_values, tool_inputs
from fluxrun.cli_client.progress import TaskProgress

if TYPE_CHECKING:
    from fluxrun.client import Client, Task
    from fluxrun.client.models import TaskInfo, ToolInput

EXIT_FAILED = 1
EXIT_INPUT = 2
EXIT_AUTH = 3
EXIT_UNREACHABLE = 4
EXIT_INTERRUPTED = 130
KILL_WAIT_SECONDS = 60.0  # how long Ctrl-C + "y" and `fluxrun kill` wait to see the task end
DEFAULT_SHOWN = 32  # characters of a default shown in the tools table (prompts are long)

# Where the client finds its server and key; each falls back to FLUXRUN_* and then the
# credentials file, resolved by fluxrun.client so the SDK and the shell agree.
BaseUrl = Annotated[Optional[str], typer.Option(
    "--base-url", help="The API's base URL, e.g. http://127.0.0.1:8000 or https://api.wiro.ai/v1 "
    "[FLUXRUN_BASE_URL, else the credentials file]", rich_help_panel="Connection")]
ApiKey = Annotated[Optional[str], typer.Option(
    "--api-key", help="API key [FLUXRUN_API_KEY, else the credentials file]", rich_help_panel="Connection")]
ApiSecret = Annotated[Optional[str], typer.Option(
    "--api-secret", help="API secret; none: the key alone is sent (apikey-only projects) "
    "[FLUXRUN_API_SECRET, else the credentials file]", rich_help_panel="Connection")]
CredentialsDir = Annotated[Optional[Path], typer.Option(
    "--data-dir", help="Directory of the credentials.json that `fluxrun serve` writes [default ./data]",
    rich_help_panel="Connection")]
SocketUrl = Annotated[Optional[str], typer.Option(
    "--socket-url", help="The WebSocket, when not beside the base URL (the hosted service's: "
    "wss://socket.wiro.ai/v1) [FLUXRUN_SOCKET_URL]", rich_help_panel="Connection")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead (the server's fields)")]


def register(app: typer.Typer) -> None:
    """Add the client commands to the ``fluxrun`` command line."""
    app.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
                epilog="Tool inputs: --INPUT VALUE or --INPUT=VALUE, the input's id as `fluxrun tools` lists it "
                       "(outputFormat) or spelt output-format / output_format.")(run)
    app.command("tools")(tools)
    app.command("task")(task_detail)
    app.command("tasks")(tasks_list)
    app.command("cancel")(cancel)
    app.command("kill")(kill)


def run(
    ctx: typer.Context,
    tool: Annotated[str, typer.Argument(
        metavar="OWNER/PROJECT", help="The tool, e.g. desertPixel/Flat-Pixel-Art-FLUX")],
    output_dir: Annotated[Path, typer.Option(
        "-o", "--output-dir", show_default=False,
        help="Where the images go, named TASKID-0.png...; never over an existing file (default: the current "
        "directory; with --json, files are written only when -o is given)")] = Path("."),
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the ended task as JSON instead of the file paths")] = False,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Print the task id and leave at once")] = False,
    callback_url: Annotated[Optional[str], typer.Option(
        "--callback-url", help="A URL the server POSTs the ended task to")] = None,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
    api_secret: ApiSecret = None,
    data_dir: CredentialsDir = None,
    socket_url: SocketUrl = None,
) -> None:
    """Run a tool and write its images.

    Checks the inputs against the tool's, follows the task with a progress bar (on stderr),
    writes the images and prints their paths, one a line on stdout. Ctrl-C asks whether to
    kill the task.
    """
    err = Console(stderr=True)
    write_files = not as_json or _given(ctx, "output_dir")
    with _reported(err):
        if tool.count("/") != 1 or tool.startswith("/") or tool.endswith("/"):
            raise InputProblem(f"the tool must be OWNER/PROJECT, e.g. desertPixel/Flat-Pixel-Art-FLUX (got {tool!r})")
        with _connected(base_url, api_key, api_secret, data_dir, socket_url) as client:
            _run(client, err, tool, ctx.args, output_dir, as_json, no_wait, callback_url, write_files)


def _run(client: Client, err: Console, tool: str, args: list[str], output_dir: Path, as_json: bool,
         no_wait: bool, callback_url: str | None, write_files: bool) -> None:
    described = client.tool(tool)
    inputs = tool_inputs(described, args)
    task = client.run(described.name, callback_url=callback_url, **inputs)
    if no_wait:
        print(json.dumps({"taskid": task.id, "socketaccesstoken": task.socket_token}) if as_json else task.id)
        return
    info = _follow(task, err, as_json)
    if as_json:
        print(_task_json(info))
    if write_files:
        paths = _save_outputs(task, output_dir)
        if not as_json:
            for path in paths:
                print(path)


def tools(
    search: Annotated[Optional[str], typer.Argument(help="Only tools whose name or title holds this")] = None,
    as_json: AsJson = False,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
    api_secret: ApiSecret = None,
    data_dir: CredentialsDir = None,
    socket_url: SocketUrl = None,
) -> None:
    """The tools and their inputs, with the defaults and the values each takes."""
    err = Console(stderr=True)
    with _reported(err), _connected(base_url, api_key, api_secret, data_dir, socket_url) as client:
        listed = client.tools(search)
        if as_json:
            print(json.dumps([tool.model_dump(mode="json") for tool in listed]))
            return
        if not listed:
            err.print("no tool" + (f" matches {escape(search)!r}" if search else ""), highlight=False)
            return
        table = Table("tool", "title", "inputs: default, what it takes")
        for tool in listed:
            table.add_row(tool.name, tool.title, "\n".join(_input_line(spec) for spec in tool.inputs))
        _print_table(table)


def task_detail(
    taskid: Annotated[str, typer.Argument(metavar="ID", help="The task's id")],
    as_json: AsJson = False,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
    api_secret: ApiSecret = None,
    data_dir: CredentialsDir = None,
    socket_url: SocketUrl = None,
) -> None:
    """One task: its status, error, outputs' URLs and cost."""
    err = Console(stderr=True)
    with _reported(err), _connected(base_url, api_key, api_secret, data_dir, socket_url) as client:
        info = client.task(taskid).refresh()
        if as_json:
            print(_task_json(info))
            return
        out = Console(soft_wrap=True, highlight=False)
        out.print(f"[bold]task {escape(info.id)}[/bold]  {escape(info.tool)}")
        rows = [
            ("status", f"{_status_word(info)} ({info.status}, pexit {info.pexit})" if info.finished
             else f"{_status_word(info)} ({info.status})"),
            ("created", _time_text(info.createtime)),
            ("elapsed", _seconds_text(info.elapsedseconds)),
            ("cost", _money_text(info.totalcost)),
        ]
        if info.debugerror.strip():
            rows.append(("error", info.debugerror.strip()))
        if info.debugoutput.strip():
            rows.append(("notes", info.debugoutput.strip()))
        if info.parameters:
            rows.append(("inputs", " ".join(f"{k}={_short(v)}" for k, v in info.parameters.items())))
        for label, value in rows:
            # Continuation lines (debugoutput has several) under the value, not the label.
            out.print(f"{label:<9} " + escape(value).replace("\n", "\n" + " " * 10))
        for output in info.outputs:
            out.print(f"{'output':<9} {escape(output.url)}  ({output.contenttype}, {output.size} bytes)")


def tasks_list(
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="How many, newest first")] = 20,
    tool: Annotated[Optional[str], typer.Option("--tool", metavar="OWNER/PROJECT", help="Only this tool's")] = None,
    as_json: AsJson = False,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
    api_secret: ApiSecret = None,
    data_dir: CredentialsDir = None,
    socket_url: SocketUrl = None,
) -> None:
    """Your project's recent tasks with their status and cost."""
    err = Console(stderr=True)
    with _reported(err), _connected(base_url, api_key, api_secret, data_dir, socket_url) as client:
        listed = client.tasks(limit=limit, tool=tool)
        if as_json:
            print("[" + ",".join(_task_json(info) for info in listed) + "]")
            return
        if not listed:
            err.print("no task yet" + (f" of {escape(tool)}" if tool else ""), highlight=False)
            return
        table = Table("id", "tool", "status", "elapsed", "cost", "created")
        for info in listed:
            table.add_row(info.id, info.tool, _status_word(info), _seconds_text(info.elapsedseconds),
                          _money_text(info.totalcost), _time_text(info.createtime))
        _print_table(table)


def cancel(
    taskid: Annotated[str, typer.Argument(metavar="ID", help="The task's id")],
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
    api_secret: ApiSecret = None,
    data_dir: CredentialsDir = None,
    socket_url: SocketUrl = None,
) -> None:
    """Cancel a task that is still queued.

    A running one is stopped with `fluxrun kill`.
    """
    err = Console(stderr=True)
    with _reported(err), _connected(base_url, api_key, api_secret, data_dir, socket_url) as client:
        client.cancel(taskid)
        err.print(f"task {escape(taskid)} cancelled", highlight=False)


def kill(
    taskid: Annotated[str, typer.Argument(metavar="ID", help="The task's id")],
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
    api_secret: ApiSecret = None,
    data_dir: CredentialsDir = None,
    socket_url: SocketUrl = None,
) -> None:
    """Stop a task, queued or running, and wait to see it end.

    A running task stops within one denoising step.
    """
    err = Console(stderr=True)
    with _reported(err), _connected(base_url, api_key, api_secret, data_dir, socket_url) as client:
        task = client.task(taskid)
        task.kill()
        _report_kill(task, err)


# --- following a task -------------------------------------------------------------------

def _follow(task: Task, err: Console, as_json: bool) -> TaskInfo:
    """Wait for the task with the progress bar; its final TaskInfo, or exit on failure,
    cancellation or Ctrl-C (which asks whether to kill the task)."""
    from fluxrun.client import errors

    try:
        with TaskProgress(err, task.id) as view:
            info = task.wait(on_event=view.on_event)
            view.finish("done")
            return info
    except KeyboardInterrupt:
        _interrupted(task, err)
    except (errors.TaskFailed, errors.TaskCancelled) as exc:
        if as_json:
            print(_task_json(exc.task))
        _fail(err, exc.message, EXIT_FAILED)


def _interrupted(task: Task, err: Console) -> NoReturn:
    """Ctrl-C while waiting: ask whether to kill the task (when someone can answer)."""
    if not sys.stdin.isatty():
        _fail(err, f"interrupted; task {task.id} goes on (`fluxrun kill {task.id}` stops it)", EXIT_INTERRUPTED)
    try:
        answer = Confirm.ask(f"Kill task {escape(task.id)}?", console=err, default=False)
    except (KeyboardInterrupt, EOFError):
        err.print()
        answer = False
    if not answer:
        err.print(f"task {escape(task.id)} goes on: `fluxrun task {escape(task.id)}` shows it, "
                  f"`fluxrun kill {escape(task.id)}` stops it", soft_wrap=True, highlight=False)
        raise typer.Exit(EXIT_INTERRUPTED)
    from fluxrun.client import errors

    try:
        task.kill()
    except errors.APIError:
        pass  # it ended meanwhile ("not in a killable state"): the wait below says how
    _report_kill(task, err)
    raise typer.Exit(EXIT_INTERRUPTED)


def _report_kill(task: Task, err: Console) -> None:
    """After a kill: wait (a little) for the task's end and say what it was."""
    from fluxrun.client import errors

    err.print(f"killing task {escape(task.id)}...", highlight=False)
    try:
        task.wait(timeout=KILL_WAIT_SECONDS)
    except errors.TaskCancelled:
        err.print(f"task {escape(task.id)} cancelled", highlight=False)
    except errors.TaskFailed as exc:
        err.print(escape(exc.message), highlight=False, soft_wrap=True)
    except errors.WaitTimeout:
        err.print(f"task {escape(task.id)} has not ended yet; `fluxrun task {escape(task.id)}` shows it",
                  highlight=False)
    else:
        err.print(f"task {escape(task.id)} ended before the kill reached it; `fluxrun task {escape(task.id)}` "
                  "shows its outputs", highlight=False, soft_wrap=True)


def _save_outputs(task: Task, directory: Path) -> list[Path]:
    """The task's files in ``directory`` as TASKID-NAME (12-0.png), or TASKID-NAME-2... when
    that name is taken: a run never writes over a file."""
    directory.mkdir(parents=True, exist_ok=True)
    saved: list[Path] = []
    # Downloaded whole into a hidden folder beside the targets first, then moved in: a file
    # under its final name is always complete.
    with tempfile.TemporaryDirectory(dir=directory, prefix=".fluxrun-") as folder:
        for downloaded in task.download(folder):
            target = _free_name(directory, f"{task.id}-{downloaded.stem}", downloaded.suffix)
            os.replace(downloaded, target)
            saved.append(target)
    return saved


def _free_name(directory: Path, stem: str, suffix: str) -> Path:
    candidate, number = directory / f"{stem}{suffix}", 1
    while candidate.exists():
        number += 1
        candidate = directory / f"{stem}-{number}{suffix}"
    return candidate


# --- errors and connection --------------------------------------------------------------

@contextmanager
def _connected(base_url: str | None, api_key: str | None, api_secret: str | None, data_dir: Path | None,
               socket_url: str | None) -> Iterator[Client]:
    from fluxrun.client import Client, errors

    credentials = data_dir / "credentials.json" if data_dir is not None else None
    try:
        client = Client(api_key=api_key, api_secret=api_secret, base_url=base_url, socket_url=socket_url,
                        credentials_path=credentials)
    except errors.ConfigurationError as exc:
        # The SDK's words name its arguments; on the command line they are options.
        raise errors.ConfigurationError(f"{exc.message} Here: --api-key, --base-url or --data-dir.") from None
    with client:
        yield client


@contextmanager
def _reported(err: Console) -> Iterator[None]:
    """Expected errors as one line on stderr and an exit code (the module's table); no traceback."""
    from fluxrun.client import errors

    try:
        yield
    except InputProblem as exc:
        _fail(err, str(exc), EXIT_INPUT)
    except errors.InputError as exc:
        _fail(err, exc.message, EXIT_INPUT)
    except (errors.AuthenticationError, errors.ConfigurationError) as exc:
        _fail(err, exc.message, EXIT_AUTH)
    except errors.TransportError as exc:
        _fail(err, exc.message, EXIT_UNREACHABLE)
    except errors.ClientError as exc:
        _fail(err, exc.message, EXIT_FAILED)
    except KeyboardInterrupt:
        _fail(err, "interrupted", EXIT_INTERRUPTED)


def _fail(err: Console, message: str, code: int) -> NoReturn:
    # soft_wrap: one line however narrow the terminal, so scripts can read it.
    err.print(f"[red]error:[/red] {escape(' '.join(message.split()))}", soft_wrap=True, highlight=False)
    raise typer.Exit(code)


def _given(ctx: typer.Context, parameter: str) -> bool:
    import click

    return ctx.get_parameter_source(parameter) is click.core.ParameterSource.COMMANDLINE


# --- rendering ----------------------------------------------------------------------------

def _task_json(info: TaskInfo) -> str:
    return json.dumps(info.wire)


def _input_line(spec: ToolInput) -> str:
    """--steps 12  an integer from 1 to 50: the input as typed with its default, and what it takes."""
    default = "" if spec.default is None else str(spec.default)
    shown = default if len(default) <= DEFAULT_SHOWN else default[: DEFAULT_SHOWN - 1] + "…"
    typed = f"--{spec.id} {shlex.quote(shown)}" if shown else f"--{spec.id}"
    return f"{typed}  {allowed_values(spec)}" + (", required" if spec.required else "")


def _print_table(table: Table) -> None:
    """On a terminal, fitted to it; piped, whole (names and ids are copied from here)."""
    out = Console()
    if out.is_terminal:
        out.print(table)
        return
    wide = Console(width=10_000)
    Console(width=Measurement.get(wide, wide.options, table).maximum).print(table)


def _status_word(info: TaskInfo) -> str:
    if info.status == "task_cancel":
        return "cancelled"
    if info.status == "task_postprocess_end":
        return "done" if info.succeeded else "failed"
    if info.status == "task_queue":
        return "queued"
    return "running"


def _time_text(unix: str) -> str:
    try:
        seconds = float(unix)
    except ValueError:
        return unix
    return datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M:%S") if seconds > 0 else ""


def _seconds_text(text: str) -> str:
    try:
        seconds = float(text)
    except ValueError:
        return text
    return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s"


def _money_text(text: str) -> str:
    try:
        value = Decimal(text)
    except InvalidOperation:
        return text
    return "0" if value == 0 else format(value.normalize(), "f")


def _short(value: Any, limit: int = 40) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 1] + "…"
