"""Tiny random-weight models of the real architectures, built here, offline.

Tests and machines without a GPU run the real diffusers pipeline classes on these: a FLUX.1
transformer of one double and one single block, 2-layer CLIP and T5 encoders with offline
tokenizers, and a VAE that keeps the real downsampling factor of 8 (so a 1024x1024 request
is 4096 image tokens, as on the real model, and runs in seconds on a CPU). They are saved
with ``save_pretrained`` and loaded through ``from_pretrained``, the same path as real
weights. Builds are deterministic and atomic (temp folder, then rename), so worker
processes starting together never see half a model.

The tiny safety classifier is a 2-layer ViT image classifier (labels normal / nsfw) with its
image processor, loaded by the same ``AutoModelForImageClassification`` path as a real one.
Its weights are random, so its verdict is steered by the bias of its last layer: the "nsfw"
logit is raised by ``nsfw_logit`` (0: about 0.57, +20: near certain, -20: near impossible).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

_LETTERS = "abcdefghijklmnopqrstuvwxyz0123456789"
# Bump when the tiny architecture changes, so old folders are not reused.
FLUX1_VERSION = "tiny-flux1-v1"
SAFETY_VERSION = "tiny-safety-v1"


def ensure_tiny_flux1(models_dir: Path) -> Path:
    """The folder of the tiny FLUX.1 pipeline, built on first use."""
    return _ensure(models_dir / FLUX1_VERSION, _build_flux1)


def ensure_tiny_lora(models_dir: Path, name: str) -> Path:
    """The folder of a tiny LoRA for the tiny FLUX.1 transformer (seeded by its name)."""
    base = ensure_tiny_flux1(models_dir)
    return _ensure(models_dir / f"{FLUX1_VERSION}-lora-{name}", lambda out: _build_lora(base, name, out))


def ensure_tiny_safety_classifier(models_dir: Path, nsfw_logit: float = 0.0) -> Path:
    """The folder of a tiny image classifier (labels normal, nsfw) whose nsfw logit is raised by ``nsfw_logit``."""
    return _ensure(models_dir / f"{SAFETY_VERSION}-nsfw{nsfw_logit:+g}", lambda out: _build_safety(out, nsfw_logit))


def _ensure(target: Path, build: Callable[[Path], None]) -> Path:
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(staging)
        try:
            os.rename(staging, target)
        except OSError:
            if not target.is_dir():  # another process won the race: theirs is as good as ours
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _build_flux1(out: Path) -> None:
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(0)
    # Constraints between the parts: sum(axes_dims_rope) == attention_head_dim; joint_attention_dim
    # == T5 d_model; pooled_projection_dim == CLIP hidden; in_channels == 4 * latent_channels.
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 6, 6],
        guidance_embeds=True,
    )
    clip = CLIPTextModel(CLIPTextConfig(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=1000,
        max_position_embeddings=77, projection_dim=32, bos_token_id=0, eos_token_id=2, pad_token_id=1,
    ))
    t5 = T5EncoderModel(T5Config(
        d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, vocab_size=1000, relative_attention_num_buckets=8,
    ))
    # Four blocks: the real VAE's factor of 8.
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[8, 8, 8, 8], layers_per_block=1,
        latent_channels=4, norm_num_groups=4, sample_size=32, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=0.0609, scaling_factor=1.5035,
    )
    # FLUX.1-dev's scheduler configuration.
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15,
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
    )
    clip_tokenizer, t5_tokenizer = flux1_tokenizers(out / "_tokenizer_src")
    FluxPipeline(
        scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=clip_tokenizer, text_encoder_2=t5,
        tokenizer_2=t5_tokenizer, transformer=transformer,
    ).save_pretrained(out)
    shutil.rmtree(out / "_tokenizer_src")


def flux1_tokenizers(scratch: Path) -> tuple[object, object]:
    """A character-level CLIP BPE tokenizer and a WordLevel T5-slot tokenizer, made offline. Their
    ids fit any vocabulary and they pad to the real lengths (77 and 512 tokens), so the GPU
    benchmark uses them with the full-size encoders too."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPTokenizer, PreTrainedTokenizerFast

    scratch.mkdir(parents=True)
    vocab = {"<|startoftext|>": 0, "!": 1, "<|endoftext|>": 2}
    for char in _LETTERS:
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    (scratch / "vocab.json").write_text(json.dumps(vocab))
    (scratch / "merges.txt").write_text("#version: 0.2\n")
    # model_max_length=77 as the real one: without it the pipeline overflows an int.
    clip = CLIPTokenizer(str(scratch / "vocab.json"), str(scratch / "merges.txt"), model_max_length=77, pad_token="!")
    words = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for char in _LETTERS:
        words[char] = len(words)
    word_level = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    t5 = PreTrainedTokenizerFast(
        tokenizer_object=word_level, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )
    return clip, t5


def _build_lora(base: Path, name: str, out: Path) -> None:
    import torch
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from peft import LoraConfig, get_peft_model_state_dict

    torch.manual_seed(int(hashlib.sha256(name.encode()).hexdigest()[:8], 16))
    transformer = FluxTransformer2DModel.from_pretrained(base / "transformer")
    transformer.add_adapter(
        LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
    )
    FluxPipeline.save_lora_weights(out, transformer_lora_layers=get_peft_model_state_dict(transformer))


def _build_safety(out: Path, nsfw_logit: float) -> None:
    import torch
    import transformers
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    labels = {0: "normal", 1: "nsfw"}  # Falconsai/nsfw_image_detection's labels
    model = ViTForImageClassification(ViTConfig(
        image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=37, id2label=labels, label2id={name: i for i, name in labels.items()},
    ))
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([0.0, nsfw_logit]))
    model.save_pretrained(out)
    # Without torchvision, transformers 5 builds the PIL processor anyway (and warns about it).
    processor_class = getattr(transformers, "ViTImageProcessorPil", None) or transformers.ViTImageProcessor
    processor_class(size={"height": 32, "width": 32}).save_pretrained(out)
