"""Backend names (as tool specs give them) -> loaded backends, once per process."""

from __future__ import annotations

from typing import Any

from fluxrun.backends.base import Backend, BackendOptions
from fluxrun.errors import BackendUnavailable

MODES = ("auto", "tiny", "real")


def resolve_models_mode(requested: str, device: str = "auto") -> tuple[str, str]:
    """(mode, device) for the settings ``models`` and ``device``.

    ``auto`` models mean the real ones on a GPU and tiny ones on the CPU; ``auto`` device
    means the first CUDA GPU when there is one. A device that is named but absent is an
    operator error, with a one-line message that says what to do.
    """
    if requested not in MODES:
        raise ValueError(f"models: must be one of {', '.join(MODES)} (got {requested!r})")
    import torch

    cuda = torch.cuda.is_available()
    if device == "auto":
        device = "cuda" if cuda and requested != "tiny" else "cpu"
    _check_device(device, torch)
    if requested == "auto":
        requested = "real" if device.startswith("cuda") else "tiny"
    return requested, device


def _check_device(device: str, torch: Any) -> None:
    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        if count == 0:
            raise BackendUnavailable(
                f"FLUXRUN_DEVICE={device}: torch {torch.__version__} sees no CUDA GPU (CUDA build: "
                f"{torch.version.cuda or 'none'}). Check the driver with nvidia-smi, or set FLUXRUN_DEVICE=cpu "
                "(with --models tiny to try fluxrun without a GPU)."
            )
        if index >= count:
            raise BackendUnavailable(
                f"FLUXRUN_DEVICE={device}: this machine has {count} CUDA GPU(s), numbered 0 to {count - 1}."
            )
    elif device == "mps" and not torch.backends.mps.is_available():
        raise BackendUnavailable("FLUXRUN_DEVICE=mps: this torch has no Apple GPU (MPS) available; use cpu.")


def load_backend(name: str, options: BackendOptions) -> Backend:
    if name == "flux1":
        from fluxrun.backends.flux1 import Flux1Backend

        return Flux1Backend(options)
    if name == "flux2" and options.bfl_api_key:
        from fluxrun.backends.partner import PartnerBackend

        return PartnerBackend(options)
    if name == "flux2":
        from fluxrun.backends.flux2 import Flux2Backend

        return Flux2Backend(options)
    raise BackendUnavailable(f"No backend named {name!r} in this fluxrun version.")


class BackendCache:
    """Each backend loaded once and kept resident; a backend that failed to load is retried
    on the next task (the weights may have arrived, the network come back)."""

    def __init__(self, options: BackendOptions) -> None:
        self.options = options
        self._loaded: dict[str, Backend] = {}

    def get(self, name: str) -> Backend:
        if name not in self._loaded:
            self._loaded[name] = load_backend(name, self.options)
        return self._loaded[name]
