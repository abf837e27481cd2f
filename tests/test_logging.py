"""Rank-0 metric logging: TensorBoard events and metrics.jsonl, videos, the none mode, timers, progress bars."""

import time

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cac_align.train.logging import MetricLogger, Timer, frame_strip, progress
from cac_align.utils import read_jsonl
from cac_align.video import probe_video


def _events(run_dir):
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_tensorboard_scalars_and_jsonl_record(tmp_path):
    with MetricLogger(tmp_path, "tensorboard") as logger:
        logger.log({"loss": 0.5, "reward/cac": torch.tensor(0.25), "skipped": None}, step=1)
        logger.log({"loss": 0.25}, step=2)
    acc = _events(tmp_path)
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 0.5), (2, 0.25)]
    assert [(e.step, e.value) for e in acc.Scalars("reward/cac")] == [(1, 0.25)]
    assert "skipped" not in acc.Tags()["scalars"]
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["loss"]) for r in records] == [(1, 0.5), (2, 0.25)]
    assert records[0]["reward/cac"] == 0.25


def test_log_rejects_non_scalars(tmp_path):
    with MetricLogger(tmp_path, "tensorboard") as logger:
        with pytest.raises(ValueError, match="'x': expected a scalar"):
            logger.log({"x": torch.ones(3)}, step=0)
        with pytest.raises(TypeError, match="'y': expected a number"):
            logger.log({"y": "high"}, step=0)


def test_log_video_writes_mp4_and_frame_strip(tmp_path):
    video = torch.rand(12, 3, 16, 24)
    with MetricLogger(tmp_path, "tensorboard") as logger:
        path = logger.log_video("samples/prompt 0", video, step=3, fps=8)
    assert path == tmp_path / "videos" / "samples_prompt_0" / "step_00000003.mp4"
    frames, fps, height, width = probe_video(path)
    assert (frames, fps, height, width) == (12, 8.0, 16, 24)
    images = _events(tmp_path).Images("samples/prompt 0")
    assert [(e.step, e.width, e.height) for e in images] == [(3, 8 * 24, 16)]
    with pytest.raises(ValueError, match=r"expected \[F, C, H, W\]"):
        MetricLogger(tmp_path / "b").log_video("v", torch.rand(3, 16, 24), step=0, fps=8)


def test_frame_strip_picks_evenly_spaced_frames():
    video = torch.arange(10, dtype=torch.float32).div(10).view(10, 1, 1, 1).expand(10, 3, 2, 2)
    strip = frame_strip(video, max_frames=4)
    assert strip.shape == (3, 2, 8)
    assert strip[0, 0, ::2].tolist() == pytest.approx([0.0, 0.3, 0.6, 0.9])


def test_none_mode_and_other_ranks_write_nothing(tmp_path, monkeypatch):
    logger = MetricLogger(tmp_path / "none", "none")
    logger.log({"loss": 1.0}, step=0)
    assert logger.log_video("v", torch.rand(2, 3, 8, 8), step=0, fps=4) is None
    logger.close()
    assert not (tmp_path / "none").exists()

    monkeypatch.setenv("RANK", "1")
    logger = MetricLogger(tmp_path / "rank1", "tensorboard")
    logger.log({"loss": 1.0}, step=0)
    logger.close()
    assert not (tmp_path / "rank1").exists()
    assert progress(range(3)).disable


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be"):
        MetricLogger("unused", "mlflow")


def test_timer_sums_named_blocks_and_resets():
    timer = Timer()
    with timer("sampling"):
        time.sleep(0.02)
    with timer("reward"):
        time.sleep(0.01)
    with timer("sampling"):
        time.sleep(0.02)
    with pytest.raises(RuntimeError):
        with timer("training"):
            raise RuntimeError("boom")
    times = timer.pop()
    assert set(times) == {"time/sampling", "time/reward", "time/training"}
    assert times["time/sampling"] >= 0.04 and times["time/reward"] >= 0.01
    assert times["time/sampling"] > times["time/reward"]
    assert timer.pop() == {}


def test_progress_is_shown_on_rank_zero(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    bar = progress(range(5), desc="steps")
    assert not bar.disable
    assert list(bar) == [0, 1, 2, 3, 4]
