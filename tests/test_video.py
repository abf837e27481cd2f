"""Video I/O, the sampling rule and the turn-2 crop rule (cac_align/video.py).

Test videos carry their own frame index: frame ``i`` shows ``i`` in binary as 8 big flat blocks, which survives H.264,
so a decoded frame tells which source frame it is. Expected indices are computed with exact fractions, independently
of the implementation's float arithmetic.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cac_align.video import (
    Sampled,
    VideoReadError,
    as_video_list,
    clip_frame_of,
    crop_clip,
    crop_window,
    load_video,
    probe_video,
    sample_frames,
    save_video,
    to_uint8,
)

BLOCK = 8  # block side in pixels; 2 x 4 blocks = 8 bits
H, W = 2 * BLOCK, 4 * BLOCK


def index_video(n: int) -> torch.Tensor:
    """``[n, 3, H, W]`` frames; frame i shows the bits of i as dark (0) / light (1) blocks."""
    frames = torch.empty(n, 3, H, W)
    for i in range(n):
        for b in range(8):
            r, c = divmod(b, 4)
            frames[i, :, r * BLOCK : (r + 1) * BLOCK, c * BLOCK : (c + 1) * BLOCK] = 0.85 if (i >> b) & 1 else 0.15
    return frames


def read_indices(frames: torch.Tensor) -> list[int]:
    """Invert :func:`index_video` on decoded frames (block means thresholded at 0.5)."""
    out = []
    for f in frames:
        blocks = f.mean(0).reshape(2, BLOCK, 4, BLOCK).mean((1, 3)).flatten()
        out.append(sum(1 << b for b in range(8) if blocks[b] > 0.5))
    return out


def expected_indices(rate: Fraction, n: int, fps: Fraction, start: Fraction, end: Fraction | None) -> list[int]:
    """The sampling rule in exact arithmetic: floor(t * rate) for t = start + k / fps, t < end, frame < n."""
    out, k = [], 0
    while True:
        t = start + Fraction(k) / fps
        i = math.floor(t * rate)
        if (end is not None and t >= end) or i >= n:
            return out
        out.append(i)
        k += 1


# (rate as passed to save_video, exact rate stored in the file, number of frames)
RATES = [
    (16.0, Fraction(16), 40),
    (30.0, Fraction(30), 75),
    (29.97, Fraction(2997, 100), 75),
    (30000 / 1001, Fraction(30000, 1001), 75),
]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[float, tuple[Path, Fraction, int]]:
    d = tmp_path_factory.mktemp("videos")
    out = {}
    for i, (fps, exact, n) in enumerate(RATES):
        out[fps] = (save_video(index_video(n), d / f"idx_{i}.mp4", fps, crf=10), exact, n)
    return out


WINDOWS = ["0", "None"], ["0.3", "1.7"], ["0.75", "1.5"], ["1", "None"], ["2.0", "10"], ["0.1", "0.15"]


@pytest.mark.parametrize("fps", [4, 8])
@pytest.mark.parametrize("rate", [r[0] for r in RATES])
def test_load_video_samples_floor_of_time(videos, rate, fps):
    path, exact, n = videos[rate]
    for start, end in WINDOWS:
        s = load_video(path, fps, start=float(start), end=None if end == "None" else float(end))
        want = expected_indices(exact, n, Fraction(fps), Fraction(start), None if end == "None" else Fraction(end))
        assert read_indices(s.frames) == want, (rate, fps, start, end)
        assert s.frames.dtype == torch.float32 and s.frames.shape == (len(want), 3, H, W)
        assert 0 <= s.frames.min() and s.frames.max() <= 1
        assert s.src_fps == pytest.approx(float(exact), rel=1e-12)
        assert s.timestamps.tolist() == pytest.approx([i / float(exact) for i in want], abs=1e-9)
        assert s.indices.tolist() == want


def test_load_video_default_window_and_all_frames(videos):
    path, exact, n = videos[30.0]
    four = load_video(path, 4)
    assert read_indices(four.frames) == [math.floor(Fraction(k, 4) * 30) for k in range(10)]  # 2.5 s -> 10 samples
    every = load_video(path, None)
    assert read_indices(every.frames) == list(range(n))
    assert probe_video(path) == (n, 30.0, H, W)


@pytest.mark.parametrize("rate", [16.0, 29.97])
def test_sample_frames_on_tensor_equals_load_video_on_file(videos, rate):
    path, _, n = videos[rate]
    full = load_video(path, None)
    assert full.frames.shape[0] == n
    for fps in (4, 8, 7.5):
        for start, end in WINDOWS:
            s0, s1 = float(start), None if end == "None" else float(end)
            from_file = load_video(path, fps, s0, s1)
            from_tensor = sample_frames(full.frames, full.src_fps, fps, s0, s1)
            assert torch.equal(from_file.frames, from_tensor.frames), (fps, start, end)
            assert torch.equal(from_file.timestamps, from_tensor.timestamps)
            assert from_file.src_fps == from_tensor.src_fps


def test_sample_frames_picks_source_frames():
    frames = torch.arange(81, dtype=torch.float32).view(81, 1, 1, 1).expand(81, 3, 2, 2) / 100
    s = sample_frames(frames, 16, 4)  # Wan: 81 frames at 16 fps = 5.0625 s -> 21 samples at 4 fps
    assert isinstance(s, Sampled)
    assert s.indices.tolist() == list(range(0, 81, 4))
    assert torch.equal(s.frames, frames[::4])
    assert s.timestamps.tolist() == pytest.approx([k / 4 for k in range(21)])
    assert sample_frames(frames, 16, 8, start=1.0, end=1.25).indices.tolist() == [16, 18]
    assert sample_frames(frames, 16, 32, end=0.125).indices.tolist() == [0, 0, 1, 1]  # faster than the source


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"start": 6.0}, "holds no frame"),
        ({"start": -0.5}, "start must be"),
        ({"start": 1.0, "end": 1.0}, "end > start"),
        ({"fps": 0}, "fps must be positive"),
    ],
)
def test_sample_frames_rejects_bad_windows(kwargs, match):
    frames = torch.zeros(81, 3, 2, 2)
    args = {"fps": 4.0} | kwargs
    with pytest.raises(ValueError, match=match):
        sample_frames(frames, 16, **args)
    with pytest.raises(ValueError, match="expected frames"):
        sample_frames(frames[None], 16, 4)


def test_load_video_window_after_end_names_file(videos):
    path, _, _ = videos[16.0]
    with pytest.raises(ValueError, match=f"{path}.*holds no frame"):
        load_video(path, 4, start=3.0)
    with pytest.raises(ValueError, match="end > start"):
        load_video(path, 4, start=1.0, end=0.5)


# ------------------------------------------------------------------------------------------------------- crop rule
def test_crop_window_hand_cases():
    # paper default 4 -> 8 fps: window [3, 5] covers [0.75, 1.5) s
    assert crop_window(3, 5).tolist() == [0.75, 0.875, 1.0, 1.125, 1.25, 1.375]
    assert [clip_frame_of(j, 3) for j in (3, 4, 5)] == [0, 2, 4]
    assert len(crop_window(7, 7)) == 2
    # annotations at 2 fps: window [1, 2] covers [0.5, 1.5) s -> 8 clip frames
    assert crop_window(1, 2, fps=2).tolist() == [0.5 + k / 8 for k in range(8)]
    assert clip_frame_of(2, 1, fps=2) == 4
    # annotations at 3 fps: window [0, 1] covers [0, 2/3) s -> clip frames at 0, 1/8, ..., 5/8
    assert crop_window(0, 1, fps=3).tolist() == [k / 8 for k in range(6)]
    assert clip_frame_of(1, 0, fps=3) == 3  # 1/3 s lies nearest 3/8 s
    for bad in ((5, 3), (-1, 2)):
        with pytest.raises(ValueError, match="0 <= start <= end"):
            crop_window(*bad)


@settings(max_examples=300, deadline=None)
@given(
    fps=st.sampled_from([1, 2, 3, 4, 5, 6, 8, 12, 16, 29.97]),
    clip_fps=st.sampled_from([2, 4, 6, 8, 10, 16]),
    s=st.integers(0, 200),
    length=st.integers(0, 12),
    offset=st.integers(0, 12),
)
def test_clip_frame_of_is_nearest_clip_frame(fps, clip_fps, s, length, offset):
    e = s + length
    j = s + min(offset, length)
    times = crop_window(s, e, fps, clip_fps)
    exact_fps, exact_clip = Fraction(str(fps)), Fraction(clip_fps)
    lo, hi = Fraction(s) / exact_fps, Fraction(e + 1) / exact_fps
    assert len(times) == math.ceil((hi - lo) * exact_clip)  # every clip time in [s/fps, (e+1)/fps)
    k = clip_frame_of(j, s, fps, clip_fps)
    if clip_fps >= fps:
        assert k < len(times)
    k = min(k, len(times) - 1)
    dist = np.abs(times - j / fps)
    assert dist[k] <= dist.min() + 1e-9


def test_crop_clip_tensor_and_file_agree(videos):
    path, exact, n = videos[16.0]  # 40 frames, 2.5 s: the 4 fps sequence has 10 frames
    full = load_video(path, None)
    for s, e in ((3, 5), (0, 0), (0, 9), (8, 9)):
        from_file = crop_clip(path, None, s, e)
        from_tensor = crop_clip(full.frames, full.src_fps, s, e)
        want = [math.floor(Fraction(s, 4) * 16 + Fraction(k, 8) * 16) for k in range(len(crop_window(s, e)))]
        assert read_indices(from_file.frames) == want
        assert torch.equal(from_file.frames, from_tensor.frames)
        assert torch.equal(from_file.timestamps, from_tensor.timestamps)
        # the GT frame j of the 4 fps sequence is the clip frame clip_frame_of(j, s)
        four = load_video(path, 4)
        for j in range(s, e + 1):
            assert torch.equal(from_file.frames[clip_frame_of(j, s)], four.frames[j])


def test_crop_clip_drops_times_past_the_video():
    frames = torch.arange(81, dtype=torch.float32).view(81, 1, 1, 1).expand(81, 3, 2, 2) / 100
    clip = crop_clip(frames, 16, 19, 20)  # [4.75, 5.25) s at 8 fps; the video ends at 5.0625 s
    assert len(crop_window(19, 20)) == 4
    assert clip.indices.tolist() == [76, 78, 80]
    assert clip.timestamps.tolist() == [4.75, 4.875, 5.0]
    with pytest.raises(ValueError, match="holds no frame"):
        crop_clip(frames, 16, 21, 22)
    with pytest.raises(ValueError, match="src_fps is required"):
        crop_clip(frames, None, 0, 1)
    with pytest.raises(ValueError, match="src_fps=None"):
        crop_clip("x.mp4", 16, 0, 1)


# ---------------------------------------------------------------------------------------------- unreadable inputs
def _faststart_mp4(path: Path, n: int) -> None:
    """An mp4 with its index (moov) before the data, so cutting its tail leaves a file that still opens."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=16)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        for _ in range(n):
            c.mux(s.encode(av.VideoFrame.from_ndarray(rng.integers(0, 256, (64, 64, 3), np.uint8), format="rgb24")))
        c.mux(s.encode())


def _audio_only(path: Path) -> None:
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for _ in range(4):
            c.mux(s.encode(frame))
        c.mux(s.encode())


def test_unreadable_inputs_raise_video_read_error_naming_the_file(videos, tmp_path):
    good = videos[16.0][0].read_bytes()
    cases = {
        "missing.mp4": None,
        "text.mp4": b"this is not a video\n" * 20,
        "empty.mp4": b"",
        "cut_half.mp4": good[: len(good) // 2],
        "cut_head.mp4": good[:40],
    }
    for name, data in cases.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
    (tmp_path / "folder.mp4").mkdir()
    _faststart_mp4(tmp_path / "fast.mp4", 12)
    fast = (tmp_path / "fast.mp4").read_bytes()
    (tmp_path / "fast_cut.mp4").write_bytes(fast[: int(len(fast) * 0.8)])
    _audio_only(tmp_path / "audio.mp4")
    names = [*cases, "folder.mp4", "fast_cut.mp4", "audio.mp4"]
    for name in names:
        path = tmp_path / name
        reads = [lambda p: load_video(p, 4), lambda p: load_video(str(p), None)]
        if name != "fast_cut.mp4":
            reads.append(lambda p: crop_clip(p, None, 0, 1))
        for read in reads:
            with pytest.raises(VideoReadError) as info:
                read(path)
            assert str(path) in str(info.value), name
    for name in ("missing.mp4", "text.mp4", "empty.mp4", "folder.mp4", "audio.mp4"):
        with pytest.raises(VideoReadError, match=name):
            probe_video(tmp_path / name)
    assert load_video(tmp_path / "fast.mp4", None).frames.shape[0] == 12  # the uncut file reads
    # a window read stops after its last frame, so a cut after the window goes unnoticed: the frames it needs are there
    assert crop_clip(tmp_path / "fast_cut.mp4", None, 0, 1).indices.tolist() == [0, 2, 4, 6]


# ------------------------------------------------------------------------------------------------------ save_video
def smooth_video(n: int, h: int, w: int) -> torch.Tensor:
    """Gradients with a moving wave: content H.264 compresses well."""
    t = torch.arange(n).view(n, 1, 1, 1)
    y = torch.linspace(0, 1, h).view(1, 1, h, 1)
    x = torch.linspace(0, 1, w).view(1, 1, 1, w)
    c = torch.tensor([0.0, 1.0, 2.0]).view(1, 3, 1, 1)
    return (0.5 + 0.35 * torch.sin(6 * x + 4 * y + 0.3 * t + c)).expand(n, 3, h, w).contiguous()


@pytest.mark.parametrize(("h", "w"), [(32, 48), (31, 47), (30, 45)])
def test_save_video_round_trip(tmp_path, h, w):
    frames = smooth_video(12, h, w)
    path = save_video(frames, tmp_path / "sub" / "v.mp4", 8)
    back = load_video(path, None)
    assert back.frames.shape == frames.shape  # odd sizes are kept (yuv444p)
    assert back.src_fps == 8.0
    err = (back.frames - frames).abs()
    assert err.mean() < 0.02 and err.max() < 0.12  # 4:2:0 chroma on a small, colourful video
    with av.open(str(path)) as c:
        want = "yuv420p" if h % 2 == 0 and w % 2 == 0 else "yuv444p"
        assert c.streams.video[0].codec_context.pix_fmt == want


def test_save_video_is_atomic(tmp_path):
    frames = smooth_video(6, 16, 16)
    path = save_video(frames, tmp_path / "v.mp4", 16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]  # no temporary left behind
    before = path.read_bytes()
    with pytest.raises(av.error.FFmpegError):
        save_video(torch.rand(6, 3, 16, 16), path, 16, crf=-20)  # libx264 refuses to open mid-write
    assert path.read_bytes() == before  # the previous file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]


def test_save_video_rejects_bad_input(tmp_path):
    frames = smooth_video(4, 16, 16)
    with pytest.raises(ValueError, match="divide by 255"):
        save_video((frames * 255).to(torch.uint8), tmp_path / "a.mp4", 16)
    with pytest.raises(ValueError, match="expected a path ending in .mp4"):
        save_video(frames, tmp_path / "a.avi", 16)
    with pytest.raises(ValueError, match="fps must be positive"):
        save_video(frames, tmp_path / "a.mp4", 0)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        save_video(frames * 2, tmp_path / "a.mp4", 16)
    assert list(tmp_path.iterdir()) == []


def test_to_uint8_edge_conversion():
    frames = torch.tensor([0.0, 0.2, 0.5, 1.0]).view(1, 1, 1, 4).expand(2, 3, 1, 4)
    out = to_uint8(frames)
    assert out.dtype == np.uint8 and out.shape == (2, 1, 4, 3)
    assert out[0, 0, :, 0].tolist() == [0, 51, 128, 255]
    grey = to_uint8(frames[:, :1])  # one channel is repeated to RGB
    assert grey.shape == (2, 1, 4, 3) and np.array_equal(grey, out)
    with pytest.raises(ValueError, match="C = 1 or 3"):
        to_uint8(torch.zeros(2, 2, 4, 4))


# --------------------------------------------------------------------------------------------------- as_video_list
def test_as_video_list_accepts_the_public_forms():
    batch = torch.rand(2, 5, 3, 8, 8)
    out = as_video_list(batch)
    assert len(out) == 2 and all(torch.equal(a, b) for a, b in zip(out, batch, strict=True))
    ragged = [torch.rand(5, 3, 8, 8), torch.rand(9, 3, 6, 10, dtype=torch.float64)]
    out = as_video_list(ragged)
    assert [v.shape[0] for v in out] == [5, 9] and out[1] is ragged[1]
    assert as_video_list(tuple(ragged))[0] is ragged[0]
    assert as_video_list([]) == []
    assert len(as_video_list(torch.ones(1, 1, 3, 2, 2, dtype=torch.bfloat16))) == 1


@pytest.mark.parametrize(
    ("videos", "match"),
    [
        ((torch.rand(2, 5, 3, 8, 8) * 255).to(torch.uint8), r"videos\[0\]: got uint8 frames.*divide by 255"),
        (torch.rand(5, 3, 8, 8), r"\[B, F, C, H, W\].*wrap a single video"),
        (torch.rand(2, 3, 5, 3, 8, 8), r"\[B, F, C, H, W\]"),
        ([torch.rand(5, 1, 8, 8)], r"videos\[0\].*C = 3,"),
        ([torch.rand(5, 3, 8, 8), torch.rand(5, 8, 8, 3)], r"videos\[1\].*channels last"),
        ([torch.rand(5, 3, 8, 8), torch.rand(5, 3, 8, 8) * 2 - 1], r"videos\[1\].*\[-1, 1\]"),
        ([torch.rand(5, 3, 8, 8) * 255], r"videos\[0\].*\[0, 255\]"),
        ([torch.full((2, 3, 4, 4), float("nan"))], r"videos\[0\]: contains NaN"),
        ([torch.zeros(2, 3, 4, 4, dtype=torch.int64)], r"videos\[0\].*dtype torch.int64"),
        ([torch.zeros(0, 3, 4, 4)], r"videos\[0\]: empty video"),
        ([np.zeros((2, 3, 4, 4), np.float32)], r"videos\[0\]: expected a float tensor"),
        ("video.mp4", "expected a tensor"),
    ],
)
def test_as_video_list_rejects(videos, match):
    with pytest.raises(ValueError, match=match):
        as_video_list(videos)
