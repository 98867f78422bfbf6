"""Attacks on the API's authentication and on the walls between projects, as a client makes
them: each is refused, and what the attacker gets back tells nothing it should not.

The app runs in-process on a SQLite file of its own; keys are revoked with the real
``fluxrun keys revoke`` against that database while the app runs.
"""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from fluxrun.api.app import create_app
from fluxrun.api.security import INVALID, KEY_REQUIRED, SIGNATURE_REQUIRED
from fluxrun.auth import sign, signature_headers
from fluxrun.config import Settings
from fluxrun.status import Status
from fluxrun.storage.local import LocalStorage
from fluxrun.store import open_store
from fluxrun.store.base import NewOutput, Project, TaskStore

PIXEL = "/v1/Run/desertPixel/Flat-Pixel-Art-FLUX"
PIXEL_TOOL = "desertPixel/Flat-Pixel-Art-FLUX"
REFUSED = {"result": False, "errors": [{"code": 99, "message": INVALID}]}
NO_TASK = {"result": False, "errors": [{"code": 1, "message": "There is no task yet."}]}


def fresh_nonce() -> str:
    return str(time.time_ns() // 1000)  # unix microseconds: a random integer to the server, never repeated


@dataclass
class Service:
    client: TestClient
    store: TaskStore
    storage: LocalStorage
    settings: Settings
    a: Project  # signature mode
    b: Project  # signature mode

    def signed(self, project: Project, nonce: str | None = None) -> dict[str, str]:
        return signature_headers(project.api_key, project.api_secret, nonce=nonce or fresh_nonce())

    def post(self, path: str, body: dict[str, Any] | None = None, headers: Any = None) -> httpx.Response:
        return self.client.post(path, json=body or {}, headers=headers)

    def run(self, project: Project, prompt: str = "a cat") -> dict[str, Any]:
        answer = self.post(PIXEL, {"prompt": prompt}, self.signed(project)).json()
        assert answer["result"], answer
        return answer

    def tasks(self, project: Project, **body: Any) -> dict[str, Any]:
        return self.post("/v1/Task/List", {"limit": "100", **body}, self.signed(project)).json()

    def fluxrun(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The operator's command line, on this service's database."""
        return subprocess.run(
            [sys.executable, "-m", "fluxrun", *args, "--data-dir", str(self.settings.data_dir)],
            capture_output=True, text=True, timeout=120,
            env={"PATH": "/usr/bin:/bin", "HOME": str(self.settings.data_dir.parent)},
        )


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    settings = Settings(data_dir=tmp_path / "data")
    store = open_store(settings.effective_database_url)
    store.migrate()
    storage = LocalStorage(settings.outputs_dir)
    app = create_app(settings, store, storage, reaper=False)
    with TestClient(app) as client:
        yield Service(client, store, storage, settings, store.create_project("a", "signature"),
                      store.create_project("b", "signature"))
    store.close()


def finish_with_an_image(service: Service, task_id: int) -> bytes:
    """What a worker does to a task: claim it, write its image under the output key, end it."""
    store = service.store
    lease = store.claim("attack-test-worker", 30, time.time())
    assert lease is not None and lease.task_id == task_id
    for status in (Status.ASSIGN, Status.PREPROCESS_START, Status.PREPROCESS_END, Status.START, Status.END):
        store.advance(lease, status, time.time())
    png = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(png, format="PNG")
    service.storage.put(lease.task.output_key, "0.png", png.getvalue(), "image/png")
    store.finish_success(lease, [NewOutput("0.png", "image/png", len(png.getvalue()))], 0.5, time.time())
    return png.getvalue()


def raw_post(service: Service, path: str, headers: list[tuple[bytes, bytes]]) -> httpx.Response:
    """A request whose header bytes reach the app as they are (the test client re-encodes
    non-ASCII bytes as UTF-8; a real server hands the app what was on the wire)."""

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=service.client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await client.post(path, json={}, headers=headers)

    return asyncio.run(send())


# -- replays and the clock ---------------------------------------------------------------
def test_a_captured_request_replayed_with_another_body_or_on_another_endpoint_is_refused(service: Service) -> None:
    captured = service.signed(service.a)
    first = service.post(PIXEL, {"prompt": "a cat"}, captured).json()
    assert first["result"]

    for path, body in [(PIXEL, {"prompt": "something else entirely"}), (PIXEL, {"prompt": "a cat"}),
                       ("/v1/Task/Kill", {"taskid": first["taskid"]}), ("/v1/Task/List", {})]:
        replay = service.post(path, body, captured)
        assert replay.status_code == 401, path
        [error] = replay.json()["errors"]
        assert error["code"] == 99 and error["message"].startswith("x-nonce was already used with this API key")
    # The replays did nothing: one task, the first prompt, still queued.
    listed = service.tasks(service.a)
    assert listed["total"] == "1"
    assert listed["tasklist"][0]["parameters"]["prompt"] == "a cat"
    assert listed["tasklist"][0]["status"] == "task_queue"
    # The same nonce with another key is that key's own first use: nonces are per key.
    assert service.post("/v1/Task/List", {}, service.signed(service.b, nonce=captured["x-nonce"])).status_code == 200


@pytest.mark.parametrize("unit", ["seconds", "milliseconds"])
def test_a_nonce_that_reads_as_a_time_over_five_minutes_away_is_refused(service: Service, unit: str) -> None:
    def nonce_at(offset_s: float) -> str:
        at = time.time() + offset_s
        return str(int(at)) if unit == "seconds" else str(int(at * 1000))

    for offset in (-360, 360, -86400, 86400 * 365):
        answer = service.post("/v1/Task/List", {}, service.signed(service.a, nonce_at(offset)))
        assert answer.status_code == 401, offset
        [error] = answer.json()["errors"]
        assert error["code"] == 99 and "away from the server's clock (allowed: 300 s)" in error["message"], error
    for offset in (-240, 0, 240):
        assert service.post("/v1/Task/List", {}, service.signed(service.a, nonce_at(offset))).status_code == 200
    # A stale nonce with a wrong signature says only that the authorization is not valid:
    # why a nonce is refused is told only to whoever holds the secret.
    stale = nonce_at(-360)
    wrong = {"x-api-key": service.a.api_key, "x-nonce": stale, "x-signature": sign(service.a.api_key, "guess", stale)}
    assert service.post("/v1/Task/List", {}, wrong).json() == REFUSED


def test_any_integer_is_a_nonce_once(service: Service) -> None:
    for nonce in ["0", "-5", "42", "4 2", "  77  "]:
        headers = service.signed(service.a, nonce.strip())
        headers["x-nonce"] = nonce  # spaces around a header value are not part of it
        assert service.post("/v1/Task/List", {}, headers).status_code == 200, nonce
        again = service.post("/v1/Task/List", {}, headers)
        assert again.status_code == 401 and "already used" in again.json()["errors"][0]["message"], nonce


# -- keys and signatures -------------------------------------------------------------------
def test_wrong_keys_crossed_signatures_and_revoked_keys_all_get_the_same_refusal(service: Service) -> None:
    a, b = service.a, service.b
    revoked = service.store.create_project("gone", "signature")
    done = service.fluxrun("keys", "revoke", revoked.api_key)
    assert done.returncode == 0, done.stderr

    def attempt(key: str, signer_key: str, signer_secret: str, nonce: str | None = None) -> dict[str, str]:
        nonce = nonce or fresh_nonce()
        return {"x-api-key": key, "x-nonce": nonce, "x-signature": sign(signer_key, signer_secret, nonce)}

    good = service.signed(a)
    attacks = {
        "unknown key, signed with it": attempt("f" * 32, "f" * 32, a.api_secret),
        "unknown key, A's signature": {**good, "x-api-key": "0123456789abcdef" * 2},
        "A's key, signed with B's secret": attempt(a.api_key, a.api_key, b.api_secret),
        "A's key, B's whole signature": attempt(a.api_key, b.api_key, b.api_secret),
        "B's key, A's whole signature": attempt(b.api_key, a.api_key, a.api_secret),
        "A's key, the signature of another nonce": {**attempt(a.api_key, a.api_key, a.api_secret), "x-nonce": "99"},
        "A's key, A's key used as secret": attempt(a.api_key, a.api_key, a.api_key),
        "revoked key, its own valid signature": attempt(revoked.api_key, revoked.api_key, revoked.api_secret),
        "A's key, right signature but one character": {**good, "x-signature": good["x-signature"][:-1]
                                                       + ("0" if good["x-signature"][-1] != "0" else "1")},
        "A's key, a signature that is not hex": {**good, "x-signature": "z" * 64},
        "A's key, the openssl prefix alone": {**good, "x-signature": "SHA2-256(stdin)= "},
        "A's key, the digest with words after it": {**good, "x-signature": good["x-signature"] + " extra"},
        "A's key, base64 of the digest": {**good, "x-signature": "q83vEjRWeJA="},
    }
    for name, headers in attacks.items():
        answer = service.post(PIXEL, {"prompt": "x"}, headers)
        assert (answer.status_code, answer.json()) == (401, REFUSED), name
    # Nothing reached the queue.
    assert service.tasks(a)["total"] == "0" and service.tasks(b)["total"] == "0"


def test_a_key_revoked_with_the_cli_is_refused_from_the_next_request_in_both_modes(service: Service) -> None:
    keyonly = service.store.create_project("k", "apikey")
    signed = service.store.create_project("s", "signature")
    mine = service.run(signed)
    assert service.post(PIXEL, {"prompt": "x"}, {"x-api-key": keyonly.api_key}).json()["result"]

    for project in (keyonly, signed):
        done = service.fluxrun("keys", "revoke", project.api_key)
        assert done.returncode == 0 and f"revoked {project.api_key}" in done.stdout + done.stderr, done.stderr
    for path, body in [(PIXEL, {"prompt": "x"}), ("/v1/Task/Detail", {"taskid": mine["taskid"]}),
                       ("/v1/Task/Kill", {"taskid": mine["taskid"]})]:
        answer = service.post(path, body, service.signed(signed))
        assert (answer.status_code, answer.json()) == (401, REFUSED), path
        answer = service.post(path, body, {"x-api-key": keyonly.api_key})
        assert (answer.status_code, answer.json()) == (401, REFUSED), path
    # Alone, a revoked signature-mode key gets what an unknown key gets, not "requires signature".
    assert service.post("/v1/Task/List", {}, {"x-api-key": signed.api_key}).json() == REFUSED
    # Its task is kept, as `fluxrun keys revoke` says: only requests are refused.
    assert service.store.get_task(signed.id, task_id=int(mine["taskid"])).status is Status.QUEUE


def test_header_names_in_any_case_are_the_same_headers(service: Service) -> None:
    # HTTP header names are case-insensitive: no spelling is an attack, none may break.
    def zigzag(name: str) -> str:
        return "".join(c.upper() if i % 2 else c for i, c in enumerate(name))

    for spell in (str.upper, str.title, zigzag):
        headers = {spell(name): value for name, value in service.signed(service.a).items()}
        assert service.post("/v1/Task/List", {}, headers).status_code == 200, headers
    keyonly = service.store.create_project("k", "apikey")
    assert service.post("/v1/Task/List", {}, {"X-API-KEY": keyonly.api_key}).status_code == 200


@pytest.mark.parametrize("name", ["x-api-key", "x-nonce", "x-signature"])
def test_a_header_sent_twice_is_refused_rather_than_one_value_picked(service: Service, name: str) -> None:
    # A proxy in front may read the other value than the app: the request is ambiguous.
    good = service.signed(service.a)
    decoys = {"x-api-key": service.b.api_key, "x-nonce": fresh_nonce(),
              "x-signature": service.signed(service.b)["x-signature"]}
    for first, second in ((good[name], decoys[name]), (decoys[name], good[name]), (good[name], good[name])):
        headers = [(key, value) for key, value in good.items() if key != name]
        headers += [(name, first), (name.upper(), second)]
        answer = service.post(PIXEL, {"prompt": "x"}, headers)
        assert answer.status_code == 401, (first, second)
        assert answer.json()["errors"] == [{"code": 99, "message": f"{name} was sent 2 times: send each of "
                                            "x-api-key, x-nonce, x-signature at most once."}]
    assert service.tasks(service.a)["total"] == "0"
    # The refusals did not spend the nonce: the same headers, each once, are let in.
    assert service.post(PIXEL, {"prompt": "x"}, good).json()["result"]


def test_the_seeds_openssl_line_signs_requests(service: Service) -> None:
    # The seeds: SIGNATURE="$(echo -n "${YOUR_API_SECRET}${NONCE}" | openssl dgst -sha256 -hmac "${YOUR_API_KEY}")"
    a = service.a
    for nonce in (str(int(time.time())), str(int(time.time()) + 1)):
        line = subprocess.run(
            ["bash", "-c", 'echo -n "${SECRET}${NONCE}" | openssl dgst -sha256 -hmac "${KEY}"'],
            env={"PATH": "/usr/bin:/bin", "SECRET": a.api_secret, "NONCE": nonce, "KEY": a.api_key},
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        assert line.endswith(sign(a.api_key, a.api_secret, nonce)) and " " in line  # "SHA2-256(stdin)= <hex>"
        headers = {"x-api-key": a.api_key, "x-nonce": nonce, "x-signature": line}
        assert service.post(PIXEL, {"prompt": "x"}, headers).json()["result"]
    # Older openssl prints "(stdin)= <hex>"; hex in capitals is the same digest.
    for spell in ("(stdin)= {}", "{}", "SHA2-256(stdin)= {}"):
        for case in (str.lower, str.upper):
            nonce = fresh_nonce()
            signature = spell.format(case(sign(a.api_key, a.api_secret, nonce)))
            headers = {"x-api-key": a.api_key, "x-nonce": nonce, "x-signature": signature}
            assert service.post("/v1/Task/List", {}, headers).status_code == 200, signature


def test_missing_or_empty_headers_get_the_exact_messages(service: Service) -> None:
    a = service.a
    for headers in ({}, {"x-api-key": ""}, {"x-api-key": "   "}, {"x-nonce": "1", "x-signature": "ab"}):
        answer = service.post(PIXEL, {"prompt": "x"}, headers)
        assert (answer.status_code, answer.json()) == (
            401, {"result": False, "errors": [{"code": 98, "message": KEY_REQUIRED}]}), headers
    good = service.signed(a)
    for headers in ({"x-api-key": a.api_key}, {**good, "x-signature": ""}, {**good, "x-nonce": ""},
                    {**good, "x-signature": "  "}, {"x-api-key": a.api_key, "x-signature": good["x-signature"]},
                    {"x-api-key": a.api_key, "x-nonce": good["x-nonce"]}):
        answer = service.post(PIXEL, {"prompt": "x"}, headers)
        assert (answer.status_code, answer.json()) == (
            401, {"result": False, "errors": [{"code": 98, "message": SIGNATURE_REQUIRED}]}), headers


def test_an_apikey_only_project_is_let_in_by_its_key_whatever_else_is_sent(service: Service) -> None:
    keyonly = service.store.create_project("k", "apikey")
    for extra in ({}, {"x-nonce": "1", "x-signature": sign(keyonly.api_key, "", "1")},
                  {"x-nonce": "1", "x-signature": "not a signature"}):
        assert service.post(PIXEL, {"prompt": "x"}, {"x-api-key": keyonly.api_key, **extra}).json()["result"]


def test_huge_and_odd_header_values_are_refused_not_crashed(service: Service) -> None:
    a = service.a
    big = "9" * 65536
    for headers in ({"x-api-key": big}, {**service.signed(a), "x-signature": big},
                    {"x-api-key": a.api_key, "x-nonce": big, "x-signature": "00"}):
        answer = service.post("/v1/Task/List", {}, headers)
        assert (answer.status_code, answer.json()) == (401, REFUSED)
    # A huge nonce, rightly signed: its own rule.
    answer = service.post("/v1/Task/List", {}, service.signed(a, big))
    assert answer.status_code == 401 and answer.json()["errors"][0]["message"].startswith("x-nonce must be 1 to 128")

    # Bytes that are not ASCII, as a raw client can send them (a server reads them as Latin-1).
    def raw(key: bytes, nonce: bytes, signature: bytes) -> httpx.Response:
        return raw_post(service, "/v1/Task/List", [(b"x-api-key", key), (b"x-nonce", nonce), (b"x-signature", signature)])

    for nonce in (b"\xb2", b"\xb9\xb2\xb3", b"17000\xb2"):  # superscript digits: str.isdigit() says yes
        signature = sign(a.api_key, a.api_secret, nonce.decode("latin-1")).encode()
        answer = raw(a.api_key.encode(), nonce, signature)
        assert answer.status_code == 401, nonce
        assert answer.json()["errors"][0]["message"].startswith("x-nonce must be 1 to 128 printable ASCII characters")
    nonce = fresh_nonce().encode()
    for key, signature in [(a.api_key.encode() + b"\xe9", sign(a.api_key, a.api_secret, nonce.decode()).encode()),
                           (a.api_key.encode(), b"\xff" * 64)]:
        answer = raw(key, nonce, signature)
        assert (answer.status_code, answer.json()) == (401, REFUSED)


# -- the wall between projects -----------------------------------------------------------
def test_a_task_of_project_a_is_invisible_and_untouchable_to_project_b(service: Service) -> None:
    a, b = service.a, service.b
    ended = service.run(a, "ended")  # the older one: the claim takes it first
    queued = service.run(a, "queued")
    finish_with_an_image(service, int(ended["taskid"]))
    ended_detail = service.post("/v1/Task/Detail", {"taskid": ended["taskid"]}, service.signed(a)).json()
    output_key = ended_detail["tasklist"][0]["outputs"][0]["url"].split("/files/")[1].split("/")[0]
    unused_id = str(int(queued["taskid"]) + 1000)

    for task in (queued, ended):
        for path, body in [
            ("/v1/Task/Detail", {"taskid": task["taskid"]}),
            ("/v1/Task/Detail", {"tasktoken": task["socketaccesstoken"]}),
            ("/v1/Task/Detail", {"socketaccesstoken": task["socketaccesstoken"]}),
            ("/v1/Task/Cancel", {"taskid": task["taskid"]}),
            ("/v1/Task/Cancel", {"socketaccesstoken": task["socketaccesstoken"]}),
            ("/v1/Task/Kill", {"taskid": task["taskid"]}),
            ("/v1/Task/Kill", {"socketaccesstoken": task["socketaccesstoken"]}),
        ]:
            answer = service.post(path, body, service.signed(b))
            # Exactly what a task that does not exist gets: B cannot even learn that it exists.
            assert (answer.status_code, answer.json()) == (200, NO_TASK), (path, body)
            assert task["socketaccesstoken"] not in answer.text and output_key not in answer.text
    for path in ("/v1/Task/Detail", "/v1/Task/Cancel", "/v1/Task/Kill"):
        assert service.post(path, {"taskid": unused_id}, service.signed(b)).json() == NO_TASK

    for body in ({}, {"modelName": PIXEL_TOOL}, {"modelName": PIXEL_TOOL.lower()}, {"order": "ASC"},
                 {"start": "0", "limit": "100", "sort": "id", "order": "DESC"}):
        listed = service.tasks(b, **body)
        assert (listed["total"], listed["tasklist"]) == ("0", []), body
    # A is untouched: both tasks listed, the queued one still queued, the ended one's image there.
    mine = {t["id"]: t for t in service.tasks(a, modelName=PIXEL_TOOL)["tasklist"]}
    assert mine[queued["taskid"]]["status"] == "task_queue"
    assert mine[ended["taskid"]]["status"] == "task_postprocess_end"
    assert [o["name"] for o in mine[ended["taskid"]]["outputs"]] == ["0.png"]


def test_output_files_are_served_only_at_their_exact_unguessable_address(service: Service) -> None:
    task = service.run(service.a)
    image = finish_with_an_image(service, int(task["taskid"]))
    [output] = service.post("/v1/Task/Detail", {"taskid": task["taskid"]}, service.signed(service.a)).json()[
        "tasklist"][0]["outputs"]
    path = "/" + output["url"].split("/", 3)[3]
    key = path.split("/")[2]
    assert len(key) == 40  # 160 random bits
    (service.settings.data_dir / "credentials.json").write_text('{"api_secret": "must-not-leak"}')

    # The URL is the capability: no key needed, whoever has it (the hosted CDN's links are alike).
    got = service.client.get(path)
    assert got.status_code == 200 and got.content == image and got.headers["content-type"] == "image/png"
    for probe in [
        "/files", "/files/", f"/files/{key}", f"/files/{key}/",  # no listing of anything
        f"/files/{key}/1.png", f"/files/{key}/0.jpeg", f"/files/{key}/00.png", f"/files/{key.upper()}/0.png",
        f"/files/{key[:-1]}/0.png", f"/files/{key}x/0.png", f"/files/{key}/0.png%00.txt",
        f"/files/{key}/..%2F..%2Fcredentials.json", f"/files/{key}/%2e%2e%2f%2e%2e%2fcredentials.json",
        f"/files/{key}/..%5c..%5ccredentials.json", f"/files/{key}/%252e%252e%252fcredentials.json",
        "/files/%2e%2e/credentials.json", "/files/..%2F..%2Fdata/credentials.json", "/files/%2Fetc/passwd",
        "/files/..%2Ffluxrun.db/0.png", f"/files/{key}/%2Fetc%2Fpasswd", "/files/../credentials.json",
        f"/files/{key}/./0.png/..%2F..%2F..%2Fcredentials.json",
    ]:
        answer = service.client.get(probe)
        assert answer.status_code == 404, probe
        assert "must-not-leak" not in answer.text and image not in answer.content, probe


def test_a_socketaccesstoken_is_a_bearer_token_for_its_tasks_events(service: Service) -> None:
    # By design (as on the hosted service): the token alone registers, on a connection that
    # carries no API key, so it must be kept like one. A token that names no task is refused.
    task = service.run(service.a)
    with service.client.websocket_connect("/v1") as socket:
        socket.send_json({"type": "task_info", "tasktoken": task["socketaccesstoken"]})
        first = socket.receive_json()
    assert (first["type"], first["id"], first["result"]) == ("task_queue", task["taskid"], True)
    with service.client.websocket_connect("/v1") as socket:
        socket.send_json({"type": "task_info", "tasktoken": task["socketaccesstoken"][:-1] + "x"})
        refused = socket.receive_json()
    assert refused["result"] is False and refused["message"] == "There is no task with this tasktoken."
