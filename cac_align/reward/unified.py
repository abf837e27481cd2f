"""UnifiedReward: the general video-preference reward the paper averages with CaC (Sec. 4.3, App. C.3).

CaC is a sparse-anomaly specialist; alone it would reward anomaly-free but dull or off-prompt videos, so the paper
aligns Wan-2.1 with the average of normalised UnifiedReward (UR) and CaC scores (see
:mod:`cac_align.reward.mixed`). This module scores a generated video pointwise with the UnifiedReward-2.0 family
(Qwen3-VL based) and its video-generation prompt, following the published protocol of the UnifiedReward-2.0
pointwise video script:

* **Frames.** ``num_frames`` (16) frames sampled uniformly over the whole video by count - indices
  ``round(linspace(0, F - 1, 16))``; a video with at most 16 frames is used whole - and sent **as separate
  images**, not as one video, because that is how the released checkpoints were queried (and how a
  vLLM/sglang server receives them). The source fps therefore does not matter; ``fps=`` is accepted for the reward
  call convention only. ``max_pixels`` optionally downsizes each frame (aspect kept) before it is sent.
* **Question.** One user turn: the frames, then a text asking for three 1-5 ratings in a fixed answer format,
  ``Alignment Score (1-5): X`` / ``Physics Score (1-5): X`` / ``Style Score (1-5): X`` (:data:`DEFAULT_PROMPT`,
  our own wording of the protocol; pass ``prompt_template=`` to use another text with ``{prompt}``).
* **Hard score** (``soft=False``, the published protocol): greedy decoding, then :func:`parse_scores` reads each
  ``<Dimension> Score (1-5): <number>`` (first occurrence, a number in [1, 5]). The video's reward is the mean of
  the selected ``dimensions``.
* **Soft score** (``soft=True``): no free generation. The answer is teacher-forced in the fixed format up to each
  ``<Dimension> Score (1-5): `` position, and the score is the expectation over the digits 1-5 of the next-token
  distribution restricted to those five tokens (the VideoScore2 pattern; CaC's own reward is the same idea on its
  status token). Earlier dimensions in the forced answer carry their own expected value (one decimal), and the
  dimensions are forced in the fixed order, so ``dimensions=("style",)`` still forces the alignment and physics
  lines first. A soft score is continuous, so Best-of-N and GRPO get a signal even where greedy answers tie.

**Unparsable answers.** A hard answer missing any selected dimension (or with a number outside [1, 5]) gives
``None`` for that video - never 0, never an imputed mean - logs a ``logging`` warning with the answer, and is
counted (:attr:`UnifiedReward.num_unparsable`, :meth:`UnifiedReward.log`). A soft score is None only on a server
whose ``top_logprobs`` held none of the five digits. :class:`~cac_align.reward.mixed.MixedReward` documents how a
None is mixed.

**Backends.** :meth:`UnifiedReward.from_pretrained` runs a local checkpoint with transformers;
:meth:`UnifiedReward.from_server` sends the same requests to an OpenAI-compatible chat-completions server (vLLM or
sglang serving the checkpoint, or :mod:`cac_align.serve`): frames as base64 PNG (lossless, so a local and a served
model see the same pixels) or JPEG image parts; soft scores there use ``logprobs``/``top_logprobs`` with the vLLM
``continue_final_message`` extension.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cac_align.reward.qwen import load_qwen3vl, vision_token_ids
from cac_align.video import as_video_list, load_video, to_uint8

logger = logging.getLogger(__name__)

DIMENSIONS: tuple[str, ...] = ("alignment", "physics", "style")
"""The three UnifiedReward-2.0 video dimensions, in the order the answer lists them."""

LABELS: dict[str, str] = {"alignment": "Alignment", "physics": "Physics", "style": "Style"}

NUM_FRAMES = 16
SCORE_RANGE: tuple[float, float] = (1.0, 5.0)

DEFAULT_PROMPT = (
    "The images are frames sampled uniformly, in temporal order, from one AI-generated video. "
    "The video was generated from this text prompt:\n"
    "{prompt}\n\n"
    "Rate the video on three aspects, each from 1 (very poor) to 5 (excellent); decimals are allowed.\n"
    "- Alignment: how faithfully the video shows what the prompt asks for (subjects, attributes, actions, scene).\n"
    "- Physics: whether shapes, motion and interactions are physically plausible and consistent across frames.\n"
    "- Style: the visual quality and aesthetics of the frames (sharpness, lighting, colour, composition).\n\n"
    "Answer with exactly these three lines:\n"
    "Alignment Score (1-5): X\n"
    "Physics Score (1-5): X\n"
    "Style Score (1-5): X"
)
"""Our wording of the UnifiedReward-2.0 pointwise video question; ``{prompt}`` is the generation prompt."""

_SCORE_RE = re.compile(
    r"\b(alignment|physics|style)\s+score\s*\(\s*1\s*-\s*5\s*\)\s*\**\s*:\s*\**\s*(\d+(?:\.\d+)?)", re.IGNORECASE
)


def score_prefix(dimension: str) -> str:
    """The answer text just before a dimension's number: ``"Physics Score (1-5): "``."""
    return f"{LABELS[dimension]} Score (1-5): "


def parse_scores(text: str) -> dict[str, float]:
    """The dimension scores found in an answer: ``{"alignment": 3.5, ...}``.

    Reads ``<Dimension> Score (1-5): <number>`` (case-insensitive, markdown ``**`` around the colon allowed), keeps the first
    occurrence of each dimension; a dimension whose first number lies outside [1, 5] is absent, like one not found.
    """
    out: dict[str, float] = {}
    seen: set[str] = set()
    for m in _SCORE_RE.finditer(text):
        dim, value = m.group(1).lower(), float(m.group(2))
        if dim not in seen and SCORE_RANGE[0] <= value <= SCORE_RANGE[1]:
            out[dim] = value
        seen.add(dim)
    return out


def uniform_indices(num_source: int, num_frames: int = NUM_FRAMES) -> np.ndarray:
    """``round(linspace(0, F - 1, num_frames))``; all F frames when ``F <= num_frames``."""
    if num_source <= 0:
        raise ValueError("uniform_indices: the video has no frames")
    if num_source <= num_frames:
        return np.arange(num_source)
    return np.round(np.linspace(0, num_source - 1, num_frames)).astype(np.int64)


def _digit_expectation(probs: dict[int, float]) -> float | None:
    """Expectation over digits 1-5 of (unnormalised) probabilities; None when none is present."""
    total = sum(probs.values())
    if total <= 0:
        return None
    return sum(d * p for d, p in probs.items()) / total


class UnifiedReward:
    """UnifiedReward-2.0 pointwise video reward: ``reward(videos, prompts, fps=16) -> list[float | None]``.

    Build it with :meth:`from_pretrained` (local transformers) or :meth:`from_server` (an OpenAI-compatible server).
    Scores are in :data:`SCORE_RANGE` ``(1, 5)`` (:attr:`score_range`, for
    ``Component(reward, norm="range", range=reward.score_range)``). The local backend scores one video per forward
    (no padding: a video's score never depends on the rest of its batch); the server backend sends up to
    ``max_concurrency`` videos at once.

    Attributes:
        dimensions: the dimensions averaged into the reward.
        soft: whether scores are digit expectations (see the module docstring) instead of parsed greedy answers.
        num_videos: videos scored so far.
        num_unparsable: how many of them got None because the answer could not be parsed.
        last_answers: the raw answers of the latest call (hard mode; empty in soft mode).
        last_scores: the per-dimension scores of the latest call, one dict per video (without the dimensions that could not be parsed).
    """

    score_range: tuple[float, float] = SCORE_RANGE

    def __init__(
        self,
        model: Any = None,
        processor: Any = None,
        *,
        server: _ChatClient | None = None,
        dimensions: Sequence[str] = DIMENSIONS,
        soft: bool = False,
        num_frames: int = NUM_FRAMES,
        max_pixels: int | None = None,
        max_new_tokens: int = 64,
        prompt_template: str = DEFAULT_PROMPT,
    ) -> None:
        if (model is None) == (server is None):
            raise ValueError("UnifiedReward: give either a model and its processor, or a server client")
        if model is not None and processor is None:
            raise ValueError("UnifiedReward: a local model needs its processor")
        dims = tuple(dimensions)
        bad = [d for d in dims if d not in DIMENSIONS]
        if not dims or bad or len(set(dims)) != len(dims):
            raise ValueError(f"UnifiedReward: dimensions must be distinct names from {list(DIMENSIONS)}, got {dims}")
        if num_frames < 1:
            raise ValueError(f"UnifiedReward: num_frames must be positive, got {num_frames}")
        if max_pixels is not None and max_pixels < 1:
            raise ValueError(f"UnifiedReward: max_pixels must be positive, got {max_pixels}")
        if "{prompt}" not in prompt_template:
            raise ValueError("UnifiedReward: prompt_template must contain '{prompt}'")
        self.model = model
        self.processor = processor
        self.server = server
        self.dimensions = dims
        self.soft = soft
        self.num_frames = num_frames
        self.max_pixels = max_pixels
        self.max_new_tokens = max_new_tokens
        self.prompt_template = prompt_template
        self.num_videos = 0
        self.num_unparsable = 0
        self.last_answers: list[str] = []
        self.last_scores: list[dict[str, float]] = []
        if model is not None:
            tok = processor.tokenizer
            self._suppress = vision_token_ids(tok)
            self._digit_ids = []
            for d in range(1, 6):
                ids = tok.encode(str(d), add_special_tokens=False)
                if len(ids) != 1:
                    raise ValueError(f"UnifiedReward: the tokenizer splits the digit {d} into {ids}")
                self._digit_ids.append(ids[0])

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        attn_implementation: str | None = None,
        **kwargs: Any,
    ) -> UnifiedReward:
        """Load a local UnifiedReward-2.0 (Qwen3-VL) checkpoint folder with transformers.

        Args:
            path: a folder written by ``save_pretrained`` (model and processor).
            device, dtype, attn_implementation: as :func:`cac_align.reward.qwen.load_qwen3vl`.
            **kwargs: ``dimensions``, ``soft``, ``num_frames``, ``max_pixels``, ``max_new_tokens``,
                ``prompt_template``.
        """
        model, processor = load_qwen3vl(path, device=device, dtype=dtype, attn_implementation=attn_implementation)
        return cls(model, processor, **kwargs)

    @classmethod
    def from_server(
        cls,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 300.0,
        max_concurrency: int = 8,
        image_format: str = "png",
        top_logprobs: int = 20,
        **kwargs: Any,
    ) -> UnifiedReward:
        """Score against an OpenAI-compatible chat-completions server (vLLM, sglang or :mod:`cac_align.serve`).

        Args:
            base_url: e.g. ``http://127.0.0.1:8000`` or ``.../v1`` (``/v1/chat/completions`` is appended).
            model: the served model name.
            api_key: sent as a bearer token when given.
            timeout: seconds per request.
            max_concurrency: videos scored in parallel (one request each; soft mode: one per forced dimension).
            image_format: ``"png"`` (lossless) or ``"jpeg"`` (smaller requests).
            top_logprobs: how many alternatives soft mode asks for at each score position (vLLM's cap is 20 by
                default; the five digits are normally among them).
            **kwargs: as :meth:`from_pretrained`.
        """
        client = _ChatClient(base_url, model, api_key, timeout, max_concurrency, image_format, top_logprobs)
        return cls(server=client, **kwargs)

    # ----------------------------------------------------------------------------------------------------------------

    def __call__(
        self, videos: Any, prompts: Sequence[str] | None = None, fps: float = 16.0, **kw: Any
    ) -> list[float | None]:
        """Score each video with its generation prompt.

        Args:
            videos: ``[B, F, C, H, W]`` float in [0, 1], a list of ``[F, C, H, W]`` tensors, or a list of video
                file paths.
            prompts: the generation prompt of each video (required).
            fps: the tensors' frame rate; unused (frames are sampled by count), accepted for the call convention.
            **kw: other reward keywords (e.g. ``group_ids``), ignored.

        Returns:
            Per video, the mean of the selected dimensions' scores in [1, 5], or None where the answer was
            unparsable.
        """
        if prompts is None:
            raise ValueError("UnifiedReward: prompts are required (the score rates the video against its prompt)")
        if isinstance(videos, torch.Tensor) and videos.ndim != 5:
            raise ValueError(f"UnifiedReward: expected videos [B, F, C, H, W], got shape {tuple(videos.shape)}")
        items = list(videos)
        if len(prompts) != len(items):
            raise ValueError(f"UnifiedReward: got {len(prompts)} prompts for {len(items)} videos")
        jobs = [(self.frames(v), str(p)) for v, p in zip(items, prompts, strict=True)]
        if self.server is not None:
            with ThreadPoolExecutor(max_workers=self.server.max_concurrency) as pool:
                results = list(pool.map(lambda job: self._score_one(*job), jobs))
        else:
            results = [self._score_one(*job) for job in jobs]

        self.last_answers = [a for _, a in results if a is not None]
        self.last_scores = [s for s, _ in results]
        out: list[float | None] = []
        for i, (scores, answer) in enumerate(results):
            self.num_videos += 1
            if all(d in scores for d in self.dimensions):
                out.append(sum(scores[d] for d in self.dimensions) / len(self.dimensions))
                continue
            self.num_unparsable += 1
            missing = [d for d in self.dimensions if d not in scores]
            shown = "(soft: no digit among the returned top_logprobs)" if answer is None else repr(answer[:300])
            logger.warning("UnifiedReward: video %d: no score for %s in the answer %s; reward None", i, missing, shown)
            out.append(None)
        return out

    def log(self, prefix: str = "unified_reward") -> dict[str, float]:
        """Logger scalars of the latest call: None count, per-dimension means, and the running unparsable total."""
        out = {
            f"{prefix}/none": float(sum(not all(d in s for d in self.dimensions) for s in self.last_scores)),
            f"{prefix}/unparsable_total": float(self.num_unparsable),
        }
        for d in DIMENSIONS:
            vals = [s[d] for s in self.last_scores if d in s]
            if vals:
                out[f"{prefix}/{d}_mean"] = sum(vals) / len(vals)
        return out

    def question(self, prompt: str) -> str:
        """The text part of the user turn for a generation prompt."""
        return self.prompt_template.replace("{prompt}", prompt)

    def frames(self, video: Any) -> list[np.ndarray]:
        """The frames sent to the judge: uint8 ``[H, W, 3]`` arrays, uniformly sampled, optionally downsized."""
        from PIL import Image

        if isinstance(video, (str, Path)):
            video = load_video(video, None).frames  # every frame of the file, then the uniform pick below
        (video,) = as_video_list([video])
        picked = to_uint8(video[torch.as_tensor(uniform_indices(video.shape[0], self.num_frames))])
        frames = list(picked)
        h, w = frames[0].shape[:2]
        if self.max_pixels is not None and h * w > self.max_pixels:
            s = math.sqrt(self.max_pixels / (h * w))
            size = (max(1, int(w * s)), max(1, int(h * s)))
            frames = [np.asarray(Image.fromarray(f).resize(size, Image.Resampling.BICUBIC)) for f in frames]
        return frames

    def _score_one(self, frames: list[np.ndarray], prompt: str) -> tuple[dict[str, float], str | None]:
        """(per-dimension scores, the raw answer or None in soft mode) of one video."""
        question = self.question(prompt)
        if self.soft:
            scores: dict[str, float] = {}
            answer = ""
            last = max(DIMENSIONS.index(d) for d in self.dimensions)
            for dim in DIMENSIONS[: last + 1]:
                prefix = answer + score_prefix(dim)
                if self.server is not None:
                    value = self.server.soft_score(frames, question, prefix)
                else:
                    value = self._local_soft(frames, question, prefix)
                if value is None:
                    return scores, None
                scores[dim] = value
                answer = prefix + f"{value:.1f}\n"
            return scores, None
        if self.server is not None:
            answer = self.server.answer(frames, question, self.max_new_tokens)
        else:
            answer = self._local_answer(frames, question)
        return parse_scores(answer), answer

    # -- local transformers backend ----------------------------------------------------------------------------------

    def _inputs(self, frames: list[np.ndarray], question: str, answer_prefix: str | None):
        from PIL import Image

        conv = [{"role": "user", "content": [{"type": "image"}] * len(frames) + [{"type": "text", "text": question}]}]
        text = self.processor.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        if answer_prefix is not None:
            text += answer_prefix
        images = [Image.fromarray(f) for f in frames]
        return self.processor(text=[text], images=images, return_tensors="pt").to(self.model.device)

    @torch.inference_mode()
    def _local_answer(self, frames: list[np.ndarray], question: str) -> str:
        inputs = self._inputs(frames, question, None)
        out = self.model.generate(
            **inputs, max_new_tokens=self.max_new_tokens, do_sample=False, suppress_tokens=self._suppress
        )
        return self.processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    @torch.inference_mode()
    def _local_soft(self, frames: list[np.ndarray], question: str, answer_prefix: str) -> float:
        inputs = self._inputs(frames, question, answer_prefix)
        logits = self.model(**inputs, logits_to_keep=1).logits[0, -1].float()
        probs = torch.softmax(logits[self._digit_ids], dim=-1).tolist()
        return float(sum((d + 1) * p for d, p in enumerate(probs)))


class _ChatClient:
    """The OpenAI-compatible chat-completions calls of :meth:`UnifiedReward.from_server` (stdlib HTTP)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None,
        timeout: float,
        max_concurrency: int,
        image_format: str,
        top_logprobs: int,
    ) -> None:
        if image_format not in ("png", "jpeg"):
            raise ValueError(f"UnifiedReward.from_server: image_format must be 'png' or 'jpeg', got {image_format!r}")
        if max_concurrency < 1 or top_logprobs < 1:
            raise ValueError("UnifiedReward.from_server: max_concurrency and top_logprobs must be positive")
        base = base_url.rstrip("/")
        self.url = (base if base.endswith("/v1") else base + "/v1") + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.timeout = timeout
        self.max_concurrency = max_concurrency
        self.image_format = image_format
        self.top_logprobs = top_logprobs

    def _messages(self, frames: list[np.ndarray], question: str) -> list[dict[str, Any]]:
        from cac_align.serve import encode_image_url

        parts: list[dict[str, Any]] = [
            {"type": "image_url", "image_url": {"url": encode_image_url(f, self.image_format)}} for f in frames
        ]
        parts.append({"type": "text", "text": question})
        return [{"role": "user", "content": parts}]

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        from cac_align.serve import post_json

        answer = post_json(self.url, {"model": self.model, **body}, timeout=self.timeout, api_key=self.api_key)
        choices = answer.get("choices")
        if not isinstance(choices, list) or not choices:
            raise RuntimeError(f"{self.url}: answer without choices: {str(answer)[:300]}")
        return choices[0]

    def answer(self, frames: list[np.ndarray], question: str, max_tokens: int) -> str:
        choice = self._post({"messages": self._messages(frames, question), "max_tokens": max_tokens, "temperature": 0})
        return choice.get("message", {}).get("content") or ""

    def soft_score(self, frames: list[np.ndarray], question: str, answer_prefix: str) -> float | None:
        messages = self._messages(frames, question) + [{"role": "assistant", "content": answer_prefix}]
        choice = self._post(
            {
                "messages": messages,
                "continue_final_message": True,
                "add_generation_prompt": False,
                "max_tokens": 1,
                "temperature": 0,
                "logprobs": True,
                "top_logprobs": self.top_logprobs,
            }
        )
        content = (choice.get("logprobs") or {}).get("content") or []
        if not content:
            raise RuntimeError(f"{self.url}: no logprobs in the answer; does the server support logprobs?")
        probs: dict[int, float] = {}
        for alt in content[0].get("top_logprobs") or []:
            token = str(alt.get("token", "")).strip()
            if token in ("1", "2", "3", "4", "5"):
                probs[int(token)] = probs.get(int(token), 0.0) + math.exp(float(alt["logprob"]))
        return _digit_expectation(probs)
