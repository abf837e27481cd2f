"""Duration, area and the CaC-Bench-Hard groups (App. A.1)."""

from __future__ import annotations

import pytest

from cac_align.data.difficulty import anomaly_area, anomaly_duration, hard_split, union_area
from cac_align.schema import Annotation, AnomalySpan


def _span(frames, bboxes, label="Object Distortion"):
    return AnomalySpan(label, frames, bboxes=bboxes)


def test_union_area_counts_overlaps_once():
    assert union_area([]) == 0.0
    assert union_area([(0, 0, 1000, 1000)]) == 1.0
    assert union_area([(0, 0, 500, 500), (0, 0, 500, 500)]) == pytest.approx(0.25)
    assert union_area([(0, 0, 500, 500), (250, 250, 750, 750)]) == pytest.approx(0.25 + 0.25 - 0.0625)
    assert union_area([(0, 0, 100, 100), (900, 900, 1000, 1000)]) == pytest.approx(0.02)


def test_duration_and_area_of_a_span():
    span = _span((3, 6), {3: [(0, 0, 500, 400)], 4: [(0, 0, 500, 400), (0, 0, 1000, 100)], 6: [(0, 0, 100, 100)]})
    assert anomaly_duration(span) == 1.0
    assert anomaly_duration(span, fps=8) == 0.5
    assert anomaly_area(span) == pytest.approx((0.2 + (0.2 + 0.1 - 0.05) + 0.01) / 3)
    with pytest.raises(ValueError, match="no boxes"):
        anomaly_area(_span((0, 0), {}))


@pytest.mark.parametrize(
    ("frames", "box", "expected"),
    [
        ((2, 4), (0, 0, 100, 100), "<1s,<20%"),
        ((2, 4), (0, 0, 500, 400), "<1s,>=20%"),
        ((2, 5), (0, 0, 447, 447), ">=1s,<20%"),
        ((0, 9), (100, 100, 900, 900), ">=1s,>=20%"),
    ],
)
def test_hard_split_groups(frames, box, expected):
    bboxes = {j: [box] for j in range(frames[0], frames[1] + 1)}
    ann = Annotation("v.mp4", "p", "abnormal", 4.0, [_span(frames, bboxes)])
    assert hard_split(ann) == expected


def test_hard_split_pools_anomalies_and_skips_normal():
    assert hard_split(Annotation("v.mp4", "p", "normal")) is None
    a = _span((0, 1), {0: [(0, 0, 400, 300)], 1: [(0, 0, 400, 300)]})
    b = _span((1, 3), {1: [(600, 0, 1000, 300)], 2: [(0, 0, 100, 100)], 3: [(0, 0, 100, 100)]}, "Motion Anomalies")
    ann = Annotation("v.mp4", "p", "abnormal", 4.0, [a, b])
    # frames 0-3 -> 1 s; per-frame pooled areas 0.12, 0.24, 0.01, 0.01 -> mean 0.095
    assert hard_split(ann) == ">=1s,<20%"
    with pytest.raises(ValueError, match="no boxes"):
        hard_split(Annotation("v.mp4", "p", "abnormal", 4.0, [_span((0, 0), {})]))
