"""The command line: serve | api | worker | workers | keys | db | login-link, and the
client's run | tools | task | tasks | cancel | kill (fluxrun.cli_client)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from fluxrun.cli_client import register as register_client_commands

app = typer.Typer(help="fluxrun: a self-hosted text-to-image task service.", no_args_is_help=True)
keys_app = typer.Typer(help="Projects' API keys.", no_args_is_help=True)
db_app = typer.Typer(help="The database schema.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(db_app, name="db")
console = Console(stderr=True)

# Every flag is also a FLUXRUN_* setting; a flag given on the command line wins.
DataDir = Annotated[Optional[Path], typer.Option("--data-dir", help="Data directory [FLUXRUN_DATA_DIR, default ./data]")]
DatabaseUrl = Annotated[Optional[str], typer.Option("--database-url", help="SQLAlchemy URL [FLUXRUN_DATABASE_URL]")]
Host = Annotated[Optional[str], typer.Option("--host", help="Listen address [FLUXRUN_HOST, default 127.0.0.1]")]
Port = Annotated[Optional[int], typer.Option("--port", help="Listen port [FLUXRUN_PORT, default 8000]")]
Models = Annotated[Optional[str], typer.Option("--models", help="auto | tiny | real [FLUXRUN_MODELS, default auto]")]
Workers = Annotated[Optional[int], typer.Option("--workers", help="Worker processes [FLUXRUN_WORKERS, default 1]")]
Device = Annotated[Optional[str], typer.Option("--device", help="auto | cpu | cuda | cuda:N | mps [FLUXRUN_DEVICE]")]
PublicUrl = Annotated[Optional[str], typer.Option("--public-url", help="Base URL clients use [FLUXRUN_PUBLIC_URL]")]
WorkerTools = Annotated[Optional[str], typer.Option(
    "--tools",
    help="Comma-separated tools this worker serves, owner/project [FLUXRUN_WORKER_TOOLS, default every tool]")]


def _settings(**flags: Any) -> Any:
    """The settings from FLUXRUN_* and the flags; a bad value is one line naming the setting."""
    from pydantic import ValidationError

    from fluxrun.config import Settings

    try:
        return Settings(**{name: value for name, value in flags.items() if value is not None})
    except ValidationError as exc:
        for error in exc.errors():
            name = "_".join(str(part) for part in error["loc"]).upper()
            console.print(f"[red]FLUXRUN_{name}: {error['msg'].removeprefix('Value error, ')}[/red]", soft_wrap=True)
        raise typer.Exit(2) from None


def _logging(settings: Any) -> None:
    """The one place a process's logging is set up: text, or JSON lines (FLUXRUN_LOG_FORMAT)."""
    from fluxrun import logs

    logs.configure(settings.log_format)


def _open_store(settings: Any, migrate: bool = False) -> Any:
    from fluxrun.errors import DatabaseUnavailable
    from fluxrun.store import open_store

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(settings.effective_database_url)
    if migrate:
        try:
            store.migrate()
        except DatabaseUnavailable as exc:  # one line, and an exit a supervisor retries (not EXIT_CONFIG)
            from rich.markup import escape

            _say(f"[red]FLUXRUN_DATABASE_URL: cannot reach the database ({escape(exc.cause)})[/red]", logging.ERROR)
            raise typer.Exit(1) from None
    return store


@app.command()
def serve(
    host: Host = None,
    port: Port = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    models: Models = None,
    workers: Workers = None,
    public_url: PublicUrl = None,
    device: Device = None,
) -> None:
    """The API and its worker processes, on the embedded defaults (SQLite, ./data)."""
    settings = _settings(host=host, port=port, data_dir=data_dir, database_url=database_url, models=models,
                         workers=workers, public_url=public_url, device=device)
    _check_worker_tools(settings)  # once here, rather than once per worker process
    _logging(settings)
    from fluxrun.supervisor import WorkerSupervisor

    store = _open_store(settings, migrate=True)
    storage = _open_output_storage(settings)  # before any worker starts: nothing to clean up
    _announce(settings, store, storage, with_workers=True)
    supervisor = WorkerSupervisor(settings, settings.workers)
    supervisor.start()
    try:
        # A SIGTERM drains the API until the workers have finished their tasks (serving.py).
        _serve_api(settings, store, storage, on_drain=supervisor.begin_stop, on_stop_now=supervisor.stop_now,
                   drained=supervisor.all_exited)
    finally:
        supervisor.stop()
        store.close()


@app.command()
def api(
    host: Host = None,
    port: Port = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    public_url: PublicUrl = None,
) -> None:
    """The API alone (workers run elsewhere with `fluxrun worker`)."""
    settings = _settings(host=host, port=port, data_dir=data_dir, database_url=database_url, public_url=public_url)
    _logging(settings)
    store = _open_store(settings, migrate=True)
    storage = _open_output_storage(settings)
    _announce(settings, store, storage, with_workers=False)
    try:
        _serve_api(settings, store, storage)
    finally:
        store.close()


@app.command()
def worker(
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    models: Models = None,
    device: Device = None,
    tools: WorkerTools = None,
) -> None:
    """One worker process: claims tasks (of its tools) and runs the models."""
    settings = _settings(data_dir=data_dir, database_url=database_url, models=models, device=device,
                         worker_tools=tools)
    _logging(settings)
    from fluxrun.worker.main import run_worker

    run_worker(settings)


def _check_worker_tools(settings: Any) -> None:
    """FLUXRUN_WORKER_TOOLS names known tools; else one line and exit (as for other settings)."""
    from fluxrun.tools.catalog import tools_named

    try:
        tools_named(settings.worker_tools)
    except ValueError as exc:
        console.print(f"[red]FLUXRUN_WORKER_TOOLS: {exc}[/red]", soft_wrap=True)
        raise typer.Exit(2) from None


def _open_output_storage(settings: Any) -> Any:
    """The output storage (local files or S3), checked writable; else one line and exit."""
    from rich.markup import escape

    from fluxrun.errors import EXIT_CONFIG, StorageUnavailable
    from fluxrun.storage import open_storage

    storage = open_storage(settings)
    try:
        storage.check()
    except StorageUnavailable as exc:
        _say(f"[red]{escape(str(exc))}[/red]", logging.ERROR)
        raise typer.Exit(EXIT_CONFIG) from None
    return storage


def _serve_api(settings: Any, store: Any, storage: Any, **shutdown: Any) -> None:
    from fluxrun.api.app import create_app
    from fluxrun.api.lifecycle import Lifecycle
    from fluxrun.serving import run_api

    lifecycle = Lifecycle()
    app = create_app(settings, store, storage, lifecycle=lifecycle)
    run_api(app, settings.host, settings.port, lifecycle, settings.drain_seconds,
            ws_max_size=settings.ws_frame_limit_bytes, **shutdown)


def _announce(settings: Any, store: Any, storage: Any, with_workers: bool) -> None:
    from fluxrun.credentials import ensure_first_project

    base_url = settings.effective_public_url
    first = ensure_first_project(store, settings.credentials_path, base_url)
    _say(f"[bold]fluxrun[/bold] at {base_url}  (data: {settings.data_dir.resolve()})")
    _say(f"database: {settings.effective_database_url.split('@')[-1]}")
    _say(f"outputs: {storage.describe()}")
    if first and _json_logs():
        # Log lines go to log stores: the secrets stay in the 0600 file.
        _say(f"created the first project; its API key, API secret and webhook secret are in {first.path} (mode 0600)")
    elif first:
        console.print("[bold green]Created the first project.[/bold green] Its credentials:")
        console.print(f"  API key:    {first.project.api_key}")
        console.print(f"  API secret: {first.project.api_secret}")
        console.print(f"  Webhook secret: {first.project.webhook_secret}  (verifies callbacks)", soft_wrap=True)
        console.print(f"  (also in {first.path}, mode 0600)")
    elif settings.credentials_path.exists():
        _say(f"credentials of the first project: {settings.credentials_path}")
    _announce_playground(settings, store, base_url)
    if with_workers:
        _say(f"{settings.workers} worker process(es), models: {settings.models}")
        if settings.workers == 0:
            _say("[bold yellow]No worker here: tasks wait for a `fluxrun worker` elsewhere, and so do "
                 "callbacks (workers deliver them).[/bold yellow]", logging.WARNING)
        if settings.models != "real":
            _say("[bold yellow]Without a CUDA GPU the workers serve TINY random-weight models "
                 "(images are noise); each worker says which at start.[/bold yellow]", logging.WARNING)


def _announce_playground(settings: Any, store: Any, base_url: str) -> None:
    """The playground's address and, on a terminal, a one-time link that logs it in."""
    import time

    from fluxrun.credentials import issue_login_link
    from fluxrun.logincode import TTL_SECONDS

    if _json_logs():
        # Log lines go to log stores, and the link stands for the API secret until it is used.
        _say(f"playground: {base_url}/ (run `fluxrun login-link` on this machine for a one-time login link)")
        return
    link = issue_login_link(store, settings.credentials_path, base_url, time.time())
    if link is None:
        _say(f"playground: {base_url}/ (no active project to log in with: `fluxrun keys create`)")
        return
    console.print(f"[bold]Playground:[/bold] {base_url}/")
    console.print(f"  one-time login link ({link.project.name!r}; it works once, for {TTL_SECONDS // 60} minutes; "
                  f"`fluxrun login-link` makes another): {link.url}", soft_wrap=True)


@app.command("login-link")
def login_link(
    api_key: Annotated[Optional[str], typer.Option("--key", help="The project's API key (default: the project "
                                                   "of credentials.json, else the oldest active one)")] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    host: Host = None,
    port: Port = None,
    public_url: PublicUrl = None,
) -> None:
    """Print a new one-time link that logs the playground in (it works once, for 15 minutes)."""
    import time

    from fluxrun.credentials import issue_login_link
    from fluxrun.logincode import TTL_SECONDS

    settings = _settings(data_dir=data_dir, database_url=database_url, host=host, port=port, public_url=public_url)
    store = _open_store(settings, migrate=True)
    try:
        link = issue_login_link(store, settings.credentials_path, settings.effective_public_url, time.time(), api_key)
    except ValueError as exc:
        console.print(f"[red]--key: {exc}[/red]", soft_wrap=True)
        raise typer.Exit(1) from None
    finally:
        store.close()
    if link is None:
        console.print("[red]no active project: create one with `fluxrun keys create`[/red]")
        raise typer.Exit(1)
    console.print(f"project {link.project.name!r}: this link works once, for {TTL_SECONDS // 60} minutes",
                  soft_wrap=True)
    print(link.url)  # stdout: the link alone, for scripts


def _json_logs() -> bool:
    from fluxrun import logs

    return logs.is_json()


def _say(markup: str, level: int = logging.INFO) -> None:
    """A start-up line: rich text on the terminal, or a log line when logs are JSON (where
    every line of the output must be a JSON object)."""
    if _json_logs():
        from rich.text import Text

        logging.getLogger("fluxrun").log(level, Text.from_markup(markup).plain)
    else:
        console.print(markup, soft_wrap=True)


Priority = Annotated[int, typer.Option(
    "--priority", help="Claim priority: a higher priority's queued tasks run before any lower one's")]
Limit = Annotated[Optional[str], typer.Option(
    "--limit", help="Most tasks queued or running at once: a number, 0 for no limit, or 'default' "
    "[default: FLUXRUN_PROJECT_CONCURRENCY]")]


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option("--name", help="Project name")],
    mode: Annotated[str, typer.Option("--mode", help="signature | apikey")] = "signature",
    priority: Priority = 0,
    limit: Limit = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the key and secrets as JSON")] = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create a project with a new key (and secret, in signature mode) and its webhook secret."""
    if mode not in ("signature", "apikey"):
        console.print("[red]--mode must be signature or apikey[/red]")
        raise typer.Exit(2)
    concurrency_limit = _parse_limit(limit) if limit is not None else None
    settings = _settings(data_dir=data_dir, database_url=database_url)
    store = _open_store(settings, migrate=True)
    project = store.create_project(name, mode, priority=priority, concurrency_limit=concurrency_limit)
    if as_json:
        print(json.dumps({"api_key": project.api_key, "api_secret": project.api_secret,
                          "webhook_secret": project.webhook_secret}))
    else:
        console.print(f"project {project.name!r} ({project.mode})")
        console.print(f"  API key:        {project.api_key}")
        if project.api_secret:
            console.print(f"  API secret:     {project.api_secret}")
        console.print(f"  Webhook secret: {project.webhook_secret}", soft_wrap=True)
        if priority or concurrency_limit is not None:
            console.print(f"  Priority: {project.priority}; concurrency limit: "
                          f"{_describe_limit(concurrency_limit, settings.project_concurrency)}")


@keys_app.command("list")
def keys_list(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Every project's key, webhook secret, priority and concurrency limit (API secrets are not
    shown: only clients need them, while whoever runs a callback receiver needs the webhook secret)."""
    settings = _settings(data_dir=data_dir, database_url=database_url)
    store = _open_store(settings, migrate=True)
    projects = store.list_projects()
    default = settings.project_concurrency
    if as_json:
        print(json.dumps([{"id": p.id, "name": p.name, "mode": p.mode, "api_key": p.api_key,
                           "webhook_secret": p.webhook_secret, "active": p.active, "priority": p.priority,
                           "concurrency_limit": p.concurrency_limit,
                           "effective_concurrency_limit": p.effective_concurrency_limit(default)}
                          for p in projects]))
        return
    table = Table("id", "name", "mode", "api key", "webhook secret", "state", "priority", "limit")
    for p in projects:
        table.add_row(str(p.id), p.name, p.mode, p.api_key, p.webhook_secret, "active" if p.active else "revoked",
                      str(p.priority), _describe_limit(p.concurrency_limit, default))
    # Keys are copied from here: as wide as the table needs, never shortened to fit a terminal.
    wide = Console(width=10_000)
    Console(width=Measurement.get(wide, wide.options, table).maximum).print(table)


@keys_app.command("priority", context_settings={"ignore_unknown_options": True})
def keys_priority(
    api_key: str,
    priority: Annotated[int, typer.Argument(help="Higher first; 0 is the default, negative is below it")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Set a project's claim priority: its queued tasks run before any of a lower priority."""
    store = _open_store(_settings(data_dir=data_dir, database_url=database_url), migrate=True)
    project = store.set_priority(api_key, priority)
    if project is None:
        console.print(f"[red]no key {api_key}[/red]")
        raise typer.Exit(1)
    console.print(f"project {project.name!r}: priority {project.priority}")


@keys_app.command("limit")
def keys_limit(
    api_key: str,
    limit: Annotated[str, typer.Argument(
        help="A number, 0 for no limit, or 'default' for FLUXRUN_PROJECT_CONCURRENCY")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Set a project's own concurrency limit: the most tasks it may have queued or running at once."""
    value = _parse_limit(limit)
    settings = _settings(data_dir=data_dir, database_url=database_url)
    store = _open_store(settings, migrate=True)
    project = store.set_concurrency_limit(api_key, value)
    if project is None:
        console.print(f"[red]no key {api_key}[/red]")
        raise typer.Exit(1)
    own, default = project.concurrency_limit, settings.project_concurrency
    if own is None:
        told = (f"the default, at most {default} tasks queued or running" if default else "the default, no limit")
        console.print(f"project {project.name!r}: concurrency limit {told} (FLUXRUN_PROJECT_CONCURRENCY)",
                      soft_wrap=True)
    else:
        told = f"at most {own} tasks queued or running" if own else "no limit"
        console.print(f"project {project.name!r}: concurrency limit {told}", soft_wrap=True)


def _parse_limit(text: str) -> int | None:
    """A concurrency limit from the command line: None for 'default', else a number >= 0."""
    if text.strip().lower() == "default":
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        console.print(f"[red]limit: {text!r} is not a number >= 0 (0: no limit) or 'default'[/red]")
        raise typer.Exit(2)
    return value


def _describe_limit(own: int | None, default: int) -> str:
    if own is None:
        return f"{default} (default)" if default else "none (default)"
    return str(own) if own else "none"


@keys_app.command("revoke")
def keys_revoke(api_key: str, data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Revoke a key: its requests are refused from now on; its tasks are kept."""
    store = _open_store(_settings(data_dir=data_dir, database_url=database_url), migrate=True)
    if not store.revoke_project(api_key):
        console.print(f"[red]no active key {api_key}[/red]")
        raise typer.Exit(1)
    console.print(f"revoked {api_key}")


@app.command("workers")
def workers_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print the registry as JSON")] = False,
    every: Annotated[bool, typer.Option("--all", help="Also workers that stopped or are gone")] = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """The worker registry: each worker's state, task, tools and GPU memory."""
    import time

    store = _open_store(_settings(data_dir=data_dir, database_url=database_url), migrate=True)
    now = time.time()
    shown = [w for w in store.list_workers() if every or w.live(now)]
    rows = [
        {
            "id": w.id,
            "state": w.state if w.live(now) or w.state == "stopped" else "gone",
            "task": w.task_id,
            "tools": list(w.tools),
            "models": w.models,
            "device": w.device,
            "started_at": w.started_at,
            "last_seen": w.last_seen,
            "gpu_memory": None if w.gpu is None else {"allocated": w.gpu.allocated, "reserved": w.gpu.reserved,
                                                      "total": w.gpu.total},
        }
        for w in shown
    ]
    if as_json:
        print(json.dumps(rows))
        return
    if not rows:
        console.print("no live worker" + ("" if every else " (--all shows stopped and gone ones)"))
        return
    table = Table("worker", "state", "task", "tools", "models", "seen", "GPU memory (allocated / total)")
    for row in rows:
        gpu = row["gpu_memory"]
        table.add_row(
            row["id"], row["state"], str(row["task"] or ""), "\n".join(row["tools"]), f"{row['models']} on {row['device']}",
            f"{now - row['last_seen']:.0f} s ago",
            f"{gpu['allocated'] / 2**30:.1f} / {gpu['total'] / 2**30:.1f} GiB" if gpu else "",
        )
    wide = Console(width=10_000)  # tool slugs and ids are copied from here: never shortened
    Console(width=Measurement.get(wide, wide.options, table).maximum).print(table)


@db_app.command("upgrade")
def db_upgrade(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Apply the database migrations."""
    _open_store(_settings(data_dir=data_dir, database_url=database_url), migrate=True)
    console.print("database schema is up to date")


# After the server's commands, so `fluxrun --help` lists those first.
register_client_commands(app)


def main() -> None:
    app()
