"""Seconds per image on the GPU: plain diffusers against fluxrun's worker path, side by side.

The full-size architectures are built from their configurations (below: no download; the GPU
machines are offline) with random bf16 weights directly on the GPU, so the arithmetic is that
of the real models:

- ``flux1``: FLUX.1-dev = FluxTransformer2DModel (19 double + 38 single blocks, 24 heads x 128)
  + CLIP ViT-L/14 text model + T5 v1.1 XXL encoder + the FLUX VAE, with a rank-64 LoRA loaded,
  then a swap to a second LoRA (the pixel-art tool's and the realism tool's adapter slots);
- ``flux2-klein-4b``: FLUX.2 [klein] 4B (step-distilled: 4 steps, no guidance pass) + Qwen3-4B;
- ``flux2-dev``: FLUX.2 [dev] (32B) + Mistral Small 3.1 24B, only where it fits in GPU memory.

Tokenizers are offline ones padding to the real lengths (CLIP 77, T5 and Qwen 512 tokens): the
vocabulary does not change the arithmetic, the sequence lengths do.

Per model, the same pipeline object is timed twice, baseline first:

1. baseline: the pipeline as a user writes it: bf16, eager, default attention, the LoRA with
   ``load_lora_weights``; swap with a second ``load_lora_weights`` + ``set_adapters``;
2. fluxrun: the same modules handed to the worker's own backend class (``Flux1Backend(options,
   pipe=...)``), with the options the worker builds from its settings on this GPU
   (``worker.main.backend_options``: ``auto`` everywhere unless FLUXRUN_* variables say
   otherwise), warmed up by the worker's own ``warm_up``, then timed through ``generate``.

Timings exclude warm-up runs, synchronise the GPU, and are medians of ``--runs``. The floor is
the transformer's FLOPs per step (counted from the module shapes: 2*M*N*K per Linear, plus
QK^T and AV of the joint attention) at the matrix rate measured in the same run (bf16 and,
when fluxrun runs fp8, fp8 ``_scaled_mm``); ``floor_fraction`` = floor / fluxrun seconds per
image (text encoders and VAE count in the seconds, not in the floor).

    PYTHONPATH=. python bench/gpu_flux.py --model flux1 --steps 12,28 --size 1024x1024
    PYTHONPATH=. python bench/gpu_flux.py --model flux2-klein-4b --steps 4
    PYTHONPATH=. python bench/gpu_flux.py --tiny --steps 2 --size 64x64 --out /tmp/r   # CPU, seconds

Each (model, size, steps) writes one JSON file under ``--out`` (default bench/results/).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from fluxrun.backends import speed  # noqa: E402
from fluxrun.backends.base import Backend, BackendOptions, RecordingJob  # noqa: E402
from fluxrun.backends.lora import lora_setting  # noqa: E402
from fluxrun.backends.registry import BackendCache  # noqa: E402
from fluxrun.config import Settings  # noqa: E402
from fluxrun.tools.catalog import find_tool  # noqa: E402
from fluxrun.worker.main import backend_options  # noqa: E402
from fluxrun.worker.startup import choose_worker_speed, warm_up  # noqa: E402

PIXEL = find_tool("desertPixel", "Flat-Pixel-Art-FLUX")
REALISM = find_tool("fluxrun", "Realism-FLUX")
FLEX = find_tool("black-forest-labs", "flux-2-flex-t2i")
PROMPT = "a lighthouse on a cliff at dusk, waves breaking below, pixel art"
MODELS = ("flux1", "flux2-klein-4b", "flux2-dev")
TEXT_TOKENS = 512  # T5 (FLUX.1) and the FLUX.2 encoders: the pipelines' max_sequence_length

# -- configurations (published config.json values) ------------------------------------------------
# FLUX.1-dev transformer/config.json.
FLUX1_TRANSFORMER = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                         num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                         guidance_embeds=True, axes_dims_rope=[16, 56, 56])
# openai/clip-vit-large-patch14's text model (FLUX.1's text_encoder).
CLIP_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, projection_dim=768, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=0,
                 eos_token_id=2, pad_token_id=1)
# google/t5-v1_1-xxl (FLUX.1's text_encoder_2).
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
              dense_act_fn="gelu_new", is_gated_act=True, tie_word_embeddings=False)
# FLUX.1-dev vae/config.json.
FLUX1_VAE = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                 up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
                 latent_channels=16, norm_num_groups=32, sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159,
                 use_quant_conv=False, use_post_quant_conv=False)
FLUX1_SCHEDULER = dict(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15,
                       num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True)
# FLUX.2 [dev]: diffusers' Flux2Transformer2DModel defaults are [dev]'s configuration (8 double +
# 48 single blocks, 48 heads x 128, joint_attention_dim 15360 = 3 x Mistral's 5120).
FLUX2_DEV_TRANSFORMER: dict[str, Any] = dict(guidance_embeds=True)
# FLUX.2 [klein] 4B: 5 double + 20 single blocks, Qwen3-4B (hidden 2560, 36 layers) whose layers
# 9, 18, 27 are stacked (joint_attention_dim 3 x 2560). Not confirmed from its config.json (not
# reachable here): 24 heads x 128 (inner 3072), inferred from the 4B parameter count and
# consistent with the 35 TFLOP/step noted for it in shared/NOTES.md.
FLUX2_KLEIN4B_TRANSFORMER = dict(num_layers=5, num_single_layers=20, num_attention_heads=24, attention_head_dim=128,
                                 joint_attention_dim=7680, guidance_embeds=False)
QWEN3_4B = dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                rms_norm_eps=1e-6, rope_theta=1000000, tie_word_embeddings=True)
# Mistral Small 3.1 24B's language model (FLUX.2 [dev]'s text encoder; its vision tower is unused
# for text-to-image and kept small here).
MISTRAL_SMALL_TEXT = dict(model_type="mistral", vocab_size=131072, hidden_size=5120, intermediate_size=32768,
                          num_hidden_layers=40, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                          max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=1000000000.0,
                          sliding_window=None)
FLUX2_SCHEDULER = dict(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15,
                       num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, time_shift_type="exponential")


# -- building ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def building(device: str, dtype: torch.dtype) -> Iterator[None]:
    """Modules made inside are created on ``device`` in ``dtype`` directly (no fp32 CPU copy of 12B)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def build_flux1(tiny: bool, device: str, dtype: torch.dtype, scratch: Path) -> Any:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from fluxrun.backends.tiny import ensure_tiny_flux1, flux1_tokenizers

    if tiny:
        return FluxPipeline.from_pretrained(ensure_tiny_flux1(scratch / "models"), torch_dtype=dtype).to(device)
    torch.manual_seed(0)
    clip_tokenizer, t5_tokenizer = flux1_tokenizers(scratch / "tokenizers")
    with building(device, dtype):
        transformer = FluxTransformer2DModel(**FLUX1_TRANSFORMER)
        clip = CLIPTextModel(CLIPTextConfig(**CLIP_TEXT))
        t5 = T5EncoderModel(T5Config(**T5_XXL))
        vae = AutoencoderKL(**FLUX1_VAE)
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**FLUX1_SCHEDULER), vae=vae, text_encoder=clip,
                        tokenizer=clip_tokenizer, text_encoder_2=t5, tokenizer_2=t5_tokenizer, transformer=transformer)


def build_flux2(family: str, tiny: bool, device: str, dtype: torch.dtype, scratch: Path) -> Any:
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Pipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, Qwen3Config, Qwen3ForCausalLM

    from fluxrun.backends.tiny_flux2 import ensure_tiny_flux2, mistral_processor, qwen_tokenizer

    if tiny:
        folder = ensure_tiny_flux2(scratch / "models", family)
        if family == "dev":
            return Flux2Pipeline.from_pretrained(folder, torch_dtype=dtype).to(device)
        return Flux2KleinPipeline.from_pretrained(folder, torch_dtype=dtype, is_distilled=True).to(device)
    torch.manual_seed(0)
    scheduler = FlowMatchEulerDiscreteScheduler(**FLUX2_SCHEDULER)
    if family == "dev":
        processor = mistral_processor()
        tokenizer = processor.tokenizer
        special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                   "pad_token_id": tokenizer.pad_token_id}
        with building(device, dtype):
            transformer = Flux2Transformer2DModel(**FLUX2_DEV_TRANSFORMER)
            encoder = Mistral3ForConditionalGeneration(Mistral3Config(
                text_config={**MISTRAL_SMALL_TEXT, **special},
                vision_config={"model_type": "pixtral", "hidden_size": 64, "intermediate_size": 128,
                               "num_hidden_layers": 1, "num_attention_heads": 2, "head_dim": 32, "image_size": 64,
                               "patch_size": 16, "num_channels": 3},
                image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"), spatial_merge_size=2, **special))
            vae = AutoencoderKLFlux2()
        return Flux2Pipeline(scheduler=scheduler, vae=vae, text_encoder=encoder, tokenizer=processor,
                             transformer=transformer)
    tokenizer = qwen_tokenizer()
    with building(device, dtype):
        transformer = Flux2Transformer2DModel(**FLUX2_KLEIN4B_TRANSFORMER)
        encoder = Qwen3ForCausalLM(Qwen3Config(**QWEN3_4B, eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id))
        vae = AutoencoderKLFlux2()
    return Flux2KleinPipeline(scheduler=scheduler, vae=vae, text_encoder=encoder, tokenizer=tokenizer,
                              transformer=transformer, is_distilled=True)


def flux2_fits(family: str, device: str) -> str | None:
    """Why the full-size FLUX.2 pipeline of ``family`` does not fit on ``device``; None if it does."""
    if not device.startswith("cuda"):
        return None
    from diffusers import Flux2Transformer2DModel

    with torch.device("meta"):
        config = FLUX2_DEV_TRANSFORMER if family == "dev" else FLUX2_KLEIN4B_TRANSFORMER
        transformer_params = sum(p.numel() for p in Flux2Transformer2DModel(**config).parameters())
    encoder_params = 24.0e9 if family == "dev" else 4.0e9  # Mistral Small 3.1 24B; Qwen3-4B
    needed = (transformer_params + encoder_params) * 2 * 1.15  # bf16, plus activations and the VAE
    free, _ = torch.cuda.mem_get_info()
    if needed > free:
        return f"needs about {needed / 2**30:.0f} GiB of GPU memory in bf16, {free / 2**30:.0f} GiB free"
    return None


# -- LoRAs --------------------------------------------------------------------------------------------
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
                "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp", "proj_out")


def write_lora(transformer: Any, rank: int, seed: int, folder: Path) -> Path:
    """A random LoRA of ``rank`` over every block matrix (as trainers such as ai-toolkit make them),
    in the diffusers format the worker and ``load_lora_weights`` read; returns its .safetensors file."""
    from safetensors.torch import save_file

    generator = torch.Generator("cpu").manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    blocks = tuple(transformer._repeated_blocks)
    for block_name, block in transformer.named_modules():
        if type(block).__name__ not in blocks:
            continue
        for name, module in block.named_modules():
            if isinstance(module, torch.nn.Linear) and name.endswith(LORA_TARGETS):
                key = f"transformer.{block_name}.{name}"
                down = torch.randn(rank, module.in_features, generator=generator) / module.in_features**0.5
                up = torch.randn(module.out_features, rank, generator=generator) * (0.02 / rank**0.5)
                tensors[f"{key}.lora_A.weight"] = down.to(torch.bfloat16)
                tensors[f"{key}.lora_B.weight"] = up.to(torch.bfloat16)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pytorch_lora_weights.safetensors"
    save_file(tensors, str(path))
    return path


# -- counting -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepFlops:
    linear: float  # FLOPs of the transformer's matrix products per step
    attention: float  # FLOPs of QK^T and AV per step

    @property
    def total(self) -> float:
        return self.linear + self.attention


_TEXT_STREAM = ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "ff_context")
_PER_IMAGE = ("norm", "modulation", "time_", "timestep", "guidance", "text_embedder", "pooled")


def transformer_flops(transformer: Any, image_tokens: int, text_tokens: int) -> StepFlops:
    """The transformer's FLOPs for one step at batch 1, from its module shapes: 2*M*N*K per Linear,
    M being the tokens it sees (image tokens, text tokens, both in the single-stream blocks, one
    for the per-image modulations and embeddings), plus 2 x 2*L*L*inner for each block's joint
    attention over all L tokens."""
    tokens_all = image_tokens + text_tokens
    linear = 0.0
    blocks = tuple(transformer._repeated_blocks)
    single = {name for name, module in transformer.named_modules() if type(module).__name__ == blocks[1]}
    attention_blocks = 0
    for name, module in transformer.named_modules():
        if type(module).__name__ in blocks:
            attention_blocks += 1
        if not isinstance(module, torch.nn.Linear):
            continue
        parts = name.split(".")
        if any(part.startswith(_PER_IMAGE) for part in parts):
            tokens = 1
        elif ".".join(parts[:2]) in single:
            tokens = tokens_all
        elif name == "context_embedder" or any(part.startswith(_TEXT_STREAM) for part in parts):
            tokens = text_tokens
        else:  # image stream of the double blocks, x_embedder, proj_out
            tokens = image_tokens
        linear += 2.0 * tokens * module.in_features * module.out_features
    inner = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    attention = attention_blocks * 2 * (2.0 * tokens_all * tokens_all * inner)
    return StepFlops(linear, attention)


def matmul_rate(device: str, fp8: bool, size: int) -> float:
    """Measured FLOP/s of a size^3 matrix product: bf16, or fp8 (e4m3, per-row scales) via _scaled_mm."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    if fp8:
        a8, b8 = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn).t().contiguous().t()
        scale_a = torch.ones(size, 1, device=device, dtype=torch.float32)
        scale_b = torch.ones(1, size, device=device, dtype=torch.float32)

        def run() -> Any:
            return torch._scaled_mm(a8, b8, scale_a=scale_a, scale_b=scale_b, out_dtype=torch.bfloat16)
    else:
        def run() -> Any:
            return a @ b
    seconds = timed(run, device, runs=5, warmup=2)
    return 2.0 * size**3 / seconds


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(run: Callable[[], Any], device: str, runs: int, warmup: int = 1) -> float:
    """Median seconds of ``runs`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run()
    sync(device)
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        sync(device)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def once(run: Callable[[], Any], device: str) -> float:
    sync(device)
    started = time.perf_counter()
    run()
    sync(device)
    return time.perf_counter() - started


class Prebuilt(BackendCache):
    """The worker's backend cache, holding backends built here (for ``warm_up`` and the worker)."""

    def __init__(self, options: BackendOptions, backends: dict[str, Backend]) -> None:
        super().__init__(options)
        self._prebuilt = backends

    def get(self, name: str) -> Backend:
        return self._prebuilt[name] if name in self._prebuilt else super().get(name)


# -- the runs -------------------------------------------------------------------------------------
@dataclass
class Row:
    model: str
    width: int
    height: int
    steps: int
    baseline_s: float
    fluxrun_s: float
    lora_swap_s: float | None
    baseline_lora_swap_s: float | None
    recompiles_after_swap: int | None
    flops: StepFlops
    floor_s: float
    baseline_floor_s: float

    @property
    def speedup(self) -> float:
        return self.baseline_s / self.fluxrun_s


def run_flux1(args: argparse.Namespace, device: str, dtype: torch.dtype, scratch: Path) -> tuple[list[Row], dict]:
    from fluxrun.backends.flux1 import Flux1Backend

    pipe = build_flux1(args.tiny, device, dtype, scratch)
    pipe.set_progress_bar_config(disable=True)
    rank = 4 if args.tiny else args.lora_rank
    loras = {"flat-pixel-art": write_lora(pipe.transformer, rank, 1, scratch / "lora-a"),
             "realism": write_lora(pipe.transformer, rank, 2, scratch / "lora-b")}
    width, height = args.width, args.height
    flops = transformer_flops(pipe.transformer, (width // 16) * (height // 16), TEXT_TOKENS)

    # 1. Baseline: as a user writes it.
    def baseline(steps: int) -> Any:
        with torch.inference_mode():
            return pipe(prompt=PROMPT, width=width, height=height, num_inference_steps=steps, guidance_scale=3.5,
                        max_sequence_length=TEXT_TOKENS, generator=torch.Generator(device).manual_seed(1)).images[0]

    pipe.load_lora_weights(str(loras["flat-pixel-art"].parent), adapter_name="pixel")
    baseline_s = {steps: timed(lambda: baseline(steps), device, args.runs) for steps in args.steps}
    baseline_swap = once(lambda: (pipe.load_lora_weights(str(loras["realism"].parent), adapter_name="realism"),
                                  pipe.set_adapters(["realism"])), device)
    pipe.unload_lora_weights()

    # 2. fluxrun: the worker's backend over the same modules, with the worker's options on this device.
    for name, path in loras.items():
        os.environ[lora_setting(name)] = str(path)
    options, choice = worker_options(args.compile_backend, device)
    started = time.perf_counter()
    backend = Flux1Backend(options, pipe=pipe)
    setup_s = time.perf_counter() - started
    started = time.perf_counter()
    warm_up(Prebuilt(options, {"flux1": backend}), (PIXEL, REALISM), ((width, height),))
    warmup_s = time.perf_counter() - started

    def request(tool: Any, steps: int) -> Any:
        return tool.to_request(tool.validate({"prompt": PROMPT, "steps": steps, "width": width, "height": height,
                                              "seed": 1}))

    fluxrun_s = {}
    for steps in args.steps:
        backend.loras.activate("flat-pixel-art", RecordingJob())
        fluxrun_s[steps] = timed(lambda: backend.generate(request(PIXEL, steps), RecordingJob()), device, args.runs)
    graphs = speed.compiled_graphs()
    swap_s = once(lambda: backend.loras.activate("realism", RecordingJob()), device)
    backend.generate(request(REALISM, args.steps[0]), RecordingJob())
    recompiles = speed.compiled_graphs() - graphs
    rows = [row("flux1", args, steps, baseline_s[steps], fluxrun_s[steps], swap_s, baseline_swap, recompiles, flops,
                choice) for steps in args.steps]
    return rows, {"fluxrun_options": backend.description, "fluxrun_setup_s": setup_s, "fluxrun_warmup_s": warmup_s,
                  "lora_rank": rank, "lora_tensors": len(_lora_keys(loras["realism"]))}


def _lora_keys(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return list(handle.keys())


def run_flux2(args: argparse.Namespace, device: str, dtype: torch.dtype, scratch: Path) -> tuple[list[Row], dict]:
    from fluxrun.backends.flux2 import Flux2Backend

    family = "dev" if args.model == "flux2-dev" else "klein"
    if not args.tiny and (why := flux2_fits(family, device)):
        print(f"{args.model}: skipped: {why}")
        return [], {}
    pipe = build_flux2(family, args.tiny, device, dtype, scratch)
    pipe.set_progress_bar_config(disable=True)
    width, height = args.width, args.height
    flops = transformer_flops(pipe.transformer, (width // 16) * (height // 16), TEXT_TOKENS)
    guidance = 4.0  # [dev]: its embedded guidance; step-distilled [klein] ignores it (no second pass)

    def baseline(steps: int) -> Any:
        with torch.inference_mode():
            return pipe(prompt=PROMPT, width=width, height=height, num_inference_steps=steps, guidance_scale=guidance,
                        generator=torch.Generator(device).manual_seed(1)).images[0]

    baseline_s = {steps: timed(lambda: baseline(steps), device, args.runs) for steps in args.steps}
    options, choice = worker_options(args.compile_backend, device)
    started = time.perf_counter()
    backend = Flux2Backend(options, pipe=pipe)
    setup_s = time.perf_counter() - started
    started = time.perf_counter()
    warm_up(Prebuilt(options, {"flux2": backend}), (FLEX,), ((width, height),))
    warmup_s = time.perf_counter() - started

    def request(steps: int) -> Any:
        return FLEX.to_request(FLEX.validate({"prompt": PROMPT, "steps": steps, "width": width, "height": height,
                                              "guidance": guidance, "seed": 1}))

    fluxrun_s = {steps: timed(lambda: backend.generate(request(steps), RecordingJob()), device, args.runs)
                 for steps in args.steps}
    rows = [row(args.model, args, steps, baseline_s[steps], fluxrun_s[steps], None, None, None, flops, choice)
            for steps in args.steps]
    return rows, {"fluxrun_options": backend.description, "fluxrun_setup_s": setup_s, "fluxrun_warmup_s": warmup_s}


MATMUL: dict[str, float] = {}


def row(model: str, args: argparse.Namespace, steps: int, baseline_s: float, fluxrun_s: float, swap_s: float | None,
        baseline_swap_s: float | None, recompiles: int | None, flops: StepFlops, choice: speed.SpeedChoice) -> Row:
    bf16 = MATMUL["bf16"]
    linear_rate = MATMUL.get("fp8", bf16) if choice.quantize == "fp8" else bf16
    floor = steps * (flops.linear / linear_rate + flops.attention / bf16)
    baseline_floor = steps * flops.total / bf16
    return Row(model, args.width, args.height, steps, baseline_s, fluxrun_s, swap_s, baseline_swap_s, recompiles,
               flops, floor, baseline_floor)


def worker_options(compile_backend: str, device: str) -> tuple[Any, speed.SpeedChoice]:
    """The options the worker builds on this device from its settings (FLUXRUN_* variables),
    compiling with ``compile_backend`` (inductor, or "eager" for a cheap CPU check)."""
    settings = Settings(models="real", device=device, data_dir=Path(tempfile.mkdtemp(prefix="fluxrun-bench-")))
    choice = choose_worker_speed(settings, device)
    options = backend_options(settings, "real", device, choice)
    return replace(options, compile_backend=compile_backend), choice


# -- output ---------------------------------------------------------------------------------------
def versions() -> dict[str, str]:
    import importlib.metadata as metadata

    found = {"python": platform.python_version(), "cuda": str(torch.version.cuda)}
    for package in ("torch", "diffusers", "transformers", "peft", "torchao", "flash-attn", "flash_attn_3"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[package] = metadata.version(package)
    return found


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device).index or 0)
    return f"cpu ({platform.processor() or platform.machine()})"


def record(r: Row, args: argparse.Namespace, device: str, extra: dict) -> dict[str, Any]:
    return {
        "device": device_name(device),
        "model": r.model + ("-tiny" if args.tiny else ""),
        "width": r.width,
        "height": r.height,
        "steps": r.steps,
        "baseline_s": round(r.baseline_s, 4),
        "fluxrun_s": round(r.fluxrun_s, 4),
        "speedup": round(r.speedup, 3),
        "lora_swap_s": None if r.lora_swap_s is None else round(r.lora_swap_s, 4),
        "recompiles_after_swap": r.recompiles_after_swap,
        "floor_fraction": round(r.floor_s / r.fluxrun_s, 4),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        # Beyond the fields: what the numbers rest on.
        "baseline_floor_fraction": round(r.baseline_floor_s / r.baseline_s, 4),
        "baseline_lora_swap_s": None if r.baseline_lora_swap_s is None else round(r.baseline_lora_swap_s, 4),
        "transformer_tflop_per_step": round(r.flops.total / 1e12, 3),
        "attention_tflop_per_step": round(r.flops.attention / 1e12, 3),
        "matmul_tflops": {k: round(v / 1e12, 2) for k, v in MATMUL.items()},
        "floor_s": round(r.floor_s, 4),
        "runs": args.runs,
        **{k: (round(v, 2) if isinstance(v, float) else v) for k, v in extra.items()},
    }


def print_table(rows: list[Row]) -> None:
    print(f"{'model':<16} {'size':>10} {'steps':>5} {'baseline s':>11} {'fluxrun s':>10} {'speedup':>8} "
          f"{'swap s':>7} {'recompiles':>10} {'TFLOP/step':>10} {'floor %':>8}")
    for r in rows:
        swap = "-" if r.lora_swap_s is None else f"{r.lora_swap_s:.3f}"
        recompiles = "-" if r.recompiles_after_swap is None else str(r.recompiles_after_swap)
        print(f"{r.model:<16} {f'{r.width}x{r.height}':>10} {r.steps:>5} {r.baseline_s:>11.3f} {r.fluxrun_s:>10.3f} "
              f"{r.speedup:>7.2f}x {swap:>7} {recompiles:>10} {r.flops.total / 1e12:>10.2f} "
              f"{100 * r.floor_s / r.fluxrun_s:>7.1f}%")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=MODELS, default="flux1")
    parser.add_argument("--steps", default="12,28", help="comma-separated step counts (default 12,28)")
    parser.add_argument("--size", default="1024x1024", help="WIDTHxHEIGHT, multiples of 16")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per case (median); warm-up runs excluded")
    parser.add_argument("--lora-rank", type=int, default=64)
    parser.add_argument("--tiny", action="store_true", help="the tiny random-weight configurations, on the CPU")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend of the fluxrun path")
    parser.add_argument("--matmul-size", type=int, default=8192)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    try:
        args.steps = [int(s) for s in args.steps.split(",") if s.strip()]
        args.width, args.height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        parser.error("--steps: comma-separated integers; --size: WIDTHxHEIGHT")
    if args.width % 16 or args.height % 16 or not args.steps or min(args.steps) < 1:
        parser.error("--size: both sides multiples of 16; --steps: at least one positive count")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.tiny:
        device, dtype = "cpu", torch.float32
        args.matmul_size = min(args.matmul_size, 512)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("No CUDA GPU: run with --tiny for the CPU check of the harness.")
        device, dtype = "cuda", torch.bfloat16
    torch.backends.cuda.matmul.allow_tf32 = True
    MATMUL["bf16"] = matmul_rate(device, fp8=False, size=args.matmul_size)
    fp8_here = device == "cuda" and torch.cuda.get_device_capability() >= speed.FP8_CAPABILITY
    if fp8_here:
        MATMUL["fp8"] = matmul_rate(device, fp8=True, size=args.matmul_size)
    print(f"{device_name(device)}: matmul " + ", ".join(f"{k} {v / 1e12:.1f} TFLOP/s" for k, v in MATMUL.items()))
    with tempfile.TemporaryDirectory(prefix="fluxrun-gpu-bench-") as folder:
        runner = run_flux1 if args.model == "flux1" else run_flux2
        rows, extra = runner(args, device, dtype, Path(folder))
    if not rows:
        return
    print(f"fluxrun path: {extra['fluxrun_options']}")
    print_table(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for r in rows:
        path = args.out / f"{r.model}{'-tiny' if args.tiny else ''}_{r.width}x{r.height}_{r.steps}steps_{stamp}.json"
        path.write_text(json.dumps(record(r, args, device, extra), indent=2) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
