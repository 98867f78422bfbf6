from __future__ import annotations

import socket

from huggingface_hub.errors import LocalEntryNotFoundError

from fluxrun.backends.hub import hub_error_message


def _chained(outer: Exception, inner: BaseException) -> Exception:
    outer.__cause__ = inner
    return outer


def test_offline_is_recognised_through_the_chain() -> None:
    error = _chained(OSError("Cannot load model x"), socket.gaierror(-2, "Name or service not known"))
    assert "not in the local Hugging Face cache" in hub_error_message("x/y", error, "FLUXRUN_FLUX1_BASE")
    error = _chained(OSError("Cannot load"), LocalEntryNotFoundError("no snapshot"))
    assert "point FLUXRUN_FLUX1_BASE at a local folder" in hub_error_message("x/y", error, "FLUXRUN_FLUX1_BASE")


def test_gated_and_unknown() -> None:
    gated = OSError("black-forest-labs/FLUX.1-dev is a gated repository. You must have access to it.")
    message = hub_error_message("black-forest-labs/FLUX.1-dev", gated, "FLUXRUN_FLUX1_BASE")
    assert "accept its licence" in message and "HF_TOKEN" in message
    other = hub_error_message("x/y", ValueError("bad config"), "FLUXRUN_LORA_A")
    assert other == "Could not load x/y (FLUXRUN_LORA_A): ValueError: bad config"
