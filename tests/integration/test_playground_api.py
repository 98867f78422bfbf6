"""The playground's server side without a browser: its files and headers, the routes it must
not shadow, the login link's code (single use, expiry, wrong code) and the commands that
print links."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from fluxrun import logincode
from fluxrun.api.app import create_app
from fluxrun.api.routes.playground import LOGIN_PROBLEMS, REVOKED, WEB_DIR, image_origins
from fluxrun.auth import signature_headers
from fluxrun.config import Settings
from fluxrun.credentials import issue_login_link, write_credentials
from fluxrun.storage.local import LocalStorage
from fluxrun.store import open_store
from fluxrun.store.base import TaskStore
from fluxrun.store.schema import login_codes
from tests.integration.server import Server

BASE = "http://testserver"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path)


@pytest.fixture
def store(settings: Settings) -> Iterator[TaskStore]:
    opened = open_store(settings.effective_database_url)
    opened.migrate()
    yield opened
    opened.close()


@pytest.fixture
def client(settings: Settings, store: TaskStore) -> Iterator[TestClient]:
    with TestClient(create_app(settings, store, LocalStorage(settings.outputs_dir), reaper=False)) as test_client:
        yield test_client


def _code(url: str) -> str:
    prefix = f"{BASE}/#{logincode.FRAGMENT_KEY}="
    assert url.startswith(prefix), url
    return url.removeprefix(prefix)


def test_the_page_and_its_files_are_served_with_strict_headers(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert '<script type="module" src="/playground/app.js"></script>' in page.text
    policy = dict(part.strip().split(" ", 1) for part in page.headers["content-security-policy"].split(";"))
    assert policy["default-src"] == "'none'" and policy["script-src"] == "'self'" and policy["style-src"] == "'self'"
    assert policy["connect-src"] == "'self' ws://testserver wss://testserver"
    assert policy["img-src"] == "'self' data: blob:" and policy["frame-ancestors"] == "'none'"
    assert "unsafe" not in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff" and page.headers["cache-control"] == "no-cache"
    assert client.head("/").status_code == 200

    # Every file the page names, and every module the scripts import, is served, with its type.
    named = set(re.findall(r'(?:src|href)="/playground/([^"]+)"', page.text))
    for script in WEB_DIR.glob("*.js"):
        named |= set(re.findall(r'from "\./([^"]+)"', script.read_text()))
    assert {"app.js", "app.css", "icon.svg", "api.js", "signing.js", "sha256.js", "task.js", "form.js"} <= named
    types = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
    for name in named:
        answer = client.get(f"/playground/{name}")
        assert answer.status_code == 200, name
        assert answer.headers["content-type"] == types[Path(name).suffix], name
        assert answer.headers["x-content-type-options"] == "nosniff"


def test_the_page_loads_nothing_from_elsewhere_and_runs_no_inline_code() -> None:
    for path in WEB_DIR.iterdir():
        text = path.read_text()
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text), path.name  # no CDN, no font service
        assert "@import" not in text and "url(" not in text, path.name
        if path.suffix == ".html":
            assert not re.search(r"<script(?![^>]*\bsrc=)", text) and not re.search(r"\s(style|on[a-z]+)=", text)


def test_the_api_routes_are_not_shadowed(client: TestClient, store: TaskStore) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").status_code == 200
    assert client.get("/metrics").headers["content-type"].startswith("text/plain")
    for path in ["/nothing", "/playground/nothing.js", "/playground/index.html", "/playground/..%2Fapi%2Fapp.py",
                 "/v1/Nothing", "/files/abc/0.png"]:
        answer = client.get(path)
        assert answer.status_code == 404 and answer.json()["result"] is False, path
    project = store.create_project("p", "signature")
    headers = signature_headers(project.api_key, project.api_secret, nonce=str(time.time_ns()))
    assert client.post("/v1/Tool/List", json={}, headers=headers).json()["total"] == "3"
    with client.websocket_connect("/v1") as socket:
        socket.send_json({"type": "task_info", "tasktoken": "nothing"})
        assert socket.receive_json()["message"] == "There is no task with this tasktoken."


def test_images_may_come_from_the_public_url_and_the_s3_store(tmp_path: Path) -> None:
    assert image_origins(Settings(data_dir=tmp_path)) == []
    assert image_origins(Settings(data_dir=tmp_path, public_url="https://images.example.com/fluxrun/")) == [
        "https://images.example.com"]
    minio = Settings(data_dir=tmp_path, s3_bucket="b", s3_endpoint_url="http://minio:9000")
    assert image_origins(minio) == ["http://minio:9000", "http://*.minio:9000"]
    assert image_origins(Settings(data_dir=tmp_path, s3_bucket="b")) == ["https://*.amazonaws.com"]
    public = Settings(data_dir=tmp_path, s3_bucket="b", s3_url_mode="public",
                      s3_public_base_url="https://cdn.example.com/out")
    assert image_origins(public) == ["https://cdn.example.com"]


def test_a_login_code_gives_the_key_and_secret_once(client: TestClient, store: TaskStore, settings: Settings) -> None:
    project = store.create_project("p", "signature")
    link = issue_login_link(store, settings.credentials_path, BASE, time.time())
    assert link is not None and link.project.id == project.id
    answer = client.post("/playground/login", json={"code": _code(link.url)})
    assert answer.status_code == 200 and answer.headers["cache-control"] == "no-store"
    assert answer.json() == {"result": True, "errors": [], "api_key": project.api_key,
                             "api_secret": project.api_secret, "mode": "signature", "project": "p"}

    again = client.post("/playground/login", json={"code": _code(link.url)})
    assert again.status_code == 401 and again.json()["errors"] == [{"code": 99, "message": LOGIN_PROBLEMS["used"]}]
    wrong = client.post("/playground/login", json={"code": _code(link.url)[:-1] + "x"})
    assert wrong.status_code == 401 and wrong.json()["errors"][0]["message"] == LOGIN_PROBLEMS["unknown"]
    huge = client.post("/playground/login", json={"code": "x" * 10_000})
    assert huge.status_code == 401 and huge.json()["errors"][0]["message"] == LOGIN_PROBLEMS["unknown"]
    empty = client.post("/playground/login", json={})
    assert empty.status_code == 200 and empty.json()["errors"][0]["message"].startswith("code: is required")


def test_a_login_code_expires(client: TestClient, store: TaskStore, settings: Settings) -> None:
    store.create_project("p", "signature")
    link = issue_login_link(store, settings.credentials_path, BASE, time.time() - logincode.TTL_SECONDS - 1)
    assert link is not None
    answer = client.post("/playground/login", json={"code": _code(link.url)})
    assert answer.status_code == 401 and answer.json()["errors"][0]["message"] == LOGIN_PROBLEMS["expired"]
    assert "15 minutes" in LOGIN_PROBLEMS["expired"]


def test_a_login_code_of_a_revoked_project_gives_nothing(
    client: TestClient, store: TaskStore, settings: Settings
) -> None:
    project = store.create_project("p", "apikey")
    link = issue_login_link(store, settings.credentials_path, BASE, time.time())
    assert link is not None
    store.revoke_project(project.api_key)
    answer = client.post("/playground/login", json={"code": _code(link.url)})
    assert answer.status_code == 401 and answer.json()["errors"][0]["message"] == REVOKED


def test_which_project_a_login_link_logs_into(store: TaskStore, settings: Settings) -> None:
    now = time.time()
    assert issue_login_link(store, settings.credentials_path, BASE, now) is None  # no project yet
    first = store.create_project("first", "signature")
    second = store.create_project("second", "apikey")
    assert issue_login_link(store, settings.credentials_path, BASE, now).project.id == first.id  # the oldest
    write_credentials(settings.credentials_path, second, BASE)  # the one the operator was shown
    assert issue_login_link(store, settings.credentials_path, BASE, now).project.id == second.id
    store.revoke_project(second.api_key)
    assert issue_login_link(store, settings.credentials_path, BASE, now).project.id == first.id
    assert issue_login_link(store, settings.credentials_path, BASE, now, first.api_key).project.id == first.id
    with pytest.raises(ValueError, match="no active project has the API key"):
        issue_login_link(store, settings.credentials_path, BASE, now, second.api_key)
    # The store keeps the code's hash, never the code.
    code = _code(issue_login_link(store, settings.credentials_path, BASE, now).url)
    with store.engine.connect() as conn:
        stored = [tuple(row) for row in conn.execute(select(login_codes)).all()]
    assert logincode.code_hash(code) in [row[0] for row in stored]
    assert not any(code in str(value) for row in stored for value in row)


def _redeem(server: Server, url: str) -> httpx.Response:
    return httpx.post(server.base_url + "/playground/login", json={"code": url.split("#login=", 1)[1]}, timeout=30)


def test_serve_prints_a_login_link_and_login_link_makes_more(tmp_path: Path) -> None:
    server = Server(tmp_path / "data", workers=0).start()
    try:
        printed = re.findall(r"http://\S+/#login=[A-Za-z0-9_-]+", server.log())
        assert len(printed) == 1 and printed[0].startswith(server.base_url + "/#login="), server.log()
        assert f"Playground: {server.base_url}/" in server.log()
        # Another process (the command) issues a code; the serving process redeems it: the store is shared.
        made = subprocess.run([sys.executable, "-m", "fluxrun", "login-link", "--data-dir", str(server.data_dir),
                               "--port", str(server.port)], capture_output=True, text=True, env=server.env, timeout=60)
        assert made.returncode == 0 and "works once, for 15 minutes" in made.stderr, made.stderr
        assert re.fullmatch(rf"{re.escape(server.base_url)}/#login=[A-Za-z0-9_-]{{43}}\n", made.stdout)
        for url in (printed[0], made.stdout.strip()):
            answer = _redeem(server, url)
            assert answer.json()["api_key"] == server.key and answer.json()["api_secret"] == server.secret
            assert _redeem(server, url).status_code == 401
        refused = subprocess.run([sys.executable, "-m", "fluxrun", "login-link", "--data-dir", str(server.data_dir),
                                  "--key", "nokey"], capture_output=True, text=True, env=server.env, timeout=60)
        assert refused.returncode == 1 and "no active project has the API key 'nokey'" in refused.stderr
    finally:
        server.stop()


def test_json_logs_print_no_login_link(tmp_path: Path) -> None:
    server = Server(tmp_path / "data", workers=0, FLUXRUN_LOG_FORMAT="json").start()
    try:
        lines = [json.loads(line) for line in server.log().splitlines() if line.strip()]
        messages = [line["message"] for line in lines]
        assert any(m.startswith(f"playground: {server.base_url}/ (run `fluxrun login-link`") for m in messages)
        assert "#login=" not in server.log() and server.secret not in server.log()
    finally:
        server.stop()
