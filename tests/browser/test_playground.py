"""The playground as a person uses it, in headless Chromium against a real `fluxrun serve`.

One server for the module (tiny models). Its FLUX.2 [flex] tool is relayed to a partner
address where nothing listens, so those tasks fail for real (the relay's own error after
its retries), while the pixel-art tool runs on the tiny local FLUX.1.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fluxrun.auth import sign
from fluxrun.tools.catalog import TOOLS
from tests.browser.conftest import Pages, screenshot
from tests.integration.server import Server, free_port

try:
    from playwright.sync_api import expect
except ImportError:  # the browser fixture says why: a skip, or a failure in CI
    expect = None

PIXEL = "desertPixel/Flat-Pixel-Art-FLUX"
FLUX2 = "black-forest-labs/flux-2-flex-t2i"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CREDENTIALS = "fluxrun.playground.credentials"
SLOW = 120_000  # ms: the first task waits for the worker to load its models on a busy machine

# Records every value the progress bar shows, and every preview, as they happen.
RECORD = """() => {
  window.progressSeen = [];
  window.previewsSeen = [];
  const bar = document.getElementById("progress");
  new MutationObserver(() => window.progressSeen.push(Number(bar.getAttribute("aria-valuenow"))))
    .observe(bar, { attributes: true, attributeFilter: ["aria-valuenow"] });
  const preview = document.getElementById("preview-image");
  new MutationObserver(() => window.previewsSeen.push(preview.getAttribute("src") || ""))
    .observe(preview, { attributes: true, attributeFilter: ["src"] });
}"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("playground") / "data", FLUXRUN_BFL_API_KEY="playground-test",
                     FLUXRUN_BFL_BASE_URL=f"http://127.0.0.1:{free_port()}", FLUXRUN_BFL_DEADLINE_SECONDS="2").start()
    yield running
    running.stop()


def log_in(page: Any, server: Server, secret: str | None = None) -> None:
    page.goto(server.base_url + "/")
    page.fill("#api-key", server.key)
    page.fill("#api-secret", server.secret if secret is None else secret)
    page.click("#login-submit")


def logged_in(page: Any, server: Server) -> None:
    log_in(page, server)
    expect(page.locator("#workspace")).to_be_visible()


def choose(page: Any, slug: str) -> None:
    page.click(f'.tool-button[data-slug="{slug}"]')
    expect(page.locator("#tool-slug")).to_have_text(slug)


def fill(page: Any, **values: Any) -> None:
    for name, value in values.items():
        page.fill(f"#in-{name}", str(value))


def shown_task_id(page: Any) -> str:
    match = re.match(r"Task (\d+)", page.locator("#task-title").inner_text())
    assert match, page.locator("#task-title").inner_text()
    return match.group(1)


def task_count(server: Server) -> int:
    return int(server.post("/v1/Task/List", {"limit": "1"}).json()["total"])


def test_log_in_run_watch_the_progress_and_download_the_image(page: Any, server: Server) -> None:
    page.goto(server.base_url + "/")
    expect(page.locator("#login-view")).to_be_visible()
    screenshot(page, "01-log-in")
    log_in(page, server)
    expect(page.locator("#workspace")).to_be_visible()
    assert page.evaluate(f"JSON.parse(localStorage.getItem('{CREDENTIALS}'))") == {
        "apiKey": server.key, "apiSecret": server.secret}
    expect(page.locator(".tool-button")).to_have_count(len(TOOLS))
    choose(page, PIXEL)
    # The form is the tool's inputs: translated labels, help with the range, the defaults.
    expect(page.locator('label[for="in-samples"]')).to_have_text("Number of images")
    expect(page.locator("#in-width-help")).to_contain_text("From 64 to 2048, in steps of 16. Default: 1024.")
    expect(page.locator("#in-pixelOutput option")).to_have_text(["Upscaled", "Sprite"])
    expect(page.locator("#in-steps")).to_have_value("12")
    unlabelled = page.evaluate("""() => [...document.querySelectorAll("input, select, textarea")]
      .filter((control) => control.labels.length === 0).map((control) => control.id)""")
    assert unlabelled == []  # every control has its label
    screenshot(page, "02-form")

    page.evaluate(RECORD)
    fill(page, prompt="cyberpunk alien, dpixeBw style, flat 2d pixel art", steps=40, width=256, height=256,
         seed=63915225)
    page.click("#run")
    page.wait_for_function("() => window.progressSeen.some((v) => v > 0 && v < 100)", timeout=SLOW)
    screenshot(page, "03-running")
    expect(page.locator("#task-status")).to_contain_text("Done: 1 image in", timeout=SLOW)
    image = page.locator("#outputs img")
    page.wait_for_function("() => document.querySelector('#outputs img').naturalWidth > 0")
    assert image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [256, 256]
    screenshot(page, "04-done")

    # The bar moved through many values, never backwards, and ended full.
    seen = page.evaluate("window.progressSeen")
    between = [value for value in seen if 0 < value < 100]
    assert len(set(between)) >= 5 and between == sorted(between), seen
    assert page.locator("#progress").get_attribute("aria-valuenow") == "100"
    previews = page.evaluate("window.previewsSeen.filter(Boolean)")
    assert previews and all(p.startswith("data:image/jpeg;base64,/9j/") for p in previews), previews[:1]

    taskid = shown_task_id(page)
    task = server.detail(taskid)
    assert task["status"] == "task_postprocess_end" and task["pexit"] == "0"
    assert task["parameters"]["seed"] == "63915225" and task["parameters"]["steps"] == "40"
    with page.expect_download() as info:
        page.click("#outputs a.download")
    download = info.value
    assert download.suggested_filename == f"fluxrun-task-{taskid}-0.png"
    saved = Path(download.path()).read_bytes()
    assert saved.startswith(PNG_MAGIC) and saved == httpx.get(task["outputs"][0]["url"]).content
    expect(page.locator(f'#history button[data-taskid="{taskid}"]')).to_contain_text("done")


def test_a_task_from_the_history_refills_the_form_and_makes_the_same_image(page: Any, server: Server) -> None:
    inputs = {"prompt": "a red lighthouse at dusk, dpixeBw style", "seed": "12304646", "steps": "3",
              "scale": "3.5", "width": "128", "height": "192"}
    first = server.wait_for(server.post(f"/v1/Run/{PIXEL}", inputs).json()["taskid"], timeout=SLOW / 1000)
    logged_in(page, server)
    choose(page, FLUX2)  # another tool: the history brings its own back
    page.click(f'#history button[data-taskid="{first["id"]}"]')
    expect(page.locator("#tool-slug")).to_have_text(PIXEL)
    for name, value in inputs.items():
        expect(page.locator(f"#in-{name}")).to_have_value(value)
    expect(page.locator("#outputs img")).to_have_attribute("src", first["outputs"][0]["url"])
    expect(page.locator("#task-title")).to_be_focused()
    screenshot(page, "05-from-history")

    page.click("#run")
    expect(page.locator("#task-title")).not_to_have_text(re.compile(rf"^Task {first['id']}:"))
    expect(page.locator("#task-status")).to_contain_text("Done", timeout=SLOW)
    again = server.detail(shown_task_id(page))
    assert again["id"] != first["id"] and again["parameters"] == first["parameters"]
    same = [httpx.get(task["outputs"][0]["url"]).content for task in (first, again)]
    assert same[0].startswith(PNG_MAGIC) and same[0] == same[1]


def test_the_login_link_logs_in_once(pages: Pages, server: Server) -> None:
    match = re.search(r"(http://\S+/#login=[A-Za-z0-9_-]+)", server.log())
    assert match, server.log()[-3000:]
    link = match.group(1)
    assert link.startswith(server.base_url + "/#login=")
    page = pages.open()
    page.goto(link)
    expect(page.locator("#workspace")).to_be_visible()
    assert page.url == server.base_url + "/"  # the code is gone from the address bar
    assert page.evaluate(f"JSON.parse(localStorage.getItem('{CREDENTIALS}'))") == {
        "apiKey": server.key, "apiSecret": server.secret}

    elsewhere = pages.open()
    elsewhere.goto(link)
    expect(elsewhere.locator("#login-error")).to_contain_text("The login link did not work. This login link was "
                                                              "used already: each link works once.")
    expect(elsewhere.locator("#workspace")).to_be_hidden()
    screenshot(elsewhere, "06-login-link-used")

    # `fluxrun login-link` (another process) makes a new one; pasted into the open tab it is
    # only a change of the fragment, and works as well.
    page.click("#logout")
    expect(page.locator("#login-view")).to_be_visible()
    made = subprocess.run([sys.executable, "-m", "fluxrun", "login-link", "--data-dir", str(server.data_dir),
                           "--port", str(server.port)], capture_output=True, text=True, env=server.env, timeout=60)
    assert made.returncode == 0, made.stderr
    fresh = made.stdout.strip()
    assert fresh.startswith(server.base_url + "/#login=") and fresh != link
    page.goto(fresh)
    expect(page.locator("#workspace")).to_be_visible()
    assert page.url == server.base_url + "/"


def test_a_bad_width_is_shown_next_to_the_field(page: Any, server: Server) -> None:
    logged_in(page, server)
    choose(page, PIXEL)
    before = task_count(server)
    fill(page, width=1000)
    page.click("#run")
    width, error = page.locator("#in-width"), page.locator("#in-width-error")
    expect(error).to_have_text("Must be a multiple of 16 (got 1000).")
    expect(width).to_have_attribute("aria-invalid", "true")
    assert "in-width-error" in (width.get_attribute("aria-describedby") or "").split()
    expect(width).to_be_focused()
    expect(page.locator("#form-error")).to_have_text("Check this field: Width.")
    screenshot(page, "07-bad-width")
    assert task_count(server) == before  # nothing was sent

    # A rule only the server knows (FLUX.2 [flex]: at most 4 megapixels in all): its message,
    # by the field it names.
    choose(page, FLUX2)
    fill(page, prompt="a lighthouse", width=4096, height=4096)
    page.click("#run")
    expect(page.locator("#in-width-error")).to_contain_text("must be at most 4194304 pixels (got 4096x4096")
    expect(page.locator("#in-width")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#form-error")).to_have_text("The server refused a value: see the marked field.")
    screenshot(page, "08-server-refused-width")
    assert task_count(server) == before

    fill(page, width=64, height=64)
    page.click("#run")
    expect(page.locator("#in-width")).not_to_have_attribute("aria-invalid", "true")
    expect(page.locator("#task-view")).to_be_visible()


def test_kill_stops_a_running_task(page: Any, server: Server) -> None:
    logged_in(page, server)
    choose(page, PIXEL)
    fill(page, prompt="a long one", steps=50, width=256, height=256)
    page.click("#run")
    page.wait_for_function("() => Number(document.getElementById('progress').getAttribute('aria-valuenow')) >= 4",
                           timeout=SLOW)
    taskid = shown_task_id(page)
    expect(page.locator("#cancel")).to_be_disabled()  # running: only Kill can stop it
    page.click("#kill")
    expect(page.locator("#task-status")).to_have_text("Cancelled: the task was stopped.")
    screenshot(page, "09-killed")
    task = server.detail(taskid)
    assert task["status"] == "task_cancel" and task["outputs"] == []
    assert int(page.locator("#progress").get_attribute("aria-valuenow")) < 100
    expect(page.locator("#task-controls")).to_be_hidden()
    expect(page.locator("#outputs li")).to_have_count(0)


def test_a_failed_task_shows_its_debugerror(page: Any, server: Server) -> None:
    logged_in(page, server)
    choose(page, FLUX2)
    fill(page, prompt="a lighthouse", width=256, height=256, steps=2)
    page.click("#run")
    expect(page.locator("#task-failure")).to_be_visible(timeout=SLOW)
    expect(page.locator("#task-status")).to_have_text("Failed.")
    debugerror = server.detail(shown_task_id(page))["debugerror"]
    assert debugerror.startswith("Black Forest Labs could not be reached")
    expect(page.locator("#debugerror")).to_have_text(debugerror)
    screenshot(page, "10-task-failed")


def test_wrong_credentials_are_said_so(page: Any, server: Server) -> None:
    log_in(page, server, secret="not-the-secret")
    expect(page.locator("#login-error")).to_contain_text("The server refused this key and secret: "
                                                         "Project authorization is not valid.")
    expect(page.locator("#workspace")).to_be_hidden()
    assert page.evaluate(f"localStorage.getItem('{CREDENTIALS}')") is None
    screenshot(page, "11-wrong-credentials")

    # Credentials stored earlier and no longer valid (a revoked key, a new secret): the same.
    page.evaluate(f"localStorage.setItem('{CREDENTIALS}', JSON.stringify({{apiKey: 'nokey', apiSecret: 'x'}}))")
    page.reload()
    expect(page.locator("#login-error")).to_contain_text("Project authorization is not valid.")
    expect(page.locator("#api-key")).to_have_value("nokey")


def test_waiting_for_a_worker_cancel_then_the_server_goes_away(page: Any, tmp_path: Path) -> None:
    lonely = Server(tmp_path / "data", workers=0).start()  # an API with no worker anywhere
    try:
        logged_in(page, lonely)
        choose(page, PIXEL)
        fill(page, prompt="a cat", steps=2, width=128, height=128)
        page.click("#run")
        expect(page.locator("#task-status")).to_have_text(
            f"Waiting for a worker that serves {PIXEL} (none is running).")
        screenshot(page, "12-waiting-for-a-worker")
        taskid = shown_task_id(page)
        page.click("#cancel")
        expect(page.locator("#task-status")).to_have_text("Cancelled: the task was stopped.")
        assert lonely.detail(taskid)["status"] == "task_cancel"

        lonely.stop()
        page.click("#run")
        banner = page.locator("#banner")
        expect(banner).to_be_visible()
        expect(banner).to_contain_text(f"Cannot reach the fluxrun server at {lonely.base_url}")
        screenshot(page, "13-server-unreachable")
    finally:
        lonely.stop()


def test_usable_on_a_phone_sized_screen(pages: Pages, server: Server) -> None:
    page = pages.open(viewport={"width": 375, "height": 812}, device_scale_factor=2, is_mobile=True, has_touch=True)
    logged_in(page, server)
    choose(page, PIXEL)
    fill(page, prompt="a tiny robot", steps=4, width=128, height=128)
    run = page.locator("#run").bounding_box()
    assert run and run["x"] >= 0 and run["x"] + run["width"] <= 375
    page.click("#run")
    expect(page.locator("#task-status")).to_contain_text("Done", timeout=SLOW)
    assert page.evaluate("document.documentElement.scrollWidth") <= 375  # nothing wider than the screen
    expect(page.locator("#task-status")).to_be_in_viewport()  # Run brought the task below the form into view
    screenshot(page, "14-phone", full_page=False)
    screenshot(page, "15-phone-whole-page")


def test_signing_in_the_page_matches_the_server(page: Any, server: Server) -> None:
    page.goto(server.base_url + "/")
    texts = ["", "abc", "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", "a" * 55, "a" * 56,
             "a" * 63, "a" * 64, "a" * 65, "a" * 119, "é€😀" * 40, "a" * 1000]
    cases = [["key", "secret", "1795470000000"], [server.key, server.secret, "12345"],
             ["ünï", "cödé😀", "1"], ["k" * 100, "s" * 200, "9" * 20]]
    found = page.evaluate("""async ([texts, cases]) => {
      const sha = await import("/playground/sha256.js");
      const signing = await import("/playground/signing.js");
      const bytes = (text) => new TextEncoder().encode(text);
      const filled = (length, value) => new Uint8Array(length).fill(value);
      const signatures = [];
      for (const [key, secret, nonce] of cases) {
        signatures.push([await signing.signature(key, secret, nonce),
                         sha.toHex(sha.hmacSha256(bytes(key), bytes(secret + nonce)))]);
      }
      return {
        webcrypto: signing.webCryptoAvailable(),
        digests: texts.map((text) => sha.toHex(sha.sha256(bytes(text)))),
        rfc4231: [
          sha.toHex(sha.hmacSha256(filled(20, 0x0b), bytes("Hi There"))),
          sha.toHex(sha.hmacSha256(bytes("Jefe"), bytes("what do ya want for nothing?"))),
          sha.toHex(sha.hmacSha256(filled(131, 0xaa), bytes("Test Using Larger Than Block-Size Key - Hash Key First"))),
        ],
        signatures,
      };
    }""", [texts, cases])
    assert found["webcrypto"] is True  # 127.0.0.1 is a secure context: WebCrypto signs, checked against the rest
    assert found["digests"] == [hashlib.sha256(text.encode()).hexdigest() for text in texts]
    assert found["rfc4231"] == [  # RFC 4231 test cases 1, 2 and 6
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
    ]
    assert found["signatures"] == [[sign(*case)] * 2 for case in cases]


def test_the_page_signs_without_webcrypto(pages: Pages, server: Server) -> None:
    # Plain http to a LAN address is not a secure context: no crypto.subtle. The page signs
    # with its own HMAC-SHA256 there, and the server accepts it.
    page = pages.open(init_script="Object.defineProperty(Crypto.prototype, 'subtle', { get() { return undefined; } });")
    logged_in(page, server)
    assert page.evaluate("globalThis.crypto.subtle === undefined")
    expect(page.locator(".tool-button")).to_have_count(len(TOOLS))
    expect(page.locator("#history li").first).to_be_visible()


def test_a_browser_clock_ten_minutes_off_still_signs(pages: Pages, server: Server) -> None:
    # The server refuses a time-like nonce more than 5 minutes from its clock: the page learns
    # the server's clock from the answer's Date header and signs again.
    page = pages.open(init_script="const realNow = Date.now; Date.now = () => realNow() + 10 * 60 * 1000;")
    logged_in(page, server)
    expect(page.locator(".tool-button")).to_have_count(len(TOOLS))
    expect(page.locator("#history li").first).to_be_visible()


def test_the_model_loading_state_is_told_from_the_servers_waiting_line(page: Any, server: Server) -> None:
    page.goto(server.base_url + "/")
    told = page.evaluate("""async () => {
      const { describe } = await import("/playground/task.js");
      return [
        describe("task_queue", "waiting for a worker that serves a/b (1 worker serving it is still loading models)\\n"),
        describe("task_queue", ""),
        describe("task_assign", ""),
        describe("task_postprocess_end", "", "1"),
      ];
    }""")
    assert told == [
        "The model is loading: the first task after the server starts waits for it "
        "(1 worker serving it is still loading models).",
        "Queued: waiting for its turn.",
        "Starting: a worker took the task and is preparing the model.",
        "Failed.",
    ]
