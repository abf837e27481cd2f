"""Visual evidence: boxes on the right pixels of the right frames, the timeline window and playhead, the HTML report.

Verdicts are built from real answers (format_judgment -> parse_judgment) and the real crop rule, without a model.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from cac_align.evidence import (
    BOX_COLOR,
    FLAGGED_COLOR,
    PLAYHEAD_COLOR,
    TRACK_COLOR,
    WINDOW_COLOR,
    ScoredFile,
    box_pixels,
    draw_boxes,
    evidence_frames,
    render_evidence_video,
    source_boxes,
    strip_layout,
    timeline_columns,
    window_seconds,
    write_report,
)
from cac_align.reward.cac import Evidence, TurnResult
from cac_align.schema import PredAnomaly, format_judgment, parse_judgment
from cac_align.video import crop_clip, load_video, sample_frames


def _rgb(color: tuple[int, int, int]) -> torch.Tensor:
    return torch.tensor(color, dtype=torch.float32) / 255.0


def _turn(turn: int, text: str, sampled, fps: float, reward: float, parse_turn: int | None = None) -> TurnResult:
    return TurnResult(
        turn=turn,
        text=text,
        judgment=parse_judgment(text, turn=parse_turn or turn),
        answer_ids=[],
        fps=fps,
        frame_indices=sampled.indices.tolist(),
        timestamps=sampled.timestamps.tolist(),
        p_normal=reward / 2,
        p_abnormal=(1 - reward) / 2,
        reward=reward,
        read="generated",
    )


def _verdict(
    video: torch.Tensor,
    src_fps: float,
    window: tuple[int, int],
    bboxes: dict[int, list[tuple[int, int, int, int]]],
    confirmed: bool = True,
    reason: str = "the hand melts",
    label: str = "Human Distortion",
) -> Evidence:
    """A two-turn verdict: turn 1 flags ``window`` (4 fps frames), turn 2 answers boxes on its 8 fps clip."""
    shown = sample_frames(video, src_fps, 4.0)
    t1_text = format_judgment("abnormal", [PredAnomaly(label, window, reason=reason, region="hand")], turn=1)
    clip = crop_clip(video, src_fps, *window)
    status = "abnormal" if confirmed else "normal"
    anomaly = PredAnomaly(label, None, bboxes, reason=reason, region="hand")
    t2_text = format_judgment(status, [anomaly], cot="look <closely> & see", turn=2)
    t1, t2 = _turn(1, t1_text, shown, 4.0, 0.3), _turn(2, t2_text, clip, 8.0, 0.25 if confirmed else 0.8)
    anomalies = list(t2.judgment.anomalies) if confirmed else []
    return Evidence(
        status=status,
        reward=t2.reward,
        p_normal=t2.p_normal,
        p_abnormal=t2.p_abnormal,
        turns=[t1, t2],
        fps=4.0,
        window=window,
        clip_fps=8.0,
        clip_timestamps=list(t2.timestamps),
        anomalies=anomalies,
        boxes={k: list(v) for a in anomalies for k, v in a.bboxes.items()},
    )


# ------------------------------------------------------------------------------------------------------------ boxes
def test_box_pixels_hand_cases():
    assert box_pixels((100, 200, 500, 600), 100, 200) == (20, 20, 99, 59)
    assert box_pixels((0, 0, 1000, 1000), 48, 64) == (0, 0, 63, 47)
    assert box_pixels((1, 1, 2, 2), 100, 200) == (0, 0, 0, 0)  # narrower than a pixel: still one pixel
    assert box_pixels((333, 0, 667, 1000), 10, 3) == (0, 0, 2, 9)  # 0.999 .. 2.001 px touches columns 0-2
    with pytest.raises(ValueError, match="x1 < x2"):
        box_pixels((500, 0, 400, 10), 10, 10)


def test_draw_boxes_lands_on_the_box_outline_of_the_right_frame():
    video = torch.zeros(3, 3, 100, 200)
    out = draw_boxes(video, {1: [(100, 200, 500, 600)]}, width=1)
    assert torch.equal(out[0], video[0]) and torch.equal(out[2], video[2])
    c = _rgb(BOX_COLOR)[:, None]
    frame = out[1]
    for row in (20, 59):  # top and bottom edges, columns 20-99
        assert torch.allclose(frame[:, row, 20:100], c.expand(3, 80))
    for col in (20, 99):  # left and right edges, rows 20-59
        assert torch.allclose(frame[:, 20:60, col], c.expand(3, 40))
    assert frame[:, 21:59, 21:99].abs().sum() == 0  # inside stays black
    mask = torch.ones(100, 200, dtype=torch.bool)
    mask[20:60, 20:100] = False
    assert frame[:, mask].abs().sum() == 0  # outside stays black
    assert video.abs().sum() == 0  # the input is not modified


def test_draw_boxes_width_labels_and_errors():
    video = torch.zeros(1, 3, 100, 200)
    thick = draw_boxes(video, {0: [(100, 400, 500, 900)]}, width=3)
    assert torch.allclose(thick[0, :, 40:43, 50], _rgb(BOX_COLOR)[:, None].expand(3, 3))
    assert thick[0, :, 43, 50:60].abs().sum() == 0
    labelled = draw_boxes(video, {0: [(100, 400, 500, 900)]}, labels={0: ["Human Distortion"]}, width=1)
    assert labelled[0, :, :40, 20:100].abs().sum() > 0  # a tag above the box
    assert thick[0, :, :40].abs().sum() == 0
    with pytest.raises(ValueError, match="frame 5 is outside"):
        draw_boxes(video, {5: [(0, 0, 10, 10)]})
    with pytest.raises(ValueError, match="one per box"):
        draw_boxes(video, {0: [(0, 0, 10, 10)]}, labels={0: ["a", "b"]})
    with pytest.raises(ValueError, match="uint8"):
        draw_boxes(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), {})


# ------------------------------------------------------------------------------------------- boxes on source frames
def test_source_boxes_follow_the_clip_frame_that_is_current():
    video = torch.zeros(32, 3, 8, 8)  # 2 s at 16 fps; window frames 2-3 of 4 fps = [0.5, 1.0) s
    ev = _verdict(video, 16.0, (2, 3), {1: [(0, 0, 500, 500)], 3: [(500, 500, 1000, 1000)], 9: [(0, 0, 10, 10)]})
    # clip frames at 0.5, 0.625, 0.75, 0.875 s = source 8, 10, 12, 14; frame 9 is past the 4-frame clip
    got = source_boxes(ev, 32, 16.0)
    assert {i: [b for b, _ in v] for i, v in got.items()} == {
        10: [(0, 0, 500, 500)],
        11: [(0, 0, 500, 500)],
        14: [(500, 500, 1000, 1000)],
        15: [(500, 500, 1000, 1000)],
    }
    assert all(label == "Human Distortion" for v in got.values() for _, label in v)


def test_source_boxes_at_30_fps():
    video = torch.zeros(60, 3, 8, 8)  # 2 s at 30 fps; clip at 0.5 .. 0.875 s = floor(15, 18.75, 22.5, 26.25)
    ev = _verdict(video, 30.0, (2, 3), {0: [(0, 0, 10, 10)], 1: [(0, 0, 20, 20)], 3: [(0, 0, 30, 30)]})
    got = source_boxes(ev, 60, 30.0)
    assert sorted(got) == [15, 16, 17, 18, 19, 20, 21, 26, 27, 28, 29]  # the window ends at 1.0 s = frame 30
    assert [b for b, _ in got[21]] == [(0, 0, 20, 20)] and [b for b, _ in got[29]] == [(0, 0, 30, 30)]


def test_single_turn_boxes_index_turn_one_frames():
    video = torch.zeros(32, 3, 8, 8)  # turn 1 at 4 fps shows source frames 0, 4, 8, ...
    text = format_judgment("abnormal", [PredAnomaly("Motion Anomalies", (1, 3), {2: [(0, 0, 500, 500)]})], turn=2)
    t1 = _turn(1, text, sample_frames(video, 16.0, 4.0), 4.0, 0.1, parse_turn=2)  # parsed as CaC does: with boxes
    ev = Evidence("abnormal", 0.1, 0.05, 0.45, [t1], 4.0, anomalies=list(t1.judgment.anomalies))
    assert sorted(source_boxes(ev, 32, 16.0)) == [8, 9, 10, 11]
    assert window_seconds(ev) == (0.25, 1.0)
    assert ScoredFile(Path("v.mp4"), ev).to_dict()["window"] == [1, 3]


# ---------------------------------------------------------------------------------------------------- the timeline
def test_timeline_columns():
    assert timeline_columns(0.5, 1.0, 2.0, 96) == (24, 47)
    assert timeline_columns(0.0, 2.0, 2.0, 96) == (0, 95)
    assert timeline_columns(1.9, 3.0, 2.0, 96) == (91, 95)  # clamped to the track
    assert timeline_columns(2.5, 3.0, 2.0, 96) is None  # starts after the video


def test_evidence_frames_timeline_window_playhead_and_boxes():
    h, w = 64, 95  # odd width: padded to 96 for yuv420p
    video = torch.zeros(32, 3, h, w)
    ev = _verdict(video, 16.0, (2, 3), {1: [(100, 200, 500, 600)]})
    out = evidence_frames(video, 16.0, ev)
    layout = strip_layout(h)
    assert out.shape == (32, 3, h + layout.height, 96)
    assert (h + layout.height) % 2 == 0
    row = h + layout.track_top + 1
    win = timeline_columns(0.5, 1.0, 2.0, w)  # the window [0.5, 1.0) s of 2 s
    assert win == (23, 47)
    for i in (0, 20):  # playhead at column 0 (outside the window) and at 20 * 95 // 32 = 59
        track = out[i, :, row, :w]
        head = i * w // 32
        assert torch.allclose(track[:, head], _rgb(PLAYHEAD_COLOR))
        for x in range(w):
            if x == head:
                continue
            want = WINDOW_COLOR if win[0] <= x <= win[1] else TRACK_COLOR
            assert torch.allclose(track[:, x], _rgb(want)), (i, x)
    box = box_pixels((100, 200, 500, 600), h, w)  # the turn-2 box on clip frame 1 = source frames 10 and 11
    for i in range(32):
        edge = out[i, :, box[1], box[0] : box[2] + 1]
        if i in (10, 11):
            assert torch.allclose(edge, _rgb(BOX_COLOR)[:, None].expand_as(edge))
        else:
            assert edge.abs().sum() == 0


def test_unconfirmed_window_is_grey_and_without_boxes():
    video = torch.zeros(32, 3, 64, 96)
    ev = _verdict(video, 16.0, (2, 3), {1: [(100, 200, 500, 600)]}, confirmed=False)
    out = evidence_frames(video, 16.0, ev)
    row = 64 + strip_layout(64).track_top + 1
    assert torch.allclose(out[0, :, row, 30], _rgb(FLAGGED_COLOR))
    assert out[:, :, :64].abs().sum() == 0  # a normal verdict has no boxes


def test_render_evidence_video_writes_the_whole_video(tmp_path):
    video = torch.zeros(24, 3, 48, 64)
    ev = _verdict(video, 16.0, (1, 2), {0: [(0, 0, 1000, 1000)]})
    path = render_evidence_video(video, 16.0, ev, tmp_path / "out" / "ev.mp4")
    back = load_video(path, None)
    layout = strip_layout(48)
    assert back.frames.shape == (24, 3, 48 + layout.height, 64) and back.src_fps == pytest.approx(16.0)
    win = timeline_columns(0.25, 0.75, 1.5, 64)
    red = back.frames[0, :, 48 + layout.track_top + 2, win[0] + 2 : win[1] - 1].mean(dim=1)
    assert red[0] > 0.6 and red[1] < 0.4  # the window is red after H.264
    assert not list(path.parent.glob("*.tmp*"))


# ---------------------------------------------------------------------------------------------------------- report
def test_write_report_shows_every_video_and_escapes_text(tmp_path):
    video = torch.zeros(16, 3, 32, 32)
    ev = _verdict(video, 16.0, (0, 1), {0: [(0, 0, 500, 500)]}, reason="<script>alert(1)</script>")
    out = tmp_path / "report"
    render_evidence_video(video, 16.0, ev, out / "a & b.mp4")
    entries = [
        ScoredFile(Path("clips/a & b.mp4"), ev, prompt='a "cat" <b>', render=out / "a & b.mp4"),
        ScoredFile(Path("clips/broken.mp4"), None, "clips/broken.mp4: not a readable video (<bad>)"),
    ]
    page = write_report(entries, out / "index.html").read_text(encoding="utf-8")
    assert "clips/a &amp; b.mp4" in page and "clips/broken.mp4" in page
    assert page.count("<video ") == 1 and 'src="a%20%26%20b.mp4"' in page  # relative, URL-quoted
    assert str(tmp_path) not in page
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;bad&gt;" in page and "a &quot;cat&quot; &lt;b&gt;" in page
    assert "0.2500" in page and 'style="width: 25.0%"' in page
    assert "Human Distortion" in page and "frames 0&ndash;1 at 4 fps" in page
    assert len(re.findall(r"<details>", page)) == 2  # each turn's raw answer
    assert "look &lt;closely&gt; &amp; see" in page  # turn 2's raw text, escaped
    assert "1 scored (1 abnormal), mean reward 0.2500; 1 failed" in page
    assert not list(out.glob("*.tmp*"))


def test_scored_file_record_and_line():
    video = torch.zeros(16, 3, 32, 32)
    ev = _verdict(video, 16.0, (1, 2), {0: [(0, 0, 500, 500)]})
    rec = ScoredFile(Path("v.mp4"), ev).to_dict()
    assert rec["ok"] and rec["status"] == "abnormal" and rec["reward"] == 0.25
    assert rec["window"] == [1, 2] and rec["window_seconds"] == [0.25, 0.75] and rec["labels"] == ["Human Distortion"]
    assert rec["anomalies"][0]["boxes"] == {"0": [[0, 0, 500, 500]]}
    line = ScoredFile(Path("v.mp4"), ev).line()
    assert line == "v.mp4  reward 0.2500  abnormal  window 1-2 (0.25-0.75 s)  labels Human Distortion"
    bad = ScoredFile(Path("x.mp4"), None, "x.mp4: no such video file")
    assert bad.to_dict()["ok"] is False and "FAILED" in bad.line() and "x.mp4: no such video file" in bad.line()
