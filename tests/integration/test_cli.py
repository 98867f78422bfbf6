"""The command line as an operator uses it."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fluxrun.api.app import create_app
from fluxrun.auth import signature_headers
from fluxrun.config import Settings
from fluxrun.storage.local import LocalStorage
from fluxrun.store import open_store


def fluxrun(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env_free = {"PATH": "/usr/bin:/bin", "HOME": str(data_dir.parent)}
    return subprocess.run([sys.executable, "-m", "fluxrun", *args, "--data-dir", str(data_dir)],
                          capture_output=True, text=True, env=env_free, timeout=120)


def test_keys_create_list_revoke(tmp_path: Path) -> None:
    data = tmp_path / "data"
    signed = fluxrun("keys", "create", "--name", "ci", "--mode", "signature", "--json", data_dir=data)
    assert signed.returncode == 0, signed.stderr
    created = json.loads(signed.stdout)
    assert set(created) == {"api_key", "api_secret", "webhook_secret"} and len(created["api_secret"]) == 48
    # The Standard Webhooks secret format: whsec_ + base64 of 32 random bytes.
    assert created["webhook_secret"].startswith("whsec_")
    assert len(base64.b64decode(created["webhook_secret"].removeprefix("whsec_"))) == 32
    keyonly = json.loads(fluxrun("keys", "create", "--name", "k", "--mode", "apikey", "--json", data_dir=data).stdout)
    assert keyonly["api_secret"] is None and keyonly["webhook_secret"] != created["webhook_secret"]

    listed = json.loads(fluxrun("keys", "list", "--json", data_dir=data).stdout)
    assert [(p["name"], p["mode"], p["active"]) for p in listed] == [("ci", "signature", True), ("k", "apikey", True)]
    assert [p["webhook_secret"] for p in listed] == [created["webhook_secret"], keyonly["webhook_secret"]]
    assert created["api_secret"] not in json.dumps(listed)
    table = fluxrun("keys", "list", data_dir=data).stdout
    assert created["api_key"] in table and created["webhook_secret"] in table  # whole, never shortened

    assert fluxrun("keys", "revoke", created["api_key"], data_dir=data).returncode == 0
    again = fluxrun("keys", "revoke", created["api_key"], data_dir=data)
    assert again.returncode == 1 and "no active key" in again.stderr
    assert not json.loads(fluxrun("keys", "list", "--json", data_dir=data).stdout)[0]["active"]

    bad = fluxrun("keys", "create", "--name", "x", "--mode", "open", data_dir=data)
    assert bad.returncode == 2 and "--mode must be signature or apikey" in bad.stderr


def test_keys_priority_and_limit(tmp_path: Path) -> None:
    data = tmp_path / "data"
    vip = json.loads(fluxrun("keys", "create", "--name", "vip", "--priority", "5", "--limit", "1", "--json",
                             data_dir=data).stdout)
    plain = json.loads(fluxrun("keys", "create", "--name", "plain", "--json", data_dir=data).stdout)
    listed = json.loads(fluxrun("keys", "list", "--json", data_dir=data).stdout)
    assert [(p["name"], p["priority"], p["concurrency_limit"], p["effective_concurrency_limit"]) for p in listed] == [
        ("vip", 5, 1, 1), ("plain", 0, None, 16)]

    done = fluxrun("keys", "priority", plain["api_key"], "-2", data_dir=data)
    assert done.returncode == 0 and done.stderr.strip() == "project 'plain': priority -2"
    done = fluxrun("keys", "limit", plain["api_key"], "3", data_dir=data)
    assert done.stderr.strip() == "project 'plain': concurrency limit at most 3 tasks queued or running"
    done = fluxrun("keys", "limit", vip["api_key"], "0", data_dir=data)
    assert done.stderr.strip() == "project 'vip': concurrency limit no limit"
    table = fluxrun("keys", "list", data_dir=data).stdout.splitlines()
    assert [[cell.strip() for cell in row.split("│")[7:9]] for row in table if "│" in row] == [["5", "none"], ["-2", "3"]]

    # What the API enforces comes from there: plain may have 3 tasks in flight.
    settings = Settings(data_dir=data)
    store = open_store(settings.effective_database_url)
    app = create_app(settings, store, LocalStorage(settings.outputs_dir), reaper=False)
    with TestClient(app) as client:
        def run() -> dict:
            headers = signature_headers(plain["api_key"], plain["api_secret"], nonce=str(time.time_ns()))
            return client.post("/v1/Run/desertPixel/Flat-Pixel-Art-FLUX", json={"prompt": "a"}, headers=headers).json()

        assert [run()["result"] for _ in range(4)] == [True, True, True, False]
        assert "may have at most 3 at once" in run()["errors"][0]["message"]
    store.close()

    done = fluxrun("keys", "limit", plain["api_key"], "default", data_dir=data)
    assert done.stderr.strip() == ("project 'plain': concurrency limit the default, at most 16 tasks queued or running "
                                   "(FLUXRUN_PROJECT_CONCURRENCY)")
    refused = fluxrun("keys", "limit", plain["api_key"], "many", data_dir=data)
    assert refused.returncode == 2 and "is not a number >= 0 (0: no limit) or 'default'" in refused.stderr
    missing = fluxrun("keys", "priority", "nokey", "1", data_dir=data)
    assert missing.returncode == 1 and "no key nokey" in missing.stderr


def test_db_upgrade(tmp_path: Path) -> None:
    done = fluxrun("db", "upgrade", data_dir=tmp_path / "data")
    assert done.returncode == 0 and (tmp_path / "data" / "fluxrun.db").exists()


@pytest.mark.parametrize("module", ["fluxrun.api.app", "fluxrun.cli", "fluxrun.supervisor"])
def test_the_api_process_never_imports_torch(module: str) -> None:
    code = (f"import importlib, sys; importlib.import_module({module!r}); "
            "import fluxrun.api.app, fluxrun.store.sqlite, fluxrun.store.postgres; "
            "bad = sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules); "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
