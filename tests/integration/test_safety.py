"""The safety classifier for locally made images: the tolerance table, the checker on tiny
ViT classifiers, and the worker in-process on both stores with the tiny FLUX.1 pipeline.

The tiny classifiers have random weights; their verdicts are steered by the bias of their
last layer (tiny.py): +20 makes "nsfw" near certain, -20 near impossible, 0 leaves it at
about 0.57, between the thresholds of safetyTolerance 2 (0.50) and 3 (0.70).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fluxrun.backends.base import BackendOptions
from fluxrun.backends.registry import BackendCache
from fluxrun.backends.safety import TOLERANCE_THRESHOLDS, SafetyChecker, threshold_for
from fluxrun.backends.tiny import ensure_tiny_safety_classifier
from fluxrun.config import Settings
from fluxrun.errors import BackendUnavailable
from fluxrun.imaging.encode import encode_image
from fluxrun.status import Status
from fluxrun.storage.local import LocalStorage
from fluxrun.store.base import TaskStore
from fluxrun.tools.catalog import find_tool
from fluxrun.worker.loop import Worker
from fluxrun.worker.startup import UNMODERATED_LINE, load_moderation
from fluxrun.worker.moderation import UNMODERATED_NOTE, Moderation
from tests.conftest import BACKENDS

PIXEL = find_tool("desertPixel", "Flat-Pixel-Art-FLUX")
FLUX2 = find_tool("black-forest-labs", "flux-2-flex-t2i")
ALWAYS, NEVER, MIDDLE = 20.0, -20.0, 0.0  # nsfw logit bias of the tiny classifiers


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


def classifier(models: Path, nsfw_logit: float) -> str:
    return str(ensure_tiny_safety_classifier(models, nsfw_logit))


def noise(count: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(count)]


# -- the tolerance table ------------------------------------------------------------------

def test_each_tolerance_step_lets_more_through() -> None:
    thresholds = [threshold_for(t) for t in range(7)]
    assert thresholds == list(TOLERANCE_THRESHOLDS) == [0.10, 0.25, 0.50, 0.70, 0.85, 0.95, 0.99]
    assert all(low < high for low, high in zip(thresholds, thresholds[1:]))
    for wrong in (-1, 7, True, 2.5):
        with pytest.raises(ValueError, match="safetyTolerance: must be an integer between 0 and 6"):
            threshold_for(wrong)  # type: ignore[arg-type]


def test_the_settings_read_as_the_readme_says() -> None:
    assert Settings().safety_model is None and Settings(safety_model="").safety_model is None
    assert Settings().unsafe_labels == ("nsfw", "porn", "hentai", "sexy", "unsafe", "explicit")
    assert Settings(safety_unsafe_labels=" NSFW , porn,,").unsafe_labels == ("NSFW", "porn")
    assert Settings().safety_default_tolerance == 2
    with pytest.raises(ValueError, match="less than or equal to 6"):
        Settings(safety_default_tolerance=7)


# -- the checker ----------------------------------------------------------------------------

def test_the_checker_flags_the_certain_and_passes_the_impossible(models: Path) -> None:
    flagged = SafetyChecker(classifier(models, ALWAYS), "cpu", ["NSFW"]).check(noise(2), tolerance=6)
    assert [(v.index, v.flagged) for v in flagged] == [(0, True), (1, True)]
    assert flagged[0].score > 0.99 and flagged[0].describe().startswith("nsfw 1.00 ≥ threshold 0.99 at safetyTolerance 6")
    passed = SafetyChecker(classifier(models, NEVER), "cpu", ["nsfw"]).check(noise(1), tolerance=0)
    assert not passed[0].flagged and passed[0].score < 0.01
    assert passed[0].describe() == "nsfw 0.00 < threshold 0.10 at safetyTolerance 0"


def test_the_same_score_is_withheld_or_passed_by_the_tolerance(models: Path) -> None:
    checker = SafetyChecker(classifier(models, MIDDLE), "cpu", ["nsfw"])
    verdicts = [checker.check(noise(1), tolerance)[0] for tolerance in range(7)]
    assert len({round(v.score, 6) for v in verdicts}) == 1 and 0.5 < verdicts[0].score < 0.7
    assert [v.flagged for v in verdicts] == [True, True, True, False, False, False, False]


def test_labels_are_matched_by_exact_name(models: Path) -> None:
    # "sfw" is not "nsfw": a classifier without any of the unsafe labels is refused, with the way out.
    with pytest.raises(BackendUnavailable) as caught:
        SafetyChecker(classifier(models, ALWAYS), "cpu", ["sfw", "porn"])
    message = str(caught.value)
    assert "has the labels normal, nsfw" in message and "Set FLUXRUN_SAFETY_UNSAFE_LABELS" in message


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub unreachable at once. huggingface_hub reads HF_HUB_OFFLINE when it is imported, so
    setting the variable now is not enough; without this, this machine waits on network timeouts."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_an_unreachable_classifier_gives_an_actionable_message(offline: None) -> None:
    with pytest.raises(BackendUnavailable) as caught:
        SafetyChecker("nobody/no-such-classifier", "cpu", ["nsfw"])
    message = str(caught.value)
    assert message.startswith("nobody/no-such-classifier is not in the local Hugging Face cache")
    assert "point FLUXRUN_SAFETY_MODEL at a local folder" in message and "\n" not in message


# -- the worker's policy around it ----------------------------------------------------------

class _Relay:
    """A backend as the worker sees it, for the part of the policy that only reads its attributes."""

    description = "relay"

    def __init__(self, moderated_remotely: bool) -> None:
        self.moderated_remotely = moderated_remotely


def test_a_task_tolerance_wins_over_the_default_and_says_how_to_allow_more(models: Path) -> None:
    moderation = Moderation(classifier(models, MIDDLE), "cpu", ["nsfw"], default_tolerance=6)
    request = FLUX2.to_request(FLUX2.validate({"prompt": "a cat", "safetyTolerance": 1}))
    review = moderation.review(_Relay(False), request, noise(1))
    assert review.withheld is not None
    assert str(review.withheld).startswith("Image 0 was withheld by the safety classifier (nsfw 0.5")
    assert str(review.withheld).endswith("≥ threshold 0.25 at safetyTolerance 1); raise safetyTolerance to allow more.")
    request = FLUX2.to_request(FLUX2.validate({"prompt": "a cat", "safetyTolerance": 3}))
    review = moderation.review(_Relay(False), request, noise(1))
    assert review.withheld is None and "image 0 passed (nsfw 0.5" in review.note


def test_remote_moderation_is_left_to_the_remote_api(models: Path) -> None:
    moderation = Moderation(classifier(models, ALWAYS), "cpu", ["nsfw"], default_tolerance=0)
    request = FLUX2.to_request(FLUX2.validate({"prompt": "a cat"}))
    assert moderation.review(_Relay(True), request, noise(1)).withheld is None
    already_encoded = [encode_image(image, "png") for image in noise(2)]
    review = moderation.review(_Relay(False), request, already_encoded)
    assert review.withheld is None and review.note is None
    unmoderated = Moderation(None, "cpu", ["nsfw"], default_tolerance=2)
    assert unmoderated.review(_Relay(True), request, noise(1)).note is None
    assert unmoderated.review(_Relay(False), request, noise(1)).note == UNMODERATED_NOTE


def test_the_worker_says_at_start_whether_it_moderates(
    models: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    local, relay = _Relay(False), _Relay(True)
    load_moderation(Moderation(None, "cpu", ["nsfw"], 2), [local, relay])
    assert UNMODERATED_LINE in capsys.readouterr().err
    assert "local generation is UNMODERATED (no FLUXRUN_SAFETY_MODEL)" in UNMODERATED_LINE
    caplog.set_level("INFO", logger="fluxrun.worker")
    source = classifier(models, NEVER)
    moderation = Moderation(source, "cpu", ["nsfw"], 3)
    load_moderation(moderation, [local, relay])
    assert f"safety classifier {source} on cpu (unsafe: nsfw); default safetyTolerance 3" in caplog.text
    assert UNMODERATED_LINE not in capsys.readouterr().err


def test_a_worker_that_only_relays_neither_loads_a_classifier_nor_calls_itself_unmoderated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="fluxrun.worker")
    # A classifier that could not even load: nothing tries to, the partner moderates its own images.
    moderation = Moderation(str(tmp_path / "no-such-classifier"), "cpu", ["nsfw"], 3)
    load_moderation(moderation, [_Relay(True)])
    load_moderation(Moderation(None, "cpu", ["nsfw"], 2), [_Relay(True)])
    assert caplog.text == "" and UNMODERATED_LINE not in capsys.readouterr().err
    load_moderation(moderation, [_Relay(True), _Relay(False)])  # one backend generating here: it must load
    assert "safety classifier unavailable" in caplog.text


# -- the worker in-process, on both stores --------------------------------------------------

@pytest.fixture(scope="module")
def backends(models: Path) -> BackendCache:
    cache = BackendCache(BackendOptions(models="tiny", models_dir=models))
    cache.get("flux1")
    return cache


@pytest.fixture
def make_worker(store: TaskStore, backends: BackendCache, tmp_path: Path) -> Iterator:
    def make(**settings: object) -> Worker:
        config = Settings(data_dir=tmp_path, lease_seconds=5.0, **settings)
        return Worker(config, store, LocalStorage(config.outputs_dir), backends, worker_id="test/1")

    yield make


def _run_pixel_task(worker: Worker, store: TaskStore, **inputs: object):
    project = store.list_projects()[0] if store.list_projects() else store.create_project("p", "apikey")
    params = PIXEL.validate({"prompt": "a cat", "steps": 2, "width": 64, "height": 64, **inputs})
    task = store.create_task(project.id, PIXEL.slug, params, PIXEL.cps)
    assert worker.run_once()
    return store.get_task(project.id, task_id=task.id)


@pytest.mark.parametrize("database_url", BACKENDS, indirect=True)
def test_a_flagged_image_is_withheld_and_the_task_fails(make_worker, store: TaskStore, models: Path) -> None:
    worker = make_worker(safety_model=classifier(models, ALWAYS))
    done = _run_pixel_task(worker, store, samples=2)
    assert done.status is Status.POSTPROCESS_END and done.pexit == 1 and done.outputs == ()
    assert done.debugerror == (
        "Images 0 and 1 were withheld by the safety classifier (image 0: nsfw 1.00 ≥ threshold 0.50 at "
        "safetyTolerance 2; image 1: nsfw 1.00 ≥ threshold 0.50 at safetyTolerance 2); this tool has no "
        "safetyTolerance input: the server's FLUXRUN_SAFETY_DEFAULT_TOLERANCE (2) applies."
    )
    assert "image 0 withheld (nsfw 1.00 ≥ threshold 0.50" in done.debugoutput
    assert done.progress["stepCurrent"] == "4"  # generation ran to the end; only the files are held back
    folder = worker.storage.root / done.output_key
    assert not folder.exists() or not any(folder.iterdir())


@pytest.mark.parametrize("database_url", BACKENDS, indirect=True)
def test_a_passing_task_is_stored_with_the_verdict(make_worker, store: TaskStore, models: Path) -> None:
    worker = make_worker(safety_model=classifier(models, NEVER))
    done = _run_pixel_task(worker, store)
    assert done.pexit == 0 and [o.name for o in done.outputs] == ["0.png"], done.debugerror
    assert worker.storage.path(done.output_key, "0.png") is not None
    assert "image 0 passed (nsfw 0.00 < threshold 0.50 at safetyTolerance 2)" in done.debugoutput
    assert UNMODERATED_NOTE not in done.debugoutput


@pytest.mark.parametrize("database_url", BACKENDS, indirect=True)
def test_the_default_tolerance_setting_moves_the_threshold(make_worker, store: TaskStore, models: Path) -> None:
    strict = _run_pixel_task(make_worker(safety_model=classifier(models, MIDDLE)), store)
    assert strict.pexit == 1 and "≥ threshold 0.50 at safetyTolerance 2" in strict.debugerror
    lenient = _run_pixel_task(make_worker(safety_model=classifier(models, MIDDLE), safety_default_tolerance=3), store)
    assert lenient.pexit == 0 and "< threshold 0.70 at safetyTolerance 3" in lenient.debugoutput


@pytest.mark.parametrize("database_url", BACKENDS, indirect=True)
def test_without_a_classifier_local_tasks_say_they_are_unmoderated(make_worker, store: TaskStore) -> None:
    done = _run_pixel_task(make_worker(), store)
    assert done.pexit == 0 and len(done.outputs) == 1
    assert UNMODERATED_NOTE in done.debugoutput


@pytest.mark.parametrize("database_url", BACKENDS, indirect=True)
def test_a_misconfigured_classifier_fails_the_task_before_generating(
    make_worker, store: TaskStore, offline: None
) -> None:
    worker = make_worker(safety_model="nobody/no-such-classifier")
    done = _run_pixel_task(worker, store)
    assert done.pexit == 1 and done.outputs == () and done.progress is None
    assert done.debugerror.startswith("nobody/no-such-classifier is not in the local Hugging Face cache")
    assert "point FLUXRUN_SAFETY_MODEL at a local folder" in done.debugerror
