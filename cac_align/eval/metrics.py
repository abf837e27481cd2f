"""Metrics of the anomaly-judge benchmark (paper Sec. 4.1: Table 1 and Fig. 4; App. A.1; App. D.1-D.2: Tables S3-S4).

Pure functions from ground truth (:class:`~cac_align.schema.Annotation`) and per-video :class:`Prediction` to the
numbers the paper's tables report. Conventions the paper leaves open, fixed here:

* **Binary detection (Table 1).** Each class is scored as the positive class in turn: "abnormal" (anomalous videos)
  and "normal". A video whose judge gave no usable status (``status=None``, e.g. an unparsable UnifiedReward
  answer) is an *invalid* prediction: it counts in its GT class's recall denominator and as an error in accuracy,
  and it is a prediction of neither class (so it never enters a precision denominator).
* **Zero division.** A ratio whose denominator is 0 is undefined and reported as ``None`` ("n/a"): recall of a
  class with no GT video, precision of a class never predicted. F1 is ``2 TP / (2 TP + FP + FN)``, the harmonic
  mean of precision and recall wherever both are defined; it is 0 when the class exists but is never correctly
  predicted, and ``None`` only when the class is neither present nor predicted.
* **Difficulty splits (Fig. 4).** The CaC-Bench-Hard group of a GT-anomalous video comes from its annotation via
  :func:`cac_align.data.difficulty.hard_split` (duration ``< 1 s`` / ``>= 1 s`` of the union of its windows, area
  ``< 20 %`` / ``>= 20 %`` of the frame; the boundaries belong to the upper groups). Videos without any GT box have no
  area and no group (:func:`video_split` gives None). Recall per group = predicted abnormal / videos in the group.
* **Per-category recall (Table S3).** A GT-anomalous video counts once for each category among its anomalies.
  ``recall`` is *detection* recall, predicted abnormal / videos of the category (what Table S3 reports: "recall of
  anomaly detection" per category). ``recall_label_matched`` additionally requires the category among the predicted
  labels, a stricter diagnostic that the paper does not report.
* **Localisation (Table S4).** Over GT-anomalous videos. Temporal IoU is Eq. 4 between the union of the predicted
  turn-1 windows and the GT frames; spatial IoU is Eq. 5 (:func:`cac_align.rewards.spatial_iou`, the crop rule of
  :mod:`cac_align.video`) between the final boxes and the GT boxes. Both are computed on the frame grid the judge's
  turn 1 saw (:func:`gt_on_grid`; the annotation's own grid whenever the judge sampled at the annotation rate, as
  CaCReward does for videos up to 16 s). A video the judge did not finally call abnormal has no localisation and
  scores 0, as in the status-gated reward of Sec. 3.3. ``temporal_iou`` averages over all GT-anomalous videos,
  ``spatial_iou`` over those with at least one GT box; ``*_detected`` average over the detected ones (true positives)
  only. Judges that do not localise (no frame grid, ``Prediction.fps is None``) give ``None`` ("n/a").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cac_align.data.difficulty import HARD_SPLITS, hard_split
from cac_align.rewards import spatial_iou, temporal_iou
from cac_align.schema import STATUSES, TAXONOMY, Annotation, Box

_EPS = 1e-6


@dataclass
class Prediction:
    """What a judge says about one video, in the form the metrics need.

    Attributes:
        status: "normal", "abnormal", or None when the judge gave no usable answer.
        score: the judge's scalar (CaC: Eq. 7 reward, higher = more normal; UnifiedReward: its 1-5 score), or None.
        fps: the rate of the frame grid that ``windows`` index (the judge's turn-1 sampling rate); None for a judge
            that does not localise.
        windows: the predicted turn-1 windows, inclusive ``(start, end)`` on that grid; ``F_pred`` is their union.
        boxes: the final answer's boxes by frame. With ``clip_fps`` set they index the turn-2 clip, cropped at
            ``min(F_pred)`` and sampled at ``clip_fps`` (two-turn mode); without it they index the turn-1 grid
            (single-turn mode).
        clip_fps: the turn-2 sampling rate, None when the boxes index the turn-1 grid.
        labels: the final answer's anomaly categories.
        answers: the raw answer text of each turn (kept for inspection).
    """

    status: str | None
    score: float | None = None
    fps: float | None = None
    windows: list[tuple[int, int]] = field(default_factory=list)
    boxes: dict[int, list[Box]] = field(default_factory=dict)
    clip_fps: float | None = None
    labels: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in STATUSES:
            raise ValueError(f"Prediction.status: expected 'normal', 'abnormal' or None, got {self.status!r}")

    @property
    def frame_set(self) -> set[int]:
        """F_pred of Eq. 4: the union of the predicted windows."""
        return {j for s, e in self.windows for j in range(s, e + 1)}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (box frame keys as strings); :meth:`from_dict` reverses it."""
        score = self.score if self.score is None or math.isfinite(self.score) else None
        return {
            "status": self.status,
            "score": score,
            "fps": self.fps,
            "windows": [[s, e] for s, e in self.windows],
            "boxes": {str(k): [list(b) for b in v] for k, v in sorted(self.boxes.items())},
            "clip_fps": self.clip_fps,
            "labels": list(self.labels),
            "answers": list(self.answers),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Prediction:
        return cls(
            status=d["status"],
            score=d.get("score"),
            fps=d.get("fps"),
            windows=[(int(s), int(e)) for s, e in d.get("windows", [])],
            boxes={int(k): [tuple(b) for b in v] for k, v in d.get("boxes", {}).items()},
            clip_fps=d.get("clip_fps"),
            labels=list(d.get("labels", [])),
            answers=list(d.get("answers", [])),
        )


# ----------------------------------------------------------------------------------------------------------------------
# Binary detection (Table 1)
# ----------------------------------------------------------------------------------------------------------------------


def ratio(num: float, den: float) -> float | None:
    """``num / den``, or None (n/a) when ``den`` is 0."""
    return num / den if den else None


def class_scores(tp: int, fp: int, fn: int) -> dict[str, float | None]:
    """Recall, precision and F1 of one positive class from its confusion counts (module docstring: zero division).

    ``fn`` counts every GT video of the class not predicted as it (invalid predictions included).
    """
    return {"recall": ratio(tp, tp + fn), "precision": ratio(tp, tp + fp), "f1": ratio(2 * tp, 2 * tp + fp + fn)}


def binary_metrics(gt_abnormal: Sequence[bool], pred_status: Sequence[str | None]) -> dict[str, Any]:
    """Table 1: recall/precision/F1 for anomalous and for normal videos, and overall accuracy.

    Args:
        gt_abnormal: per video, whether it is GT-anomalous.
        pred_status: per video, "abnormal", "normal" or None (invalid: wrong for accuracy, counted in no precision).

    Returns:
        ``{"anomalous": {...}, "normal": {...}, "accuracy": ..., "counts": {"tp", "fn", "fp", "tn", "invalid"}}``
        with anomalous as the positive class for the counts (``tp``: anomalous called abnormal, ``fn``: anomalous
        called normal, ``fp``: normal called abnormal, ``tn``: normal called normal, ``invalid``: no status).
    """
    if len(gt_abnormal) != len(pred_status):
        raise ValueError(f"got {len(gt_abnormal)} ground truths but {len(pred_status)} predictions")
    tp = fn = fp = tn = inv_abn = inv_norm = 0
    for i, (g, p) in enumerate(zip(gt_abnormal, pred_status, strict=True)):
        if p is not None and p not in STATUSES:
            raise ValueError(f"pred_status[{i}]: expected 'normal', 'abnormal' or None, got {p!r}")
        if g:
            tp += p == "abnormal"
            fn += p == "normal"
            inv_abn += p is None
        else:
            fp += p == "abnormal"
            tn += p == "normal"
            inv_norm += p is None
    return {
        "anomalous": class_scores(tp, fp, fn + inv_abn),
        "normal": class_scores(tn, fn, fp + inv_norm),
        "accuracy": ratio(tp + tn, len(gt_abnormal)),
        "counts": {"tp": tp, "fn": fn, "fp": fp, "tn": tn, "invalid": inv_abn + inv_norm},
    }


# ----------------------------------------------------------------------------------------------------------------------
# Recall by difficulty split (Fig. 4) and by category (Table S3)
# ----------------------------------------------------------------------------------------------------------------------


def video_split(annotation: Annotation) -> str | None:
    """The CaC-Bench-Hard group of a GT-anomalous video (:data:`HARD_SPLITS`); None if normal or without boxes."""
    if not annotation.is_abnormal or not any(a.bboxes for a in annotation.anomalies):
        return None
    return hard_split(annotation)


def split_recall(annotations: Sequence[Annotation], pred_status: Sequence[str | None]) -> dict[str, dict[str, Any]]:
    """Fig. 4: per difficulty group, ``{"n": videos, "detected": called abnormal, "recall": detected / n}``."""
    _check_lengths(annotations, pred_status)
    out: dict[str, dict[str, Any]] = {s: {"n": 0, "detected": 0} for s in HARD_SPLITS}
    for ann, p in zip(annotations, pred_status, strict=True):
        split = video_split(ann)
        if split is not None:
            out[split]["n"] += 1
            out[split]["detected"] += p == "abnormal"
    for v in out.values():
        v["recall"] = ratio(v["detected"], v["n"])
    return out


def category_recall(
    annotations: Sequence[Annotation], pred_status: Sequence[str | None], pred_labels: Sequence[Sequence[str]]
) -> dict[str, dict[str, Any]]:
    """Table S3: per category of :data:`TAXONOMY`, detection recall over the GT-anomalous videos showing it.

    Returns ``{category: {"n", "detected", "recall", "label_matched", "recall_label_matched"}}``; a video with two
    categories counts for both. ``label_matched`` videos are detected *and* name the category among their labels.
    """
    _check_lengths(annotations, pred_status)
    _check_lengths(annotations, pred_labels)
    out: dict[str, dict[str, Any]] = {c: {"n": 0, "detected": 0, "label_matched": 0} for c in TAXONOMY}
    for ann, p, labels in zip(annotations, pred_status, pred_labels, strict=True):
        for c in ann.labels:
            out[c]["n"] += 1
            out[c]["detected"] += p == "abnormal"
            out[c]["label_matched"] += p == "abnormal" and c in labels
    for v in out.values():
        v["recall"] = ratio(v["detected"], v["n"])
        v["recall_label_matched"] = ratio(v["label_matched"], v["n"])
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Localisation (Table S4)
# ----------------------------------------------------------------------------------------------------------------------


def gt_on_grid(annotation: Annotation, fps: float) -> tuple[set[int], dict[int, list[Box]]]:
    """The GT frame set (F_gt) and per-frame GT boxes of an annotation on the frame grid sampled at ``fps``.

    At the annotation's own rate this is ``annotation.frame_set`` and its boxes (all anomalies pooled). At another
    rate, grid frame ``i`` (time ``i / fps``) takes the annotation frame on screen at that time,
    ``floor(i * annotation.fps / fps)`` - the sampling rule of :mod:`cac_align.video` applied to the 4 fps sequence.
    """
    boxes: dict[int, list[Box]] = {}
    for a in annotation.anomalies:
        for j, bs in a.bboxes.items():
            boxes.setdefault(j, []).extend(bs)
    frames = annotation.frame_set
    if fps == annotation.fps or not frames:
        return frames, boxes
    last = max(frames)
    on_grid: set[int] = set()
    grid_boxes: dict[int, list[Box]] = {}
    for i in range(math.ceil((last + 1) * fps / annotation.fps) + 1):
        j = math.floor(i * annotation.fps / fps + _EPS)
        if j in frames:
            on_grid.add(i)
        if j in boxes:
            grid_boxes[i] = list(boxes[j])
    return on_grid, grid_boxes


def video_localization(annotation: Annotation, pred: Prediction) -> tuple[float | None, float | None]:
    """(temporal IoU, spatial IoU) of one video, see the module docstring.

    None where undefined: a GT-normal video, a judge that does not localise (``pred.fps is None``), and for the
    spatial IoU a video without GT boxes.
    """
    if not annotation.is_abnormal or pred.fps is None:
        return None, None
    gt_frames, gt_boxes = gt_on_grid(annotation, pred.fps)
    f_pred = pred.frame_set
    if pred.status != "abnormal" or not f_pred:
        return 0.0, (0.0 if gt_boxes else None)
    t_iou = temporal_iou(f_pred, gt_frames)
    if not gt_boxes:
        return t_iou, None
    if pred.clip_fps is None:  # boxes on the turn-1 grid: re-key them as a clip cropped at min(F_pred) at that rate
        start = min(f_pred)
        clip_boxes = {k - start: v for k, v in pred.boxes.items() if k >= start}
        return t_iou, spatial_iou(f_pred, clip_boxes, gt_boxes, fps=pred.fps, clip_fps=pred.fps)
    return t_iou, spatial_iou(f_pred, pred.boxes, gt_boxes, fps=pred.fps, clip_fps=pred.clip_fps)


def localization_metrics(annotations: Sequence[Annotation], predictions: Sequence[Prediction]) -> dict[str, Any]:
    """Table S4: mean temporal and spatial IoU over GT-anomalous videos (and over the detected ones).

    Returns ``{"temporal_iou", "spatial_iou", "temporal_iou_detected", "spatial_iou_detected", "n_temporal",
    "n_spatial", "n_detected_temporal", "n_detected_spatial"}``; the means are None when no video qualifies or the
    judge does not localise.
    """
    _check_lengths(annotations, predictions)
    t_all: list[float] = []
    s_all: list[float] = []
    t_det: list[float] = []
    s_det: list[float] = []
    for ann, pred in zip(annotations, predictions, strict=True):
        t, s = video_localization(ann, pred)
        detected = pred.status == "abnormal"
        if t is not None:
            t_all.append(t)
            if detected:
                t_det.append(t)
        if s is not None:
            s_all.append(s)
            if detected:
                s_det.append(s)
    return {
        "temporal_iou": ratio(sum(t_all), len(t_all)),
        "spatial_iou": ratio(sum(s_all), len(s_all)),
        "temporal_iou_detected": ratio(sum(t_det), len(t_det)),
        "spatial_iou_detected": ratio(sum(s_det), len(s_det)),
        "n_temporal": len(t_all),
        "n_spatial": len(s_all),
        "n_detected_temporal": len(t_det),
        "n_detected_spatial": len(s_det),
    }


# ----------------------------------------------------------------------------------------------------------------------
# Everything at once
# ----------------------------------------------------------------------------------------------------------------------


def benchmark_metrics(annotations: Sequence[Annotation], predictions: Sequence[Prediction]) -> dict[str, Any]:
    """All the benchmark's metrics: ``table1``, ``hard_splits``, ``categories``, ``localization`` and counts."""
    _check_lengths(annotations, predictions)
    status = [p.status for p in predictions]
    return {
        "num_videos": len(annotations),
        "num_abnormal": sum(a.is_abnormal for a in annotations),
        "num_normal": sum(not a.is_abnormal for a in annotations),
        "num_invalid": sum(s is None for s in status),
        "num_unsplit": sum(a.is_abnormal and video_split(a) is None for a in annotations),
        "table1": binary_metrics([a.is_abnormal for a in annotations], status),
        "hard_splits": split_recall(annotations, status),
        "categories": category_recall(annotations, status, [p.labels for p in predictions]),
        "localization": localization_metrics(annotations, predictions),
    }


def _check_lengths(annotations: Sequence[Annotation], other: Sequence[Any]) -> None:
    if len(annotations) != len(other):
        raise ValueError(f"got {len(annotations)} annotations but {len(other)} predictions")


def roc_auc(scores: Sequence[float], positive: Sequence[bool]) -> float | None:
    """ROC AUC: P(score of a positive > score of a negative), ties counting half; None without both classes.

    For the Eq. 7 reward, normal videos are the positive class (the reward is P(normal) / (P(normal) + P(abnormal))).
    """
    pos = [s for s, p in zip(scores, positive, strict=True) if p]
    neg = [s for s, p in zip(scores, positive, strict=True) if not p]
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))
