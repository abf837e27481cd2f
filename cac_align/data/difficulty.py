"""Anomaly duration and area, and the four difficulty groups of CaC-Bench-Hard (paper App. A.1, Fig. 4).

CaC-Bench-Hard splits anomalous videos along two axes: temporal duration (< 1 s / >= 1 s) and spatial extent
(< 20 % / >= 20 % of the frame area). The paper does not spell out how a multi-frame box sequence turns into one
area, so this module fixes the rule:

* **duration** of a window ``[s, e]`` of the ``fps`` sequence is ``(e - s + 1) / fps`` seconds (the window covers the
  times ``[s / fps, (e + 1) / fps)``, see :mod:`cac_align.video`);
* **area** is the mean, over the frames that carry boxes, of the area of the union of that frame's boxes as a fraction
  of the frame (boxes are in Qwen's 0-1000 coordinates, so the frame is 1000 x 1000).

For a video with several anomalies, :func:`hard_split` uses the union of all windows (the frame set ``F_gt`` of Eq. 4)
for the duration and pools the boxes of all anomalies per frame for the area; with one anomaly this is exactly
:func:`anomaly_duration` and :func:`anomaly_area`.
"""

from __future__ import annotations

from collections.abc import Iterable

from cac_align.schema import COORD_MAX, Annotation, AnomalySpan, Box

DURATION_SPLIT_S = 1.0
"""Duration threshold of CaC-Bench-Hard, seconds."""
AREA_SPLIT = 0.2
"""Area threshold of CaC-Bench-Hard, fraction of the frame."""
HARD_SPLITS: tuple[str, ...] = ("<1s,<20%", "<1s,>=20%", ">=1s,<20%", ">=1s,>=20%")
"""The four difficulty groups, hardest (short and small) first."""


def union_area(boxes: Iterable[Box]) -> float:
    """Area of the union of boxes in 0-1000 coordinates, as a fraction of the 1000 x 1000 frame."""
    boxes = list(boxes)
    if not boxes:
        return 0.0
    xs = sorted({c for b in boxes for c in (b[0], b[2])})
    ys = sorted({c for b in boxes for c in (b[1], b[3])})
    area = 0
    for x0, x1 in zip(xs, xs[1:], strict=False):
        for y0, y1 in zip(ys, ys[1:], strict=False):
            if any(b[0] <= x0 and x1 <= b[2] and b[1] <= y0 and y1 <= b[3] for b in boxes):
                area += (x1 - x0) * (y1 - y0)
    return area / (COORD_MAX * COORD_MAX)


def anomaly_duration(span: AnomalySpan, fps: float = 4.0) -> float:
    """Duration in seconds of an anomaly window ``[s, e]`` on the ``fps`` sequence: ``(e - s + 1) / fps``."""
    return (span.frames[1] - span.frames[0] + 1) / fps


def anomaly_area(span: AnomalySpan) -> float:
    """Mean over the boxed frames of the union-of-boxes area fraction. Raises ValueError for a span without boxes."""
    if not span.bboxes:
        raise ValueError(f"anomaly '{span.label}' at frames {list(span.frames)} has no boxes; its area is undefined")
    return sum(union_area(v) for v in span.bboxes.values()) / len(span.bboxes)


def split_name(duration: float, area: float) -> str:
    """The CaC-Bench-Hard group of a duration (seconds) and an area (fraction), e.g. ``"<1s,<20%"``."""
    d = "<1s" if duration < DURATION_SPLIT_S else ">=1s"
    a = "<20%" if area < AREA_SPLIT else ">=20%"
    return f"{d},{a}"


def hard_split(annotation: Annotation) -> str | None:
    """The CaC-Bench-Hard group of an annotation (one of :data:`HARD_SPLITS`), or None for a normal video.

    Raises ValueError for an abnormal annotation without any box (its area is undefined).
    """
    if not annotation.is_abnormal:
        return None
    duration = len(annotation.frame_set) / annotation.fps
    per_frame: dict[int, list[Box]] = {}
    for a in annotation.anomalies:
        for j, boxes in a.bboxes.items():
            per_frame.setdefault(j, []).extend(boxes)
    if not per_frame:
        raise ValueError(f"annotation of {annotation.video} has no boxes; its area split is undefined")
    area = sum(union_area(v) for v in per_frame.values()) / len(per_frame)
    return split_name(duration, area)
