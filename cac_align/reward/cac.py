"""CaCReward: the two-turn CaC anomaly judge as a plain reward callable (paper Sec. 3.4, Eq. 7).

    reward = CaCReward.from_pretrained("path/to/cac")            # a local Qwen3-VL checkpoint folder
    scores = reward(videos, prompts, fps=16)                      # videos [B, F, C, H, W] in [0, 1] -> list[float]
    ev = reward.judge(video, prompt)                              # Evidence: status, windows, boxes, raw answers

Protocol (two-turn mode, Sec. 3.4). Turn 1 shows the whole video sampled at 4 fps with the turn-1 prompt; the model
answers the Fig. S5 JSON. If it answers "abnormal" with a usable window (one that starts inside the video; the span
of all its windows is used, its end clamped to the last frame), the window is cut with the crop rule of
:mod:`cac_align.video` (:func:`~cac_align.video.crop_clip`), resampled at 8 fps and sent as turn 2 in the same
conversation; turn 2's answer is final, and unless it confirms "abnormal" the video is normal. Otherwise turn 1 is
final: a normal answer, an abnormal one without a usable window (kept abnormal), or an answer without a status. The
single-turn mode of the ablation (Tab. S5, "w/o Inference Strategy", which the paper retrains for that format) asks
for windows and boxes in one answer.

Batching. All videos of a call go through each turn together (``batch_size`` caps a batch), left-padded; Qwen3-VL
derives its M-RoPE positions from the attention mask, so padding moves no position (tested), and a video's score does
not depend on what else is in its batch up to float rounding (the same row in a batch of another shape differs by
~1e-7 in its logits, from the kernels' summation order; with or without padding). Turn 2 re-encodes turn 1's context
(no KV-cache reuse across turns).

Scalar reward (Eq. 7). ``R = P_norm / (P_norm + P_abn)``, the probabilities of "normal" and "abnormal" in the
next-token distribution at the status value of the final turn's answer, i.e. right after ``"status": "``. The two
candidate tokens come from the tokenizer (:func:`status_tokens`): the first token after the prefix in
``prefix + "normal"`` and ``prefix + "abnormal"`` ("normal" vs "ab" with the Qwen vocabulary). Where both words
start with the same tokens, those shared tokens are teacher-forced after the prefix and the distribution is read
where the words diverge (the shared part's probability cancels in the ratio). Only the first differing token is
compared, as in the paper. ``R`` depends only on the two logits (``sigmoid(z_norm - z_abn)``); the reported
``p_normal``/``p_abnormal`` are absolute, in the distribution generation samples from (vision tokens excluded).

Where the distribution is read. During generation a logits probe records the two candidate logits (and the
log-normaliser) at every step, before temperature or top-p; after generation, the answer's text is cut at its status
prefix (:func:`status_context`) and, if the generated tokens reproduce that text exactly (plus any shared tokens),
the probe's record at the next step is the reading (``read="generated"``): no extra forward pass. Otherwise, and in
particular when the answer has no parsable status (truncated, not JSON, another spelling), the reward is still
defined: the turn's context plus the answer text up to its status value is teacher-forced in one batched forward
with ``logits_to_keep=1`` (``read="forced"``). That text is the answer's own prefix up to ``"status": "`` when the
answer contains it; else ``{"COT": "<the generated COT string, possibly cut short>", "status": "`` when the answer
starts like the canonical object; else the canonical empty prefix ``{"COT": "", "status": "``. When the final answer
has no parsable status its status is decided by the reward (normal when R >= 0.5), except that an unconfirmed turn 2
is always normal.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from cac_align.reward.chat import Encoded, collate, encode_answer, encode_user, model_inputs
from cac_align.reward.prompts import PROMPT_STYLES, single_turn_prompt, turn1_prompt, turn2_prompt
from cac_align.reward.qwen import IM_END, load_qwen3vl, vision_token_ids
from cac_align.schema import STATUS_PREFIX, Box, Judgment, PredAnomaly, parse_judgment
from cac_align.utils import atomic_write_json
from cac_align.video import (
    TURN1_FPS,
    TURN2_FPS,
    Sampled,
    as_video_list,
    crop_clip,
    load_video,
    probe_video,
    sample_frames,
)

Mode = Literal["two-turn", "single-turn"]
SETTINGS_FILE = "cac_reward.json"
"""Inference settings saved beside the model by :meth:`CaCReward.save_pretrained` (defaults of ``from_pretrained``)."""

CANONICAL_PREFIX = '{"COT": "", ' + STATUS_PREFIX
_COT_OPEN = '{"COT": "'


# ----------------------------------------------------------------------------------------------------------------------
# Reading the status distribution (Eq. 7)
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusTokens:
    """The tokens Eq. 7 compares: after ``prefix`` + ``shared``, ``normal`` vs ``abnormal``."""

    shared: tuple[int, ...]
    normal: int
    abnormal: int


def status_tokens(
    tokenizer, prefix: str = STATUS_PREFIX, words: tuple[str, str] = ("normal", "abnormal")
) -> StatusTokens:
    """Derive the candidate tokens of Eq. 7 from the tokenizer (never hard-coded ids).

    Tokenises ``prefix + word`` for both words, checks that ``prefix`` tokenises the same on its own (else the
    position after the prefix is not a token boundary and the reading is ill-defined), and walks the two
    continuations to their first difference: the common tokens before it are ``shared``.

    Raises:
        ValueError: the prefix does not end on a token boundary, or one word's tokens are a prefix of the other's.
    """
    head = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    tails = []
    for w in words:
        ids = tokenizer(prefix + w, add_special_tokens=False)["input_ids"]
        if ids[: len(head)] != head:
            raise ValueError(f"{prefix + w!r} does not tokenise as {prefix!r} followed by {w!r}: no token boundary")
        tails.append(ids[len(head) :])
    a, b = tails
    d = 0
    while d < min(len(a), len(b)) and a[d] == b[d]:
        d += 1
    if d == len(a) or d == len(b):
        raise ValueError(f"the tokens of {words[0]!r} and {words[1]!r} after {prefix!r} never differ: {a} vs {b}")
    return StatusTokens(tuple(a[:d]), a[d], b[d])


def status_context(text: str) -> str:
    """The answer text after which Eq. 7 reads the status distribution (always ends with ``"status": "``).

    The answer's own prefix through its first ``"status": "`` when present; else, for an answer that opens like the
    canonical object (``{"COT": "...``), that opening with its COT string (cut where the answer stops if it never
    closes) followed by ``", "status": "``; else the canonical ``{"COT": "", "status": "``.
    """
    at = text.find(STATUS_PREFIX)
    if at >= 0:
        return text[: at + len(STATUS_PREFIX)]
    body = text.lstrip()
    if body.startswith(_COT_OPEN):
        rest = body[len(_COT_OPEN) :]
        i, escaped = 0, False
        while i < len(rest):
            c = rest[i]
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                break
            i += 1
        literal = rest[:i]
        if escaped or not _valid_json_string(literal):  # cut inside an escape: back off to a clean point
            while literal and not _valid_json_string(literal):
                literal = literal[:-1]
        return _COT_OPEN + literal + '", ' + STATUS_PREFIX
    return CANONICAL_PREFIX


def _valid_json_string(literal: str) -> bool:
    """Whether ``"literal"`` decodes as a JSON string (raw control characters allowed, as models write them)."""
    try:
        json.loads('"' + literal + '"', strict=False)
    except ValueError:
        return False
    return True


class _StatusProbe(LogitsProcessor):
    """Records, at every generation step, the logits of the two status candidates and the log-normaliser.

    It runs after generation's own processors that only mask tokens (suppressed vision tokens, the minimum length)
    and before sampling's temperature/top-k/top-p, so the candidate logits are the model's raw ones.
    """

    def __init__(self, normal: int, abnormal: int) -> None:
        self.normal, self.abnormal = normal, abnormal
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        s = scores.float()
        self.steps.append(torch.stack([s[:, self.normal], s[:, self.abnormal], torch.logsumexp(s, dim=-1)], dim=-1))
        return scores

    def result(self, batch: int) -> torch.Tensor:
        """``[B, T, 3]``: (logit normal, logit abnormal, logsumexp) per row and step."""
        if not self.steps:
            return torch.zeros(batch, 0, 3)
        return torch.stack(self.steps, dim=1).cpu().double()


def _probabilities(z_normal: float, z_abnormal: float, lse: float) -> tuple[float, float, float]:
    """(P_norm, P_abn, R) with R = P_norm / (P_norm + P_abn) computed stably as sigmoid(z_norm - z_abn)."""
    diff = z_normal - z_abnormal
    reward = 1.0 / (1.0 + math.exp(-diff)) if diff >= 0 else math.exp(diff) / (1.0 + math.exp(diff))
    return math.exp(z_normal - lse), math.exp(z_abnormal - lse), reward


# ----------------------------------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class TurnResult:
    """One turn of one video.

    Attributes:
        turn: 1 or 2 (the single-turn mode's only turn is 1).
        text: the answer as generated (without the closing ``<|im_end|>``).
        judgment: ``parse_judgment(text)``.
        answer_ids: the generated token ids, with the closing ``<|im_end|>`` when the model stopped by itself.
        fps: the rate the frames shown were sampled at.
        frame_indices: source frame index of each frame shown.
        timestamps: source time (seconds) of each frame shown.
        p_normal, p_abnormal: the two probabilities at the status value (Eq. 7).
        reward: ``p_normal / (p_normal + p_abnormal)``.
        read: "generated" (read during generation) or "forced" (teacher-forced prefix, see the module docstring).
        context: the token ids and video inputs before the answer (kept by :meth:`CaCReward.run_turn1` /
            :meth:`CaCReward.run_turn2` for turn 2 and for training; dropped from :class:`Evidence`).
    """

    turn: int
    text: str
    judgment: Judgment
    answer_ids: list[int]
    fps: float
    frame_indices: list[int]
    timestamps: list[float]
    p_normal: float
    p_abnormal: float
    reward: float
    read: str
    context: Encoded | None = field(default=None, repr=False)

    @property
    def status(self) -> str:
        """The parsed status, else the one the reward favours (normal when R >= 0.5)."""
        if self.judgment.status is not None:
            return self.judgment.status
        return "normal" if self.reward >= 0.5 else "abnormal"


@dataclass
class Evidence:
    """CaC's verdict on one video: the final status, the Eq. 7 reward and the interpretable evidence.

    Attributes:
        status: "normal" or "abnormal" (the final decision of Sec. 3.4).
        reward: Eq. 7 at the final turn.
        p_normal, p_abnormal: the final turn's two probabilities.
        turns: turn 1, and turn 2 when it ran.
        fps: turn 1's sampling rate (4, or less when the video is longer than ``max_frames`` frames at 4 fps).
        window: the turn-1 window ``(s, e)`` (inclusive, on turn 1's frames) that turn 2 cropped; None without turn 2.
        clip_fps: turn 2's sampling rate (8, or less for a window longer than ``max_frames`` clip frames).
        clip_timestamps: source times (seconds) of the turn-2 clip frames.
        anomalies: the final answer's anomalies when the status is abnormal.
        boxes: their boxes by frame (clip frames in two-turn mode, turn-1 frames in single-turn mode).
    """

    status: str
    reward: float
    p_normal: float
    p_abnormal: float
    turns: list[TurnResult]
    fps: float
    window: tuple[int, int] | None = None
    clip_fps: float | None = None
    clip_timestamps: list[float] = field(default_factory=list)
    anomalies: list[PredAnomaly] = field(default_factory=list)
    boxes: dict[int, list[Box]] = field(default_factory=dict)


def final_status(first: TurnResult, second: TurnResult | None) -> str:
    """The final decision of Sec. 3.4.

    With a turn 2, the video is abnormal only if turn 2 confirms it ("a turn 2 that does not confirm the anomaly makes
    the video normal", also when its answer has no parsable status). Without one, turn 1's status: its parsed status,
    else the one its reward favours (normal when R >= 0.5).
    """
    if second is not None:
        return "abnormal" if second.judgment.status == "abnormal" else "normal"
    return first.status


@dataclass
class VideoSource:
    """One checked input video (from :meth:`CaCReward.prepare`): frames ``[F, C, H, W]`` float in [0, 1] with their
    rate ``src_fps``, or a file (``src_fps=None``, decoded per turn at the rate it needs); its prompt and length."""

    video: torch.Tensor | Path
    src_fps: float | None
    prompt: str | None
    duration: float


# ----------------------------------------------------------------------------------------------------------------------
# The reward model
# ----------------------------------------------------------------------------------------------------------------------
def read_settings(path: str | Path) -> dict[str, Any]:
    """The CaCReward settings saved in checkpoint folder ``path`` (its ``cac_reward.json``; {} when it has none).

    The training recipes read them too: a checkpoint's ``prompt_style`` decides the prompts it is trained with.
    """
    file = Path(path) / SETTINGS_FILE
    if not file.is_file():
        return {}
    try:
        saved = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(saved, dict):
        raise ValueError(f"{file}: expected a JSON object of CaCReward settings")
    return saved


class CaCReward:
    """The CaC reward model (Sec. 3.4): ``reward(videos, prompts=None, fps=16) -> list[float]``.

    Args:
        model: a ``Qwen3VLForConditionalGeneration`` (CaC weights).
        processor: its Qwen3-VL processor.
        mode: "two-turn" (Sec. 3.4) or "single-turn" (the ablation).
        max_new_tokens: generation budget of each turn.
        do_sample: greedy decoding (deterministic) by default.
        temperature, top_p, top_k: sampling parameters, used when ``do_sample``.
        max_frames: most frames shown in a turn: a video longer than ``max_frames / 4`` s is sampled at
            ``max_frames / duration`` fps in turn 1 (windows then index that sequence), a long window likewise in
            turn 2.
        max_pixels: per-frame pixel budget; larger frames are downscaled (aspect kept, sides multiples of 32) by the
            processor's per-frame cap. None keeps the checkpoint's setting (768 * 32 * 32 for Qwen3-VL, under which
            480x832 frames keep their size).
        batch_size: most videos per batch (None: all videos of a call in one batch).
        prompt_style: "full" (the paper's prompts) or "compact" (:mod:`cac_align.reward.prompts`); a checkpoint
            records the style it was trained with in ``cac_reward.json``.
    """

    def __init__(
        self,
        model,
        processor,
        mode: Mode = "two-turn",
        max_new_tokens: int = 2048,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        max_frames: int = 64,
        max_pixels: int | None = None,
        batch_size: int | None = None,
        prompt_style: str = "full",
    ) -> None:
        if mode not in ("two-turn", "single-turn"):
            raise ValueError(f"mode must be 'two-turn' or 'single-turn', got {mode!r}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if max_frames < 2:
            raise ValueError(f"max_frames must be >= 2, got {max_frames}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
        if max_pixels is not None and max_pixels < 32 * 32:
            raise ValueError(f"max_pixels must be at least 32 * 32 = 1024, got {max_pixels}")
        if prompt_style not in PROMPT_STYLES:
            raise ValueError(f"prompt_style must be one of {list(PROMPT_STYLES)}, got {prompt_style!r}")
        self.model = model
        self.processor = processor
        self.mode: Mode = mode
        self.max_new_tokens = max_new_tokens
        self.do_sample = do_sample
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k
        self.max_frames = max_frames
        self.max_pixels = max_pixels
        self.batch_size = batch_size
        self.prompt_style = prompt_style
        tok = processor.tokenizer
        self.status = status_tokens(tok)
        self._eos = tok.convert_tokens_to_ids(IM_END)
        self._pad = tok.pad_token_id if tok.pad_token_id is not None else self._eos
        self._suppress = vision_token_ids(tok)

    # ------------------------------------------------------------------------------------------------ load / save
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        attn_implementation: str | None = None,
        **settings: Any,
    ) -> CaCReward:
        """Load a CaC checkpoint folder (model, processor and, if saved, ``cac_reward.json`` settings).

        ``settings`` (any keyword of the constructor) override the saved ones.
        """
        path = Path(path)
        saved = read_settings(path)
        model, processor = load_qwen3vl(path, device=device, dtype=dtype, attn_implementation=attn_implementation)
        return cls(model, processor, **{**saved, **settings})

    def settings(self) -> dict[str, Any]:
        """The constructor settings (what :meth:`save_pretrained` writes to ``cac_reward.json``)."""
        return {
            "mode": self.mode,
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "max_frames": self.max_frames,
            "max_pixels": self.max_pixels,
            "batch_size": self.batch_size,
            "prompt_style": self.prompt_style,
        }

    def save_pretrained(self, path: str | Path) -> Path:
        """Write model, processor and settings to ``path``; :meth:`from_pretrained` reloads them."""
        path = Path(path)
        self.model.save_pretrained(path)
        self.processor.save_pretrained(path)
        atomic_write_json(path / SETTINGS_FILE, self.settings())
        return path

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------------------------------------ public calls
    def __call__(
        self,
        videos: torch.Tensor | Sequence[torch.Tensor] | Sequence[str | Path],
        prompts: Sequence[str | None] | None = None,
        fps: float | Sequence[float] = 16.0,
        **kwargs: Any,
    ) -> list[float]:
        """Eq. 7 rewards, one per video.

        Args:
            videos: float ``[B, F, C, H, W]`` in [0, 1], a list of ``[F, C, H, W]`` tensors (lengths may differ), or
                a list of video file paths.
            prompts: the text each video was generated from (optional).
            fps: frame rate of tensor inputs (one for all, or one per video); files use their own rate.
            **kwargs: ignored (trainers pass extra columns to every reward).
        """
        return [e.reward for e in self.judge_batch(videos, prompts, fps)]

    def judge(self, video: torch.Tensor | str | Path, prompt: str | None = None, fps: float = 16.0) -> Evidence:
        """The :class:`Evidence` for one video (``[F, C, H, W]`` float tensor or a file path)."""
        return self.judge_batch([video], [prompt], fps)[0]

    @torch.inference_mode()
    def judge_batch(
        self,
        videos: torch.Tensor | Sequence[torch.Tensor] | Sequence[str | Path],
        prompts: Sequence[str | None] | None = None,
        fps: float | Sequence[float] = 16.0,
    ) -> list[Evidence]:
        """The :class:`Evidence` for each video; all videos go through each turn together (see :meth:`__call__`)."""
        sources = self._sources(videos, prompts, fps)
        step = self.batch_size or max(1, len(sources))
        out: list[Evidence] = []
        for i in range(0, len(sources), step):
            out.extend(self._judge_chunk(sources[i : i + step]))
        return out

    def _judge_chunk(self, sources: list[VideoSource]) -> list[Evidence]:
        firsts = self.run_turn1(sources)
        if self.mode == "single-turn":
            return [self._evidence(t1, None, None, None) for t1 in firsts]
        windows = [self._usable_window(t1) for t1 in firsts]
        todo = [i for i, w in enumerate(windows) if w is not None]
        seconds: dict[int, TurnResult] = {}
        if todo:
            res = self.run_turn2([sources[i] for i in todo], [firsts[i] for i in todo], [windows[i] for i in todo])
            seconds = dict(zip(todo, res, strict=True))
        return [
            self._evidence(
                t1, seconds.get(i), windows[i] if i in seconds else None, seconds[i].fps if i in seconds else None
            )
            for i, t1 in enumerate(firsts)
        ]

    # ------------------------------------------------------------------------------------------------ the two turns
    def run_turn1(
        self, sources: Sequence[VideoSource], max_new_tokens: int | None = None, min_new_tokens: int = 0
    ) -> list[TurnResult]:
        """Turn 1 for a batch: the whole video at 4 fps (turn-1 or single-turn prompt), generated together.

        ``sources`` come from :meth:`prepare`. The results keep their ``context`` (needed by :meth:`run_turn2`).
        """
        shown, contexts, rates = [], [], []
        for src in sources:
            rate = self._rate(src.duration, TURN1_FPS)
            frames = self._sample(src, rate)
            n = frames.frames.shape[0]
            builder = single_turn_prompt if self.mode == "single-turn" else turn1_prompt
            prompt = builder(src.prompt, n, fps=rate, style=self.prompt_style)
            contexts.append(
                encode_user(self.processor, prompt, frames, first=True, video_kwargs=self._video_kwargs(n))
            )
            shown.append(frames)
            rates.append(rate)
        return self._run(contexts, 1, shown, rates, max_new_tokens, min_new_tokens)

    def run_turn2(
        self,
        sources: Sequence[VideoSource],
        firsts: Sequence[TurnResult],
        windows: Sequence[tuple[int, int]],
        max_new_tokens: int | None = None,
        min_new_tokens: int = 0,
    ) -> list[TurnResult]:
        """Turn 2 for a batch: each window ``(s, e)`` of turn 1's frames is cropped (crop rule of
        :mod:`cac_align.video`), resampled at 8 fps and appended, after turn 1's answer, to turn 1's conversation."""
        shown, contexts, rates = [], [], []
        for src, first, (s, e) in zip(sources, firsts, windows, strict=True):
            if first.context is None:
                raise ValueError("run_turn2 needs turn-1 results that keep their context (from run_turn1)")
            rate = self._rate((e - s + 1) / first.fps, TURN2_FPS)
            clip = crop_clip(src.video, src.src_fps, s, e, fps=first.fps, clip_fps=rate)
            prompt = turn2_prompt(src.prompt, clip.frames.shape[0], fps=rate, window=(s, e), style=self.prompt_style)
            ctx = (
                first.context
                + encode_answer(self.processor.tokenizer, first.answer_ids)
                + encode_user(
                    self.processor, prompt, clip, first=False, video_kwargs=self._video_kwargs(clip.frames.shape[0])
                )
            )
            contexts.append(ctx)
            shown.append(clip)
            rates.append(rate)
        return self._run(contexts, 2, shown, rates, max_new_tokens, min_new_tokens)

    def prepare(
        self,
        videos: torch.Tensor | Sequence[torch.Tensor] | Sequence[str | Path],
        prompts: Sequence[str | None] | None = None,
        fps: float | Sequence[float] = 16.0,
    ) -> list[VideoSource]:
        """Check and wrap the inputs of :meth:`__call__` for :meth:`run_turn1` / :meth:`run_turn2`."""
        return self._sources(videos, prompts, fps)

    # ------------------------------------------------------------------------------------------------ internals
    def _run(
        self,
        contexts: list[Encoded],
        turn: int,
        shown: list[Sampled],
        rates: list[float],
        max_new_tokens: int | None,
        min_new_tokens: int,
    ) -> list[TurnResult]:
        answers, probe = self._generate(contexts, max_new_tokens or self.max_new_tokens, min_new_tokens)
        tok = self.processor.tokenizer
        parse_turn = 2 if (turn == 2 or self.mode == "single-turn") else 1
        results: list[TurnResult] = []
        forced: list[tuple[int, str]] = []
        for b, ids in enumerate(answers):
            body = ids[:-1] if ids and ids[-1] == self._eos else ids
            text = tok.decode(body, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            judgment = parse_judgment(text, turn=parse_turn)
            target = status_context(text)
            k = self._read_step(body, target) if text.startswith(target) else None
            if k is not None:
                p_n, p_a, r = _probabilities(*probe[b, k].tolist())
                read = "generated"
            else:
                p_n = p_a = r = math.nan
                read = "forced"
                forced.append((b, target))
            results.append(
                TurnResult(
                    turn=turn,
                    text=text,
                    judgment=judgment,
                    answer_ids=ids,
                    fps=rates[b],
                    frame_indices=shown[b].indices.tolist(),
                    timestamps=shown[b].timestamps.tolist(),
                    p_normal=p_n,
                    p_abnormal=p_a,
                    reward=r,
                    read=read,
                    context=contexts[b],
                )
            )
        if forced:
            reads = self._forced_reads([contexts[b] for b, _ in forced], [t for _, t in forced])
            for (b, _), (p_n, p_a, r) in zip(forced, reads, strict=True):
                results[b] = replace(results[b], p_normal=p_n, p_abnormal=p_a, reward=r)
        return results

    def _generate(
        self, contexts: list[Encoded], max_new_tokens: int, min_new_tokens: int
    ) -> tuple[list[list[int]], torch.Tensor]:
        """Generate one answer per context (left-padded batch); returns the answer ids (cut after the first
        ``<|im_end|>``) and the probe record ``[B, T, 3]``."""
        batch = model_inputs(collate(contexts, self._pad, "left"), self.device)
        probe = _StatusProbe(self.status.normal, self.status.abnormal)
        sampling = (
            {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}
            if self.do_sample
            else {"temperature": 1.0, "top_p": 1.0, "top_k": 50}  # ignored by greedy decoding; set to the library
            # defaults so that a checkpoint's own sampling defaults are neither filled in nor warned about
        )
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            do_sample=self.do_sample,
            repetition_penalty=1.0,
            eos_token_id=self._eos,
            pad_token_id=self._pad,
            suppress_tokens=self._suppress,
            **sampling,
        )
        out = self.model.generate(**batch, generation_config=config, logits_processor=LogitsProcessorList([probe]))
        new = out[:, batch["input_ids"].shape[1] :].cpu()
        answers = []
        for row in new.tolist():
            answers.append(row[: row.index(self._eos) + 1] if self._eos in row else row)
        return answers, probe.result(len(contexts))

    def _read_step(self, ids: list[int], target: str) -> int | None:
        """The generation step whose distribution follows ``target`` (+ the shared status tokens), or None when the
        generated tokens do not end exactly at ``target``'s end or do not continue with the shared tokens."""
        tok = self.processor.tokenizer

        def decoded(k: int) -> str:
            return tok.decode(ids[:k], skip_special_tokens=False, clean_up_tokenization_spaces=False)

        lo, hi = 0, len(ids)  # smallest k whose decoded text is at least as long as target (length grows with k)
        while lo < hi:
            mid = (lo + hi) // 2
            if len(decoded(mid)) >= len(target):
                hi = mid
            else:
                lo = mid + 1
        if decoded(lo) != target:
            return None
        d = len(self.status.shared)
        if tuple(ids[lo : lo + d]) != self.status.shared or lo + d >= len(ids):
            return None
        return lo + d

    @torch.no_grad()
    def _forced_reads(self, contexts: list[Encoded], targets: list[str]) -> list[tuple[float, float, float]]:
        """Teacher-force ``context + target + shared`` and read the next-token distribution (``logits_to_keep=1``)."""
        tok = self.processor.tokenizer
        items = []
        for ctx, target in zip(contexts, targets, strict=True):
            ids = tok(target, add_special_tokens=False)["input_ids"] + list(self.status.shared)
            t = torch.tensor(ids, dtype=torch.long)
            items.append(ctx + Encoded(t, torch.zeros_like(t), torch.ones_like(t), torch.zeros(0), torch.zeros(0, 3)))
        out = []
        step = self.batch_size or len(items)
        for i in range(0, len(items), step):
            batch = model_inputs(collate(items[i : i + step], self._pad, "left"), self.device)
            logits = self.model(**batch, logits_to_keep=1, use_cache=False).logits[:, -1].float()
            logits[:, self._suppress] = -math.inf  # the distribution generation samples from
            lse = torch.logsumexp(logits, dim=-1)
            for row, z in zip(logits.double().cpu(), lse.double().cpu(), strict=True):
                out.append(_probabilities(float(row[self.status.normal]), float(row[self.status.abnormal]), float(z)))
        return out

    def _usable_window(self, first: TurnResult) -> tuple[int, int] | None:
        """Turn 1's window if its answer is abnormal and the window starts inside the video (end clamped)."""
        if first.judgment.status != "abnormal" or first.judgment.window is None:
            return None
        s, e = first.judgment.window
        n = len(first.frame_indices)
        if s >= n:
            return None
        return (s, min(e, n - 1))

    def _evidence(
        self, t1: TurnResult, t2: TurnResult | None, window: tuple[int, int] | None, clip_fps: float | None
    ) -> Evidence:
        turns = [replace(t1, context=None)] + ([replace(t2, context=None)] if t2 is not None else [])
        final = turns[-1]
        status = final_status(t1, t2)
        anomalies = list(final.judgment.anomalies) if status == "abnormal" else []
        boxes: dict[int, list[Box]] = {}
        for a in anomalies:
            for k, bs in a.bboxes.items():
                boxes.setdefault(k, []).extend(bs)
        return Evidence(
            status=status,
            reward=final.reward,
            p_normal=final.p_normal,
            p_abnormal=final.p_abnormal,
            turns=turns,
            fps=t1.fps,
            window=window,
            clip_fps=clip_fps,
            clip_timestamps=list(t2.timestamps) if t2 is not None else [],
            anomalies=anomalies,
            boxes=dict(sorted(boxes.items())),
        )

    def _rate(self, seconds: float, fps: float) -> float:
        """``fps``, lowered so that ``seconds`` of video give at most ``max_frames`` frames."""
        return fps if seconds * fps <= self.max_frames + 1e-6 else self.max_frames / seconds

    def _sample(self, src: VideoSource, fps: float) -> Sampled:
        if isinstance(src.video, Path):
            return load_video(src.video, fps)
        assert src.src_fps is not None
        return sample_frames(src.video, src.src_fps, fps)

    def _video_kwargs(self, num_frames: int) -> dict[str, Any]:
        """Per-call video processor settings: qwen-vl-utils' per-frame pixel cap (what Qwen3-VL was trained with),
        at ``max_pixels`` per frame when set (the cap is ``longest_edge / num_frames``)."""
        kwargs: dict[str, Any] = {"cap_pixels_per_frame": True}
        if self.max_pixels is not None:
            shortest = self.processor.video_processor.size["shortest_edge"]
            kwargs["size"] = {"shortest_edge": shortest, "longest_edge": self.max_pixels * max(2, num_frames)}
        return kwargs

    def _sources(
        self,
        videos: torch.Tensor | Sequence[torch.Tensor] | Sequence[str | Path],
        prompts: Sequence[str | None] | None,
        fps: float | Sequence[float],
    ) -> list[VideoSource]:
        if isinstance(videos, (str, Path)):
            raise ValueError("videos: expected a list of paths; wrap a single path as [path]")
        if isinstance(videos, torch.Tensor):
            items: list[torch.Tensor | Path] = list(as_video_list(videos))
        elif isinstance(videos, (list, tuple)) and all(isinstance(v, (str, Path)) for v in videos):
            items = [Path(v) for v in videos]
        elif isinstance(videos, (list, tuple)):
            if any(isinstance(v, (str, Path)) for v in videos):
                raise ValueError("videos: expected all tensors or all file paths, got a mix")
            items = list(as_video_list(videos))
        else:
            raise ValueError(f"videos: expected a tensor [B, F, C, H, W] or a list, got {type(videos)}")
        n = len(items)
        if prompts is None:
            prompts = [None] * n
        elif isinstance(prompts, str) or len(prompts) != n:
            raise ValueError(f"prompts: expected a list of {n} prompts (or None), got {prompts!r:.80}")
        rates = [float(fps)] * n if isinstance(fps, (int, float)) else [float(f) for f in fps]
        if len(rates) != n:
            raise ValueError(f"fps: expected one rate or {n} rates, got {len(rates)}")
        out = []
        for i, (v, p, r) in enumerate(zip(items, prompts, rates, strict=True)):
            if isinstance(v, Path):
                frames, src_fps, _, _ = probe_video(v)
                out.append(VideoSource(v, None, p, frames / src_fps))
            else:
                if not r > 0:
                    raise ValueError(f"fps[{i}]: expected a positive frame rate, got {r}")
                out.append(VideoSource(v, r, p, v.shape[0] / r))
        return out
