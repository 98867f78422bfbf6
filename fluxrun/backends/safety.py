"""An image safety classifier for images made on this machine.

The hosted service passes a tool's ``safetyTolerance`` (0 most strict ... 6 least strict) to
the model maker's moderation. Images fluxrun makes locally are screened instead by a Hugging
Face image-classification model (``FLUXRUN_SAFETY_MODEL``, e.g.
``Falconsai/nsfw_image_detection``, labels normal/nsfw), loaded once per worker. An image's
unsafe score is the probability the model gives its unsafe labels together (softmax; sigmoid,
then the largest, for a multi-label model); the image is flagged when that score reaches the
threshold of the task's tolerance (``TOLERANCE_THRESHOLDS``, the table in README "Safety").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fluxrun.backends.hub import hub_error_message
from fluxrun.errors import BackendUnavailable

if TYPE_CHECKING:
    from PIL.Image import Image

SETTING = "FLUXRUN_SAFETY_MODEL"
LABELS_SETTING = "FLUXRUN_SAFETY_UNSAFE_LABELS"

#: safetyTolerance -> the unsafe score at which an image is withheld. Monotonic: each step
#: up lets more through. 0 withholds anything the model is even 10% unsure about; 6 only what
#: it is all but certain of.
TOLERANCE_THRESHOLDS: tuple[float, ...] = (0.10, 0.25, 0.50, 0.70, 0.85, 0.95, 0.99)


def threshold_for(tolerance: int) -> float:
    """The unsafe score at or above which an image is withheld at this safetyTolerance."""
    if isinstance(tolerance, bool) or not isinstance(tolerance, int) or not 0 <= tolerance < len(TOLERANCE_THRESHOLDS):
        raise ValueError(f"safetyTolerance: must be an integer between 0 and 6 (got {tolerance!r})")
    return TOLERANCE_THRESHOLDS[tolerance]


@dataclass(frozen=True)
class Verdict:
    """What the classifier said about one image of a task."""

    index: int  # the image's place in the task (its output name's number)
    label: str  # the unsafe label(s) the score is for, e.g. "nsfw" or "hentai+porn+sexy"
    score: float  # probability of those labels, 0..1
    threshold: float
    tolerance: int

    @property
    def flagged(self) -> bool:
        return self.score >= self.threshold

    def describe(self) -> str:
        """e.g. "nsfw 0.93 ≥ threshold 0.50 at safetyTolerance 2"."""
        relation = "≥" if self.flagged else "<"
        return f"{self.label} {self.score:.2f} {relation} threshold {self.threshold:.2f} at safetyTolerance {self.tolerance}"


class SafetyChecker:
    """One image-classification model, resident on the worker's device, screening images."""

    def __init__(self, source: str, device: str, unsafe_labels: Iterable[str]) -> None:
        import torch
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        try:
            # The model first: its errors say why (offline, gated, not found); the processor's do not.
            self.model = AutoModelForImageClassification.from_pretrained(source)
            self.processor = AutoImageProcessor.from_pretrained(source)
        except Exception as exc:  # hub failures become a message an operator can act on
            raise BackendUnavailable(hub_error_message(source, exc, SETTING)) from exc
        # float32 whatever the checkpoint holds: the model is small, and its scores are compared to thresholds.
        self.model.to(device=device, dtype=torch.float32).eval()
        self.device = device
        self.source = source
        wanted = {label.strip().lower() for label in unsafe_labels if label.strip()}
        id2label = {int(i): str(name) for i, name in self.model.config.id2label.items()}
        # Exact names, case-insensitive: "sfw" must not count as "nsfw".
        self.unsafe_ids = sorted(i for i, name in id2label.items() if name.lower() in wanted)
        if not self.unsafe_ids:
            raise BackendUnavailable(
                f"{source} ({SETTING}) has the labels {', '.join(id2label.values())}; none of them is one of "
                f"{LABELS_SETTING} ({', '.join(sorted(wanted))}). Set {LABELS_SETTING} to the labels that mean unsafe."
            )
        self.label = "+".join(id2label[i] for i in self.unsafe_ids)
        self.multi_label = self.model.config.problem_type == "multi_label_classification"
        self.description = f"safety classifier {source} on {device} (unsafe: {self.label})"

    def check(self, images: Sequence[Image], tolerance: int) -> list[Verdict]:
        """One verdict per image, in order, at the threshold of ``tolerance``."""
        import torch

        threshold = threshold_for(tolerance)
        if not images:
            return []
        inputs = self.processor(images=[image.convert("RGB") for image in images], return_tensors="pt").to(self.device)
        with torch.inference_mode():
            logits = self.model(**inputs).logits.float()
        if self.multi_label:  # independent labels: the most likely unsafe one decides
            scores = logits.sigmoid()[:, self.unsafe_ids].max(dim=-1).values
        else:  # one label per image: the unsafe ones together
            scores = logits.softmax(dim=-1)[:, self.unsafe_ids].sum(dim=-1)
        return [
            Verdict(index=index, label=self.label, score=float(score), threshold=threshold, tolerance=tolerance)
            for index, score in enumerate(scores.tolist())
        ]
