"""Messages an operator can act on when weights cannot be had from the Hugging Face hub."""

from __future__ import annotations


# What the hub client and diffusers say, in their words, when the network is not there.
_OFFLINE_MARKERS = ("offline", "connect", "not fully cached", "cached snapshot", "fetch metadata", "timed out")


def _is_network_error(exc: BaseException) -> bool:
    import socket

    return isinstance(exc, (socket.gaierror, TimeoutError, ConnectionError)) or type(exc).__name__ in (
        "ConnectError",
        "ConnectTimeout",
        "ReadTimeout",
    )


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def hub_error_message(source: str, exc: BaseException, setting: str) -> str:
    """Why ``source`` could not be loaded, and what to do, from the exception chain."""
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    chain = _chain(exc)
    text = " ".join(str(e) for e in chain).lower()
    if any(isinstance(e, GatedRepoError) for e in chain) or "gated" in text:
        return (
            f"{source} is a gated model: accept its licence on https://huggingface.co/{source} and set HF_TOKEN "
            f"to a token of that account (or point {setting} at a local copy)."
        )
    if any(isinstance(e, RepositoryNotFoundError) for e in chain) and "401" in text:
        return f"{source}: the hub refused access (no or invalid HF_TOKEN?). Set HF_TOKEN, or point {setting} at a local copy."
    if any(isinstance(e, LocalEntryNotFoundError) or _is_network_error(e) for e in chain) or any(
        marker in text for marker in _OFFLINE_MARKERS
    ):
        return (
            f"{source} is not in the local Hugging Face cache and the hub cannot be reached (offline?). "
            f"Download it on a connected machine, or point {setting} at a local folder."
        )
    if any(isinstance(e, RepositoryNotFoundError) for e in chain):
        return f"{source} was not found on the hub (check {setting})."
    return f"Could not load {source} ({setting}): {type(exc).__name__}: {exc}"
