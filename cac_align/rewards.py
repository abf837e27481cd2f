"""The rule-based rewards of CaC's two-turn GRPO stage (paper Sec. 3.3, Eq. 2-6; App. C.1).

A rollout is ``y = [y^1, y^2]``: turn 1 sees the whole video at 4 fps and answers a status, anomaly types and frame
windows; turn 2 sees the clip cropped to the turn-1 window at 8 fps and answers a status, types and per-frame boxes
(keys are clip frame indices). :func:`rollout_reward` scores one rollout against its :class:`Annotation`:

    R = w1 R_fmt + w2 gamma_bar R_stat + m (w3 R~_type + w4 R~_temp + w5 R~_spa)            (Eq. 6)
    R~_k = 1 - gamma_bar (1 - R_k),  (w1..w5) = (1, 2, 2, 2, 5)

with gamma_bar the mean saliency discount of the GT anomalies (0.5 non-salient, 1 salient; 1 for normal videos) and
m = 1 / 0 for GT-anomalous / GT-normal videos. The IoU helpers (:func:`type_iou`, :func:`temporal_iou`,
:func:`box_iou`, :func:`spatial_iou`) are pure functions usable on their own, e.g. for evaluation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from cac_align.schema import Annotation, Box, Judgment, parse_judgment
from cac_align.video import TURN1_FPS, TURN2_FPS, clip_frame_of, crop_window

PAPER_WEIGHTS: tuple[float, float, float, float, float] = (1.0, 2.0, 2.0, 2.0, 5.0)
"""(w1, ..., w5) of Eq. 6: format, status, type, temporal, spatial."""


def type_iou(pred_labels: Iterable[str], gt_labels: Iterable[str]) -> float:
    """Set IoU of anomaly types, the per-turn term of Eq. 3: ``|T_pred & T_gt| / |T_pred | T_gt|``.

    An empty union (no predicted and no GT type) gives 0, like :func:`temporal_iou` and Eq. 5's ``M = 0`` case: the
    IoU terms only pay for matched evidence. In :func:`rollout_reward` the GT set is never empty (the IoU terms are
    masked for GT-normal videos), so the convention never reaches the reward.
    """
    pred, gt = set(pred_labels), set(gt_labels)
    union = pred | gt
    return len(pred & gt) / len(union) if union else 0.0


def temporal_iou(pred_frames: Iterable[int], gt_frames: Iterable[int]) -> float:
    """Temporal IoU of Eq. 4: ``|F_pred & F_gt| / |F_pred | F_gt|`` over frame-index sets; an empty union gives 0."""
    pred, gt = set(pred_frames), set(gt_frames)
    union = pred | gt
    return len(pred & gt) / len(union) if union else 0.0


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two boxes ``[x1, y1, x2, y2]`` (the per-box term of Eq. 5).

    A degenerate box (zero or negative width or height) has no area and gives 0.
    """
    if len(a) != 4 or len(b) != 4:
        raise ValueError(f"expected boxes [x1, y1, x2, y2], got {list(a)} and {list(b)}")
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b
    if ax2 <= ax1 or ay2 <= ay1 or bx2 <= bx1 or by2 <= by1:
        return 0.0
    iw = min(ax2, bx2) - max(ax1, bx1)
    ih = min(ay2, by2) - max(ay1, by1)
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return inter / union


def spatial_iou(
    pred_frames: Iterable[int],
    pred_boxes: Mapping[int, Sequence[Box]],
    gt_boxes: Mapping[int, Sequence[Box]],
    fps: float = TURN1_FPS,
    clip_fps: float = TURN2_FPS,
) -> float:
    """Spatial IoU of Eq. 5: the mean IoU over the M GT boxes on the temporally matched frames ``F_pred & F_gt``.

    Args:
        pred_frames: F_pred, the turn-1 predicted frames (indices of the ``fps`` sequence). Turn 2 saw the clip
            cropped to their span ``[s, e] = [min, max]`` (``Judgment.window``) and resampled at ``clip_fps``.
        pred_boxes: turn-2 boxes keyed by **clip** frame index (several boxes per frame allowed).
        gt_boxes: GT boxes keyed by frame index of the ``fps`` sequence; only frames that carry boxes count, and
            every box on such a frame is one of the M terms.
        fps: the annotation's frame rate (``Annotation.fps``).
        clip_fps: the turn-2 sampling rate.

    GT frame ``j`` is matched to clip frame ``k = clip_frame_of(j, s, fps, clip_fps)`` (the clip frame nearest to its
    time ``j / fps``; ``k = 2 (j - s)`` at 4 fps), clamped to the last frame the crop has (only reachable when
    ``fps > clip_fps``). Each GT box scores its IoU with the best predicted box on frame ``k``, 0 if there is none.
    ``M = 0`` (no GT box on a predicted frame, or no prediction) gives 0.
    """
    pred = set(pred_frames)
    if not pred:
        return 0.0
    s, e = min(pred), max(pred)
    last = len(crop_window(s, e, fps, clip_fps)) - 1
    scores = []
    for j in sorted(pred & set(gt_boxes)):
        k = min(clip_frame_of(j, s, fps=fps, clip_fps=clip_fps), last)
        candidates = pred_boxes.get(k, ())
        for g in gt_boxes[j]:
            scores.append(max((box_iou(p, g) for p in candidates), default=0.0))
    return sum(scores) / len(scores) if scores else 0.0


@dataclass(frozen=True)
class RewardBreakdown:
    """The terms of Eq. 6 for one rollout.

    ``format`` and ``status`` are R_fmt and R_stat (0 or negative). ``type``, ``temporal`` and ``spatial`` are the
    raw R_k of Eq. 3-5, already 0 when the status check failed or the video is GT-normal; ``total`` applies the
    saliency transform ``R~_k = 1 - discount (1 - R_k)``, the mask and the weights. ``turn1`` / ``turn2`` are the
    parsed answers (``turn2`` is None when the rollout ended after turn 1 or no turn 2 was given).
    """

    format: float
    status: float
    type: float
    temporal: float
    spatial: float
    total: float
    discount: float
    mask: float
    status_correct: bool
    turn1: Judgment
    turn2: Judgment | None

    def discounted(self, raw: float) -> float:
        """``R~ = 1 - gamma_bar (1 - R)`` of Eq. 6 for this rollout's gamma_bar."""
        return 1.0 - self.discount * (1.0 - raw)

    def log(self, prefix: str = "reward/") -> dict[str, float]:
        """The scalar terms as a flat dict for a metrics logger."""
        return {
            f"{prefix}total": self.total,
            f"{prefix}format": self.format,
            f"{prefix}status": self.status,
            f"{prefix}status_correct": float(self.status_correct),
            f"{prefix}type_iou": self.type,
            f"{prefix}temporal_iou": self.temporal,
            f"{prefix}spatial_iou": self.spatial,
        }


def rollout_reward(
    turn1: str | Judgment,
    turn2: str | Judgment | None,
    annotation: Annotation,
    weights: Sequence[float] = PAPER_WEIGHTS,
    status_check: Literal["valid", "read"] = "valid",
    normal_check: Literal["turn1", "final"] = "turn1",
) -> RewardBreakdown:
    """The reward R(y) of one two-turn rollout (Eq. 2-6), against the GT ``annotation``.

    Each turn is the model's answer text (parsed with :func:`parse_judgment`) or an already parsed
    :class:`Judgment`. Semantics the paper leaves open, pinned here:

    * **Rollout end (App. C.1).** A turn 1 that is invalid, or valid and ``normal``, ends the rollout: ``turn2`` is
      ignored whatever it is. A valid ``abnormal`` turn 1 expects a turn 2; ``None`` there counts as an invalid turn.
    * **Format (Eq. 2).** ``R_fmt = 1/2 sum_t (0 if valid else -1)``. Turn 1 valid and normal: the absent turn 2
      counts as valid (R_fmt = 0). Turn 1 invalid: both turns count invalid (R_fmt = -1).
    * **Status.** 0 if correct, -1 otherwise, weighted by ``w2 * gamma_bar``. A GT-normal video passes iff turn 1
      says ``normal`` (a turn 1 saying ``abnormal`` fails, whatever turn 2 says). A GT-anomalous video passes iff
      turn 1 says ``abnormal`` with a usable window (a valid turn 1) and turn 2 says ``abnormal``. Which status a
      turn "says" depends on ``status_check``: ``"valid"`` (default) reads it from valid answers only, so an invalid
      (or missing) turn fails the check whatever status it may contain; ``"read"`` reads it as
      :class:`~cac_align.reward.cac.CaCReward` does at inference, also from an invalid answer
      (:func:`parse_judgment` still finds its status), leaving invalidity to the format term alone.
      ``normal_check`` picks which turn a GT-normal video is judged on: ``"turn1"`` (default, the reading above:
      turn 1 must say ``normal``) or ``"final"``, the final answer as :class:`~cac_align.reward.cac.CaCReward`
      decides at inference, so a turn 2 that says ``normal`` after an ``abnormal`` turn 1 (a rejected false alarm)
      also passes. Sec. 3.3 says a correct prediction "can directly pass the status check in the first turn" and a
      false one is penalized, without saying whether a false alarm that turn 2 rejects is a false prediction.
    * **IoU terms.** When the status check fails, the raw R_type, R_temp and R_spa are 0 before the saliency
      transform (so each still contributes ``1 - gamma_bar``); for GT-normal videos the mask m = 0 removes them.
      R_type is Eq. 3, the mean over both turns of :func:`type_iou` with the GT types. R_temp is Eq. 4 between the
      union of the turn-1 windows and the union of the GT windows, in the annotation's frame index space. R_spa is
      Eq. 5 via :func:`spatial_iou`: turn 2 saw the turn-1 window span ``Judgment.window`` cropped with
      :func:`cac_align.video.crop_window` at ``annotation.fps`` -> 8 fps, and its box keys are clip frames. With
      ``status_check="read"`` an invalid turn 2 that passes the check gives no turn-2 evidence: R_spa = 0 and R_type
      takes 0 for turn 2.

    Args:
        turn1: turn-1 answer (text or Judgment).
        turn2: turn-2 answer (text or Judgment), or None when there was no second turn.
        annotation: the ground truth of the video.
        weights: (w1, ..., w5) of Eq. 6; the paper's (1, 2, 2, 2, 5) by default.
        status_check: ``"valid"`` or ``"read"``, see Status above.
        normal_check: ``"turn1"`` or ``"final"``, see Status above.

    Returns:
        A :class:`RewardBreakdown` whose ``total`` is R(y).
    """
    if len(weights) != 5:
        raise ValueError(f"weights: expected 5 values (w1..w5 of Eq. 6), got {len(weights)}")
    if status_check not in ("valid", "read"):
        raise ValueError(f"status_check: expected 'valid' or 'read', got {status_check!r}")
    if normal_check not in ("turn1", "final"):
        raise ValueError(f"normal_check: expected 'turn1' or 'final', got {normal_check!r}")
    w1, w2, w3, w4, w5 = (float(w) for w in weights)
    j1 = turn1 if isinstance(turn1, Judgment) else parse_judgment(turn1, turn=1)

    ended = not j1.valid or j1.status != "abnormal"
    j2: Judgment | None = None
    if not ended and turn2 is not None:
        j2 = turn2 if isinstance(turn2, Judgment) else parse_judgment(turn2, turn=2)

    # Eq. 2
    if not j1.valid:
        r_fmt = -1.0
    elif ended:
        r_fmt = 0.0
    else:
        r_fmt = 0.0 if (j2 is not None and j2.valid) else -0.5

    # Status check
    def says(j: Judgment | None, status: str) -> bool:
        return j is not None and (j.valid or status_check == "read") and j.status == status

    if annotation.is_abnormal:  # reaching turn 2 already needs a valid abnormal turn 1 (not ended)
        ok = not ended and says(j1, "abnormal") and says(j2, "abnormal")
    elif normal_check == "final" and not ended:  # an abnormal turn 1: turn 2's answer is the final one
        ok = says(j2, "normal")
    else:
        ok = says(j1, "normal")
    r_stat = 0.0 if ok else -1.0

    # Eq. 3-5, gated by the status check and masked for GT-normal videos
    mask = 1.0 if annotation.is_abnormal else 0.0
    r_type = r_temp = r_spa = 0.0
    if ok and annotation.is_abnormal and j2 is not None:  # ok implies a turn 2 here (valid under "valid")
        gt_labels = annotation.labels
        evidence = j2.valid  # an invalid turn 2 (only under "read") carries no usable labels or boxes
        r_type = 0.5 * (type_iou(j1.labels, gt_labels) + (type_iou(j2.labels, gt_labels) if evidence else 0.0))
        f_pred = j1.frame_set
        r_temp = temporal_iou(f_pred, annotation.frame_set)
        if evidence:
            r_spa = spatial_iou(
                f_pred,
                _merge_boxes(a.bboxes for a in j2.anomalies),
                _merge_boxes(a.bboxes for a in annotation.anomalies),
                fps=annotation.fps,
            )

    # Eq. 6
    g = annotation.mean_discount
    total = (
        w1 * r_fmt
        + w2 * g * r_stat
        + mask * (w3 * (1 - g * (1 - r_type)) + w4 * (1 - g * (1 - r_temp)) + w5 * (1 - g * (1 - r_spa)))
    )
    return RewardBreakdown(r_fmt, r_stat, r_type, r_temp, r_spa, total, g, mask, ok, j1, j2)


def _merge_boxes(per_anomaly: Iterable[Mapping[int, Sequence[Box]]]) -> dict[int, list[Box]]:
    """Pool the per-frame boxes of several anomalies into one frame -> boxes map."""
    out: dict[int, list[Box]] = {}
    for bboxes in per_anomaly:
        for frame, boxes in bboxes.items():
            out.setdefault(frame, []).extend(boxes)
    return out
