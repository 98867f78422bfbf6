"""The worker's safety step: images made on this machine are screened before they are stored.

With ``FLUXRUN_SAFETY_MODEL`` set, every PIL image a local backend returns is classified at
the threshold of the task's ``safetyTolerance`` (the server's default tolerance for tools
without that input). A flagged image fails the task: nothing of it is stored. Without a
classifier, local tasks say in their debugoutput that they were not moderated. Backends that
relay to an API that moderates itself (``moderated_remotely``), and files that arrive already
encoded from such an API, are left to that API.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from fluxrun.backends.base import Backend, moderated_remotely
from fluxrun.backends.safety import SafetyChecker, Verdict
from fluxrun.errors import ImageWithheld
from fluxrun.imaging.encode import EncodedImage
from fluxrun.tools.request import GenerationRequest

if TYPE_CHECKING:
    from PIL.Image import Image

UNMODERATED_NOTE = "local generation is unmoderated (no FLUXRUN_SAFETY_MODEL)"
TOLERANCE_INPUT = "safetyTolerance"


@dataclass(frozen=True)
class Review:
    note: str | None = None  # the debugoutput line: the classifier's verdicts, or that there was none
    withheld: ImageWithheld | None = None  # set when an image was flagged: the task fails with it


class Moderation:
    """The classifier (loaded once, on first need) and the policy around it."""

    def __init__(self, model: str | None, device: str, unsafe_labels: Sequence[str], default_tolerance: int) -> None:
        self.model = model
        self.device = device
        self.unsafe_labels = tuple(unsafe_labels)
        self.default_tolerance = default_tolerance
        self._checker: SafetyChecker | None = None

    @property
    def configured(self) -> bool:
        return self.model is not None

    def checker(self) -> SafetyChecker:
        """The resident classifier; raises BackendUnavailable (and is retried next time) if it cannot load."""
        if self._checker is None:
            if self.model is None:
                raise RuntimeError("no FLUXRUN_SAFETY_MODEL is configured: check .configured first")
            self._checker = SafetyChecker(self.model, self.device, self.unsafe_labels)
        return self._checker

    def ready(self, backend: Backend) -> None:
        """Load the classifier before any GPU work if this backend's images will need it, so a
        misconfigured classifier fails the task at once (BackendUnavailable, with its message)."""
        if self.configured and not moderated_remotely(backend):
            self.checker()

    def review(self, backend: Backend, request: GenerationRequest, images: Sequence[Image | EncodedImage]) -> Review:
        """The classifier's verdict on a task's images: a debugoutput line, and the error to fail with if any was flagged."""
        if moderated_remotely(backend):
            return Review()
        local = [(index, image) for index, image in enumerate(images) if not isinstance(image, EncodedImage)]
        if not local:  # finished files from a remote API, which moderated them
            return Review()
        if not self.configured:
            return Review(note=UNMODERATED_NOTE)
        checker = self.checker()
        given = request.extra.get(TOLERANCE_INPUT)
        tolerance = self.default_tolerance if given is None else int(given)
        verdicts = [
            replace(verdict, index=index)
            for (index, _), verdict in zip(local, checker.check([image for _, image in local], tolerance))
        ]
        note = f"{checker.description}: " + "; ".join(
            f"image {v.index} {'withheld' if v.flagged else 'passed'} ({v.describe()})" for v in verdicts
        )
        flagged = [v for v in verdicts if v.flagged]
        if not flagged:
            return Review(note=note)
        return Review(note=note, withheld=ImageWithheld(_withheld_message(flagged, len(images), given is not None)))


def _withheld_message(flagged: list[Verdict], image_count: int, tolerance_from_task: bool) -> str:
    if len(flagged) == 1:
        head = f"Image {flagged[0].index} was withheld by the safety classifier ({flagged[0].describe()})"
    else:
        indexes = ", ".join(str(v.index) for v in flagged[:-1]) + f" and {flagged[-1].index}"
        head = f"Images {indexes} were withheld by the safety classifier (" + "; ".join(
            f"image {v.index}: {v.describe()}" for v in flagged
        ) + ")"
    if tolerance_from_task:
        hint = "raise safetyTolerance to allow more."
    else:
        hint = (
            f"this tool has no safetyTolerance input: the server's FLUXRUN_SAFETY_DEFAULT_TOLERANCE "
            f"({flagged[0].tolerance}) applies."
        )
    others = " The task's other images were not stored either." if image_count > len(flagged) else ""
    return f"{head}; {hint}{others}"
