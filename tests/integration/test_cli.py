"""The command line as an operator uses it."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest


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
