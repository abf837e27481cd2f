"""Visual evidence of CaC verdicts: boxes on frames, a timeline under the video, an HTML report (paper Sec. 3.4).

Sec. 3.4: "The structured CoT, type, time window, and bbox can serve as interpretable evidence." This module shows
that evidence to people instead of JSON. As in the paper's Fig. 1, the temporal window is marked in red and the
spatial boxes in orange:

* :func:`draw_boxes` draws 0-1000 Qwen boxes on frames ``[F, C, H, W]`` (Pillow on uint8 at the edge).
* :func:`evidence_frames` / :func:`render_evidence_video`: the whole video at its own rate with a timeline strip
  below the frames (the whole duration, the turn-1 window highlighted, a playhead) and the final turn's boxes drawn
  on the source frames shown while the box's clip frame is current (:func:`source_boxes`).
* :func:`write_report`: one static HTML page for many scored videos (reward, status, window, labels, reasons, each
  turn's raw answer), linking the rendered mp4s relatively.
* :func:`score_files`: CaC on video files in batches, one :class:`ScoredFile` per file; an unreadable file becomes a
  result that says what went wrong and the other files are still scored (``cac-align score``).

Shapes: ``F`` frames, ``C = 3`` channels, ``H x W`` pixels; videos are float in [0, 1] at the public boundary.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import numpy as np
import torch

from cac_align.schema import COORD_MAX, Box
from cac_align.utils import atomic_write_text
from cac_align.video import VideoReadError, save_video, to_uint8

if TYPE_CHECKING:
    from PIL import ImageDraw, ImageFont

    from cac_align.reward.cac import CaCReward, Evidence

BOX_COLOR = (255, 140, 0)
"""Spatial boxes (orange, as the spatial focus of Fig. 1)."""
WINDOW_COLOR = (220, 40, 40)
"""A temporal window the final answer confirms (red, as the temporal focus of Fig. 1)."""
FLAGGED_COLOR = (150, 150, 150)
"""A turn-1 window that turn 2 did not confirm (the video was judged normal)."""
TRACK_COLOR = (70, 70, 70)
STRIP_COLOR = (24, 24, 24)
PLAYHEAD_COLOR = (255, 255, 255)
TEXT_COLOR = (235, 235, 235)


# ---------------------------------------------------------------------------------------------------------------------
# Boxes
# ---------------------------------------------------------------------------------------------------------------------


def box_pixels(box: Box | Sequence[int], height: int, width: int) -> tuple[int, int, int, int]:
    """Inclusive pixel rectangle ``(left, top, right, bottom)`` of a box ``[x1, y1, x2, y2]`` in 0-1000 coordinates.

    The box covers ``[x1 W / 1000, x2 W / 1000) x [y1 H / 1000, y2 H / 1000)``; the rectangle is every pixel that
    span touches: columns ``floor(x1 W / 1000)`` to ``ceil(x2 W / 1000) - 1`` (at least one pixel), likewise rows.
    """
    x1, y1, x2, y2 = (int(v) for v in box)
    if not (0 <= x1 < x2 <= COORD_MAX and 0 <= y1 < y2 <= COORD_MAX):
        raise ValueError(f"expected a box [x1, y1, x2, y2] with 0 <= x1 < x2 <= 1000, 0 <= y1 < y2 <= 1000, got {box}")
    left, top = x1 * width // COORD_MAX, y1 * height // COORD_MAX
    right = max(left, -(-x2 * width // COORD_MAX) - 1)
    bottom = max(top, -(-y2 * height // COORD_MAX) - 1)
    return left, top, right, bottom


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _line_width(height: int, width: int) -> int:
    return max(1, round(min(height, width) / 160))


def _draw_frame_boxes(
    draw: ImageDraw.ImageDraw,
    size: tuple[int, int],
    boxes: Sequence[Box],
    labels: Sequence[str] | None,
    color: tuple[int, int, int],
    width: int,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
) -> None:
    """Outline each box (``width`` pixels, inside the box's rectangle) and put its label on a filled tag above it."""
    w, h = size
    for i, box in enumerate(boxes):
        left, top, right, bottom = box_pixels(box, h, w)
        draw.rectangle((left, top, right, bottom), outline=color, width=width)
        if not labels or not labels[i]:
            continue
        tx0, ty0, tx1, ty1 = draw.textbbox((0, 0), labels[i], font=font)
        tw, th = tx1 - tx0 + 4, ty1 - ty0 + 4
        y = top - th if top - th >= 0 else top + width  # above the box, else just inside its top edge
        x = min(left, max(0, w - tw))
        draw.rectangle((x, y, x + tw - 1, y + th - 1), fill=color)
        draw.text((x + 2 - tx0, y + 2 - ty0), labels[i], fill=(0, 0, 0), font=font)


def draw_boxes(
    frames: torch.Tensor,
    boxes_per_frame: dict[int, Sequence[Box]],
    labels: dict[int, Sequence[str]] | None = None,
    color: tuple[int, int, int] = BOX_COLOR,
    width: int | None = None,
) -> torch.Tensor:
    """Draw boxes on frames: returns a copy of ``frames`` with each frame's boxes outlined (Sec. 3.4 evidence).

    Args:
        frames: ``[F, C, H, W]`` float in [0, 1].
        boxes_per_frame: ``{frame index: [[x1, y1, x2, y2], ...]}`` in Qwen's 0-1000 coordinates
            (:func:`box_pixels` says which pixels a box covers); the outline lies inside the box.
        labels: optional text per box, same keys and lengths as ``boxes_per_frame``, drawn on a tag above the box.
        color: RGB outline colour.
        width: outline width in pixels (default: about 1/160 of the shorter side, at least 1).

    Frames without boxes are returned unchanged; frames with boxes go through uint8 (values rounded to 1/255).

    Raises:
        ValueError: a frame index outside the video, a malformed box, or labels that do not match the boxes.
    """
    from PIL import Image, ImageDraw

    to_uint8(frames[:1])  # validates the dtype and shape of frames
    n, _, h, w = frames.shape
    out = frames.detach().clone()
    width = _line_width(h, w) if width is None else width
    font = _font(max(10, min(24, round(h / 28))))
    for j, boxes in sorted(boxes_per_frame.items()):
        if not 0 <= j < n:
            raise ValueError(f"boxes_per_frame: frame {j} is outside the video's {n} frames")
        texts = None if labels is None else labels.get(j)
        if texts is not None and len(texts) != len(boxes):
            raise ValueError(f"labels[{j}]: expected {len(boxes)} labels (one per box), got {len(texts)}")
        rgb = to_uint8(frames[j : j + 1])[0]
        img = Image.fromarray(rgb)
        _draw_frame_boxes(ImageDraw.Draw(img), (w, h), boxes, texts, color, width, font)
        out[j] = torch.from_numpy(np.array(img)).permute(2, 0, 1).to(out.dtype).div(255.0)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Where the evidence falls in the source video
# ---------------------------------------------------------------------------------------------------------------------


def anomaly_window(evidence: Evidence) -> tuple[int, int] | None:
    """The turn-1 window (inclusive frames of turn 1's ``evidence.fps`` sequence) the verdict rests on, or None.

    Two-turn mode: the window turn 2 cropped (:attr:`Evidence.window`); when turn 2 did not run, the window of an
    abnormal turn-1 answer (also the single-turn mode's window), else None.
    """
    if evidence.window is not None:
        return evidence.window
    first = evidence.turns[0].judgment
    return first.window if first.status == "abnormal" else None


def window_seconds(evidence: Evidence) -> tuple[float, float] | None:
    """:func:`anomaly_window` in seconds: ``[s / fps, (e + 1) / fps)``, the span the crop rule cuts (Sec. 3.4)."""
    win = anomaly_window(evidence)
    if win is None:
        return None
    return win[0] / evidence.fps, (win[1] + 1) / evidence.fps


def source_boxes(evidence: Evidence, num_frames: int, src_fps: float) -> dict[int, list[tuple[Box, str]]]:
    """The final turn's boxes on the source frames: ``{source frame: [(box, label), ...]}``.

    The boxes of the final answer index the frames the final turn showed (the turn-2 clip, or turn 1's frames when
    turn 2 did not run). Clip frame ``k`` was sampled from source frame ``i_k = round(t_k * src_fps)``
    (``t_k = evidence.turns[-1].timestamps[k]``) and is current until the next clip frame's source frame, the last
    one until the end of the shown span (the turn-2 window's end ``(e + 1) / fps``, or the video's end); its boxes go
    on every source frame while it is current. Box frames past the clip (the model named a frame it was not shown)
    have no time and are left out.

    Args:
        evidence: CaC's verdict on the video.
        num_frames: ``F`` of the source video.
        src_fps: its frame rate (the one the evidence's timestamps were taken at).
    """
    final = evidence.turns[-1]
    shown = [round(t * src_fps) for t in final.timestamps]
    if len(evidence.turns) == 2 and evidence.window is not None:
        end = (evidence.window[1] + 1) / evidence.fps
        stop = min(num_frames, math.ceil(end * src_fps - 1e-6))
    else:
        stop = num_frames
    out: dict[int, list[tuple[Box, str]]] = {}
    for a in evidence.anomalies:
        for k, boxes in sorted(a.bboxes.items()):
            if not 0 <= k < len(shown):
                continue
            later = [i for i in shown[k + 1 :] if i > shown[k]]
            for i in range(shown[k], min(later[0] if later else stop, stop)):
                out.setdefault(i, []).extend((b, a.label or "") for b in boxes)
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------------------------------------------------
# The evidence video
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StripLayout:
    """Where the timeline strip under the frames draws: a text row, then the track ``[track_top, height)``."""

    height: int
    track_top: int
    font_size: int


def strip_layout(frame_height: int) -> StripLayout:
    """The strip's geometry for frames ``frame_height`` pixels tall; frame + strip height is even (yuv420p)."""
    font_size = max(10, min(22, round(frame_height / 26)))
    text_h = font_size + 6
    track_h = max(8, round(frame_height / 16))
    height = text_h + track_h
    height += (frame_height + height) % 2
    return StripLayout(height, height - track_h, font_size)


def timeline_columns(start: float, end: float, duration: float, width: int) -> tuple[int, int] | None:
    """Inclusive pixel columns of the time span ``[start, end)`` on a ``width``-pixel track for ``duration``
    seconds (``x = t / duration * width``), clamped to the track; None when the span misses the track."""
    lo = max(0, math.floor(start / duration * width + 1e-9))
    hi = min(width - 1, math.ceil(end / duration * width - 1e-9) - 1)
    return (lo, max(lo, hi)) if lo <= width - 1 and end > start and end > 0 else None


def playhead_column(frame: int, num_frames: int, width: int) -> int:
    """Column of the playhead on source frame ``frame``: its start time ``frame / src_fps`` on the track."""
    return min(width - 1, frame * width // num_frames)


def caption(evidence: Evidence) -> str:
    """One line for the strip: status, reward and labels."""
    labels = sorted({a.label for a in evidence.anomalies if a.label})
    text = f"{evidence.status}  R={evidence.reward:.3f}"
    return text + ("  " + ", ".join(labels) if labels else "")


def evidence_frames(video: torch.Tensor, src_fps: float, evidence: Evidence) -> torch.Tensor:
    """The frames of the evidence video: ``[F, 3, H + S, W']`` float in [0, 1] (``S`` = :func:`strip_layout`).

    The source frames with the final turn's boxes and labels (:func:`source_boxes`), above a strip that holds a
    caption (:func:`caption`), the frame's time and a track for the whole duration ``F / src_fps``: the window of
    :func:`window_seconds` in red when the final status is abnormal (grey when turn 2 did not confirm it) and a white
    playhead at the frame's time (as wide as the box outlines). ``W' = W`` rounded up to even with a black column, so
    the mp4 is yuv420p (what browsers play).
    """
    from PIL import Image, ImageDraw

    if video.ndim != 4:
        raise ValueError(f"expected video [F, C, H, W], got shape {tuple(video.shape)}")
    if not src_fps > 0:
        raise ValueError(f"src_fps must be positive, got {src_fps}")
    rgb = to_uint8(video)
    n, h, w, _ = rgb.shape
    layout = strip_layout(h)
    out_w = w + w % 2
    canvas = np.zeros((n, h + layout.height, out_w, 3), dtype=np.uint8)
    canvas[:, :h, :w] = rgb

    strip = Image.new("RGB", (out_w, layout.height), STRIP_COLOR)
    d = ImageDraw.Draw(strip)
    text_font = _font(layout.font_size)
    d.text((3, 3), caption(evidence), fill=TEXT_COLOR, font=text_font)
    d.rectangle((0, layout.track_top, w - 1, layout.height - 1), fill=TRACK_COLOR)
    span = window_seconds(evidence)
    cols = None if span is None else timeline_columns(span[0], span[1], n / src_fps, w)
    if cols is not None:
        color = WINDOW_COLOR if evidence.status == "abnormal" else FLAGGED_COLOR
        d.rectangle((cols[0], layout.track_top, cols[1], layout.height - 1), fill=color)
    canvas[:, h:] = np.asarray(strip)

    boxes = source_boxes(evidence, n, src_fps)
    width = _line_width(h, w)
    font = _font(max(10, min(24, round(h / 28))))
    for i in range(n):
        if i in boxes:
            img = Image.fromarray(canvas[i, :h, :w])
            bs = [b for b, _ in boxes[i]]
            _draw_frame_boxes(ImageDraw.Draw(img), (w, h), bs, [t for _, t in boxes[i]], BOX_COLOR, width, font)
            canvas[i, :h, :w] = np.asarray(img)
        x = playhead_column(i, n, w)
        canvas[i, h + layout.track_top :, x : min(w, x + width)] = PLAYHEAD_COLOR
        clock = Image.fromarray(canvas[i, h : h + layout.track_top, :w])
        d = ImageDraw.Draw(clock)
        stamp = f"{i / src_fps:.2f} / {n / src_fps:.2f} s"
        d.text((w - 3, 3), stamp, fill=TEXT_COLOR, font=text_font, anchor="ra")
        canvas[i, h : h + layout.track_top, :w] = np.asarray(clock)
    return torch.from_numpy(canvas).permute(0, 3, 1, 2).float().div_(255.0)


def render_evidence_video(video: torch.Tensor, src_fps: float, evidence: Evidence, path: str | Path) -> Path:
    """Write the evidence video (:func:`evidence_frames`) of ``video`` ``[F, C, H, W]`` to ``path`` (mp4, atomic).

    The video plays at its own rate ``src_fps``, whole, with every frame; ``evidence`` must come from this video
    (e.g. ``CaCReward.judge(path)`` and ``load_video(path, None)``).
    """
    return save_video(evidence_frames(video, src_fps, evidence), path, src_fps)


# ---------------------------------------------------------------------------------------------------------------------
# Scoring files
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class ScoredFile:
    """The result of scoring one video file.

    Attributes:
        path: the file as given.
        evidence: CaC's verdict, None when the file could not be scored.
        error: what went wrong (names the file), None on success.
        prompt: the generation prompt given with the file.
        render: the evidence mp4 written for it, if any.
    """

    path: Path
    evidence: Evidence | None
    error: str | None = None
    prompt: str | None = None
    render: Path | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.evidence is not None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record: video, ok, error, reward, status, window (turn-1 frames and seconds), labels,
        anomalies (label, frames, reason, region, boxes by final-turn frame) and the rendered file."""
        ev = self.evidence
        rec: dict[str, Any] = {"video": str(self.path), "ok": self.ok, "error": self.error}
        rec.update(
            reward=None, status=None, window=None, window_seconds=None, window_fps=None, labels=[], anomalies=[]
        )
        if ev is not None:
            win, secs = anomaly_window(ev), window_seconds(ev)
            rec.update(
                reward=ev.reward if math.isfinite(ev.reward) else None,
                status=ev.status,
                window=None if win is None else list(win),
                window_seconds=None if secs is None else [round(secs[0], 4), round(secs[1], 4)],
                window_fps=ev.fps,
                labels=sorted({a.label for a in ev.anomalies if a.label}),
                anomalies=[
                    {
                        "label": a.label,
                        "frames": None if a.frames is None else list(a.frames),
                        "reason": a.reason,
                        "region": a.region,
                        "boxes": {str(k): [list(b) for b in v] for k, v in sorted(a.bboxes.items())},
                    }
                    for a in ev.anomalies
                ],
            )
        rec["render"] = None if self.render is None else str(self.render)
        return rec

    def line(self) -> str:
        """One human-readable line: the file, then its reward, status, window and labels (or what went wrong)."""
        ev = self.evidence
        if not self.ok or ev is None:
            return f"{self.path}  FAILED  {self.error}"
        parts = [str(self.path), f"reward {ev.reward:.4f}", ev.status]
        win, secs = anomaly_window(ev), window_seconds(ev)
        if win is not None and secs is not None:
            note = "" if ev.status == "abnormal" else ", not confirmed"
            parts.append(f"window {win[0]}-{win[1]} ({secs[0]:.2f}-{secs[1]:.2f} s{note})")
        labels = sorted({a.label for a in ev.anomalies if a.label})
        if labels:
            parts.append("labels " + ", ".join(labels))
        return "  ".join(parts)


def score_files(
    reward: CaCReward,
    paths: Sequence[str | Path],
    prompts: Sequence[str | None] | None = None,
    batch_size: int = 4,
) -> Iterator[ScoredFile]:
    """Judge video files with CaC ``batch_size`` at a time; yields one :class:`ScoredFile` per file, in order.

    A file that is not a readable video (:class:`~cac_align.video.VideoReadError`) fails its batch; that batch is
    then judged one file at a time, so the broken file's result carries the error and the others are still scored.
    Any other exception is a bug and propagates.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    files = [Path(p) for p in paths]
    texts = [None] * len(files) if prompts is None else list(prompts)
    if len(texts) != len(files):
        raise ValueError(f"prompts: expected {len(files)} prompts (one per file), got {len(texts)}")
    for i in range(0, len(files), batch_size):
        chunk, chunk_prompts = files[i : i + batch_size], texts[i : i + batch_size]
        try:
            evidences = reward.judge_batch(chunk, chunk_prompts)
        except VideoReadError:
            results = []
            for f, p in zip(chunk, chunk_prompts, strict=True):
                try:
                    results.append(ScoredFile(f, reward.judge(f, p), prompt=p))
                except VideoReadError as e:
                    results.append(ScoredFile(f, None, str(e), p))
            yield from results
        else:
            for f, p, ev in zip(chunk, chunk_prompts, evidences, strict=True):
                yield ScoredFile(f, ev, prompt=p)


# ---------------------------------------------------------------------------------------------------------------------
# The HTML report
# ---------------------------------------------------------------------------------------------------------------------

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px; background: #f4f4f5; color: #18181b; }
h1 { font-size: 20px; margin: 0 0 4px; } .summary { color: #52525b; margin-bottom: 16px; }
.card { background: #fff; border: 1px solid #e4e4e7; border-radius: 8px; padding: 14px; margin: 0 0 16px;
  display: grid; grid-template-columns: minmax(240px, 480px) 1fr; gap: 16px; }
.card h2 { font-size: 15px; margin: 0 0 8px; word-break: break-all; grid-column: 1 / -1; }
video { width: 100%; background: #000; border-radius: 4px; }
.novideo { color: #71717a; font-style: italic; }
.row { margin: 4px 0; } .key { color: #71717a; display: inline-block; min-width: 70px; }
.bar { display: inline-block; width: 160px; height: 10px; background: #e4e4e7; border-radius: 5px;
  vertical-align: middle; overflow: hidden; margin-left: 8px; }
.fill { height: 100%; background: linear-gradient(90deg, #dc2626, #f59e0b, #16a34a); }
.status { font-weight: 600; padding: 1px 8px; border-radius: 10px; }
.abnormal { background: #fee2e2; color: #991b1b; } .normal { background: #dcfce7; color: #166534; }
.failed { background: #fef3c7; color: #92400e; }
.label { background: #ffedd5; color: #9a3412; border-radius: 4px; padding: 0 6px; margin-right: 4px; }
.error { color: #b91c1c; white-space: pre-wrap; }
ul.reasons { margin: 4px 0 8px 18px; padding: 0; }
details { margin: 4px 0; } summary { cursor: pointer; color: #3f3f46; }
pre { white-space: pre-wrap; word-break: break-word; background: #fafafa; border: 1px solid #e4e4e7;
  padding: 8px; border-radius: 4px; max-height: 360px; overflow: auto; font-size: 12px; }
"""


def _href(target: Path, page: Path) -> str:
    """``target`` as a link relative to the folder of ``page`` (URL-quoted, forward slashes)."""
    rel = os.path.relpath(Path(target).resolve(), Path(page).resolve().parent)
    return quote(Path(rel).as_posix())


def _entry_html(entry: ScoredFile, page: Path) -> str:
    e = html.escape
    parts = [f'<section class="card"><h2>{e(str(entry.path))}</h2>']
    if entry.render is not None:
        parts.append(f'<div><video controls preload="metadata" src="{e(_href(entry.render, page))}"></video></div>')
    else:
        parts.append('<div class="novideo">no evidence video</div>')
    parts.append("<div>")
    if entry.prompt:
        parts.append(f'<div class="row"><span class="key">prompt</span>{e(entry.prompt)}</div>')
    ev = entry.evidence
    if not entry.ok:
        parts.append('<div class="row"><span class="status failed">failed</span></div>')
        parts.append(f'<div class="row error">{e(entry.error or "")}</div>')
    if ev is not None:
        if math.isfinite(ev.reward):
            pct = f"{100 * min(1.0, max(0.0, ev.reward)):.1f}%"
            bar = f'<span class="bar" title="{ev.reward:.4f}"><span class="fill" style="width: {pct}"></span></span>'
            parts.append(f'<div class="row"><span class="key">reward</span><b>{ev.reward:.4f}</b>{bar}</div>')
        parts.append(
            f'<div class="row"><span class="key">status</span><span class="status {e(ev.status)}">'
            f"{e(ev.status)}</span> <small>(turn {len(ev.turns)} final)</small></div>"
        )
        win, secs = anomaly_window(ev), window_seconds(ev)
        if win is not None and secs is not None:
            note = "" if ev.status == "abnormal" else " &mdash; flagged by turn 1, not confirmed"
            parts.append(
                f'<div class="row"><span class="key">window</span>frames {win[0]}&ndash;{win[1]} at {ev.fps:g} fps '
                f"({secs[0]:.2f}&ndash;{secs[1]:.2f} s){note}</div>"
            )
        labels = sorted({a.label for a in ev.anomalies if a.label})
        if labels:
            chips = "".join(f'<span class="label">{e(x)}</span>' for x in labels)
            parts.append(f'<div class="row"><span class="key">labels</span>{chips}</div>')
        reasons = [a for a in ev.anomalies if a.reason or a.region]
        if reasons:
            items = "".join(
                f"<li><b>{e(a.label or '?')}</b>"
                + (f" ({e(a.region)})" if a.region else "")
                + (f": {e(a.reason)}" if a.reason else "")
                + "</li>"
                for a in reasons
            )
            parts.append(f'<div class="row"><span class="key">reasons</span><ul class="reasons">{items}</ul></div>')
        for t in ev.turns:
            valid = "valid" if t.judgment.valid else f"invalid: {'; '.join(t.judgment.errors[:3])}"
            parts.append(
                f"<details><summary>turn {t.turn} answer ({len(t.timestamps)} frames at {t.fps:g} fps; "
                f"{e(valid)})</summary><pre>{e(t.text)}</pre></details>"
            )
    parts.append("</div></section>")
    return "\n".join(parts)


def write_report(entries: Sequence[ScoredFile], path: str | Path, title: str = "CaC evidence") -> Path:
    """Write one self-contained HTML page for the scored videos (atomically) and return its path.

    Each video gets its evidence mp4 (``<video controls>``, linked relative to the page, so the folder can be moved
    or served as is), the reward as a number and a bar, the status, the window, the labels, the reasons and each
    turn's raw answer in a ``<details>``; a failed file shows what went wrong. All text is HTML-escaped.
    """
    path = Path(path)
    scored = [x for x in entries if x.ok and x.evidence is not None]
    failed = len(entries) - len(scored)
    abnormal = sum(x.evidence.status == "abnormal" for x in scored if x.evidence is not None)
    rewards = [x.evidence.reward for x in scored if x.evidence is not None and math.isfinite(x.evidence.reward)]
    mean = f", mean reward {sum(rewards) / len(rewards):.4f}" if rewards else ""
    summary = f"{len(scored)} scored ({abnormal} abnormal){mean}; {failed} failed"
    body = "\n".join(_entry_html(x, path) for x in entries)
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f'<h1>{html.escape(title)}</h1>\n<div class="summary">{html.escape(summary)}</div>\n{body}\n</body>\n</html>\n'
    )
    atomic_write_text(path, page)
    return path
