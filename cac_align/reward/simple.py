"""Simple known rewards computed from pixels: mean brightness, closeness to a target colour or to a reference video.

They are not in the paper. They serve as rewards whose optimum is known, so a Flow-GRPO run on a tiny Wan can be
checked to learn (``experiments/flow_grpo_brightness.py``) and recipes can be smoke-tested without a reward model.
Both follow the reward convention ``fn(videos, prompts=None, **kw) -> list[float]`` and declare their score range
in ``score_range`` (for ``Component(fn, norm="range", range=fn.score_range)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from cac_align.video import as_video_list, load_video


class Brightness:
    """Mean pixel value of each video over frames, channels and pixels: a score in [0, 1] (1 = all white)."""

    score_range: tuple[float, float] = (0.0, 1.0)

    def __call__(self, videos: Any, prompts: Sequence[str] | None = None, **kw: Any) -> list[float]:
        """Score ``[B, F, C, H, W]`` float videos in [0, 1] (or a list of ``[F, C, H, W]``); prompts are ignored."""
        return [float(v.float().mean()) for v in as_video_list(videos)]


class ColorTarget:
    """Closeness of every pixel to a target RGB colour: ``1 - mean_pixels ||rgb - target||_2 / max_distance``.

    ``max_distance`` is the largest possible distance from the target inside the RGB cube, so the score is in [0, 1]
    and reaches 1 only when every pixel of every frame equals the target.

    Args:
        rgb: the target colour, three values in [0, 1] (default pure red).
    """

    score_range: tuple[float, float] = (0.0, 1.0)

    def __init__(self, rgb: Sequence[float] = (1.0, 0.0, 0.0)) -> None:
        values = [float(c) for c in rgb]
        if len(values) != 3 or not all(0.0 <= c <= 1.0 for c in values):
            raise ValueError(f"ColorTarget: rgb must be three values in [0, 1], got {list(rgb)}")
        self.rgb = tuple(values)
        # the cube corner farthest from the target, per channel
        self.max_distance = math.sqrt(sum(max(c, 1.0 - c) ** 2 for c in values))

    def __call__(self, videos: Any, prompts: Sequence[str] | None = None, **kw: Any) -> list[float]:
        """Score ``[B, F, C, H, W]`` float RGB videos in [0, 1] (or a list of ``[F, C, H, W]``); prompts are ignored."""
        out = []
        for i, v in enumerate(as_video_list(videos)):
            if v.shape[1] != 3:
                raise ValueError(f"ColorTarget: videos[{i}] has {v.shape[1]} channels, expected RGB (3)")
            target = torch.tensor(self.rgb, dtype=torch.float32, device=v.device).view(1, 3, 1, 1)
            dist = (v.float() - target).square().sum(dim=1).sqrt()  # [F, H, W]
            out.append(float(1.0 - dist.mean() / self.max_distance))
        return out


class ReferenceVideo:
    """Closeness to a reference video, frame by frame and pixel by pixel: ``1 - mean |video - reference|`` in [0, 1].

    Its optimum (1) is the reference itself. Unlike brightness or a colour target, it rewards the spatial pattern,
    which even a randomly initialised video decoder responds to strongly, so it is the known reward a tiny random
    Wan can be trained on.

    Args:
        path: the reference video file (all its frames are used), or give ``frames``.
        frames: the reference ``[F, C, H, W]`` float in [0, 1].
    """

    score_range: tuple[float, float] = (0.0, 1.0)

    def __init__(self, path: str | None = None, frames: torch.Tensor | None = None) -> None:
        if (path is None) == (frames is None):
            raise ValueError("ReferenceVideo: give either path (a video file) or frames")
        self.frames = load_video(path, fps=None).frames if path is not None else as_video_list([frames])[0]

    def __call__(self, videos: Any, prompts: Sequence[str] | None = None, **kw: Any) -> list[float]:
        """Score ``[B, F, C, H, W]`` float videos in [0, 1] (or a list of ``[F, C, H, W]``) of the reference's shape."""
        out = []
        for i, v in enumerate(as_video_list(videos)):
            if v.shape != self.frames.shape:
                raise ValueError(
                    f"ReferenceVideo: videos[{i}] has shape {tuple(v.shape)}, the reference {tuple(self.frames.shape)}"
                )
            out.append(float(1.0 - (v.float() - self.frames.to(v.device)).abs().mean()))
        return out
