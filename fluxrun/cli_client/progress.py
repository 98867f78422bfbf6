"""The live view of one task while ``fluxrun run`` waits for it, on stderr.

A rich progress bar (step n/N, the speed the worker reports, the time it expects to need)
fed by ``Task.wait(on_event=...)``, and one line per stage (queued, started, an error line,
the end). Without a terminal there is no bar: the stage lines alone, so logs stay readable.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, ProgressColumn, TaskID, TextColumn
from rich.progress import Task as BarTask
from rich.text import Text

if TYPE_CHECKING:
    from fluxrun.client.models import Event

# The stages worth a line of their own; the other statuses (accept, assign, preprocess)
# pass in a blink between these. A watcher that registers late hears the current status
# first: a task already generating (task_output) has started too.
STAGE_LINES = {
    "task_queue": "queued",
    "task_start": "started",
    "task_output": "started",
    "task_end": "generated, writing the images",
    "task_postprocess_end": "ended",
    "task_cancel": "cancelled",
}
# What the bar says while the task is in each stage.
STAGE_DESCRIPTIONS = {
    "task_queue": "waiting in the queue",
    "task_accept": "accepted",
    "task_assign": "assigned to a worker",
    "task_preprocess_start": "preparing",
    "task_preprocess_end": "preparing",
    "task_start": "generating",
    "task_output": "generating",
    "task_end": "writing the images",
}


class StepColumn(ProgressColumn):
    """step 12/30 (blank until the worker has reported its first step)."""

    def render(self, task: BarTask) -> Text:
        if task.total is None:
            return Text("")
        return Text(f"step {int(task.completed)}/{int(task.total)}", style="progress.download")


class SpeedColumn(ProgressColumn):
    """The speed as the worker measures it ("1.84 it/s")."""

    def render(self, task: BarTask) -> Text:
        return Text(task.fields.get("speed", ""), style="progress.data.speed")


class EtaColumn(ProgressColumn):
    """ETA: the worker's own estimate, else rich's from the steps seen so far."""

    def render(self, task: BarTask) -> Text:
        remaining = task.fields.get("remaining")
        if not remaining and task.total is not None and task.time_remaining is not None:
            remaining = f"{round(task.time_remaining)}s"
        return Text(f"ETA {remaining}" if remaining else "", style="progress.remaining")


class TaskProgress:
    """``with TaskProgress(console, task_id) as view: task.wait(on_event=view.on_event)``."""

    def __init__(self, console: Console, task_id: str) -> None:
        self.console = console
        self.task_id = task_id
        self.live = console.is_terminal
        self._progress = Progress(
            TextColumn("[bold]task {task.fields[task_id]}[/bold] {task.description}"),
            BarColumn(),
            StepColumn(),
            SpeedColumn(),
            EtaColumn(),
            console=console,
            disable=not self.live,
        )
        self._bar: TaskID | None = None
        self._stages_said: set[str] = set()

    def __enter__(self) -> TaskProgress:
        self._progress.start()
        self._bar = self._progress.add_task("submitted", total=None, task_id=self.task_id, speed="", remaining="")
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._progress.stop()

    def finish(self, description: str) -> None:
        """The bar's last word ("done"), left on the screen above the files' paths."""
        assert self._bar is not None, "use TaskProgress as a context manager"
        self._progress.update(self._bar, description=description, refresh=True)

    def on_event(self, event: Event) -> None:
        """One thing Task.wait saw: a status change, a progress step or an error line."""
        assert self._bar is not None, "use TaskProgress as a context manager"
        if event.type == "task_error":
            self._say(f"[red]{escape(str(event.message or '').strip())}[/red]")
            return
        if event.progress is not None and event.progress.step_total:
            progress = event.progress
            speed = f"{progress.speed:.2f} {progress.speed_type or 'it/s'}" if progress.speed is not None else ""
            # Every step is drawn as it comes (refresh=True): the steps are the news.
            self._progress.update(self._bar, total=progress.step_total, completed=progress.step_current,
                                  speed=speed, remaining=progress.remaining or "", description="generating",
                                  refresh=True)
        status = event.status
        if status is None:
            return
        if status in STAGE_DESCRIPTIONS and event.progress is None:
            self._progress.update(self._bar, description=STAGE_DESCRIPTIONS[status], refresh=True)
        line = STAGE_LINES.get(status)
        if line is not None and line not in self._stages_said:
            self._stages_said.add(line)
            if status != "task_postprocess_end":  # the end is told by whoever reads the outcome
                self._say(f"task {escape(self.task_id)} {line}")

    def _say(self, markup: str) -> None:
        # Above the bar while it is live; a plain line when there is no terminal.
        self._progress.console.print(markup, soft_wrap=True, highlight=False)
