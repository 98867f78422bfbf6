"""LoRA adapters over one resident base pipeline, switched per task.

Two ways to switch, by whether the transformer is compiled:

- ``NamedAdapters`` (eager): each LoRA is loaded once as its own named adapter on first use;
  a task activates exactly its own with ``set_adapters`` (or disables LoRA for the base).
- ``HotswapSlot`` (compiled): switching a named adapter or toggling LoRA off changes what
  the compiled graph guards on and would recompile. Instead one adapter "slot" is loaded
  before compilation and every switch copies another LoRA's weights into it in place (PEFT
  hotswap), so the graph never changes. The slot covers the union of every configured
  LoRA's layers at the highest rank (zeros where a LoRA has no weights), so any of them,
  and the base model itself (all zeros), can be swapped in. Each LoRA's scale (alpha/rank,
  from its metadata or alphas) is folded into its weights beforehand, so every module of
  the slot runs at scale 1 and the swap needs no per-adapter configuration.

Both are loaded from the same sources: a hub repo, a local folder, or a ``.safetensors`` file.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from fluxrun.backends.base import Job
from fluxrun.backends.hub import hub_error_message
from fluxrun.errors import BackendUnavailable
from fluxrun.tools.catalog import TOOLS

if TYPE_CHECKING:
    import torch

log = logging.getLogger("fluxrun.worker")

SLOT = "fluxrun-slot"
_TRANSFORMER = "transformer."


def lora_setting(name: str) -> str:
    """The environment setting that names adapter ``name``'s source."""
    return "FLUXRUN_LORA_" + name.upper().replace("-", "_")


def source_arguments(source: str) -> tuple[str, dict[str, Any]]:
    """(what to pass to diffusers, extra keyword arguments): a single ``.safetensors`` file is
    passed as its folder plus ``weight_name``; folders and hub repos as they are."""
    path = Path(source).expanduser()
    if path.suffix == ".safetensors":
        return str(path.parent), {"weight_name": path.name}
    return str(path) if path.exists() else source, {}


def configured_sources(backend: str, overrides: Mapping[str, str]) -> dict[str, str | None]:
    """Adapter name -> source (None: not configured) for every LoRA that a tool of ``backend``
    names: the operator's setting (``overrides``), else the tool spec's default source."""
    sources: dict[str, str | None] = {tool.lora: tool.lora_source for tool in TOOLS if tool.backend == backend and tool.lora}
    sources.update(overrides)
    return sources


def looks_local(source: str) -> bool:
    """Whether a source names a file or folder (not a hub repo id ``owner/name``)."""
    return source.startswith(("/", "./", "../", "~")) or source.endswith(".safetensors") or Path(source).exists()


def source_problem(name: str, source: str) -> str | None:
    """Why a configured LoRA source cannot work, known before loading anything; else None."""
    path = Path(source).expanduser()
    if looks_local(source) and not path.exists():
        return (f"{lora_setting(name)}={source}: no such file or folder. Point it at the LoRA's .safetensors "
                "file, a folder holding one, or a hub repo id (owner/name).")
    if path.is_dir() and not any(path.glob("*.safetensors")):
        return f"{lora_setting(name)}={source}: the folder holds no .safetensors file."
    return None


def _checked(name: str, source: str) -> str:
    problem = source_problem(name, source)
    if problem:
        raise BackendUnavailable(problem)
    return source


def missing_note(name: str) -> str:
    return f"LoRA '{name}' is not configured (set {lora_setting(name)}); ran the base model"


class LoraSwitch(Protocol):
    def activate(self, name: str | None, job: Job) -> None:
        """Make exactly ``name`` (or no adapter, for None) active for the next generation."""


class NamedAdapters:
    def __init__(self, pipe: Any, sources: Mapping[str, str | None]) -> None:
        self._pipe = pipe
        self._sources = dict(sources)
        self._loaded: set[str] = set()

    def activate(self, name: str | None, job: Job) -> None:
        if name is not None and name not in self._loaded:
            source = self._sources.get(name)
            if source is None:
                job.note(missing_note(name))
                name = None
            else:
                location, kwargs = source_arguments(_checked(name, source))
                try:
                    self._pipe.load_lora_weights(location, adapter_name=name, **kwargs)
                except Exception as exc:
                    raise BackendUnavailable(hub_error_message(source, exc, lora_setting(name))) from exc
                self._loaded.add(name)
        if name is None:
            if self._loaded:
                self._pipe.disable_lora()
            return
        self._pipe.enable_lora()
        self._pipe.set_adapters([name])


class HotswapSlot:
    """Every configured LoRA read into memory at start; one slot adapter swapped in place.

    Must be built before the transformer is compiled (it adds the slot's layers)."""

    def __init__(self, pipe: Any, sources: Mapping[str, str | None]) -> None:
        self._pipe = pipe
        self._weights: dict[str, dict[str, torch.Tensor]] = {}
        self._unavailable: dict[str, str] = {}  # adapter -> why it could not be read
        self.ignored: dict[str, int] = {}  # adapter -> text-encoder tensors hotswap cannot use
        for name, source in sources.items():
            if source is None:
                continue
            try:
                self._weights[name] = self._read(name, source)
            except BackendUnavailable as exc:  # its tools fail with this; the others work
                self._unavailable[name] = str(exc)
                log.error("LoRA '%s' unavailable: %s", name, exc)
        self._zero = _zero_union(list(self._weights.values()))
        self._active: str | None = None
        if not self._zero:  # no LoRA configured at all: nothing to swap, the base runs as it is
            return
        # A copy: the first load may adopt the tensors as the slot's parameters, which every
        # later swap overwrites in place, and the zeros must stay zeros.
        pipe.load_lora_weights({key: value.clone() for key, value in self._zero.items()}, adapter_name=SLOT)

    def _read(self, name: str, source: str) -> dict[str, torch.Tensor]:
        location, kwargs = source_arguments(_checked(name, source))
        try:
            state, alphas, metadata = self._pipe.lora_state_dict(
                location, return_alphas=True, return_lora_metadata=True, **kwargs
            )
        except Exception as exc:
            raise BackendUnavailable(hub_error_message(source, exc, lora_setting(name))) from exc
        transformer = {k: v for k, v in state.items() if k.startswith(_TRANSFORMER) and "lora" in k}
        self.ignored[name] = len(state) - len(transformer)
        return fold_scale(transformer, alphas or {}, metadata or {})

    def activate(self, name: str | None, job: Job) -> None:
        if name in self._unavailable:
            raise BackendUnavailable(self._unavailable[name])
        if name is not None and name not in self._weights:
            job.note(missing_note(name))
            name = None
        if name is not None and self.ignored.get(name):
            job.note(f"LoRA '{name}': its {self.ignored[name]} text-encoder tensors are not used (hotswap "
                     "switches the transformer's adapters only)")
        if not self._zero or name == self._active:
            return
        weights = self._weights[name] if name is not None else self._zero
        self._pipe.load_lora_weights(dict(weights), adapter_name=SLOT, hotswap=True)
        self._active = name


def fold_scale(
    weights: dict[str, torch.Tensor], alphas: Mapping[str, float], metadata: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """The LoRA's weights with each module's alpha/rank scale multiplied into ``lora_B``, so
    they mean the same at scale 1 (what the slot runs at)."""
    from peft.utils.other import get_pattern_key

    default_alpha = metadata.get("transformer.lora_alpha")
    pattern: dict[str, float] = dict(metadata.get("transformer.alpha_pattern") or {})
    rslora = bool(metadata.get("transformer.use_rslora"))
    folded = dict(weights)
    for key, down in weights.items():
        if ".lora_A." not in key or not key.endswith(".weight"):
            continue
        module = key.split(".lora_A.")[0]
        rank = down.shape[0]
        alpha = alphas.get(f"{module}.alpha")
        if alpha is None and default_alpha is not None:
            inner = module.removeprefix(_TRANSFORMER)
            match = get_pattern_key(list(pattern), inner) if pattern else inner
            alpha = pattern.get(match, default_alpha)
        if alpha is None:
            continue  # no alpha anywhere: diffusers' convention is alpha == rank, scale 1
        scale = float(alpha) / (math.sqrt(rank) if rslora else rank)
        for up_key in (f"{module}.lora_B.weight", f"{module}.lora_B.bias"):
            if up_key in folded:
                folded[up_key] = folded[up_key] * scale
    return folded


def _zero_union(adapters: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Zero weights for every LoRA tensor any adapter has, at the highest rank among them."""
    import torch

    shapes: dict[str, tuple[int, ...]] = {}
    rank = max((t.shape[0] for a in adapters for k, t in a.items() if ".lora_A." in k), default=0)
    dtype = next((t.dtype for a in adapters for t in a.values()), torch.float32)
    for adapter in adapters:
        for key, tensor in adapter.items():
            shape = list(tensor.shape)
            if ".lora_A." in key:
                shape[0] = rank
            elif ".lora_B." in key and key.endswith(".weight"):
                shape[1] = rank
            shapes.setdefault(key, tuple(shape))
    return {key: torch.zeros(shape, dtype=dtype) for key, shape in shapes.items()}
