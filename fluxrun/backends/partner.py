"""FLUX.2 [flex] relayed to its maker's API (Black Forest Labs), as SPEC.md section 10 describes.

For each image of a task (image i uses ``seed + i``): submit it, poll the ``polling_url`` the
partner returns until it says Ready, and download the result at once (its URL expires within
minutes). The file is handed to the worker as it came, if it is the format the task asked for.

How the partner's answers end up:
- 429 (its Retry-After honoured), 5xx, timeouts, connection errors: tried again with
  exponential backoff and jitter, until the task's deadline;
- 402 (no credits), 401/403 (the key), 400/422 (a request it will not take), an expired
  result URL: the task fails at once, with a message saying which;
- ``Request Moderated`` / ``Content Moderated``: GenerationRefused; ``Error``, ``Task not
  found``: PartnerError; ``Pending`` and any status this relay does not know yet (the API
  has added ``Reasoning`` and ``Generating`` to some models): keep polling.

Every wait is cut into slices with ``job.check()`` between them, so a kill ends the relay
within about a second. An HTTP call already under way is not interrupted; each is bounded by
the request timeout. The API key goes only into the ``x-key`` header of calls to the partner
API (never to the result's delivery URL, which is signed) and into no message, note or log.
"""

from __future__ import annotations

import email.utils
import io
import logging
import random
import time
from typing import Any

import httpx
from PIL import Image

from fluxrun.backends.base import BackendOptions, Job
from fluxrun.errors import BackendUnavailable, GenerationRefused, PartnerError
from fluxrun.imaging.encode import EncodedImage, encode_image
from fluxrun.tools.request import GenerationRequest

log = logging.getLogger("fluxrun.partner")

PARTNER = "Black Forest Labs"
ENDPOINT = "/v1/flux-2-flex"
PARTNER_MAX_SAFETY_TOLERANCE = 5  # the tool page allows 0..6, the partner 0..5
DEFAULT_SAFETY_TOLERANCE = 2
WAIT_SLICE = 0.25  # the longest sleep between two job.check() calls
RETRY_BASE_SECONDS = 0.5
RETRY_CAP_SECONDS = 10.0

_CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg"}
_MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "jpeg": b"\xff\xd8\xff"}
_MODERATED = {"Request Moderated": "the prompt", "Content Moderated": "the generated image"}
_FAILED = {
    "Error": "reported an error while generating the image",
    "Failed": "reported that generating the image failed",
    "Task not found": "no longer knows this generation (Task not found): it expired or was never stored",
}


class PartnerBackend:
    # The partner screens prompts and images itself at the task's safetyTolerance: the local
    # safety classifier leaves its images alone.
    moderated_remotely = True

    def __init__(
        self,
        options: BackendOptions,
        transport: httpx.BaseTransport | None = None,
        retry_base_seconds: float = RETRY_BASE_SECONDS,
    ) -> None:
        if not options.bfl_api_key:
            raise BackendUnavailable("The partner relay needs an API key: set FLUXRUN_BFL_API_KEY.")
        self._key = options.bfl_api_key
        self.base_url = options.bfl_base_url.rstrip("/")
        self.deadline_seconds = options.bfl_deadline_seconds
        self.poll_seconds = options.bfl_poll_seconds
        self.request_timeout = options.bfl_request_timeout_seconds
        self.retry_base_seconds = retry_base_seconds
        # No default headers: the key is added to partner API calls only. Redirects are
        # followed for the result download alone.
        self._client = httpx.Client(
            transport=transport,
            timeout=httpx.Timeout(self.request_timeout, connect=min(10.0, self.request_timeout)),
            follow_redirects=False,
            headers={"user-agent": "fluxrun-partner-relay"},
        )
        self.description = f"FLUX.2 [flex] relayed to the partner API at {self.base_url}"

    def close(self) -> None:
        self._client.close()

    # -- the task ---------------------------------------------------------------------------
    def generate(self, request: GenerationRequest, job: Job) -> list[EncodedImage]:
        deadline = _Deadline(self.deadline_seconds)
        tolerance, tolerance_note = _safety_tolerance(request)
        if tolerance_note:
            job.note(tolerance_note)
        # Progress counts the requested steps of every image; the partner's own progress (when
        # it reports one) moves it during a wait, each arrival completes that image's share.
        total = request.samples * request.steps
        images: list[EncodedImage] = []
        for index, seed in enumerate(request.image_seeds()):
            body = {
                "prompt": request.prompt,
                "width": request.width,
                "height": request.height,
                "guidance": request.guidance,
                "steps": request.steps,
                "seed": seed,
                "safety_tolerance": tolerance,
                "output_format": request.output_format,
            }
            progress = _Progress(job, done_before=index * request.steps, share=request.steps, total=total)
            data = self._one_image(body, job, deadline, progress)
            images.append(_as_requested(data, request, job, index))
        return images

    def _one_image(
        self,
        body: dict[str, Any],
        job: Job,
        deadline: _Deadline,
        progress: _Progress,
    ) -> bytes:
        submitted = self._call(job, deadline, "POST", self.base_url + ENDPOINT, "submitting the image", json=body)
        answer = self._json(submitted, "the submission")
        polling_url = answer.get("polling_url")
        partner_id = str(answer.get("id", "?"))
        if not isinstance(polling_url, str) or not polling_url.startswith(("https://", "http://")):
            raise PartnerError(f"{PARTNER} accepted the image but sent no usable polling_url (task {partner_id}).")
        progress.started()
        sample_url = self._wait_until_ready(polling_url, partner_id, job, deadline, progress, body["safety_tolerance"])
        # Now: the result URL lives for minutes only.
        data = self._call(job, deadline, "GET", sample_url, "downloading the result", api=False).content
        progress.finished()
        return data

    def _wait_until_ready(
        self,
        polling_url: str,
        partner_id: str,
        job: Job,
        deadline: _Deadline,
        progress: _Progress,
        tolerance: int,
    ) -> str:
        while True:
            self._wait(job, deadline, self.poll_seconds, f"the partner to finish the image (task {partner_id})")
            answer = self._json(self._call(job, deadline, "GET", polling_url, "polling the partner"), "a poll")
            status = answer.get("status")
            if status == "Ready":
                result = answer.get("result")
                sample = result.get("sample") if isinstance(result, dict) else None
                if not isinstance(sample, str) or not sample.startswith(("https://", "http://")):
                    raise PartnerError(f"{PARTNER} said the image was ready but sent no result URL (task {partner_id}).")
                return sample
            if status in _MODERATED:
                raise GenerationRefused(_moderated_message(str(status), tolerance))
            if status in _FAILED:
                detail = self._scrub(_short(answer.get("details") or answer.get("message") or ""))
                raise PartnerError(
                    f"{PARTNER} {_FAILED[str(status)]} (task {partner_id})" + (f": {detail}" if detail else ".")
                )
            progress.partner_says(answer.get("progress"))

    # -- HTTP, retried where that can help ----------------------------------------------------
    def _call(
        self,
        job: Job,
        deadline: _Deadline,
        method: str,
        url: str,
        doing: str,
        *,
        json: dict[str, Any] | None = None,
        api: bool = True,
    ) -> httpx.Response:
        """One partner call, tried again on 429, 5xx, timeouts and connection errors."""
        tries = 0
        while True:
            job.check()
            deadline.ensure(doing)
            tries += 1
            try:
                response = self._client.request(
                    method,
                    url,
                    json=json,
                    headers={"x-key": self._key, "accept": "application/json"} if api else None,
                    follow_redirects=not api,
                    timeout=httpx.Timeout(max(1.0, min(self.request_timeout, deadline.left())), connect=10.0),
                )
            except httpx.TimeoutException as exc:
                problem = f"did not answer in time ({type(exc).__name__})"
                wait = self._backoff(tries)
            except httpx.TransportError as exc:  # refused or dropped connections, broken answers
                problem = f"could not be reached ({type(exc).__name__}: {self._scrub(_short(exc)) or 'no detail'})"
                wait = self._backoff(tries)
            else:
                if response.is_success:
                    return response
                if response.status_code == 429:
                    problem = "kept answering HTTP 429 (rate limited)"
                    wait = max(_retry_after(response) or 0.0, self._backoff(tries))
                elif response.status_code >= 500:
                    problem = f"kept answering HTTP {response.status_code}"
                    wait = self._backoff(tries)
                else:
                    raise PartnerError(self._refusal(response, doing, api))
            if wait >= deadline.left():
                raise PartnerError(
                    f"{PARTNER} {problem} while {doing}; gave up after {_tries(tries)}, at this task's deadline "
                    f"of {deadline.seconds:.0f} s (FLUXRUN_BFL_DEADLINE_SECONDS)."
                )
            log.info("partner: %s while %s; trying again in %.1f s", problem, doing, wait)
            self._sleep(job, wait)

    def _backoff(self, tries: int) -> float:
        ceiling = min(RETRY_CAP_SECONDS, self.retry_base_seconds * 2 ** (tries - 1))
        return random.uniform(ceiling / 2, ceiling)  # "equal jitter": never 0, never in lockstep

    def _refusal(self, response: httpx.Response, doing: str, api: bool) -> str:
        code = response.status_code
        detail = self._scrub(_detail(response))
        suffix = f": {detail}" if detail else "."
        if not api:
            return (
                f"{PARTNER}'s result URL answered HTTP {code} while {doing}: it expires within minutes of the "
                f"image being ready, so it was probably gone{suffix}"
            )
        if code == 402:
            return f"{PARTNER} refused to make the image: the partner account has no credits (HTTP 402){suffix}"
        if code in (401, 403):
            return f"{PARTNER} refused the API key (HTTP {code}) while {doing}: check FLUXRUN_BFL_API_KEY{suffix}"
        if code in (400, 422):
            return f"{PARTNER} rejected the request (HTTP {code}){suffix}"
        return f"{PARTNER} answered HTTP {code} while {doing}{suffix}"

    def _json(self, response: httpx.Response, what: str) -> dict[str, Any]:
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise PartnerError(f"{PARTNER}'s answer to {what} was not a JSON object (HTTP {response.status_code}).")
        return answer

    def _scrub(self, text: str) -> str:
        """Whatever the partner says goes into the task's debugerror: never with the key in it."""
        return text.replace(self._key, "[FLUXRUN_BFL_API_KEY]") if self._key else text

    # -- waiting, kill-aware -----------------------------------------------------------------
    def _wait(self, job: Job, deadline: _Deadline, seconds: float, waiting_for: str) -> None:
        if deadline.left() <= seconds:
            raise PartnerError(
                f"Waited {deadline.seconds:.0f} s for {waiting_for} and gave up "
                "(FLUXRUN_BFL_DEADLINE_SECONDS); it may still finish on the partner's side."
            )
        self._sleep(job, seconds)

    @staticmethod
    def _sleep(job: Job, seconds: float) -> None:
        end = time.monotonic() + seconds
        while True:
            job.check()
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(WAIT_SLICE, left))


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._at = time.monotonic() + seconds

    def left(self) -> float:
        return self._at - time.monotonic()

    def ensure(self, doing: str) -> None:
        if self.left() <= 0:
            raise PartnerError(
                f"This task's relay ran out of time ({self.seconds:.0f} s, FLUXRUN_BFL_DEADLINE_SECONDS) before "
                f"{doing}."
            )


class _Progress:
    """One image's share of the task's steps, reported through the job."""

    def __init__(self, job: Job, done_before: int, share: int, total: int) -> None:
        self._job, self._before, self._share, self._total = job, done_before, share, total
        self._done = -1

    def _report(self, done: int) -> None:
        if done > self._done:
            self._done = done
            self._job.step(self._before + done, self._total)

    def started(self) -> None:
        self._report(0)  # the partner has it: the task is generating (task_output)

    def partner_says(self, value: Any) -> None:
        # The partner's progress, where it sends one: a fraction (0..1), or a percentage.
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            return
        fraction = value if value <= 1 else value / 100
        self._report(min(self._share - 1, int(fraction * self._share)))

    def finished(self) -> None:
        self._report(self._share)


def _safety_tolerance(request: GenerationRequest) -> tuple[int, str | None]:
    asked = int(request.extra.get("safetyTolerance", DEFAULT_SAFETY_TOLERANCE))
    if asked > PARTNER_MAX_SAFETY_TOLERANCE:
        return PARTNER_MAX_SAFETY_TOLERANCE, (
            f"safetyTolerance {asked} is above the partner's maximum of {PARTNER_MAX_SAFETY_TOLERANCE}: "
            f"sent {PARTNER_MAX_SAFETY_TOLERANCE}, its least strict level"
        )
    return max(0, asked), None


def _moderated_message(status: str, tolerance: int) -> str:
    what = _MODERATED[status]
    text = f"Moderated by the partner ({PARTNER}): its moderation refused {what} ({status})."
    if tolerance < PARTNER_MAX_SAFETY_TOLERANCE:
        return (
            f"{text} A higher safetyTolerance may allow it (this task sent {tolerance}; 0 is the strictest, "
            f"{PARTNER_MAX_SAFETY_TOLERANCE} the least strict the partner allows)."
        )
    return (
        f"{text} This task already sent the least strict safetyTolerance the partner allows ({tolerance}): "
        "a different prompt is needed."
    )


def _as_requested(data: bytes, request: GenerationRequest, job: Job, index: int) -> EncodedImage:
    """The partner's file as the task asked for it: as it came when it is that format,
    converted with Pillow when the partner sent another."""
    wanted = request.output_format
    sent = next((name for name, magic in _MAGIC.items() if data.startswith(magic)), None)
    try:
        with Image.open(io.BytesIO(data)) as image:
            size = image.size
            if sent == wanted:
                encoded = EncodedImage(data, _CONTENT_TYPES[wanted], wanted)
            else:
                image.load()
                encoded = encode_image(image, wanted)
                job.note(f"image {index}: the partner sent {image.format or 'an unknown format'} for a "
                         f"{wanted} request; converted to {wanted}")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise PartnerError(
            f"{PARTNER}'s result for image {index} is not an image this relay can read ({len(data)} bytes): {exc}"
        ) from exc
    if size != (request.width, request.height):
        job.note(f"image {index}: the partner made {size[0]}x{size[1]} for a {request.width}x{request.height} request")
    return encoded


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds: a number of seconds or an HTTP date."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _detail(response: httpx.Response) -> str:
    """What the partner said about a refusal: FastAPI's ``detail`` (a text, or a list of
    field errors), or the start of the body."""
    try:
        answer = response.json()
    except ValueError:
        return _short(response.text)
    detail = answer.get("detail", answer) if isinstance(answer, dict) else answer
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                where = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                parts.append(f"{where}: {item.get('msg', '')}" if where else str(item.get("msg", "")))
            else:
                parts.append(str(item))
        return _short("; ".join(parts))
    return _short(detail if isinstance(detail, str) else str(detail))


def _tries(count: int) -> str:
    return "1 try" if count == 1 else f"{count} tries"


def _short(text: Any, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
