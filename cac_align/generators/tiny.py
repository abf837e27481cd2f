"""A tiny Wan-2.1 built from the real diffusers/transformers classes, for tests and ``--tiny`` benchmarks.

No weights can be downloaded here, so tests build Wan-2.1 with its real architecture classes
(``WanTransformer3DModel``, ``AutoencoderKLWan``, ``UMT5EncoderModel``) at toy sizes and random weights, and save
it in diffusers pipeline layout. Both ``WanPipeline.from_pretrained(path)`` and
:func:`cac_align.generators.wan.load_wan` load the folder. Frames must satisfy ``F % 4 == 1`` and
``H, W % 16 == 0`` (e.g. 9 frames at 32x32).
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
from transformers import T5Tokenizer, UMT5Config, UMT5EncoderModel

TINY_TEXT_DIM = 32


def tiny_tokenizer() -> T5Tokenizer:
    """A character-level T5 (Unigram) tokenizer over printable ASCII, built offline.

    Same class and conventions as Wan's umT5 tokenizer (``<pad>`` = 0, ``</s>`` = 1 appended, ``<unk>`` = 2,
    ``▁`` marks a word start); every other character maps to ``<unk>``.
    """
    chars = sorted(set(string.printable) - set(string.whitespace))
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(c, -3.0) for c in chars] + [("▁" + c, -2.5) for c in chars]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def build_tiny_wan(path: str | Path, seed: int = 0) -> Path:
    """Build a tiny random Wan-2.1 and save it to ``path`` in diffusers pipeline layout; returns ``path``.

    Sizes (about 70k parameters in all): transformer 2 blocks of 2 heads x 12, ffn 32, text dim 32; VAE base dim 3
    with Wan-2.1's 4x temporal / 8x spatial compression into 16 channels; umT5 encoder 2 layers, d_model 32. The
    scheduler is ``UniPCMultistepScheduler(flow_shift=3.0)``, as Wan-2.1-T2V-1.3B ships. The same ``seed`` gives
    the same weights.
    """
    path = Path(path)
    tokenizer = tiny_tokenizer()
    fork_devices: list[torch.device] = []  # fork the CPU RNG only, so building never disturbs the caller's seed
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        text_encoder = UMT5EncoderModel(
            UMT5Config(
                vocab_size=len(tokenizer),
                d_model=TINY_TEXT_DIM,
                d_kv=8,
                d_ff=64,
                num_layers=2,
                num_heads=4,
                relative_attention_num_buckets=8,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                decoder_start_token_id=0,
            )
        )
        vae = AutoencoderKLWan(
            base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
        )
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=12,
            in_channels=16,
            out_channels=16,
            text_dim=TINY_TEXT_DIM,
            freq_dim=256,
            ffn_dim=32,
            num_layers=2,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32,
        )
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    pipe = WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )
    pipe.save_pretrained(path)
    return path
