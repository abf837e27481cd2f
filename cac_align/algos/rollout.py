"""Two-turn rollouts of CaC's GRPO stage and their per-token log-probabilities (paper Sec. 3.2 stage 3, App. C.1).

A rollout ``y_i = [y_i^1, y_i^2]`` (Sec. 3.2): turn 1 shows the whole video at the annotation's rate (4 fps) with the
turn-1 prompt and samples an answer ``y_i^1``; when that answer is valid, says ``abnormal`` and names a window that
starts inside the video, the window (its end clamped to the last frame) crops **this rollout's own** clip
``f_i' = crop(f, y_i^1)`` at 8 fps (:func:`cac_align.video.crop_clip`), which is appended to the same conversation
with the turn-2 prompt, and turn 2 samples ``y_i^2``. Otherwise (invalid, normal, no window, a window past the end)
the rollout ends after turn 1 (App. C.1), as :func:`cac_align.rewards.rollout_reward` expects.

The conversation is the one inference uses (:mod:`cac_align.reward.chat`, as ``CaCReward.run_turn2`` builds it):
``turn-1 user segment + answer 1 + <|im_end|> + turn-2 user segment + answer 2 + <|im_end|>``, token ids appended
as generated (never re-tokenised). Inference is more lenient in one place: ``CaCReward`` also crops the window of an
answer that fails the format check, while training ends such a rollout, since Eq. 2 already scores it invalid.

The policy ``pi_theta(y_t | X_t)`` of Eq. 9-11 is the distribution generation samples from: ``softmax(z / T)`` over
the vocabulary with the vision tokens removed (they are suppressed during generation, see
:func:`cac_align.reward.qwen.vision_token_ids`), at the sampling temperature ``T`` (as TRL's GRPO does). Generation
records each sampled token's log-probability under it (:class:`Answer.logp`); :func:`rollout_logprobs` recomputes
them in one teacher-forced forward pass over the whole conversation (both videos' pixels, ``mm_token_type_ids``
set), with gradients, computing logits only at the sampled positions (``logits_to_keep`` as a boolean mask).

Shapes: a :class:`Rollout`'s ``sequence`` is an :class:`~cac_align.reward.chat.Encoded` of length ``L`` whose
``assistant_mask`` is the **loss mask**: 1 exactly on the tokens the policy sampled in either turn (answers and their
``<|im_end|>``), 0 on the prompts, both videos' tokens, the inserted turn-2 user segment and an ``<|im_end|>`` that
closes a truncated turn-1 answer. :func:`~cac_align.reward.chat.collate` pads rollouts into ``[B, L_max]`` batches;
:func:`rollout_logprobs` returns ``[B, L_max]`` log-probs aligned with the tokens (0 where the mask is 0).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from cac_align.reward.chat import Encoded, collate, encode_answer, encode_user, model_inputs
from cac_align.reward.prompts import turn1_prompt, turn2_prompt
from cac_align.reward.qwen import IM_END, vision_token_ids
from cac_align.schema import Judgment, parse_judgment
from cac_align.video import TURN1_FPS, TURN2_FPS, Sampled, crop_clip, load_video, sample_frames

__all__ = [
    "Answer",
    "Rollout",
    "RolloutInput",
    "answer_part",
    "complete_rollouts",
    "rollout_logprobs",
    "sample_answers",
    "turn1_context",
    "turn2_context",
    "two_turn_rollouts",
    "usable_window",
]


@dataclass(frozen=True)
class RolloutInput:
    """One video to roll out: a decoded tensor ``[F, C, H, W]`` in [0, 1] with its rate, or a file (``src_fps=None``).

    ``fps`` is the turn-1 rate, the rate of the sequence the ground-truth windows index (``Annotation.fps``).
    """

    video: torch.Tensor | Path
    src_fps: float | None
    prompt: str | None
    fps: float = TURN1_FPS


@dataclass
class Answer:
    """One sampled answer: token ids (with the closing ``<|im_end|>`` when the model stopped by itself), the
    log-probability of each under the sampling distribution ``[len(ids)]`` and whether it hit the token budget."""

    ids: list[int]
    logp: torch.Tensor
    truncated: bool


@dataclass
class Rollout:
    """One two-turn rollout ``y_i = [y_i^1, y_i^2]`` of video ``group``.

    Attributes:
        group: index of the video in the :func:`two_turn_rollouts` call (rollouts of one video form a GRPO group).
        turn1: turn 1's sampled answer; ``turn1_text`` its text (without ``<|im_end|>``), ``judgment1`` its parse.
        window: the window ``(s, e)`` (inclusive, on turn 1's frames) that cropped this rollout's clip, or None when
            the rollout ended after turn 1.
        turn2, turn2_text, judgment2: turn 2, or None without one.
        num_frames: frames shown in turn 1 and, with a turn 2, in the clip.
        sequence: the whole conversation; its ``assistant_mask`` is the loss mask (module docstring).
    """

    group: int
    turn1: Answer
    turn1_text: str
    judgment1: Judgment
    window: tuple[int, int] | None
    turn2: Answer | None
    turn2_text: str | None
    judgment2: Judgment | None
    num_frames: tuple[int, ...]
    sequence: Encoded

    @property
    def sampled_logp(self) -> torch.Tensor:
        """Sampling-time log-probs of the loss-mask tokens, in sequence order ``[sequence.assistant_mask.sum()]``."""
        parts = [self.turn1.logp] + ([self.turn2.logp] if self.turn2 is not None else [])
        return torch.cat(parts)


# ----------------------------------------------------------------------------------------------------- generation
class _SampledLogProbs(LogitsProcessor):
    """Records ``log softmax(z / T)`` of each sampled token during generation.

    It runs after the processors that mask tokens (suppressed vision tokens) and before the temperature warper, so it
    sees the masked raw logits and applies ``T`` itself. The token sampled at step ``t`` is only known at step
    ``t + 1`` (the last column of ``input_ids``), so one step of log-probs ``[B, V]`` is kept until then;
    :meth:`finish` reads the last step from the final sequences.
    """

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature
        self._last: torch.Tensor | None = None
        self._steps: list[torch.Tensor] = []

    def _take(self, tokens: torch.Tensor) -> None:
        assert self._last is not None
        self._steps.append(self._last.gather(1, tokens[:, None].to(self._last.device)).squeeze(1))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._last is not None:
            self._take(input_ids[:, -1])
        self._last = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        return scores

    def finish(self, sequences: torch.Tensor, num_new: int) -> torch.Tensor:
        """``[B, num_new]`` log-probs of the generated tokens (the last ``num_new`` columns of ``sequences``)."""
        if num_new > 0:
            self._take(sequences[:, -1])
        out = torch.stack(self._steps, dim=1) if self._steps else torch.zeros(sequences.shape[0], 0)
        if out.shape[1] != num_new:
            raise RuntimeError(f"recorded {out.shape[1]} generation steps for {num_new} new tokens")
        return out.cpu()


def sample_answers(
    model,
    processor,
    contexts: Sequence[Encoded],
    max_new_tokens: int,
    temperature: float = 1.0,
    max_batch: int | None = None,
    min_new_tokens: int = 0,
) -> list[Answer]:
    """Sample one answer per context with pure temperature sampling (no top-k/top-p), left-padded batches.

    Args:
        model: a Qwen3-VL model (a PEFT wrapper is fine), in eval mode.
        processor: its processor (tokenizer ids for padding, ``<|im_end|>`` and the suppressed vision tokens).
        contexts: the encoded conversations to continue, each ending with ``<|im_start|>assistant\\n``.
        max_new_tokens: token budget of each answer.
        temperature: sampling temperature ``T`` (> 0).
        max_batch: most contexts per ``generate`` call (None: all in one).
        min_new_tokens: for timing runs only: ``<|im_end|>`` is masked until this many tokens exist, so the
            recorded log-probs are then no longer those of the policy.

    Returns:
        One :class:`Answer` per context, cut after its first ``<|im_end|>``.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    tok = processor.tokenizer
    eos = tok.convert_tokens_to_ids(IM_END)
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        do_sample=True,
        temperature=temperature,
        top_k=0,
        top_p=1.0,
        repetition_penalty=1.0,
        eos_token_id=eos,
        pad_token_id=pad,
        suppress_tokens=vision_token_ids(tok),
    )
    device = next(model.parameters()).device
    step = max_batch or max(1, len(contexts))
    answers: list[Answer] = []
    for i in range(0, len(contexts), step):
        batch = model_inputs(collate(contexts[i : i + step], pad, "left"), device)
        probe = _SampledLogProbs(temperature)
        with torch.no_grad():
            out = model.generate(**batch, generation_config=config, logits_processor=LogitsProcessorList([probe]))
        prompt_len = batch["input_ids"].shape[1]
        logp = probe.finish(out, out.shape[1] - prompt_len)
        for row, lp in zip(out[:, prompt_len:].tolist(), logp, strict=True):
            n = row.index(eos) + 1 if eos in row else len(row)
            answers.append(Answer(row[:n], lp[:n].clone(), truncated=eos not in row))
    return answers


# ------------------------------------------------------------------------------------------------------ contexts
def _frames(inp: RolloutInput) -> Sampled:
    if isinstance(inp.video, Path):
        if inp.src_fps is not None:
            raise ValueError(f"{inp.video}: pass src_fps=None for a file; its frame rate is read from the file")
        return load_video(inp.video, inp.fps)
    if inp.src_fps is None:
        raise ValueError("RolloutInput: src_fps is required when the video is a tensor")
    return sample_frames(inp.video, inp.src_fps, inp.fps)


def turn1_context(
    processor, inp: RolloutInput, video_kwargs: Mapping[str, Any] | None = None, prompt_style: str = "full"
) -> tuple[Encoded, Sampled]:
    """Turn 1's context (the whole video at ``inp.fps`` with the turn-1 prompt) and the frames it shows."""
    frames = _frames(inp)
    prompt = turn1_prompt(inp.prompt, frames.frames.shape[0], fps=inp.fps, style=prompt_style)
    return encode_user(processor, prompt, frames, first=True, video_kwargs=video_kwargs), frames


def answer_part(tokenizer, answer: Answer) -> Encoded:
    """An answer as a conversation part: its tokens with loss mask 1, closed by an ``<|im_end|>`` with mask 0 when
    the answer was truncated (the closing token is inserted, not sampled)."""
    enc = encode_answer(tokenizer, answer.ids)
    if len(enc) > len(answer.ids):
        enc.assistant_mask[-1] = 0
    return enc


def turn2_context(
    processor,
    inp: RolloutInput,
    context1: Encoded,
    answer1: Answer,
    window: tuple[int, int],
    clip_fps: float = TURN2_FPS,
    video_kwargs: Mapping[str, Any] | None = None,
    prompt_style: str = "full",
) -> tuple[Encoded, Sampled]:
    """Turn 2's context for one rollout: turn 1's context and answer, then the clip cropped at ``window`` (inclusive,
    on turn 1's frames) resampled at ``clip_fps``, with the turn-2 prompt; and the clip's frames."""
    s, e = window
    clip = crop_clip(inp.video, inp.src_fps, s, e, fps=inp.fps, clip_fps=clip_fps)
    prompt = turn2_prompt(inp.prompt, clip.frames.shape[0], fps=clip_fps, window=(s, e), style=prompt_style)
    user2 = encode_user(processor, prompt, clip, first=False, video_kwargs=video_kwargs)
    return context1 + answer_part(processor.tokenizer, answer1) + user2, clip


def usable_window(judgment: Judgment, num_frames: int) -> tuple[int, int] | None:
    """The window turn 2 crops (App. C.1), or None when the rollout ends after turn 1.

    A turn-1 answer gets a turn 2 when it is valid (Eq. 2), says ``abnormal`` and the span of its windows
    (:attr:`Judgment.window`) starts inside the ``num_frames`` frames shown; the end is clamped to the last frame.
    """
    if not judgment.valid or judgment.status != "abnormal" or judgment.window is None:
        return None
    s, e = judgment.window
    if s >= num_frames:
        return None
    return s, min(e, num_frames - 1)


# ------------------------------------------------------------------------------------------------------ rollouts
def two_turn_rollouts(
    model,
    processor,
    inputs: Sequence[RolloutInput],
    group_size: int,
    max_new_tokens_turn1: int,
    max_new_tokens_turn2: int,
    temperature: float = 1.0,
    clip_fps: float = TURN2_FPS,
    max_batch: int | None = None,
    video_kwargs: Mapping[str, Any] | None = None,
    prompt_style: str = "full",
) -> list[Rollout]:
    """Sample ``group_size`` two-turn rollouts of each input video (Sec. 3.2 stage 3, App. C.1).

    All turn-1 answers of all videos are generated together (in batches of ``max_batch`` rows), then
    :func:`complete_rollouts` generates all turn-2 answers of the rollouts that continue, each on its own crop.

    Args:
        model: the policy (Qwen3-VL, possibly PEFT-wrapped; unwrap DDP first), in eval mode.
        processor: its processor.
        inputs: the videos; the rollouts of ``inputs[g]`` get ``group = g``.
        group_size: ``G``, rollouts per video.
        max_new_tokens_turn1, max_new_tokens_turn2: token budget of each turn's answer.
        temperature: sampling temperature (the policy is ``softmax(z / T)``).
        clip_fps: turn 2's rate (8 fps; :func:`cac_align.rewards.rollout_reward` matches boxes at this rate).
        max_batch: most sequences per ``generate`` call (None: all of a turn in one call).
        video_kwargs: processor settings for both videos (e.g. a per-frame pixel cap).
        prompt_style: the prompts' style, "full" or "compact" (:mod:`cac_align.reward.prompts`; the checkpoint's).

    Returns:
        ``len(inputs) * group_size`` rollouts, grouped by video in input order.
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    firsts = [turn1_context(processor, inp, video_kwargs, prompt_style) for inp in inputs]
    groups = [g for g in range(len(inputs)) for _ in range(group_size)]
    answers1 = sample_answers(
        model, processor, [firsts[g][0] for g in groups], max_new_tokens_turn1, temperature, max_batch
    )
    return complete_rollouts(
        model,
        processor,
        inputs,
        firsts,
        groups,
        answers1,
        max_new_tokens_turn2,
        temperature=temperature,
        clip_fps=clip_fps,
        max_batch=max_batch,
        video_kwargs=video_kwargs,
        prompt_style=prompt_style,
    )


def complete_rollouts(
    model,
    processor,
    inputs: Sequence[RolloutInput],
    firsts: Sequence[tuple[Encoded, Sampled]],
    groups: Sequence[int],
    answers1: Sequence[Answer],
    max_new_tokens_turn2: int,
    temperature: float = 1.0,
    clip_fps: float = TURN2_FPS,
    max_batch: int | None = None,
    video_kwargs: Mapping[str, Any] | None = None,
    prompt_style: str = "full",
) -> list[Rollout]:
    """Finish rollouts from their turn-1 answers: parse each, crop its own clip at its window (:func:`usable_window`)
    and sample turn 2 for those that continue (one batch), or end them after turn 1.

    ``firsts[g]`` is :func:`turn1_context` of ``inputs[g]``; rollout ``i`` is video ``groups[i]`` with turn-1 answer
    ``answers1[i]``. :func:`two_turn_rollouts` passes sampled answers; given answers (e.g. an oracle window) work the
    same way. Other arguments as in :func:`two_turn_rollouts`.
    """
    if len(groups) != len(answers1):
        raise ValueError(f"groups and answers1 differ in length: {len(groups)} vs {len(answers1)}")
    tok = processor.tokenizer
    texts1, judgments1, windows = [], [], []
    for g, a in zip(groups, answers1, strict=True):
        text = _decode(tok, a)
        j = parse_judgment(text, turn=1)
        texts1.append(text)
        judgments1.append(j)
        windows.append(usable_window(j, firsts[g][1].frames.shape[0]))

    todo = [i for i, w in enumerate(windows) if w is not None]
    seconds: dict[int, tuple[Encoded, Sampled]] = {}
    for i in todo:
        g = groups[i]
        seconds[i] = turn2_context(
            processor, inputs[g], firsts[g][0], answers1[i], windows[i], clip_fps, video_kwargs, prompt_style
        )
    sampled = sample_answers(
        model, processor, [seconds[i][0] for i in todo], max_new_tokens_turn2, temperature, max_batch
    )
    answers2 = dict(zip(todo, sampled, strict=True))

    out = []
    for i, g in enumerate(groups):
        context1, frames1 = firsts[g]
        a2 = answers2.get(i)
        if a2 is None:
            sequence = context1 + answer_part(tok, answers1[i])
            text2, j2, counts = None, None, (frames1.frames.shape[0],)
        else:
            context2, clip = seconds[i]
            sequence = context2 + answer_part(tok, a2)
            text2 = _decode(tok, a2)
            j2 = parse_judgment(text2, turn=2)
            counts = (frames1.frames.shape[0], clip.frames.shape[0])
        out.append(Rollout(g, answers1[i], texts1[i], judgments1[i], windows[i], a2, text2, j2, counts, sequence))
    return out


def _decode(tokenizer, answer: Answer) -> str:
    body = answer.ids if answer.truncated else answer.ids[:-1]
    return tokenizer.decode(body, skip_special_tokens=False, clean_up_tokenization_spaces=False)


# ------------------------------------------------------------------------------------------------------ log-probs
def rollout_logprobs(
    model, batch: Mapping[str, torch.Tensor], temperature: float = 1.0, suppress_ids: Sequence[int] = ()
) -> torch.Tensor:
    """Per-token log-probs ``log pi_theta(y_t | X_t)`` of the loss-mask tokens of a collated batch of rollouts.

    One forward pass over the whole conversations (both videos' pixels and grids, ``mm_token_type_ids``); logits are
    computed only at the positions that predict a loss-mask token (``logits_to_keep`` as a boolean ``[B, L]`` mask),
    in float32, with ``suppress_ids`` removed from the vocabulary and divided by ``temperature``: the distribution
    :func:`sample_answers` samples from. Gradients flow when called outside ``torch.no_grad()``.

    Args:
        model: the policy (DDP / PEFT wrappers are fine: it is called as ``model(**inputs)``).
        batch: :func:`cac_align.reward.chat.collate` of rollout sequences; ``assistant_mask`` is the loss mask.
        temperature: the sampling temperature.
        suppress_ids: tokens generation never samples (:func:`cac_align.reward.qwen.vision_token_ids`).

    Returns:
        ``[B, L]`` float32: the log-prob of token ``t`` at position ``t`` where ``assistant_mask`` is 1, else 0.
    """
    mask = batch["assistant_mask"].bool()
    if bool(mask[:, 0].any()):
        raise ValueError("rollout_logprobs: a loss token at position 0 has no context to predict it from")
    device = next(model.parameters()).device
    predicts = torch.zeros_like(mask)
    predicts[:, :-1] = mask[:, 1:]  # position t predicts token t + 1
    out = model(**model_inputs(batch, device), logits_to_keep=predicts.to(device), use_cache=False)
    logits = out.logits.float()  # [N, V], rows in row-major order of the True positions
    if suppress_ids:
        banned = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
        banned[list(suppress_ids)] = True
        logits = logits.masked_fill(banned, float("-inf"))
    z = logits / temperature
    targets = batch["input_ids"][:, 1:][mask[:, 1:]].to(z.device)
    token_logp = z.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(z, dim=-1)
    result = torch.zeros(mask.shape, dtype=torch.float32, device=z.device)
    return result.masked_scatter(mask.to(z.device), token_logp)
