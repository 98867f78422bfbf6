"""How fast a worker runs its pipelines: what to turn on for this device, and turning it on.

Five settings say what the operator wants (``FLUXRUN_COMPILE``, ``_COMPILE_MODE``,
``_QUANTIZE``, ``_ATTENTION``, ``_COMPILE_VAE``); each may be ``auto``. ``choose_speed`` is
the one place where ``auto`` becomes a decision: a pure function of the request and a
``DeviceFacts`` (device kind, CUDA compute capability, which attention kernels and torchao are
installed), unit-tested with made-up capabilities. Its ``SpeedChoice`` carries one reason per
decision, logged as one line at worker start.

What ``auto`` picks:

- compile: on for CUDA GPUs of capability 8.0 and newer (Ampere, Ada, Hopper, Blackwell); off
  on the CPU and on older GPUs (where inductor's gains are small and its kernels less tested).
  Regional compilation (``compile_repeated_blocks``): each of the transformer's two block
  classes is compiled once and reused by all its instances, so start-up stays short.
- compile mode: torch's ``default``. ``max-autotune-no-cudagraphs`` autotunes matrix kernels
  per shape (minutes per shape on the full models) for a few per cent; set it explicitly.
- quantize: fp8 weights and activations (torchao, dynamic per-row scales) on capability 8.9
  and newer (Ada, Hopper, Blackwell have fp8 tensor cores); bf16 elsewhere. Without torchao,
  bf16 with a note saying what to install.
- attention: on Hopper, Flash-Attention 3 when its kernel is installed, else cuDNN attention
  (faster there than the flash kernel torch's SDPA picks by default); on Ampere/Ada,
  Flash-Attention 2 when installed, else torch's SDPA (which then runs its own flash kernel);
  elsewhere torch's SDPA. A backend that is asked for but not usable here falls back to
  torch's SDPA, with a note.
- compile VAE: the same as compile (the VAE decode is a fixed cost per image).

Shapes. The compiled graphs are specialised to the first image size they see (torch's
automatic dynamic shapes, ``dynamic=None``): a second, different size compiles once more into a
graph whose sequence length is symbolic, which then serves every later size without compiling
again, while the first size keeps its specialised graph. Warming up two sizes
(``FLUXRUN_WARMUP_SIZES``, default ``1024x1024,1344x768``) therefore leaves the most common size
on its fastest graph and every other size without a compile stall. ``dynamic=False`` would give
every size its own specialised graph, and a user choosing an unusual size would pay a full
compile (tens of seconds) inside their task: not the trade a shared service wants.

LoRAs. A compiled or fp8 transformer switches LoRAs through one hotswapped slot
(``fluxrun.backends.lora.HotswapSlot``), loaded before quantizing and compiling: the slot's
LoRA A/B layers stay in the pipeline's dtype, only the base Linear weights become fp8, and a
swap copies new A/B weights in place, so the graphs never change.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fluxrun.errors import BackendUnavailable

log = logging.getLogger("fluxrun.worker")

SWITCHES = ("auto", "on", "off")
COMPILE_MODES = ("auto", "default", "max-autotune-no-cudagraphs", "max-autotune", "reduce-overhead")
QUANTIZE = ("auto", "fp8", "none")
# Our names for the attention backends -> diffusers' AttentionBackendName values. Hub-kernel
# backends are left out: they download at start, and GPU machines are often offline.
ATTENTION = {
    "native": "native",  # torch's scaled_dot_product_attention, its own kernel choice
    "cudnn": "_native_cudnn",  # torch SDPA forced to cuDNN attention (CUDA, capability >= 8.0)
    "efficient": "_native_efficient",  # torch SDPA forced to the memory-efficient kernel (CUDA)
    "math": "_native_math",  # torch SDPA's reference implementation (any device; slow)
    "flash": "flash",  # the flash-attn package (Flash-Attention 2)
    "flash3": "_flash_3",  # Flash-Attention 3 (flash_attn_interface, Hopper only)
    "sage": "sage",  # the sageattention package
    "xformers": "xformers",
}
ATTENTION_CHOICES = ("auto", *ATTENTION)
FP8_CAPABILITY = (8, 9)  # Ada; Hopper is 9.0
COMPILE_CAPABILITY = (8, 0)  # Ampere
DEFAULT_COMPILE_MODE = "default"
# torchao's float8 kernels need both dimensions of a weight divisible by 16.
FP8_ALIGNMENT = 16


@dataclass(frozen=True)
class SpeedRequest:
    """The speed settings as the operator wrote them (each may be "auto")."""

    compile: str = "auto"
    compile_mode: str = "auto"
    quantize: str = "auto"
    attention: str = "auto"
    compile_vae: str = "auto"


@dataclass(frozen=True)
class DeviceFacts:
    """What ``choose_speed`` needs to know about the device: gathered by ``device_facts``."""

    kind: str  # "cuda" | "cpu" | "mps"
    capability: tuple[int, int] | None = None  # CUDA compute capability
    name: str = ""  # "NVIDIA H100 80GB HBM3"
    attention: frozenset[str] = frozenset({"native", "math"})  # keys of ATTENTION usable here
    torchao: bool = False  # torchao importable

    def describe(self) -> str:
        if self.kind == "cuda" and self.capability:
            return f"{self.name or 'CUDA GPU'} (capability {self.capability[0]}.{self.capability[1]})"
        return self.name or self.kind


@dataclass(frozen=True)
class SpeedChoice:
    """What the worker turns on, and why (one reason per decision)."""

    compile: bool
    compile_mode: str
    quantize: str  # "fp8" | "none"
    attention: str  # a key of ATTENTION
    compile_vae: bool
    reasons: tuple[str, ...] = field(default_factory=tuple)

    @property
    def attention_backend(self) -> str:
        """diffusers' name of the chosen attention backend."""
        return ATTENTION[self.attention]

    def summary(self) -> str:
        compiled = f"compile on ({self.compile_mode})" if self.compile else "compile off"
        weights = "fp8 weights+activations" if self.quantize == "fp8" else "bf16 weights"
        vae = "VAE compiled" if self.compile_vae else "VAE eager"
        return f"{compiled}, {weights}, attention {self.attention}, {vae}"

    def report(self, facts: DeviceFacts) -> str:
        """The one log line a worker writes at start."""
        return f"speed on {facts.describe()}: {self.summary()}. Why: {'; '.join(self.reasons)}"


def _check(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise BackendUnavailable(f"FLUXRUN_{name.upper()}: must be one of {', '.join(allowed)} (got {value!r})")


def choose_speed(request: SpeedRequest, facts: DeviceFacts) -> SpeedChoice:
    """Each "auto" of ``request`` decided for the device ``facts`` describes (pure)."""
    _check("compile", request.compile, SWITCHES)
    _check("compile_mode", request.compile_mode, COMPILE_MODES)
    _check("quantize", request.quantize, QUANTIZE)
    _check("attention", request.attention, ATTENTION_CHOICES)
    _check("compile_vae", request.compile_vae, SWITCHES)
    cuda = facts.kind == "cuda"
    capability = facts.capability or (0, 0)
    here = facts.describe()
    reasons: list[str] = []

    # compile
    if request.compile == "auto":
        compile_ = cuda and capability >= COMPILE_CAPABILITY
        reasons.append(f"compile {'on' if compile_ else 'off'}: auto, "
                       + ("CUDA capability >= 8.0" if compile_ else f"{here} is not a CUDA GPU of capability >= 8.0"))
    else:
        compile_ = request.compile == "on"
        reasons.append(f"compile {request.compile}: FLUXRUN_COMPILE={request.compile}")
    mode = DEFAULT_COMPILE_MODE if request.compile_mode == "auto" else request.compile_mode
    if not cuda and mode != "default":
        reasons.append(f"compile mode {mode} needs a CUDA GPU: default used")
        mode = "default"

    # quantize
    fp8_hardware = cuda and capability >= FP8_CAPABILITY
    if request.quantize == "fp8":
        if not fp8_hardware:
            raise BackendUnavailable(
                f"FLUXRUN_QUANTIZE=fp8: fp8 matrix multiplication needs an NVIDIA GPU of compute capability 8.9 or "
                f"newer (Ada, Hopper, Blackwell); this device is {here}. Set FLUXRUN_QUANTIZE=none or auto."
            )
        if not facts.torchao:
            raise BackendUnavailable("FLUXRUN_QUANTIZE=fp8 needs torchao: pip install 'torchao>=0.18,<0.19' "
                                     "(or set FLUXRUN_QUANTIZE=none).")
        quantize = "fp8"
        reasons.append("fp8: FLUXRUN_QUANTIZE=fp8")
    elif request.quantize == "none":
        quantize = "none"
        reasons.append("bf16: FLUXRUN_QUANTIZE=none")
    elif fp8_hardware and facts.torchao:
        quantize = "fp8"
        reasons.append("fp8: auto, CUDA capability >= 8.9 has fp8 tensor cores")
    elif fp8_hardware:
        quantize = "none"
        reasons.append("bf16: auto, but torchao is not installed (pip install torchao for fp8)")
    else:
        quantize = "none"
        reasons.append(f"bf16: auto, {here} has no fp8 tensor cores")

    # attention
    if request.attention == "auto":
        attention, why = _auto_attention(facts, capability)
        reasons.append(f"attention {attention}: auto, {why}")
    elif request.attention in facts.attention:
        attention = request.attention
        reasons.append(f"attention {attention}: FLUXRUN_ATTENTION={attention}")
    else:
        attention = "native"
        reasons.append(f"attention native: FLUXRUN_ATTENTION={request.attention} is not usable on {here} "
                       f"({_missing_kernel(request.attention)}); fell back to torch SDPA")

    # VAE
    if request.compile_vae == "auto":
        compile_vae = compile_
        reasons.append(f"VAE {'compiled' if compile_vae else 'eager'}: auto, as compile")
    else:
        compile_vae = request.compile_vae == "on"
        reasons.append(f"VAE {'compiled' if compile_vae else 'eager'}: FLUXRUN_COMPILE_VAE={request.compile_vae}")
    return SpeedChoice(compile_, mode, quantize, attention, compile_vae, tuple(reasons))


def _auto_attention(facts: DeviceFacts, capability: tuple[int, int]) -> tuple[str, str]:
    if facts.kind != "cuda":
        return "native", "torch SDPA off CUDA"
    usable = facts.attention
    if (9, 0) <= capability < (10, 0):
        if "flash3" in usable:
            return "flash3", "Hopper with Flash-Attention 3 installed"
        if "cudnn" in usable:
            return "cudnn", "Hopper without Flash-Attention 3: cuDNN attention"
    if (8, 0) <= capability < (9, 0) and "flash" in usable:
        return "flash", "Ampere/Ada with flash-attn installed"
    return "native", "torch SDPA picks its own kernel on this GPU"


def _missing_kernel(attention: str) -> str:
    return {
        "flash": "pip install flash-attn",
        "flash3": "needs Flash-Attention 3 (flash_attn_interface, built from flash-attn's hopper/) on a Hopper GPU",
        "sage": "pip install sageattention",
        "xformers": "pip install xformers",
        "cudnn": "needs a CUDA GPU of capability >= 8.0 and cuDNN 9",
        "efficient": "needs a CUDA GPU",
    }.get(attention, "not installed")


def device_facts(device: str) -> DeviceFacts:
    """What this process can use on ``device`` ("cuda", "cuda:N", "cpu", "mps")."""
    import importlib.util

    import torch

    torchao = importlib.util.find_spec("torchao") is not None
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return DeviceFacts(kind=device.split(":")[0], name=device, torchao=torchao)
    index = torch.device(device).index or 0
    capability = tuple(torch.cuda.get_device_capability(index))
    usable = {"native", "math", "efficient"}
    cudnn = torch.backends.cudnn.is_available() and (torch.backends.cudnn.version() or 0) >= 90000
    if cudnn and capability >= (8, 0):
        usable.add("cudnn")
    try:
        from diffusers.models import attention_dispatch as dispatch

        kernels = {"flash": "_CAN_USE_FLASH_ATTN", "flash3": "_CAN_USE_FLASH_ATTN_3", "sage": "_CAN_USE_SAGE_ATTN",
                   "xformers": "_CAN_USE_XFORMERS_ATTN"}
        usable.update(name for name, flag in kernels.items() if getattr(dispatch, flag, False))
    except ImportError:  # an older diffusers without the dispatcher: SDPA only
        pass
    if not (9, 0) <= capability < (10, 0):
        usable.discard("flash3")  # Flash-Attention 3's kernels are Hopper's
    return DeviceFacts(kind="cuda", capability=(capability[0], capability[1]), name=torch.cuda.get_device_name(index),
                       attention=frozenset(usable), torchao=torchao)


# -- applying a choice to a pipeline ---------------------------------------------------------------


def set_attention(transformer: Any, attention: str) -> None:
    """Route the transformer's attention through ``attention`` (a key of ATTENTION)."""
    if attention == "native" and _current_attention(transformer) in (None, "native"):
        return  # already the default: keep diffusers' "experimental feature" warning out of the log
    transformer.set_attention_backend(ATTENTION[attention])


def _current_attention(transformer: Any) -> str | None:
    for module in transformer.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and hasattr(processor, "_attention_backend"):
            backend = processor._attention_backend
            return None if backend is None else str(getattr(backend, "value", backend))
    return None


def fp8_layer_names(transformer: Any) -> list[str]:
    """The Linear layers of ``transformer`` that fp8 quantization converts: those inside the
    repeated blocks (where nearly all the arithmetic is), with both dimensions divisible by 16
    (torchao's float8 kernels need it), except the AdaLayerNorm modulations (``norm*.linear``:
    one token per image, nothing to gain) and LoRA's own A/B layers (kept in the pipeline's
    dtype, so the hotswap slot can copy new weights into them)."""
    import torch

    names = []
    blocks = tuple(getattr(transformer, "_repeated_blocks", ()) or ())
    for block_name, block in transformer.named_modules():
        if type(block).__name__ not in blocks:
            continue
        for name, module in block.named_modules():
            if not isinstance(module, torch.nn.Linear) or _skipped_for_fp8(name):
                continue
            if module.in_features % FP8_ALIGNMENT or module.out_features % FP8_ALIGNMENT:
                continue
            names.append(f"{block_name}.{name}")
    return names


def _skipped_for_fp8(name: str) -> bool:
    parts = name.split(".")
    if any(part.startswith(("lora_A", "lora_B", "lora_embedding", "lora_magnitude")) for part in parts):
        return True
    return len(parts) >= 2 and parts[-2].startswith("norm") and parts[-1] == "linear"


def quantize_fp8(transformer: Any) -> int:
    """fp8 weights and dynamically quantized fp8 activations for the layers ``fp8_layer_names``
    picks, in place; returns how many. Per-row scales (the published recipes' choice, more
    accurate) for bf16 weights; torchao has per-row for bf16 only, so other dtypes (the fp32
    tiny models) get one scale per tensor."""
    import torch
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, PerTensor, quantize_

    chosen = set(fp8_layer_names(transformer))
    if chosen:
        granularity = PerRow() if transformer.dtype == torch.bfloat16 else PerTensor()
        quantize_(transformer, Float8DynamicActivationFloat8WeightConfig(granularity=granularity),
                  filter_fn=lambda module, fqn: fqn in chosen)
    return len(chosen)


def is_fp8(module: Any) -> bool:
    """Whether a Linear layer's weight was quantized to fp8."""
    import torch

    weight = getattr(module, "weight", None)
    inner = getattr(weight, "qdata", None)
    return isinstance(inner, torch.Tensor) and inner.dtype in (torch.float8_e4m3fn, torch.float8_e5m2)


def tune_inductor(device: str) -> None:
    """Inductor settings of the published FLUX recipes (diffusers' and PyTorch's fast-FLUX
    posts): 1x1 convolutions as matrix products (the VAE), coordinate-descent tuning of the
    generated kernels, and no epilogue fusion (slower on these GEMM shapes). CUDA only."""
    if not device.startswith("cuda"):
        return
    import torch._inductor.config as inductor

    inductor.conv_1x1_as_mm = True
    inductor.coordinate_descent_tuning = True
    inductor.coordinate_descent_check_all_directions = True
    inductor.epilogue_fusion = False


def compile_transformer(transformer: Any, backend: str, mode: str) -> None:
    """Regional compilation: each repeated block class compiled once (see module docstring on shapes)."""
    transformer.compile_repeated_blocks(fullgraph=True, backend=backend, **_mode_argument(backend, mode))


def compile_vae(vae: Any, device: str, backend: str, mode: str) -> None:
    """The VAE's decoder compiled in place (the pipeline calls ``vae.decode``, which runs it);
    channels-last on CUDA, where cuDNN's convolutions prefer it."""
    import torch

    if device.startswith("cuda"):
        vae.to(memory_format=torch.channels_last)
    vae.decoder.compile(fullgraph=True, backend=backend, **_mode_argument(backend, mode))


def _mode_argument(backend: str, mode: str) -> dict[str, str]:
    # torch.compile accepts ``mode`` for inductor only ("default" is the same as none).
    return {"mode": mode} if backend == "inductor" and mode != "default" else {}


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process so far: the difference of two readings is the
    number of (re)compilations between them."""
    import torch._dynamo.utils

    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def apply(pipe: Any, options: Any, before_quantize: Callable[[], None] | None = None) -> list[str]:
    """Turn on what ``options`` (a BackendOptions) says, in the order that works: attention
    backend, ``before_quantize`` (the LoRA slot must wrap the base layers before they are
    quantized and compiled), fp8, compiled transformer, compiled VAE. Returns what was done,
    in words, for the backend's description."""
    done: list[str] = []
    if options.attention != "native":
        set_attention(pipe.transformer, options.attention)
        done.append(f"attention {options.attention}")
    if before_quantize is not None:
        before_quantize()
    if options.quantize == "fp8":
        done.append(f"fp8 ({quantize_fp8(pipe.transformer)} layers)")
    if (options.compile or options.compile_vae) and options.compile_backend == "inductor":
        tune_inductor(options.device)
    if options.compile:
        compile_transformer(pipe.transformer, options.compile_backend, options.compile_mode)
        done.append(f"transformer compiled ({options.compile_backend}, {options.compile_mode})")
    if options.compile_vae:
        compile_vae(pipe.vae, options.device, options.compile_backend, options.compile_mode)
        done.append("VAE compiled")
    return done
