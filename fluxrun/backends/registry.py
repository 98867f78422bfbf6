"""Backend names (as tool specs give them) -> loaded backends, once per process."""

from __future__ import annotations

from fluxrun.backends.base import Backend, BackendOptions
from fluxrun.errors import BackendUnavailable

MODES = ("auto", "tiny", "real")


def resolve_models_mode(requested: str) -> tuple[str, str]:
    """(mode, device): auto means real models on a CUDA GPU, tiny ones on the CPU otherwise."""
    if requested not in MODES:
        raise ValueError(f"models: must be one of {', '.join(MODES)} (got {requested!r})")
    import torch

    cuda = torch.cuda.is_available()
    if requested == "tiny":
        return "tiny", "cpu"
    if requested == "auto":
        return ("real", "cuda") if cuda else ("tiny", "cpu")
    return "real", "cuda" if cuda else "cpu"


def load_backend(name: str, options: BackendOptions) -> Backend:
    if name == "flux1":
        from fluxrun.backends.flux1 import Flux1Backend

        return Flux1Backend(options)
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
