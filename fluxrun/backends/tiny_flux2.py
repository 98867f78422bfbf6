"""Tiny random-weight FLUX.2 pipelines of both architectures, built here, offline.

As ``tiny.py`` does for FLUX.1: the real diffusers classes with random weights, saved with
``save_pretrained`` and loaded by the backend through ``from_pretrained``.

- [dev]: ``Flux2Pipeline`` = ``Flux2Transformer2DModel`` + ``AutoencoderKLFlux2`` + a
  ``Mistral3ForConditionalGeneration`` text encoder behind a ``PixtralProcessor``.
- [klein]: ``Flux2KleinPipeline`` = the same transformer and VAE + a ``Qwen3ForCausalLM`` text
  encoder behind a ``Qwen2TokenizerFast``.

The pipelines call the tokenizer's ``apply_chat_template``, so each tokenizer carries a chat
template of its model's shape (Mistral's ``[SYSTEM_PROMPT]``/``[INST]`` turns, Qwen3's
``<|im_start|>`` turns with the empty thinking block). Both are byte-level BPE tokenizers
with the 256 byte symbols and no merges: any prompt encodes, one token per byte.

The text encoders have as many hidden layers as the pipelines' default
``text_encoder_out_layers`` reach ((10, 20, 30) for [dev], (9, 18, 27) for [klein]), so the
backend calls the pipelines exactly as for real weights; the transformer's
``joint_attention_dim`` is then 3 x the encoder's hidden size, as on the real models
(3 x 5120 for [dev]). The VAE keeps the real downsampling factor of 8 (four blocks), and the
transformer's input is the VAE's latent channels x 4 (the pipelines pack 2x2 latent patches),
so a 1024x1024 image is 4096 image tokens, as on the real models.
"""

from __future__ import annotations

from pathlib import Path

from fluxrun.backends.tiny import _ensure

FAMILIES = ("dev", "klein")
# Bump when a tiny architecture changes, so old folders are not reused.
FLUX2_VERSION = "tiny-flux2-v1"

_HIDDEN = 16  # text encoder hidden size
_OUT_LAYERS = 3  # hidden states the pipelines stack: (10, 20, 30) or (9, 18, 27)
_VOCAB_SIZE = 512  # above the 256 byte symbols plus the special tokens


def ensure_tiny_flux2(models_dir: Path, family: str) -> Path:
    """The folder of the tiny FLUX.2 pipeline of ``family`` ("dev" or "klein"), built on first use."""
    if family not in FAMILIES:
        raise ValueError(f"family: must be one of {', '.join(FAMILIES)} (got {family!r})")
    build = _build_dev if family == "dev" else _build_klein
    return _ensure(models_dir / f"{FLUX2_VERSION}-{family}", build)


def _build_dev(out: Path) -> None:
    import torch
    from diffusers import Flux2Pipeline
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    torch.manual_seed(0)
    processor = mistral_processor()
    image_token = processor.tokenizer.convert_tokens_to_ids("[IMG]")
    special_ids = {
        "bos_token_id": processor.tokenizer.bos_token_id,
        "eos_token_id": processor.tokenizer.eos_token_id,
        "pad_token_id": processor.tokenizer.pad_token_id,
    }
    # 30 layers: the pipeline stacks hidden states 10, 20 and 30 by default.
    text_encoder = Mistral3ForConditionalGeneration(Mistral3Config(
        text_config={
            "model_type": "mistral", "vocab_size": _VOCAB_SIZE, "hidden_size": _HIDDEN, "intermediate_size": 32,
            "num_hidden_layers": 30, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8,
            "max_position_embeddings": 1024, "rms_norm_eps": 1e-5, "sliding_window": None, **special_ids,
        },
        vision_config={
            "model_type": "pixtral", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
            "num_attention_heads": 2, "head_dim": 8, "image_size": 64, "patch_size": 16, "num_channels": 3,
        },
        image_token_index=image_token, spatial_merge_size=2, **special_ids,
    ))
    Flux2Pipeline(
        scheduler=_scheduler(), vae=_vae(), text_encoder=text_encoder, tokenizer=processor,
        transformer=_transformer(guidance_embeds=True),  # [dev] is guidance-distilled: guidance is an input
    ).save_pretrained(out)


def _build_klein(out: Path) -> None:
    import torch
    from diffusers import Flux2KleinPipeline
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    tokenizer = qwen_tokenizer()
    # 27 layers: the pipeline stacks hidden states 9, 18 and 27 by default.
    text_encoder = Qwen3ForCausalLM(Qwen3Config(
        vocab_size=_VOCAB_SIZE, hidden_size=_HIDDEN, intermediate_size=32, num_hidden_layers=27,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=1024,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    ))
    # Saved as the undistilled [klein] Base; the backend loads it with is_distilled=True to mirror
    # the step-distilled [klein] 4B/9B (the weights' layout is the same).
    Flux2KleinPipeline(
        scheduler=_scheduler(), vae=_vae(), text_encoder=text_encoder, tokenizer=tokenizer,
        transformer=_transformer(guidance_embeds=False),  # [klein] uses classifier-free guidance instead
        is_distilled=False,
    ).save_pretrained(out)


def _transformer(guidance_embeds: bool) -> object:
    from diffusers import Flux2Transformer2DModel

    # sum(axes_dims_rope) == attention_head_dim; in_channels == 4 x the VAE's latent channels;
    # joint_attention_dim == the encoder's hidden size x the 3 stacked layers.
    return Flux2Transformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=_HIDDEN * _OUT_LAYERS, timestep_guidance_channels=256,
        axes_dims_rope=[4, 4, 4, 4], guidance_embeds=guidance_embeds,
    )


def _vae() -> object:
    from diffusers import AutoencoderKLFlux2

    # Four blocks: the real VAE's factor of 8.
    return AutoencoderKLFlux2(
        in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[8, 8, 8, 8], layers_per_block=1,
        latent_channels=4, norm_num_groups=4, sample_size=32,
    )


def _scheduler() -> object:
    from diffusers import FlowMatchEulerDiscreteScheduler

    # FLUX.2's scheduler configuration (the pipelines pass their own mu per image size).
    return FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15, num_train_timesteps=1000,
        shift=3.0, use_dynamic_shifting=True, time_shift_type="exponential",
    )


def _byte_vocab(special: list[str]) -> dict[str, int]:
    """Special tokens first, then the 256 symbols of byte-level BPE, in a fixed order."""
    from tokenizers import pre_tokenizers

    vocab = {token: index for index, token in enumerate(special)}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    assert len(vocab) <= _VOCAB_SIZE
    return vocab


# Mistral Small 3's turn format, reduced to what text-to-image uses: the system prompt and the
# user's text (content is a list of {"type": "text"} parts, as the pipeline sends it).
_MISTRAL_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['content'] is string %}{%- set text = message['content'] %}"
    "{%- else %}{%- set text = message['content'] | selectattr('type', 'equalto', 'text')"
    " | map(attribute='text') | join('') %}{%- endif %}"
    "{%- if message['role'] == 'system' %}{{- '[SYSTEM_PROMPT]' + text + '[/SYSTEM_PROMPT]' }}"
    "{%- elif message['role'] == 'user' %}{{- '[INST]' + text + '[/INST]' }}"
    "{%- else %}{{- text + eos_token }}{%- endif %}"
    "{%- endfor %}"
)

# Qwen3's turn format, with the empty thinking block it adds when thinking is off.
_QWEN_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)


def mistral_processor() -> object:
    """A PixtralProcessor (what FLUX.2 [dev] ships as its tokenizer) around a byte-level tokenizer."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PixtralImageProcessor, PixtralProcessor, PreTrainedTokenizerFast

    special = ["<unk>", "<s>", "</s>", "<pad>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]",
               "[IMG]", "[IMG_BREAK]", "[IMG_END]"]
    byte_level = Tokenizer(models.BPE(vocab=_byte_vocab(special), merges=[]))
    byte_level.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    byte_level.decoder = decoders.ByteLevel()
    byte_level.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in special])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=byte_level, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        model_max_length=131072,
    )
    return PixtralProcessor(
        image_processor=PixtralImageProcessor(), tokenizer=tokenizer, patch_size=16, spatial_merge_size=2,
        chat_template=_MISTRAL_TEMPLATE,
    )


def qwen_tokenizer() -> object:
    """A Qwen2TokenizerFast (what FLUX.2 [klein] ships) with the byte symbols as its whole vocabulary."""
    from transformers import Qwen2TokenizerFast

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
    return Qwen2TokenizerFast(
        vocab=_byte_vocab(special), merges=[], additional_special_tokens=special[1:], model_max_length=131072,
        chat_template=_QWEN_TEMPLATE,
    )
