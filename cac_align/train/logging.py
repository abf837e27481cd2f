"""Rank-0 run logging: scalar metrics, sample videos, step-time splits and a progress bar.

* :class:`MetricLogger` writes scalars to TensorBoard (default), Weights & Biases (``backend="wandb"``; imported
  only then, install the ``wandb`` extra) or nowhere (``"none"``, for tests). With ``tensorboard`` and ``wandb`` every
  ``log`` call is also appended to ``<run_dir>/metrics.jsonl``, a plain record that survives without either tool.
* Videos: TensorBoard's ``add_video`` needs ``moviepy``, which this project does not depend on. Instead
  :meth:`MetricLogger.log_video` writes the clip as an mp4 under ``<run_dir>/videos/`` and logs a strip of up to
  8 evenly spaced frames as an image (W&B gets the mp4 itself).
* :class:`Timer` collects the named blocks of a step (``sampling``, ``reward``, ``training``) the way the recipes'
  timelines read (verl's ``marked_timer``), and :func:`progress` is a tqdm bar shown on rank 0 only.

Every rank may construct and call these; only global rank 0 writes anything.
"""

from __future__ import annotations

import math
import re
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from cac_align.train.dist import is_main_process
from cac_align.utils import append_jsonl
from cac_align.video import save_video

__all__ = ["MetricLogger", "Timer", "progress", "frame_strip"]

Backend = Literal["tensorboard", "wandb", "none"]


def _scalar(name: str, value: Any) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"metric {name!r}: expected a scalar, got a tensor of shape {tuple(value.shape)}")
        return float(value.detach().float().cpu().item())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"metric {name!r}: expected a number or a one-element tensor, got {type(value).__name__}")
    return float(value)


def frame_strip(video: torch.Tensor, max_frames: int = 8) -> torch.Tensor:
    """Up to ``max_frames`` evenly spaced frames of ``[F, C, H, W]`` side by side: ``[C, H, k * W]``."""
    if video.ndim != 4 or video.shape[1] not in (1, 3):
        raise ValueError(f"expected a video [F, C, H, W] with C in (1, 3), got shape {tuple(video.shape)}")
    f = video.shape[0]
    k = min(f, max_frames)
    idx = torch.linspace(0, f - 1, k).round().long() if k > 1 else torch.zeros(1, dtype=torch.long)
    frames = video.detach().float().cpu().clamp(0, 1)[idx]
    return torch.cat(list(frames), dim=-1)


class MetricLogger:
    """Scalars and videos of one run, written by global rank 0 only.

    Args:
        run_dir: The run's output folder (events, ``metrics.jsonl`` and ``videos/`` go here).
        backend: ``"tensorboard"``, ``"wandb"`` or ``"none"`` (log nothing, write nothing).
        project: W&B project name.
        run_name: W&B run name (defaults to the folder name).
        config: The resolved config as a plain dict (``cac_align.config.config_to_dict``), recorded by W&B.

    Use as a context manager, or call :meth:`close` at the end.
    """

    def __init__(
        self,
        run_dir: str | Path,
        backend: Backend = "tensorboard",
        *,
        project: str | None = None,
        run_name: str | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        if backend not in ("tensorboard", "wandb", "none"):
            raise ValueError(f"backend must be 'tensorboard', 'wandb' or 'none', got {backend!r}")
        self.run_dir = Path(run_dir)
        self.backend: Backend = backend
        self.active = backend != "none" and is_main_process()
        self._tb = None
        self._wandb = None
        if not self.active:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if backend == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        else:
            try:
                import wandb
            except ImportError:
                raise ImportError("backend='wandb' needs the wandb package: pip install 'cac-align[wandb]'") from None
            self._wandb = wandb.init(
                project=project,
                name=run_name or self.run_dir.name,
                dir=str(self.run_dir),
                config=dict(config) if config is not None else None,
            )

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Log scalar metrics (numbers or one-element tensors; ``None`` values are skipped) at ``step``."""
        if not self.active:
            return
        values = {k: _scalar(k, v) for k, v in metrics.items() if v is not None}
        append_jsonl(self.run_dir / "metrics.jsonl", {"step": step, "time": time.time(), **values})
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, v, global_step=step)
        if self._wandb is not None:
            self._wandb.log(values, step=step)

    def log_video(self, name: str, video: torch.Tensor, step: int, fps: float) -> Path | None:
        """Save ``video`` ``[F, C, H, W]`` (float in [0, 1]) as an mp4 and log it; returns the mp4 path on rank 0.

        TensorBoard shows a strip of up to 8 evenly spaced frames under ``name``; W&B shows the mp4.
        """
        if not self.active:
            return None
        if video.ndim != 4 or video.shape[1] not in (1, 3):
            raise ValueError(f"log_video {name!r}: expected [F, C, H, W] with C in (1, 3), got {tuple(video.shape)}")
        if not math.isfinite(fps) or fps <= 0:
            raise ValueError(f"log_video {name!r}: fps must be positive, got {fps}")
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "video"
        path = save_video(video, self.run_dir / "videos" / safe / f"step_{step:08d}.mp4", fps=fps)
        if self._tb is not None:
            self._tb.add_image(name, frame_strip(video), global_step=step, dataformats="CHW")
        if self._wandb is not None:
            import wandb

            self._wandb.log({name: wandb.Video(str(path), format="mp4")}, step=step)
        return path

    def close(self) -> None:
        """Flush and close the backend (safe to call twice)."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def __enter__(self) -> MetricLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Timer:
    """Seconds spent in named blocks of a training step, summed until :meth:`pop`.

    Example::

        timer = Timer()
        with timer("sampling"):
            videos = rollout(...)
        with timer("reward"):
            rewards = score(videos)
        logger.log({**stats, **timer.pop()}, step)   # {"time/sampling": 3.1, "time/reward": 0.8}

    Args:
        sync_cuda: Synchronise CUDA at both ends of a block, so that queued GPU work is charged to the block that
            launched it (on by default; costs a little overlap).
    """

    def __init__(self, sync_cuda: bool = True) -> None:
        self.sync_cuda = sync_cuda
        self._totals: dict[str, float] = defaultdict(float)

    def _sync(self) -> None:
        if self.sync_cuda and torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self._totals[name] += time.perf_counter() - start

    def pop(self, prefix: str = "time/") -> dict[str, float]:
        """The summed seconds per block as ``{prefix + name: seconds}``, then reset."""
        out = {f"{prefix}{k}": v for k, v in self._totals.items()}
        self._totals.clear()
        return out


def progress(iterable: Iterable[Any] | None = None, **tqdm_kwargs: Any) -> tqdm:
    """A tqdm progress bar on global rank 0, a silent one elsewhere (same arguments as ``tqdm``)."""
    tqdm_kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=not is_main_process(), **tqdm_kwargs)
