"""RemoteReward: a reward callable that scores videos on a reward server (``POST /reward`` of cac_align.serve).

Heavy reward models often live in their own process or machine (their own environment, their own GPU; anchors:
flow_grpo's reward-server, Flow-Factory's reward_server). ``cac-align serve-reward --model PATH --port P`` starts
such a server; ``RemoteReward("http://host:P")`` is then used exactly like a local reward::

    reward = RemoteReward("http://127.0.0.1:8100")
    scores = reward(videos, prompts, fps=16)    # list[float | None]

Tensors travel as uint8 by default (``round(255 x)``: 4x smaller than float32 and what a VLM reward quantises to
anyway); ``dtype="float32"`` sends them exactly. File paths are sent as the file's bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from cac_align.serve import encode_videos, post_json


class RemoteReward:
    """Client of a ``POST /reward`` server; a reward callable ``reward(videos, prompts=None, **kw)``.

    Args:
        url: the server's base URL, e.g. ``http://127.0.0.1:8100`` (``/reward`` is appended).
        dtype: tensor transport, ``"uint8"`` or ``"float32"``.
        timeout: seconds to wait for one call's answer.
        api_key: sent as a bearer token when given (for servers behind an authenticating proxy).
    """

    def __init__(self, url: str, dtype: str = "uint8", timeout: float = 600.0, api_key: str | None = None) -> None:
        if dtype not in ("uint8", "float32"):
            raise ValueError(f"RemoteReward: dtype must be 'uint8' or 'float32', got {dtype!r}")
        self.url = url.rstrip("/")
        self.dtype = dtype
        self.timeout = timeout
        self.api_key = api_key

    def __call__(self, videos: Any, prompts: Sequence[str] | None = None, **kw: Any) -> list[float | None]:
        """Score a batch remotely.

        Args:
            videos: ``[B, F, C, H, W]`` float in [0, 1], a list of ``[F, C, H, W]`` tensors, or a list of paths.
            prompts: one prompt per video, or None.
            **kw: JSON-serialisable keyword arguments for the remote reward (e.g. ``fps=16``).

        Returns:
            One score or None per video, as the remote reward returned them.
        """
        body = {"videos": encode_videos(videos, self.dtype), "prompts": None if prompts is None else list(prompts)}
        body["kwargs"] = kw
        answer = post_json(f"{self.url}/reward", body, timeout=self.timeout, api_key=self.api_key)
        scores = answer.get("scores")
        if not isinstance(scores, list) or len(scores) != len(body["videos"]):
            raise RuntimeError(f"{self.url}/reward: expected {len(body['videos'])} scores, got {scores!r}")
        out: list[float | None] = []
        for i, s in enumerate(scores):
            if s is None:
                out.append(None)
            elif isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s):
                out.append(float(s))
            else:
                raise RuntimeError(f"{self.url}/reward: score {i} is {s!r}, expected a number or null")
        return out
