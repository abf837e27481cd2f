"""CaC's conversation format, one function family for inference, SFT and GRPO (paper Sec. 3.2-3.4).

A CaC conversation is one or two turns. Turn 1: a user message with the whole video (4 fps) and the turn-1 prompt,
then the assistant's answer. Turn 2 (two-turn mode): a user message with the clip cropped at turn 1's window (8 fps)
and the turn-2 prompt, appended to the same conversation, then the final answer. In Qwen3-VL's chat layout::

    <|im_start|>user\\n{prompt 1 with <|vision_start|><|video_pad|><|vision_end|>}<|im_end|>\\n
    <|im_start|>assistant\\n{answer 1}<|im_end|>\\n
    <|im_start|>user\\n{prompt 2 with its video block}<|im_end|>\\n
    <|im_start|>assistant\\n{answer 2}<|im_end|>

(:func:`render_conversation`; the checkpoint's jinja template renders the same text, plus a final newline.)

Token ids are built segment by segment and concatenated: a user segment (everything from ``<|im_start|>user`` to the
``<|im_start|>assistant\\n`` that opens the answer, run through the processor with its video), then the answer's ids
and ``<|im_end|>``. Every segment boundary sits at a special token or right after a newline, where Qwen's tokenizer
splits anyway, so the ids equal those of the whole text processed at once (a test checks this), and inference can
append the ids it generated without re-tokenising them (decoded text does not always re-tokenise to the same ids).

Shapes (one conversation, :class:`Encoded`): ``input_ids``, ``mm_token_type_ids`` (2 on video pads) and
``assistant_mask`` (1 on answer tokens including their closing ``<|im_end|>``) are ``[L]``; ``pixel_values_videos``
is ``[N, 1536]`` and ``video_grid_thw`` ``[V, 3]`` for the V videos in order. :func:`collate` pads a batch (left by
default) into ``[B, L_max]`` tensors ready for ``model(...)`` or ``model.generate(...)``.

Frames are passed to the processor with ``VideoMetadata(frames_indices=source indices, fps=source fps)``, so the
timestamps the processor writes in front of each frame pair (``<0.6 seconds>``) are absolute times in the source
video, also for a turn-2 clip.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cac_align.reward.qwen import IM_END, IM_START, VIDEO_BLOCK
from cac_align.video import Sampled

IGNORE_INDEX = -100


@dataclass
class Turn:
    """One turn of a conversation: the user's prompt (containing :data:`VIDEO_BLOCK` once), the frames shown with it,
    and the assistant's answer (``None`` for the turn being generated; then the text ends with the generation
    prompt)."""

    prompt: str
    video: Sampled
    answer: str | None = None


@dataclass
class Encoded:
    """The token ids and video inputs of one conversation or part of one; ``+`` concatenates parts in order."""

    input_ids: torch.Tensor
    mm_token_type_ids: torch.Tensor
    assistant_mask: torch.Tensor
    pixel_values_videos: torch.Tensor
    video_grid_thw: torch.Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __add__(self, other: Encoded) -> Encoded:
        return Encoded(
            torch.cat([self.input_ids, other.input_ids]),
            torch.cat([self.mm_token_type_ids, other.mm_token_type_ids]),
            torch.cat([self.assistant_mask, other.assistant_mask]),
            _cat_rows([self.pixel_values_videos, other.pixel_values_videos]),
            _cat_rows([self.video_grid_thw, other.video_grid_thw]),
        )

    @property
    def labels(self) -> torch.Tensor:
        """``input_ids`` with every non-assistant token set to -100 (loss on the answers only)."""
        return assistant_labels(self.input_ids, self.assistant_mask)


def _check_prompt(prompt: str) -> None:
    n = prompt.count(VIDEO_BLOCK)
    if n != 1:
        raise ValueError(f"a CaC prompt must contain the video block {VIDEO_BLOCK!r} exactly once, found {n}")


def _user_text(prompt: str, first: bool) -> str:
    """The text of a user segment: from its ``<|im_start|>user`` through the ``<|im_start|>assistant\\n`` that
    opens the answer. A later user turn starts with the newline that follows the previous ``<|im_end|>``."""
    _check_prompt(prompt)
    lead = "" if first else "\n"
    return f"{lead}{IM_START}user\n{prompt}{IM_END}\n{IM_START}assistant\n"


def render_conversation(turns: Sequence[Turn]) -> str:
    """The conversation text with one :data:`VIDEO_BLOCK` per turn (before the processor expands the video pads).

    Completed answers end with ``<|im_end|>``; an open last turn (``answer=None``) ends with the generation prompt.
    """
    if not turns:
        raise ValueError("a conversation needs at least one turn")
    parts = []
    for i, t in enumerate(turns):
        if t.answer is None and i != len(turns) - 1:
            raise ValueError(f"turn {i + 1} has no answer but is followed by another turn")
        parts.append(_user_text(t.prompt, first=i == 0))
        if t.answer is not None:
            parts.append(t.answer + IM_END)
    return "".join(parts)


def chat_messages(turns: Sequence[Turn]) -> list[dict[str, Any]]:
    """The conversation as chat messages (``processor.apply_chat_template(messages)`` renders it with the saved
    template: :func:`render_conversation`'s text plus a final newline when the last turn is answered)."""
    messages: list[dict[str, Any]] = []
    for t in turns:
        _check_prompt(t.prompt)
        before, after = t.prompt.split(VIDEO_BLOCK)
        content = [{"type": "text", "text": before}, {"type": "video"}, {"type": "text", "text": after}]
        messages.append({"role": "user", "content": [c for c in content if c.get("text", None) != ""]})
        if t.answer is not None:
            messages.append({"role": "assistant", "content": t.answer})
    return messages


def _video_for_processor(video: Sampled) -> tuple[torch.Tensor, Any]:
    """uint8 frames ``[F, C, H, W]`` and their ``VideoMetadata``; a 1-frame video shows its frame twice (Qwen3-VL
    patches frames in pairs and its resize needs at least two)."""
    from transformers.video_utils import VideoMetadata

    frames, indices = video.frames, video.indices
    if frames.ndim != 4 or frames.shape[1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"expected video frames [F >= 1, 3, H, W], got shape {tuple(frames.shape)}")
    if frames.shape[0] == 1:
        frames, indices = frames.expand(2, -1, -1, -1), indices.expand(2)
    if frames.is_floating_point():
        frames = frames.detach().clamp(0, 1).mul(255).round().to(torch.uint8)
    metadata = VideoMetadata(
        total_num_frames=int(indices.max()) + 1, fps=float(video.src_fps), frames_indices=indices.tolist()
    )
    return frames.cpu(), metadata


def encode_user(
    processor, prompt: str, video: Sampled, first: bool = True, video_kwargs: Mapping[str, Any] | None = None
) -> Encoded:
    """Encode a user segment (prompt + its video) through the processor; its assistant mask is all zeros.

    Args:
        processor: a Qwen3-VL processor (:func:`cac_align.reward.qwen.load_processor`).
        prompt: the turn's prompt, containing :data:`VIDEO_BLOCK` once.
        video: the frames shown, float ``[F, C, H, W]`` in [0, 1], with their source indices and source fps.
        first: False for a user turn that follows an answer (its text starts with a newline).
        video_kwargs: per-call video processor settings, e.g. ``{"size": {...}, "max_video_tokens": 256}``.
    """
    frames, metadata = _video_for_processor(video)
    out = processor(
        text=[_user_text(prompt, first)],
        videos=[frames],
        video_metadata=[metadata],
        do_sample_frames=False,
        return_tensors="pt",
        **dict(video_kwargs or {}),
    )
    ids = out["input_ids"][0]
    return Encoded(
        ids,
        out["mm_token_type_ids"][0].long(),
        torch.zeros_like(ids),
        out["pixel_values_videos"],
        out["video_grid_thw"].long(),
    )


def encode_answer(tokenizer, answer: str | Sequence[int] | torch.Tensor) -> Encoded:
    """Encode an assistant answer: its tokens plus the closing ``<|im_end|>``, all with assistant mask 1.

    ``answer`` is text (tokenised without special tokens added) or generated ids; ids that already end with
    ``<|im_end|>`` are not closed twice.
    """
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    if isinstance(answer, str):
        ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    else:
        ids = [int(i) for i in answer]
    if not ids or ids[-1] != im_end:
        ids = ids + [im_end]
    t = torch.tensor(ids, dtype=torch.long)
    return Encoded(t, torch.zeros_like(t), torch.ones_like(t), torch.zeros(0), torch.zeros(0, 3, dtype=torch.long))


def encode_conversation(
    processor,
    turns: Sequence[Turn],
    loss_turns: Sequence[int] | None = None,
    video_kwargs: Mapping[str, Any] | None = None,
) -> Encoded:
    """Encode a whole conversation (SFT samples, GRPO contexts, inference prompts).

    Args:
        processor: a Qwen3-VL processor.
        turns: one or two (or more) turns; only the last may have ``answer=None`` (then the ids end with the
            generation prompt ``<|im_start|>assistant\\n``).
        loss_turns: 1-based turns whose answers get assistant mask 1 (default: all answered turns). Stage-2 SFT
            of a turn-2 sample may train both answers or only the second.
        video_kwargs: per-call video processor settings (see :func:`encode_user`).
    """
    render_conversation(turns)  # validates the turn structure
    wanted = set(range(1, len(turns) + 1)) if loss_turns is None else set(loss_turns)
    enc: Encoded | None = None
    for i, t in enumerate(turns, 1):
        part = encode_user(processor, t.prompt, t.video, first=i == 1, video_kwargs=video_kwargs)
        enc = part if enc is None else enc + part
        if t.answer is not None:
            ans = encode_answer(processor.tokenizer, t.answer)
            if i not in wanted:
                ans.assistant_mask.zero_()
            enc = enc + ans
    assert enc is not None
    return enc


def collate(items: Sequence[Encoded], pad_token_id: int, padding_side: str = "left") -> dict[str, torch.Tensor]:
    """Pad encoded conversations into a batch for ``model(**batch)`` / ``model.generate(**batch)``.

    Returns ``input_ids``, ``attention_mask``, ``mm_token_type_ids``, ``assistant_mask`` (``[B, L_max]``) and the
    videos of all rows concatenated in row order (``pixel_values_videos``, ``video_grid_thw``), the order in which
    Qwen3-VL assigns them to the video tokens. Left padding keeps every row's last token at the end, which
    generation needs; Qwen3-VL computes M-RoPE positions from the attention mask, so padding does not shift them.
    """
    if not items:
        raise ValueError("collate needs at least one item")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    n = max(len(e) for e in items)
    out = {
        "input_ids": torch.full((len(items), n), pad_token_id, dtype=torch.long),
        "attention_mask": torch.zeros(len(items), n, dtype=torch.long),
        "mm_token_type_ids": torch.zeros(len(items), n, dtype=torch.long),
        "assistant_mask": torch.zeros(len(items), n, dtype=torch.long),
    }
    for b, e in enumerate(items):
        sl = slice(n - len(e), n) if padding_side == "left" else slice(0, len(e))
        out["input_ids"][b, sl] = e.input_ids
        out["attention_mask"][b, sl] = 1
        out["mm_token_type_ids"][b, sl] = e.mm_token_type_ids
        out["assistant_mask"][b, sl] = e.assistant_mask
    out["pixel_values_videos"] = _cat_rows([e.pixel_values_videos for e in items])
    out["video_grid_thw"] = _cat_rows([e.video_grid_thw for e in items])
    return out


def _cat_rows(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate along rows, skipping empty parts (an answer carries no video: ``torch.zeros(0)``)."""
    kept = [p for p in parts if p.numel() > 0]
    return torch.cat(kept) if kept else parts[0]


def model_inputs(batch: Mapping[str, torch.Tensor], device: torch.device | str | None = None) -> dict[str, Any]:
    """The entries of a :func:`collate` batch that ``Qwen3VLForConditionalGeneration`` takes, moved to ``device``."""
    keys = ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values_videos", "video_grid_thw")
    return {k: batch[k].to(device) if device is not None else batch[k] for k in keys}


def assistant_labels(input_ids: torch.Tensor, assistant_mask: torch.Tensor) -> torch.Tensor:
    """Causal-LM labels: ``input_ids`` where ``assistant_mask`` is 1, -100 elsewhere (padding included)."""
    return input_ids.masked_fill(assistant_mask == 0, IGNORE_INDEX)
