"""The contract between the worker and a way of making images.

A backend is loaded once per worker process and serves many tasks. ``generate`` is given
the request and a ``Job``: the worker's side of one task. The backend calls
``job.step(done, total)`` after every denoising step (counting across all images of the
task), ``job.check()`` while it waits on something that has no steps (a remote API), and
``job.note(text)`` for a line the task's ``debugoutput`` should carry. ``step`` and
``check`` raise ``fluxrun.errors.TaskStopped`` once the task was killed; a backend must
let that exception propagate untouched, so a kill stops the work within one step.

Images a backend makes on this machine are screened by the worker's safety classifier
(``FLUXRUN_SAFETY_MODEL``) before they are stored. A backend that relays to an API which
moderates its own output (the partner API, given the task's safetyTolerance) sets the class
attribute ``moderated_remotely = True`` to opt out; local backends leave it unset.

Live previews are optional: a backend that can picture its work in progress cheaply asks
``job.wants_preview()`` after a step (true only when a client asked for previews of this
task and the last one is old enough) and only then makes a small image for
``job.preview(image)``. A backend that cannot simply never asks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from fluxrun.errors import TaskStopped
from fluxrun.tools.request import GenerationRequest

if TYPE_CHECKING:  # PIL is a worker-side dependency
    from PIL.Image import Image

    from fluxrun.imaging.encode import EncodedImage


class Job(Protocol):
    """The worker's side of one task, as a backend sees it."""

    def step(self, done: int, total: int) -> None:
        """Progress after a denoising step; raises TaskStopped when the task was killed."""

    def check(self) -> None:
        """Raises TaskStopped when the task was killed; cheap enough to call in a wait loop."""

    def note(self, text: str) -> None:
        """A line for the task's debugoutput (what ran, what was left out and why)."""

    def wants_preview(self) -> bool:
        """Whether a preview is wanted now; cheap. Make one only when this says so."""

    def preview(self, image: Image) -> None:
        """A low-resolution picture of the work so far (any size: it is scaled down)."""


@dataclass
class RecordingJob:
    """A Job that keeps what it is told: for warm-ups, benchmarks and tests.

    ``stop_at`` makes ``step`` raise TaskStopped once that many steps are done, as a kill would;
    ``want_previews`` makes it ask for a preview after every step.
    """

    stop_at: int | None = None
    want_previews: bool = False
    steps: list[tuple[int, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    previews: list[Image] = field(default_factory=list)

    def step(self, done: int, total: int) -> None:
        self.steps.append((done, total))
        if self.stop_at is not None and done >= self.stop_at:
            raise TaskStopped()

    def check(self) -> None:
        if self.stop_at is not None and self.steps and self.steps[-1][0] >= self.stop_at:
            raise TaskStopped()

    def note(self, text: str) -> None:
        self.notes.append(text)

    def wants_preview(self) -> bool:
        return self.want_previews

    def preview(self, image: Image) -> None:
        self.previews.append(image)


@dataclass(frozen=True)
class BackendOptions:
    """Plain values a backend needs from the settings (backends never read settings)."""

    models: str  # "tiny" | "real"
    models_dir: Path  # where tiny models are built and kept
    device: str = "cpu"  # "cuda" | "cpu"
    flux1_base: str = "black-forest-labs/FLUX.1-dev"  # hub repo id or local folder
    flux2_model: str = "dev"  # a FLUX.2 shortcut (dev, klein-4b, ...), hub repo id or local folder
    # adapter name -> hub repo, folder or .safetensors file; overrides a tool spec's default source
    lora_sources: dict[str, str] = field(default_factory=dict)
    cpu_offload: bool = False
    # Speed (fluxrun.backends.speed decides these from the settings and the device).
    compile: bool = False  # torch.compile the transformer's repeated blocks (LoRAs then hotswap)
    compile_backend: str = "inductor"  # torch.compile backend; tests use "eager" to count recompiles cheaply
    compile_mode: str = "default"  # torch.compile mode (inductor only)
    quantize: str = "none"  # "fp8": torchao fp8 weights and activations in the transformer (LoRAs then hotswap)
    attention: str = "native"  # a key of fluxrun.backends.speed.ATTENTION
    compile_vae: bool = False  # torch.compile the VAE's decoder
    # The partner relay (backends/partner.py): FLUX.2 [flex] at Black Forest Labs' API.
    bfl_api_key: str | None = field(default=None, repr=False)  # a secret: kept out of every repr and log
    bfl_base_url: str = "https://api.bfl.ai"
    bfl_deadline_seconds: float = 600.0  # one task's relay, every image and retry included
    bfl_poll_seconds: float = 0.5
    bfl_request_timeout_seconds: float = 30.0

    @property
    def lora_hotswap(self) -> bool:
        """Whether LoRAs switch through one hotswapped slot (compiled graphs and fp8 base layers
        must not change) rather than named adapters."""
        return self.compile or self.quantize == "fp8"


def moderated_remotely(backend: object) -> bool:
    """Whether this backend's images were moderated by the remote API that made them."""
    return bool(getattr(backend, "moderated_remotely", False))


class Backend(Protocol):
    #: One line saying what this backend really runs, shown in each task's debugoutput.
    description: str

    def generate(self, request: GenerationRequest, job: Job) -> list[Image | EncodedImage]:
        """Make ``request.samples`` images, in seed order: PIL images the worker encodes as the
        request asks, or files already encoded (a remote API's), stored as they are."""
        ...
