"""Video I/O, uniform sampling and the turn-2 crop rule (paper Sec. 3.4, App. C.1).

One convention at every public boundary: float frames in [0, 1], shaped ``[F, C, H, W]`` for one video and
``[B, F, C, H, W]`` for a batch. Conversions to uint8 / THWC happen only at the edges (decoding, encoding, processors).

Sampling rule: sampling a video at ``fps`` over ``[start, end)`` seconds takes the times
``t_k = start + k / fps`` (``t_k < end``) and, for each, the source frame on screen at that time,
``floor(t_k * src_fps)``. The 4 fps annotation sequence of a video is ``sample_times(0, duration, 4)``.

Crop rule (turn 2): a turn-1 window ``[s, e]`` of the 4 fps sequence covers the times ``[s / fps, (e + 1) / fps)``;
turn 2 resamples that span at 8 fps, so clip frame ``k`` is at time ``s / fps + k / 8``. A frame ``j`` of the 4 fps
sequence matches the clip frame nearest to its time ``j / fps`` (``k = 2 (j - s)`` at 4 fps). Training (stage 2 clips,
stage 3 rollouts), inference (CaCReward) and the spatial reward all use :func:`crop_window` and :func:`clip_frame_of`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from cac_align.utils import atomic_path

TURN1_FPS = 4.0
TURN2_FPS = 8.0
_EPS = 1e-6


class VideoReadError(ValueError):
    """A file that is not a readable video; the message names the file."""


class Sampled(NamedTuple):
    """Frames ``[F, C, H, W]`` float in [0, 1], their source timestamps in seconds ``[F]`` and the source fps."""

    frames: torch.Tensor
    timestamps: torch.Tensor
    src_fps: float


def sample_times(start: float, end: float, fps: float) -> np.ndarray:
    """Uniform sample times ``start + k / fps`` for every k with the time strictly before ``end``."""
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    n = max(0, math.ceil((end - start) * fps - _EPS))
    return start + np.arange(n, dtype=np.float64) / fps


def source_indices(times: np.ndarray, src_fps: float, num_frames: int) -> np.ndarray:
    """The source frame on screen at each time: ``floor(t * src_fps)``, clamped to the video."""
    idx = np.floor(np.asarray(times) * src_fps + _EPS).astype(np.int64)
    return np.clip(idx, 0, max(num_frames - 1, 0))


def crop_window(start: int, end: int, fps: float = TURN1_FPS, clip_fps: float = TURN2_FPS) -> np.ndarray:
    """Times of the turn-2 clip for an inclusive window ``[start, end]`` of the ``fps`` sequence.

    The window covers ``[start / fps, (end + 1) / fps)``; clip frame ``k`` is at ``start / fps + k / clip_fps``.
    """
    if not 0 <= start <= end:
        raise ValueError(f"expected a window with 0 <= start <= end, got [{start}, {end}]")
    return sample_times(start / fps, (end + 1) / fps, clip_fps)


def clip_frame_of(j: int, start: int, fps: float = TURN1_FPS, clip_fps: float = TURN2_FPS) -> int:
    """The clip frame nearest to the time ``j / fps`` of frame ``j`` of the ``fps`` sequence (crop at ``start``)."""
    return int(math.floor((j - start) * clip_fps / fps + 0.5))


def sample_frames(
    frames: torch.Tensor, src_fps: float, fps: float, start: float | None = None, end: float | None = None
) -> Sampled:
    """Sample a decoded video ``[F, C, H, W]`` at ``fps`` over ``[start, end)`` seconds (the sampling rule above).

    Used for tensors handed to rewards (Wan writes 16 fps) exactly as :func:`load_video` uses it for files.
    """
    if frames.ndim != 4:
        raise ValueError(f"expected frames [F, C, H, W], got shape {tuple(frames.shape)}")
    n = frames.shape[0]
    duration = n / src_fps
    t0 = 0.0 if start is None else max(0.0, float(start))
    t1 = duration if end is None else min(duration, float(end))
    times = sample_times(t0, t1, fps)
    if len(times) == 0 and n > 0:  # a window shorter than one sample period still yields its first frame
        times = np.array([min(t0, duration - 1.0 / src_fps)])
    idx = source_indices(times, src_fps, n)
    return Sampled(frames[torch.as_tensor(idx)], torch.as_tensor(idx / src_fps, dtype=torch.float64), float(src_fps))


def probe_video(path: str | Path) -> tuple[int, float, int, int]:
    """(number of frames, fps, height, width) of a video file."""
    import av

    path = Path(path)
    try:
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            fps = float(s.average_rate or s.base_rate or 0)
            n = s.frames or sum(1 for _ in c.decode(video=0))
            return n, fps, s.height, s.width
    except (av.error.FFmpegError, IndexError, OSError, ValueError) as e:
        raise VideoReadError(f"{path}: not a readable video ({e.__class__.__name__}: {e})") from None


def decode_video(path: str | Path) -> tuple[np.ndarray, float]:
    """All frames of a file as uint8 ``[F, H, W, 3]`` and the stream's fps. Raises VideoReadError naming the file."""
    import av

    path = Path(path)
    if not path.is_file():
        raise VideoReadError(f"{path}: no such video file")
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise VideoReadError(f"{path}: has no video stream")
            s = c.streams.video[0]
            s.thread_type = "AUTO"
            fps = float(s.average_rate or s.base_rate or 0)
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise VideoReadError(f"{path}: not a readable video ({e.__class__.__name__}: {e})") from None
    if not frames:
        raise VideoReadError(f"{path}: contains no decodable frames")
    if fps <= 0:
        raise VideoReadError(f"{path}: stream has no frame rate")
    return np.stack(frames), fps


def load_video(path: str | Path, fps: float, start: float | None = None, end: float | None = None) -> Sampled:
    """Load a video file sampled uniformly at ``fps`` over ``[start, end)`` seconds.

    Returns ``Sampled(frames [F, C, H, W] float in [0, 1], timestamps [F] in seconds, src_fps)``.
    Raises :class:`VideoReadError` (naming the file) for anything that is not a readable video.
    """
    raw, src_fps = decode_video(path)
    frames = torch.from_numpy(raw).permute(0, 3, 1, 2)
    s = sample_frames(frames, src_fps, fps, start, end)
    return Sampled(s.frames.float().div_(255.0), s.timestamps, s.src_fps)


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """``[F, C, H, W]`` float in [0, 1] -> uint8 ``[F, H, W, C]`` (the edge conversion)."""
    if frames.ndim != 4 or frames.shape[1] not in (1, 3):
        raise ValueError(f"expected frames [F, C, H, W] with C in (1, 3), got shape {tuple(frames.shape)}")
    x = frames.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def save_video(frames: torch.Tensor, path: str | Path, fps: float, crf: int = 18) -> Path:
    """Write ``[F, C, H, W]`` float frames in [0, 1] to an H.264 mp4, atomically. Odd sizes are padded by one pixel."""
    import av

    rgb = to_uint8(frames)
    h, w = rgb.shape[1:3]
    ph, pw = h + h % 2, w + w % 2  # yuv420p needs even sizes
    if (ph, pw) != (h, w):
        rgb = np.pad(rgb, ((0, 0), (0, ph - h), (0, pw - w), (0, 0)), mode="edge")
    path = Path(path)
    rate = _rate(fps)
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as c:
            s = c.add_stream("libx264", rate=rate)
            s.width, s.height, s.pix_fmt = pw, ph, "yuv420p"
            s.options = {"crf": str(crf)}
            for f in rgb:
                for pkt in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    c.mux(pkt)
            for pkt in s.encode():
                c.mux(pkt)
    return path


def _rate(fps: float):
    from fractions import Fraction

    return Fraction(fps).limit_denominator(1001)
