"""The base install is the client: fluxrun.client works in a process where FastAPI,
Starlette, Uvicorn, SQLAlchemy and torch cannot be imported at all."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import sys

    BLOCKED = {"fastapi", "starlette", "uvicorn", "sqlalchemy", "torch", "diffusers", "transformers", "alembic"}

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked: the client must not need it")
            return None

    sys.meta_path.insert(0, Blocker())

    import httpx
    from fluxrun.client import Client, Task, errors
    from fluxrun.client.models import Event, Output, Progress, TaskInfo, ToolInfo, ToolInput

    seen = []

    def answer(request):
        seen.append(request)
        return httpx.Response(200, json={"errors": [], "taskid": "5", "socketaccesstoken": "s" * 30, "result": True})

    client = Client("key", "secret", "http://127.0.0.1:1", transport=httpx.MockTransport(answer))
    task = client.run("desertPixel/Flat-Pixel-Art-FLUX", prompt="a cat")
    assert isinstance(task, Task) and task.id == "5", task
    assert seen[0].url.path == "/v1/Run/desertPixel/Flat-Pixel-Art-FLUX"
    assert {"x-api-key", "x-nonce", "x-signature"} <= set(seen[0].headers)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not loaded, loaded
    print("client ok without", ", ".join(sorted(BLOCKED)))
""")


def test_the_client_imports_and_runs_without_the_server_stack() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert "client ok without" in done.stdout
