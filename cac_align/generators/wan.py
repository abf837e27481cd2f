"""Wan-2.1 text-to-video components: loading, prompt encoding, latent decoding and LoRA (paper Sec. 4.2, App. C.4).

The paper aligns Wan-2.1-T2V-1.3B with Flow-GRPO using a rank-32 LoRA on the transformer. This module holds the
plain functions around the diffusers components; the denoising loop with log-probabilities is in
:mod:`cac_align.generators.sampler`.

Shapes: prompt embeddings ``[B, L, D]``; latents ``[B, 16, (F - 1) / 4 + 1, H / 8, W / 8]``; videos leave
:func:`decode_latents` as the project's one video convention, float ``[B, F, C, H, W]`` in [0, 1].

Checked against diffusers 0.42.1 (``WanPipeline`` prompt encoding and decoding) and peft 0.21.2.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKLWan,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
    WanPipeline,
    WanTransformer3DModel,
)
from peft import LoraConfig, get_peft_model_state_dict
from transformers import AutoTokenizer, PreTrainedTokenizerBase, UMT5EncoderModel

from cac_align.utils import atomic_path

try:  # diffusers cleans prompts with ftfy when it is installed; do the same so the embeddings agree.
    import ftfy
except ImportError:  # pragma: no cover - depends on the environment
    ftfy = None

# The Wan-2.1 VAE compresses 4x in time and 8x in space into 16 latent channels (Wan2.2's VAE differs: 16x, 48).
VAE_SCALE_TEMPORAL = 4
VAE_SCALE_SPATIAL = 8
LATENT_CHANNELS = 16
# The transformer's patch is (1, 2, 2), so frame sizes must be multiples of 8 * 2 = 16.
SIZE_MULTIPLE = 16
# Wan's default text length (WanPipeline.__call__'s max_sequence_length).
MAX_SEQUENCE_LENGTH = 512
# LoRA targets: self- and cross-attention projections and the feed-forward layers of every transformer block.
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2")
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"

Scheduler = FlowMatchEulerDiscreteScheduler | UniPCMultistepScheduler


@dataclass
class WanComponents:
    """The five parts of a Wan-2.1 text-to-video model, as found in a diffusers pipeline folder."""

    tokenizer: PreTrainedTokenizerBase
    text_encoder: UMT5EncoderModel
    vae: AutoencoderKLWan
    transformer: WanTransformer3DModel
    scheduler: Scheduler


def load_wan(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    vae_dtype: torch.dtype = torch.float32,
) -> WanComponents:
    """Load Wan-2.1 components from a local folder in diffusers pipeline layout (``model_index.json`` and subfolders).

    Args:
        path: e.g. a downloaded ``Wan2.1-T2V-1.3B-Diffusers`` or a folder written by
            :func:`cac_align.generators.tiny.build_tiny_wan`.
        device: where every component is placed.
        dtype: dtype of the transformer and text encoder (``torch.bfloat16`` on GPU, as Flow-GRPO runs Wan). The
            transformer keeps its ``_keep_in_fp32_modules`` (time embedding, norms) in fp32 either way.
        vae_dtype: dtype of the VAE; Wan's reference code decodes in fp32.

    Raises:
        FileNotFoundError: ``path`` has no ``model_index.json``.
        ValueError: an unsupported scheduler class or a VAE that is not Wan-2.1's (other compression factors).
    """
    path = Path(path)
    index = path / "model_index.json"
    if not index.is_file():
        raise FileNotFoundError(f"{index}: not found; expected a diffusers pipeline folder (model_index.json)")
    scheduler_name = json.loads(index.read_text(encoding="utf-8"))["scheduler"][1]
    if scheduler_name == "UniPCMultistepScheduler":
        scheduler = UniPCMultistepScheduler.from_pretrained(path, subfolder="scheduler")
    elif scheduler_name == "FlowMatchEulerDiscreteScheduler":
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(path, subfolder="scheduler")
    else:
        raise ValueError(
            f"{index}: scheduler: expected UniPCMultistepScheduler or FlowMatchEulerDiscreteScheduler, "
            f"got {scheduler_name}"
        )
    vae = AutoencoderKLWan.from_pretrained(path, subfolder="vae", torch_dtype=vae_dtype)
    factors = (vae.config.scale_factor_temporal, vae.config.scale_factor_spatial, vae.config.z_dim)
    if factors != (VAE_SCALE_TEMPORAL, VAE_SCALE_SPATIAL, LATENT_CHANNELS):
        raise ValueError(
            f"{path / 'vae' / 'config.json'}: expected the Wan-2.1 VAE (scale_factor_temporal, scale_factor_spatial, "
            f"z_dim) = {(VAE_SCALE_TEMPORAL, VAE_SCALE_SPATIAL, LATENT_CHANNELS)}, got {factors}"
        )
    return WanComponents(
        tokenizer=AutoTokenizer.from_pretrained(path / "tokenizer"),
        text_encoder=UMT5EncoderModel.from_pretrained(path / "text_encoder", dtype=dtype).to(device).eval(),
        vae=vae.to(device).eval(),
        transformer=WanTransformer3DModel.from_pretrained(path, subfolder="transformer", torch_dtype=dtype)
        .to(device)
        .eval(),
        scheduler=scheduler,
    )


def clean_prompt(text: str) -> str:
    """The prompt cleaning Wan applies before tokenising: ftfy (if installed), HTML unescaping, collapsed spaces."""
    if ftfy is not None:
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


@torch.no_grad()
def encode_prompts(
    tokenizer: PreTrainedTokenizerBase,
    text_encoder: UMT5EncoderModel,
    prompts: list[str],
    *,
    max_sequence_length: int = MAX_SEQUENCE_LENGTH,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Encode prompts with umT5 the way Wan does: padded to ``max_sequence_length``, padding positions zeroed.

    Args:
        prompts: B prompts (use ``""`` for Wan's default negative prompt).
        max_sequence_length: tokens kept per prompt (longer prompts are truncated).
        device: where the embeddings go; defaults to the text encoder's device.

    Returns:
        ``[B, max_sequence_length, D]`` in the text encoder's dtype.
    """
    if isinstance(prompts, str):
        raise ValueError("prompts: expected a list of strings, got a single string; wrap it as [prompt]")
    tokens = tokenizer(
        [clean_prompt(p) for p in prompts],
        padding="max_length",
        max_length=max_sequence_length,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    enc_device = text_encoder.device
    mask = tokens.attention_mask.to(enc_device)
    hidden = text_encoder(input_ids=tokens.input_ids.to(enc_device), attention_mask=mask).last_hidden_state
    hidden = hidden * mask.unsqueeze(-1).to(hidden.dtype)  # Wan zeroes the states of padding tokens
    return hidden.to(device if device is not None else enc_device)


@torch.no_grad()
def decode_latents(vae: AutoencoderKLWan, latents: torch.Tensor) -> torch.Tensor:
    """Decode Wan latents ``[B, 16, F', H', W']`` to videos float ``[B, F, C, H, W]`` in [0, 1] (fp32).

    Undoes the VAE's per-channel latent normalisation (``latents * std + mean``), decodes to [-1, 1] and maps to
    [0, 1]. ``F = 4 (F' - 1) + 1``, ``H = 8 H'``, ``W = 8 W'``. The latents are moved to the VAE's device and dtype.
    """
    if latents.ndim != 5 or latents.shape[1] != vae.config.z_dim:
        raise ValueError(f"expected latents [B, {vae.config.z_dim}, F, H, W], got shape {tuple(latents.shape)}")
    z = latents.to(device=vae.device, dtype=vae.dtype)
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean, device=z.device, dtype=z.dtype).view(shape)
    std = torch.tensor(vae.config.latents_std, device=z.device, dtype=z.dtype).view(shape)
    video = vae.decode(z * std + mean, return_dict=False)[0]  # [B, C, F, H, W] in [-1, 1]
    return (video.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 1, 3, 4).contiguous()


def add_lora(
    transformer: WanTransformer3DModel,
    rank: int = 32,
    alpha: float = 64.0,
    target_modules: tuple[str, ...] | list[str] = LORA_TARGETS,
    lora_dtype: torch.dtype | None = torch.float32,
) -> WanTransformer3DModel:
    """Add a fresh LoRA adapter (``lora_B = 0``, so the model is unchanged) to the transformer, in place.

    The paper trains a rank-32 LoRA (Sec. 4.2); ``alpha=64`` follows Flow-GRPO's Wan config. Only the LoRA
    parameters are trainable afterwards.

    Args:
        rank: LoRA rank r.
        alpha: LoRA alpha; the update is scaled by ``alpha / rank``.
        target_modules: module-name suffixes to adapt (default: attention q/k/v/out and feed-forward of each block).
        lora_dtype: dtype of the LoRA parameters (fp32 keeps the optimizer update exact when the base runs in
            bf16); ``None`` keeps the base layers' dtype.

    Returns:
        The same transformer.
    """
    if rank <= 0:
        raise ValueError(f"rank must be positive, got {rank}")
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(target_modules), init_lora_weights=True)
    transformer.add_adapter(config)
    for name, param in transformer.named_parameters():
        param.requires_grad_("lora_" in name)
        if lora_dtype is not None and "lora_" in name:
            param.data = param.data.to(lora_dtype)
    return transformer


def save_lora(transformer: WanTransformer3DModel, directory: str | Path, adapter_name: str = "default") -> Path:
    """Write the transformer's LoRA as ``directory/pytorch_lora_weights.safetensors`` in diffusers' format.

    The file holds the ``transformer.``-prefixed peft weights and the adapter config (rank, alpha, targets) as
    metadata, so ``WanPipeline.load_lora_weights(directory)`` restores the same model. Written atomically.

    Returns:
        The path of the written file.
    """
    if not any(f".{adapter_name}." in name for name, _ in transformer.named_parameters() if "lora_" in name):
        raise ValueError(f"transformer has no LoRA weights for adapter {adapter_name!r}; call add_lora first")
    state = get_peft_model_state_dict(transformer, adapter_name=adapter_name)
    metadata = transformer.peft_config[adapter_name].to_dict()
    target = Path(directory) / LORA_WEIGHT_NAME
    with atomic_path(target) as tmp:
        WanPipeline.save_lora_weights(
            tmp.parent,
            transformer_lora_layers=state,
            weight_name=tmp.name,
            transformer_lora_adapter_metadata=metadata,
        )
    return target
