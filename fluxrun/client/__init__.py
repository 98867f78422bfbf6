"""fluxrun.client: the Python SDK of fluxrun (and of the hosted service it mirrors).

Needs only the base install (httpx, pydantic, websockets): no FastAPI, SQLAlchemy or torch.

    from fluxrun.client import Client

    with Client() as client:                      # key, secret, URL: args, FLUXRUN_*, data/credentials.json
        task = client.run("desertPixel/Flat-Pixel-Art-FLUX", prompt="dpixeBw style, a fox", steps=12)
        info = task.wait(on_event=print)          # WebSocket, else polling Task/Detail
        paths = task.download("out")              # out/0.png ...

Errors: fluxrun.client.errors (one tree under ClientError).
"""

from __future__ import annotations

from fluxrun.client import errors, models
from fluxrun.client.client import Client
from fluxrun.client.errors import ClientError
from fluxrun.client.models import Event, Output, Progress, TaskInfo, ToolInfo, ToolInput
from fluxrun.client.task import Task

__all__ = [
    "Client", "ClientError", "Event", "Output", "Progress", "Task", "TaskInfo", "ToolInfo", "ToolInput",
    "errors", "models",
]
