"""Video I/O, uniform sampling and the turn-2 crop rule (paper Sec. 3.4, App. C.1).

One convention at every public boundary: float frames in [0, 1], shaped ``[F, C, H, W]`` (C = 3, RGB) for one video
and ``[B, F, C, H, W]`` for a batch. Conversions to uint8 / THWC happen only at the edges (decoding, encoding,
processors). :func:`as_video_list` checks and normalises what callers hand in.

Sampling rule: sampling a video at ``fps`` over ``[start, end)`` seconds takes the times ``t_k = start + k / fps``
(``t_k < end``) and, for each, the source frame on screen at that time, ``floor(t_k * src_fps)``; samples past the
last source frame are dropped, so ``end`` may run past the video. The 4 fps annotation sequence of a video is
``load_video(path, 4)`` (Sec. 3.1: "uniformly downsample each video"). A file is treated as constant frame rate at its
stream's average rate.

Crop rule (turn 2): a turn-1 window ``[s, e]`` of the 4 fps sequence covers the times ``[s / fps, (e + 1) / fps)``;
turn 2 resamples that span at 8 fps, so clip frame ``k`` is at time ``s / fps + k / 8``. A frame ``j`` of the 4 fps
sequence matches the clip frame nearest to its time ``j / fps`` (``k = 2 (j - s)`` at 4 fps). Training (stage 2 clips,
stage 3 rollouts), inference (CaCReward) and the spatial reward all use :func:`crop_window` and :func:`clip_frame_of`;
:func:`crop_clip` cuts the clip itself.
"""

from __future__ import annotations

import math
from fractions import Fraction
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
    """Frames ``[F, C, H, W]`` float in [0, 1], their source timestamps in seconds ``[F]`` and the source fps.

    ``timestamps[i]`` is the presentation time ``index / src_fps`` of the source frame shown (not the sample time,
    which may fall anywhere during that frame); :attr:`indices` gives the source frame indices themselves (what
    ``VideoMetadata.frames_indices`` of the Qwen3-VL processor expects).
    """

    frames: torch.Tensor
    timestamps: torch.Tensor
    src_fps: float

    @property
    def indices(self) -> torch.Tensor:
        """Source frame indices ``[F]`` (int64) of the sampled frames."""
        return torch.round(self.timestamps * self.src_fps).long()


def num_samples(start: float, end: float, fps: float) -> int:
    """How many sample times ``start + k / fps`` lie strictly before ``end``."""
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return max(0, math.ceil((end - start) * fps - _EPS))


def sample_times(start: float, end: float, fps: float) -> np.ndarray:
    """Uniform sample times ``start + k / fps`` for every k with the time strictly before ``end``."""
    return start + np.arange(num_samples(start, end, fps), dtype=np.float64) / fps


def crop_window(start: int, end: int, fps: float = TURN1_FPS, clip_fps: float = TURN2_FPS) -> np.ndarray:
    """Times (seconds) of the turn-2 clip for an inclusive window ``[start, end]`` of the ``fps`` sequence (Sec. 3.4).

    The window covers ``[start / fps, (end + 1) / fps)``; clip frame ``k`` is at ``start / fps + k / clip_fps``.
    At 4 -> 8 fps a window of ``n`` frames gives ``2 n`` clip frames. A clip cut from a video may be shorter than
    this when the window runs past the video's last frame (:func:`crop_clip` drops those times).
    """
    if not 0 <= start <= end:
        raise ValueError(f"expected a window with 0 <= start <= end, got [{start}, {end}]")
    return sample_times(start / fps, (end + 1) / fps, clip_fps)


def clip_frame_of(j: int, start: int, fps: float = TURN1_FPS, clip_fps: float = TURN2_FPS) -> int:
    """The clip frame nearest to the time ``j / fps`` of frame ``j`` of the ``fps`` sequence (crop at ``start``).

    ``round((j - start) * clip_fps / fps)`` (halves round up); ``2 (j - start)`` at 4 -> 8 fps. Only frames inside
    the window ``[start, end]`` are meaningful; when ``clip_fps < fps`` the result for ``j = end`` can be one past the
    clip, so callers clamp to ``len(crop_window(start, end)) - 1``.
    """
    return int(math.floor((j - start) * clip_fps / fps + 0.5))


def _check_span(fps: float, start: float | None, end: float | None) -> tuple[float, float | None]:
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    t0 = 0.0 if start is None else float(start)
    if t0 < 0:
        raise ValueError(f"start must be >= 0 seconds, got {start}")
    if end is not None and not end > t0:
        raise ValueError(f"expected end > start, got [{t0}, {end})")
    return t0, None if end is None else float(end)


def _plan(t0: float, t1: float | None, fps: float, src_fps: float, num_frames: int) -> np.ndarray:
    """Source indices of the samples ``t0 + k / fps`` (``< t1``, or open-ended) whose frame exists."""
    bound = num_frames / src_fps + 1.0 / fps  # past the last frame: later samples cannot exist
    idx = np.floor(sample_times(t0, bound if t1 is None else min(t1, bound), fps) * src_fps + _EPS).astype(np.int64)
    return idx[idx < num_frames]


def _source_index(t0: float, k: int, fps: float, src_fps: float) -> int:
    """Source frame of sample ``k`` (time ``t0 + k / fps``); the same float operations as :func:`_plan`."""
    return math.floor((t0 + k / fps) * src_fps + _EPS)


def sample_frames(
    frames: torch.Tensor, src_fps: float, fps: float, start: float | None = None, end: float | None = None
) -> Sampled:
    """Sample a decoded video ``[F, C, H, W]`` at ``fps`` over ``[start, end)`` seconds (the sampling rule above).

    Used for tensors handed to rewards (Wan writes 16 fps) exactly as :func:`load_video` uses it for files: both
    give the same frames and timestamps for the same source frames.

    Raises:
        ValueError: bad shape or rates, ``end <= start``, or a window that starts after the last frame.
    """
    if frames.ndim != 4:
        raise ValueError(f"expected frames [F, C, H, W], got shape {tuple(frames.shape)}")
    if not src_fps > 0:
        raise ValueError(f"src_fps must be positive, got {src_fps}")
    t0, t1 = _check_span(fps, start, end)
    n = frames.shape[0]
    idx = _plan(t0, t1, fps, src_fps, n)
    if len(idx) == 0:
        raise ValueError(f"window [{t0}, {t1}) s holds no frame of a {n}-frame video at {src_fps} fps")
    return Sampled(frames[torch.from_numpy(idx)], torch.from_numpy(idx / src_fps), float(src_fps))


def crop_clip(
    frames: torch.Tensor | str | Path,
    src_fps: float | None,
    start: int,
    end: int,
    fps: float = TURN1_FPS,
    clip_fps: float = TURN2_FPS,
) -> Sampled:
    """The turn-2 clip (Sec. 3.4) of window ``[start, end]`` of the ``fps`` sequence, resampled at ``clip_fps``.

    Its frames are the source frames at the times of :func:`crop_window`, minus any past the video's last frame.

    Args:
        frames: a decoded video ``[F, C, H, W]`` float in [0, 1], or the path of a video file.
        src_fps: the frame rate of ``frames``; ``None`` for a file (its own rate is used).
        start, end: inclusive frame indices of the ``fps`` sequence (turn 1's predicted window).
        fps: the rate of the sequence the window indexes (the annotation / turn-1 rate).
        clip_fps: the turn-2 sampling rate.

    Raises:
        ValueError: an invalid window, or one that starts after the video ends.
        VideoReadError: a file that is not a readable video.
    """
    crop_window(start, end, fps, clip_fps)  # validates the window; the samples below are its times t0 + k / clip_fps
    t0, t1 = start / fps, (end + 1) / fps
    if isinstance(frames, (str, Path)):
        if src_fps is not None:
            raise ValueError(f"{frames}: pass src_fps=None for a file; its frame rate is read from the file")
        return load_video(frames, clip_fps, t0, t1)
    if src_fps is None:
        raise ValueError("src_fps is required when frames is a tensor")
    return sample_frames(frames, src_fps, clip_fps, t0, t1)


def as_video_list(videos: torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """Normalise the public video inputs to a list of ``[F, C, H, W]`` float tensors in [0, 1].

    Accepts a float tensor ``[B, F, C, H, W]`` or a list/tuple of ``[F, C, H, W]`` float tensors (lengths may
    differ). Raises a ValueError naming the offending video for anything else: uint8 frames, other shapes (a single
    ``[F, C, H, W]`` video must be wrapped as ``[video]``), channels last, values outside [0, 1] or non-finite.
    """
    if isinstance(videos, torch.Tensor):
        if videos.ndim != 5:
            hint = "; wrap a single video as [video] or video[None]" if videos.ndim == 4 else ""
            raise ValueError(f"expected videos [B, F, C, H, W], got shape {tuple(videos.shape)}{hint}")
        out = list(videos.unbind(0))
    elif isinstance(videos, (list, tuple)):
        out = list(videos)
    else:
        raise ValueError(f"expected a tensor [B, F, C, H, W] or a list of [F, C, H, W] tensors, got {type(videos)}")
    for i, v in enumerate(out):
        _check_frames(v, f"videos[{i}]")
    return out


def _check_frames(v: object, name: str, channels: tuple[int, ...] = (3,)) -> None:
    """Raise a ValueError naming ``name`` unless ``v`` is a float tensor ``[F >= 1, C, H, W]`` in [0, 1]."""
    if not isinstance(v, torch.Tensor):
        raise ValueError(f"{name}: expected a float tensor [F, C, H, W], got {type(v)}")
    if v.dtype == torch.uint8:
        raise ValueError(f"{name}: got uint8 frames; pass floats in [0, 1] (divide by 255)")
    if not v.is_floating_point():
        raise ValueError(f"{name}: expected a float tensor in [0, 1], got dtype {v.dtype}")
    if v.ndim != 4 or v.shape[1] not in channels:
        hint = "; channels last? use .permute(0, 3, 1, 2)" if v.ndim == 4 and v.shape[-1] in channels else ""
        c = " or ".join(map(str, channels))
        raise ValueError(f"{name}: expected [F, C, H, W] with C = {c}, got shape {tuple(v.shape)}{hint}")
    if v.shape[0] == 0 or v.shape[2] == 0 or v.shape[3] == 0:
        raise ValueError(f"{name}: empty video of shape {tuple(v.shape)}")
    lo, hi = torch.aminmax(v.detach())
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name}: contains NaN or inf")
    if lo < 0 or hi > 1:
        hint = "; looks like [-1, 1], map with (x + 1) / 2" if lo < 0 and hi <= 1 else ""
        hint = "; looks like [0, 255], divide by 255" if hi > 1 and lo >= 0 else hint
        raise ValueError(f"{name}: values must lie in [0, 1], got [{lo:.4g}, {hi:.4g}]{hint}")


def _open_error(path: Path, e: Exception) -> VideoReadError:
    return VideoReadError(f"{path}: not a readable video ({e.__class__.__name__}: {e})")


def _check_file(path: Path) -> None:
    if path.is_dir():
        raise VideoReadError(f"{path}: is a directory, not a video file")
    if not path.is_file():
        raise VideoReadError(f"{path}: no such video file")
    if path.stat().st_size == 0:
        raise VideoReadError(f"{path}: empty file, not a video")


def _stream_fps(stream, path: Path) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or rate <= 0:
        raise VideoReadError(f"{path}: video stream has no frame rate")
    return float(rate)


def probe_video(path: str | Path) -> tuple[int, float, int, int]:
    """(number of frames, fps, height, width) of a video file, without decoding it (the frame count comes from the
    container header, else from counting packets). Raises :class:`VideoReadError` naming the file."""
    import av

    path = Path(path)
    _check_file(path)
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise VideoReadError(f"{path}: has no video stream")
            s = c.streams.video[0]
            fps = _stream_fps(s, path)
            n = s.frames or sum(1 for p in c.demux(s) if p.size)
            h, w = s.codec_context.height, s.codec_context.width
    except av.error.FFmpegError as e:
        raise _open_error(path, e) from None
    if n == 0:
        raise VideoReadError(f"{path}: contains no frames")
    return n, fps, h, w


def load_video(path: str | Path, fps: float | None, start: float | None = None, end: float | None = None) -> Sampled:
    """Load a video file sampled uniformly at ``fps`` over ``[start, end)`` seconds (the sampling rule above).

    Decodes the file once, keeping only the sampled frames (memory holds the output, not the whole video) and
    stopping after the last one. ``fps=None`` keeps every frame (the file's own rate). ``end`` may run past the video.

    Returns:
        ``Sampled(frames [F, C, H, W] float in [0, 1], timestamps [F] in seconds, src_fps)``; identical to
        :func:`sample_frames` on the fully decoded video.

    Raises:
        VideoReadError: (naming the file) anything that is not a readable video: missing, a directory, empty, not a
            video container, no video stream, truncated or corrupt data.
        ValueError: bad arguments, or a window that starts after the last frame.
    """
    import av

    path = Path(path)
    _check_file(path)
    if fps is not None:
        _check_span(fps, start, end)
    kept: list[np.ndarray] = []
    idx_kept: list[int] = []
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise VideoReadError(f"{path}: has no video stream")
            s = c.streams.video[0]
            s.thread_type = "AUTO"
            src_fps = _stream_fps(s, path)
            rate = src_fps if fps is None else fps
            t0, t1 = _check_span(rate, start, end)
            kmax = math.inf if t1 is None else num_samples(t0, t1, rate)
            header_frames = s.frames
            k = 0  # next sample; its source frame is floor(t_k * src_fps), the arithmetic of sample_times/_plan
            i = -1  # index of the last decoded frame
            for i, frame in enumerate(c.decode(s)):
                if k < kmax and _source_index(t0, k, rate, src_fps) == i:
                    rgb = frame.to_ndarray(format="rgb24")
                    while k < kmax and _source_index(t0, k, rate, src_fps) == i:
                        kept.append(rgb)
                        idx_kept.append(i)
                        k += 1
                if k >= kmax:
                    break
            else:  # decoded to the end of the file
                if i < 0:
                    raise VideoReadError(f"{path}: contains no decodable frames")
                if header_frames and i + 1 < header_frames:
                    raise VideoReadError(f"{path}: truncated, decoded {i + 1} of the {header_frames} frames it lists")
    except av.error.FFmpegError as e:
        raise _open_error(path, e) from None
    if not kept:
        raise ValueError(
            f"{path}: window [{t0}, {t1}) s holds no frame of the video ({i + 1} frames at {src_fps} fps)"
        )
    frames = torch.from_numpy(np.stack(kept)).permute(0, 3, 1, 2).float().div_(255.0)
    return Sampled(frames, torch.tensor(idx_kept, dtype=torch.float64) / src_fps, src_fps)


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """``[F, C, H, W]`` float in [0, 1] -> uint8 RGB ``[F, H, W, 3]`` (the edge conversion; rounds to nearest).

    ``C`` is 3 (RGB) or 1 (grey, repeated to RGB).
    """
    _check_frames(frames, "frames", channels=(1, 3))
    x = frames.detach().float().mul(255).round().to(torch.uint8).cpu().expand(-1, 3, -1, -1)
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def save_video(frames: torch.Tensor, path: str | Path, fps: float | Fraction, crf: int = 18) -> Path:
    """Write ``[F, C, H, W]`` float frames in [0, 1] (C = 3, or 1 for grey) to an H.264 ``.mp4`` at ``fps``, atomically.

    Even sizes are written as yuv420p (what every player reads); odd sizes, which 4:2:0 chroma cannot hold, as
    yuv444p, so the file keeps the exact ``H x W``. ``crf`` is libx264's quality (0 = lossless in YUV, 18 = visually
    lossless). The file appears only once complete; a failed write leaves any previous file in place.
    """
    import av

    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise ValueError(f"{path}: save_video writes mp4; expected a path ending in .mp4")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    rgb = to_uint8(frames)
    h, w = rgb.shape[1:3]
    pix_fmt = "yuv420p" if h % 2 == 0 and w % 2 == 0 else "yuv444p"
    rate = Fraction(fps).limit_denominator(1001)
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as c:
            s = c.add_stream("libx264", rate=rate)
            s.width, s.height, s.pix_fmt = w, h, pix_fmt
            # mbtree off: libx264's macroblock-tree rate control gave different files for the same frames
            s.options = {"crf": str(crf), "x264-params": "mbtree=0"}
            for f in rgb:
                c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
            c.mux(s.encode())
    return path
