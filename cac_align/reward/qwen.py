"""Qwen3-VL plumbing shared by every Qwen3-VL reward of cac-align (CaC, UnifiedReward): loading, the processor, the
special tokens and the chat template.

CaC is fine-tuned from Qwen3-VL-8B (paper Sec. 4, "Implementation"). A checkpoint folder holds what
``save_pretrained`` writes for the model (``config.json``, ``generation_config.json``, safetensors) and for the
processor (tokenizer files, ``processor_config.json``, ``chat_template.jinja``). :func:`load_qwen3vl` reloads the
processor part by part, because ``AutoProcessor`` silently returns a bare tokenizer where the video processor cannot be
built (see the project's API notes).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
VIDEO_BLOCK = VISION_START + VIDEO_PAD + VISION_END
"""What a video part of a user message renders to; the processor expands the pad into per-frame-pair tokens."""

QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    ENDOFTEXT,
    IM_START,
    IM_END,
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    VISION_START,
    VISION_END,
    "<|vision_pad|>",
    IMAGE_PAD,
    VIDEO_PAD,
)
"""The special tokens of the Qwen3 vocabulary in id order (151643-151656 in the released tokenizer)."""

QWEN_EXTRA_TOKENS: tuple[str, ...] = (
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)
"""The non-special added tokens that follow them (151657-151668)."""

VIDEO_PROCESSOR_DEFAULTS: dict[str, Any] = {
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "size": {"shortest_edge": 4096, "longest_edge": 25165824},
    "fps": 2,
    "min_frames": 4,
    "max_frames": 768,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "cap_pixels_per_frame": True,
    "max_video_tokens": 768,
}
"""The released Qwen3-VL video processor settings, with qwen-vl-utils' per-frame pixel cap switched on.

With these a 480x832 frame stays 480x832 (both multiples of 32, below the 768 * 32 * 32 per-frame cap): 390 tokens
per pair of frames.
"""

IMAGE_PROCESSOR_DEFAULTS: dict[str, Any] = {
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "size": {"shortest_edge": 65536, "longest_edge": 16777216},
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}
"""The released Qwen3-VL image processor settings (images are unused by CaC; the processor needs one)."""


def chat_template() -> str:
    """cac-align's Qwen3-VL chat template (``cac_align/reward/qwen3_vl_chat.jinja``)."""
    return (resources.files("cac_align.reward") / "qwen3_vl_chat.jinja").read_text(encoding="utf-8")


def build_processor(tokenizer, chat_template_text: str | None = None, **video_overrides: Any):
    """A Qwen3-VL processor around ``tokenizer`` with the released video/image settings.

    Args:
        tokenizer: a Qwen2Tokenizer with the Qwen special tokens (the real vocabulary or a test one).
        chat_template_text: defaults to :func:`chat_template`.
        **video_overrides: replace entries of :data:`VIDEO_PROCESSOR_DEFAULTS` (e.g. ``size``).
    """
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    unknown = set(video_overrides) - set(VIDEO_PROCESSOR_DEFAULTS)
    if unknown:
        raise ValueError(
            f"unknown video processor settings {sorted(unknown)}; known: {sorted(VIDEO_PROCESSOR_DEFAULTS)}"
        )
    video_processor = Qwen3VLVideoProcessor(**{**VIDEO_PROCESSOR_DEFAULTS, **video_overrides})
    image_processor = Qwen2VLImageProcessor(**IMAGE_PROCESSOR_DEFAULTS)
    template = chat_template() if chat_template_text is None else chat_template_text
    return Qwen3VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor, chat_template=template
    )


def load_processor(path: str | Path):
    """Reload a processor saved by ``Qwen3VLProcessor.save_pretrained`` part by part (tokenizer, video and image
    processors, chat template from ``chat_template.jinja`` or ``chat_template.json``). A folder without a chat
    template gets :func:`chat_template`."""
    from transformers import AutoTokenizer, Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    path = Path(path)
    if not (path / "tokenizer_config.json").is_file():
        raise FileNotFoundError(f"{path}: no tokenizer_config.json; not a Qwen3-VL checkpoint folder")
    tokenizer = AutoTokenizer.from_pretrained(path)
    video_processor = Qwen3VLVideoProcessor.from_pretrained(path)
    image_processor = Qwen2VLImageProcessor.from_pretrained(path)
    template = chat_template()
    if (path / "chat_template.jinja").is_file():
        template = (path / "chat_template.jinja").read_text(encoding="utf-8")
    elif (path / "chat_template.json").is_file():  # the layout of older releases
        template = json.loads((path / "chat_template.json").read_text(encoding="utf-8"))["chat_template"]
    return Qwen3VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor, chat_template=template
    )


def load_qwen3vl(
    path: str | Path,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    attn_implementation: str | None = None,
):
    """Load a Qwen3-VL checkpoint folder: ``(Qwen3VLForConditionalGeneration in eval mode, Qwen3VLProcessor)``.

    Args:
        path: a local folder written by ``save_pretrained`` (model + processor).
        device: where to put the model (default: stays on CPU).
        dtype: parameter dtype; ``None`` keeps the dtype the checkpoint was saved in.
        attn_implementation: e.g. ``"sdpa"`` (default), ``"eager"`` or ``"flash_attention_2"``.
    """
    from transformers import Qwen3VLForConditionalGeneration

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json; not a model checkpoint folder")
    kwargs: dict[str, Any] = {"dtype": "auto" if dtype is None else dtype}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    model = Qwen3VLForConditionalGeneration.from_pretrained(path, **kwargs)
    if device is not None:
        model = model.to(device)
    model.eval()
    return model, load_processor(path)


def vision_token_ids(tokenizer) -> list[int]:
    """Ids of the tokens generation must never emit (``suppress_tokens``): a generated vision token would make the
    model look for a video grid that does not exist."""
    ids = tokenizer.convert_tokens_to_ids([VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD])
    if any(i is None or i == tokenizer.unk_token_id for i in ids):
        raise ValueError("the tokenizer lacks the Qwen vision special tokens")
    return list(ids)
