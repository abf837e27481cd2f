"""The rewards of Sec. 3.3 (Eq. 2-6): every expected value below is worked out by hand in the test."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cac_align.rewards import (
    PAPER_WEIGHTS,
    box_iou,
    rollout_reward,
    spatial_iou,
    temporal_iou,
    type_iou,
)
from cac_align.schema import Annotation, Judgment, PredAnomaly, format_judgment

OD, HD, MA, PV = "Object Distortion", "Human Distortion", "Motion Anomalies", "Physical Violations"


def annotation(*anomalies: dict, fps: float = 4) -> Annotation:
    status = "abnormal" if anomalies else "normal"
    return Annotation.from_dict(
        {"video": "v.mp4", "prompt": "p", "status": status, "fps": fps, "anomalies": list(anomalies)}
    )


def turn1(status: str = "abnormal", *windows: tuple[str, tuple[int, int]], valid: bool = True) -> Judgment:
    return Judgment(valid, status, [PredAnomaly(label=lab, frames=fr) for lab, fr in windows])


def turn2(status: str = "abnormal", *items: tuple[str, dict], valid: bool = True) -> Judgment:
    return Judgment(valid, status, [PredAnomaly(label=lab, bboxes=bb) for lab, bb in items])


INVALID = Judgment(False, None, errors=["not JSON"])
BOX = [0, 0, 100, 100]

# One salient Object Distortion on frames 4..7 (4 fps) with boxes on frames 5 and 6 only.
GT_OD = {"label": OD, "frames": [4, 7], "saliency": "salient", "bboxes": {"5": [BOX], "6": [BOX]}}


# ---------------------------------------------------------------------------------------------------------------
# IoU helpers
# ---------------------------------------------------------------------------------------------------------------


def test_temporal_iou_eq4():
    # {2,3,4,5} vs {4,5,6,7}: intersection {4,5} = 2, union {2..7} = 6
    assert temporal_iou(range(2, 6), range(4, 8)) == pytest.approx(2 / 6)
    # {0} vs {0,1,2,3}: 1 / 4
    assert temporal_iou([0], {0, 1, 2, 3}) == pytest.approx(1 / 4)
    assert temporal_iou({1, 2}, {2, 1}) == 1.0
    assert temporal_iou({1, 2}, {5, 6}) == 0.0
    assert temporal_iou([], []) == 0.0
    assert temporal_iou([], [3]) == 0.0
    # duplicates are a set: [3, 3, 4] is {3, 4}; vs {4}: 1 / 2
    assert temporal_iou([3, 3, 4], [4]) == pytest.approx(1 / 2)


def test_box_iou():
    # overlap 50 x 50 = 2500; union 10000 + 10000 - 2500 = 17500
    assert box_iou([0, 0, 100, 100], [50, 50, 150, 150]) == pytest.approx(2500 / 17500)
    # the lower half of a box: 5000 / 10000
    assert box_iou([0, 0, 100, 100], [0, 0, 100, 50]) == pytest.approx(0.5)
    # overlap 50 x 100 = 5000; union 10000 + 10000 - 5000 = 15000
    assert box_iou([0, 0, 100, 100], [50, 0, 150, 100]) == pytest.approx(1 / 3)
    assert box_iou(BOX, BOX) == 1.0
    assert box_iou([0, 0, 10, 10], [10, 0, 20, 10]) == 0.0  # touching edges
    assert box_iou([0, 0, 10, 10], [500, 500, 600, 600]) == 0.0


@pytest.mark.parametrize("degenerate", [[10, 10, 10, 50], [10, 10, 50, 10], [50, 0, 10, 10], [0, 50, 10, 10]])
def test_box_iou_degenerate_boxes_give_zero(degenerate):
    assert box_iou(degenerate, [0, 0, 1000, 1000]) == 0.0
    assert box_iou([0, 0, 1000, 1000], degenerate) == 0.0
    assert box_iou(degenerate, degenerate) == 0.0


def test_box_iou_rejects_malformed_box():
    with pytest.raises(ValueError, match="x1, y1, x2, y2"):
        box_iou([0, 0, 1], BOX)


coord = st.integers(0, 1000)


@given(st.tuples(coord, coord, coord, coord), st.tuples(coord, coord, coord, coord))
def test_box_iou_is_symmetric_and_bounded(a, b):
    v = box_iou(a, b)
    assert v == pytest.approx(box_iou(b, a))
    assert 0.0 <= v <= 1.0
    if a[2] > a[0] and a[3] > a[1]:
        assert box_iou(a, a) == 1.0


@given(st.sets(st.integers(0, 40)), st.sets(st.integers(0, 40)))
def test_temporal_iou_is_symmetric_and_bounded(a, b):
    v = temporal_iou(a, b)
    assert v == temporal_iou(b, a)
    assert 0.0 <= v <= 1.0
    assert (v == 1.0) == (a == b and bool(a))


def test_type_iou():
    # {OD, MA} vs {OD}: 1 / 2
    assert type_iou([OD, MA], {OD}) == pytest.approx(1 / 2)
    # {OD, HD} vs {HD, PV}: intersection {HD}, union of 3
    assert type_iou({OD, HD}, [HD, PV]) == pytest.approx(1 / 3)
    assert type_iou([PV], [PV]) == 1.0
    assert type_iou([], [OD]) == 0.0
    assert type_iou([], []) == 0.0  # documented convention: an empty union gives 0


# ---------------------------------------------------------------------------------------------------------------
# Spatial IoU (Eq. 5) and the crop matching
# ---------------------------------------------------------------------------------------------------------------


def test_spatial_iou_best_match_and_unmatched_frames():
    # F_pred = {4, 5, 6}, crop starts at s = 4; at 4 fps GT frame j matches clip frame k = 2 (j - 4).
    gt = {
        3: [BOX],  # not predicted: ignored
        5: [[0, 0, 100, 100], [200, 0, 300, 100]],  # two GT boxes -> clip frame 2
        6: [[0, 0, 100, 100]],  # -> clip frame 4, where nothing is predicted
        9: [BOX],  # not predicted: ignored
    }
    pred = {
        1: [[0, 0, 100, 100], [200, 0, 300, 100]],  # k = j - s would hit these (wrong rule)
        2: [[0, 0, 100, 50], [500, 500, 600, 600], [200, 0, 300, 100]],
        3: [[0, 0, 100, 100]],
        5: [[0, 0, 100, 100]],
        6: [[0, 0, 100, 100]],  # k = j would hit this for j = 6 (no crop offset)
    }
    # M = 3 GT boxes: [0,0,100,100] best = 0.5 ([0,0,100,50]); [200,0,300,100] best = 1.0; frame 6 -> 0
    assert spatial_iou({4, 5, 6}, pred, gt, fps=4) == pytest.approx((0.5 + 1.0 + 0.0) / 3)


def test_spatial_iou_no_gt_box_on_predicted_frames_gives_zero():
    # M = 0: the GT boxes lie on frames that were not predicted
    assert spatial_iou({0, 1}, {0: [BOX], 2: [BOX]}, {5: [BOX]}, fps=4) == 0.0
    assert spatial_iou(set(), {0: [BOX]}, {5: [BOX]}, fps=4) == 0.0
    assert spatial_iou({5}, {}, {5: [BOX]}, fps=4) == 0.0


def test_spatial_iou_crop_matching_at_4_fps():
    # window [3, 6]: GT frame 5 -> k = 2 (5 - 3) = 4, GT frame 6 -> k = 6
    gt = {5: [BOX], 6: [[0, 0, 100, 50]]}
    pred = {4: [BOX], 6: [BOX]}
    # frame 5: IoU 1; frame 6: [0,0,100,50] vs [0,0,100,100] = 0.5
    assert spatial_iou(range(3, 7), pred, gt, fps=4) == pytest.approx((1.0 + 0.5) / 2)


def test_spatial_iou_crop_matching_at_2_fps():
    # annotation at 2 fps, window [3, 4]: clip frame k at time 3/2 + k/8, so GT frame 4 (t = 2 s) -> k = 4 (4 - 3) = 4
    gt = {4: [BOX]}
    assert spatial_iou({3, 4}, {4: [BOX]}, gt, fps=2) == 1.0
    assert spatial_iou({3, 4}, {2: [BOX], 1: [BOX], 5: [BOX], 3: [BOX]}, gt, fps=2) == 0.0


def test_spatial_iou_crop_matching_at_16_fps_clamps_to_the_clip():
    # annotation at 16 fps, window [8, 11] = [0.5, 0.75) s, resampled at 8 fps: clip frames at 0.5 and 0.625 s.
    # GT frame 9 (t = 0.5625) -> nearest rounds up to k = 1; GT frame 11 (t = 0.6875) -> k = 2 does not exist:
    # the last clip frame, k = 1.
    gt = {9: [BOX], 11: [[0, 0, 100, 50]]}
    pred = {0: [[0, 0, 50, 100]], 1: [BOX]}
    # frame 9: IoU 1 with the k = 1 box; frame 11 (clamped to k = 1): 0.5
    assert spatial_iou(range(8, 12), pred, gt, fps=16) == pytest.approx((1.0 + 0.5) / 2)


# ---------------------------------------------------------------------------------------------------------------
# rollout_reward (Eq. 2-6); weights (w1..w5) = (1, 2, 2, 2, 5)
# ---------------------------------------------------------------------------------------------------------------


def test_paper_weights():
    assert PAPER_WEIGHTS == (1, 2, 2, 2, 5)


def test_anomalous_fully_correct():
    gt = annotation(GT_OD)
    # turn 1 window [4, 7]: s = 4, GT frames 5 and 6 -> clip frames 2 and 4
    r = rollout_reward(turn1("abnormal", (OD, (4, 7))), turn2("abnormal", (OD, {2: [BOX], 4: [BOX]})), gt)
    assert (r.format, r.status, r.type, r.temporal, r.spatial) == (0.0, 0.0, 1.0, 1.0, 1.0)
    assert r.status_correct and r.mask == 1.0 and r.discount == 1.0
    # R = 1*0 + 2*1*0 + 1*(2*1 + 2*1 + 5*1)
    assert r.total == pytest.approx(9.0)


PARTIAL_T1 = turn1("abnormal", (OD, (2, 5)), (MA, (5, 5)))
# GT frame 5 is the only boxed GT frame in F_pred = {2..5}; window s = 2 -> clip frame 2 (5 - 2) = 6
PARTIAL_T2 = turn2("abnormal", (OD, {6: [[50, 0, 150, 100], [0, 0, 100, 50]], 4: [BOX]}))
# R_type = ( |{OD,MA} & {OD}| / |{OD,MA} | {OD}| + |{OD}|/|{OD}| ) / 2 = (1/2 + 1) / 2 = 3/4
# R_temp = |{2..5} & {4..7}| / |{2..7}| = 2 / 6 = 1/3
# R_spa  = best of (1/3, 1/2) on the one GT box (frame 4 is in F_pred & F_gt but has no box: M = 1) = 1/2
PARTIAL = (3 / 4, 1 / 3, 1 / 2)


def test_anomalous_partial_ious_salient():
    r = rollout_reward(PARTIAL_T1, PARTIAL_T2, annotation(GT_OD))
    assert (r.type, r.temporal, r.spatial) == pytest.approx(PARTIAL)
    # gamma_bar = 1: R~ = R
    assert r.total == pytest.approx(0 + 2 * 1 * 0 + (2 * (3 / 4) + 2 * (1 / 3) + 5 * (1 / 2)))


def test_anomalous_partial_ious_non_salient():
    gt = annotation({**GT_OD, "saliency": "non-salient"})
    r = rollout_reward(PARTIAL_T1, PARTIAL_T2, gt)
    assert r.discount == 0.5
    assert (r.type, r.temporal, r.spatial) == pytest.approx(PARTIAL)
    # R~ = 1 - 0.5 (1 - R): type 1 - 0.5*(1/4) = 7/8, temp 1 - 0.5*(2/3) = 2/3, spa 1 - 0.5*(1/2) = 3/4
    assert r.total == pytest.approx(2 * (7 / 8) + 2 * (2 / 3) + 5 * (3 / 4))


GT_PV = {"label": PV, "frames": [10, 11], "saliency": "non-salient"}


def test_mixed_saliency_discount():
    gt = annotation(GT_OD, GT_PV)  # gamma_bar = (1 + 0.5) / 2 = 0.75
    r = rollout_reward(turn1("abnormal", (OD, (4, 7))), turn2("abnormal", (OD, {2: [BOX], 4: [BOX]})), gt)
    assert r.discount == 0.75
    # R_type = (1/2 + 1/2) / 2 = 1/2 (each turn finds OD of {OD, PV}); R_temp = 4 / |{4..7, 10, 11}| = 4/6
    # R_spa = 1 (PV has no boxes; OD's two boxes hit)
    assert (r.type, r.temporal, r.spatial) == pytest.approx((1 / 2, 2 / 3, 1.0))
    # R~_type = 1 - 0.75*(1/2) = 0.625, R~_temp = 1 - 0.75*(1/3) = 0.75, R~_spa = 1
    assert r.total == pytest.approx(2 * 0.625 + 2 * 0.75 + 5 * 1.0)


def test_mixed_saliency_status_failure():
    gt = annotation(GT_OD, GT_PV)
    r = rollout_reward(turn1("abnormal", (OD, (4, 7))), turn2("normal"), gt)
    assert r.status == -1.0 and not r.status_correct and r.format == 0.0
    assert (r.type, r.temporal, r.spatial) == (0.0, 0.0, 0.0)
    # status weighted by w2 * gamma_bar; every raw IoU term is 0 so R~ = 1 - 0.75 = 0.25
    assert r.total == pytest.approx(2 * 0.75 * -1 + (2 + 2 + 5) * 0.25)


# GT-normal videos: m = 0, gamma_bar = 1


def test_normal_gt_answered_normal():
    r = rollout_reward(turn1("normal"), None, annotation())
    assert (r.format, r.status, r.total, r.mask) == (0.0, 0.0, 0.0, 0.0)
    assert r.status_correct and r.turn2 is None


def test_normal_gt_turn2_ignored_after_normal_turn1():
    # the rollout ended after turn 1; a stray turn 2 changes nothing
    r = rollout_reward(turn1("normal"), INVALID, annotation())
    assert (r.format, r.status, r.total) == (0.0, 0.0, 0.0) and r.turn2 is None


@pytest.mark.parametrize("second", ["abnormal", "normal"])
def test_normal_gt_answered_abnormal(second):
    # turn 1 says abnormal: fails whatever turn 2 says; both turns valid
    t2 = turn2(second, (OD, {0: [BOX]})) if second == "abnormal" else turn2("normal")
    r = rollout_reward(turn1("abnormal", (OD, (0, 3))), t2, annotation())
    assert (r.format, r.status) == (0.0, -1.0)
    assert r.total == pytest.approx(1 * 0 + 2 * 1 * -1)


def test_normal_gt_answered_abnormal_without_turn2():
    r = rollout_reward(turn1("abnormal", (OD, (0, 3))), None, annotation())
    # the expected turn 2 is missing: R_fmt = (0 - 1) / 2
    assert r.total == pytest.approx(1 * -0.5 + 2 * 1 * -1)


def test_normal_gt_invalid_turn1():
    r = rollout_reward(INVALID, turn2("normal"), annotation())
    assert (r.format, r.status) == (-1.0, -1.0) and r.turn2 is None
    assert r.total == pytest.approx(1 * -1 + 2 * 1 * -1)


# GT-anomalous videos that fail the status check (gamma_bar = 1: R~ = R = 0)


def test_anomalous_turn2_missing():
    r = rollout_reward(turn1("abnormal", (OD, (4, 7))), None, annotation(GT_OD))
    assert (r.format, r.status, r.type, r.temporal, r.spatial) == (-0.5, -1.0, 0.0, 0.0, 0.0)
    assert r.total == pytest.approx(1 * -0.5 + 2 * 1 * -1 + (2 * 0 + 2 * 0 + 5 * 0))


def test_anomalous_turn2_says_normal():
    r = rollout_reward(turn1("abnormal", (OD, (4, 7))), turn2("normal"), annotation(GT_OD))
    assert (r.format, r.status, r.temporal) == (0.0, -1.0, 0.0)  # temporal would be 1 if it were not gated
    assert r.total == pytest.approx(2 * 1 * -1)


def test_anomalous_turn2_invalid():
    r = rollout_reward(turn1("abnormal", (OD, (4, 7))), INVALID, annotation(GT_OD))
    assert (r.format, r.status) == (-0.5, -1.0)
    assert r.total == pytest.approx(1 * -0.5 + 2 * 1 * -1)


def test_anomalous_invalid_turn2_fails_even_if_its_status_says_abnormal():
    bad = turn2("abnormal", (OD, {2: [BOX], 4: [BOX]}), valid=False)
    r = rollout_reward(turn1("abnormal", (OD, (4, 7))), bad, annotation(GT_OD))
    assert (r.format, r.status, r.spatial) == (-0.5, -1.0, 0.0)


# status_check="read": the status as CaCReward reads it at inference, also from an invalid answer


def test_read_status_invalid_turn2_saying_abnormal_passes_without_turn2_evidence():
    bad = turn2("abnormal", (OD, {2: [BOX], 4: [BOX]}), valid=False)
    r = rollout_reward(turn1("abnormal", (OD, (4, 7))), bad, annotation(GT_OD), status_check="read")
    assert r.status_correct and (r.format, r.status) == (-0.5, 0.0)
    # R_type = (1 + 0) / 2 (turn 2 gives no labels), R_temp = 1 (turn 1's window), R_spa = 0 (no usable boxes)
    assert (r.type, r.temporal, r.spatial) == (0.5, 1.0, 0.0)
    assert r.total == pytest.approx(1 * -0.5 + 2 * 1 * 0 + (2 * 0.5 + 2 * 1 + 5 * 0))
    # beats answering normal (-2) and the same turn 2 under the default reading (-2.5)
    assert r.total > rollout_reward(turn1("normal"), None, annotation(GT_OD), status_check="read").total
    assert rollout_reward(turn1("abnormal", (OD, (4, 7))), bad, annotation(GT_OD)).total == pytest.approx(-2.5)


def test_read_status_still_fails_wrong_or_missing_statuses():
    t1 = turn1("abnormal", (OD, (4, 7)))
    for second in (INVALID, turn2("normal", valid=False), None):
        r = rollout_reward(t1, second, annotation(GT_OD), status_check="read")
        assert not r.status_correct and r.status == -1.0 and r.temporal == 0.0
    # an invalid turn 1 has no usable window: the rollout ends there, whatever status it reads
    bad_t1 = turn1("abnormal", (OD, (4, 7)), valid=False)
    r = rollout_reward(bad_t1, turn2("abnormal", (OD, {2: [BOX]})), annotation(GT_OD), status_check="read")
    assert not r.status_correct and r.turn2 is None


def test_read_status_on_normal_videos():
    r = rollout_reward(turn1("normal", valid=False), None, annotation(), status_check="read")
    assert r.status_correct and r.total == pytest.approx(1 * -1 + 2 * 1 * 0)
    r = rollout_reward(INVALID, None, annotation(), status_check="read")  # no status at all
    assert not r.status_correct and r.total == pytest.approx(1 * -1 + 2 * 1 * -1)


def test_read_status_leaves_valid_answers_unchanged():
    for gt, t1, t2 in [
        (annotation(GT_OD), PARTIAL_T1, PARTIAL_T2),
        (annotation(GT_OD), turn1("abnormal", (OD, (4, 7))), turn2("normal")),
        (annotation(), turn1("abnormal", (OD, (0, 3))), None),
    ]:
        assert rollout_reward(t1, t2, gt, status_check="read") == rollout_reward(t1, t2, gt)


def test_status_check_must_be_known():
    with pytest.raises(ValueError, match="status_check"):
        rollout_reward(turn1("normal"), None, annotation(), status_check="lenient")


# normal_check="final": a GT-normal video is judged on its final answer, as CaCReward decides at inference


def test_final_normal_check_passes_a_false_alarm_that_turn2_rejects():
    alarm = turn1("abnormal", (OD, (0, 3)))
    # the paper's first-turn reading: the alarm fails whatever turn 2 says (status -1 at w2 = 2)
    assert rollout_reward(alarm, turn2("normal"), annotation()).total == pytest.approx(2 * -1)
    r = rollout_reward(alarm, turn2("normal"), annotation(), normal_check="final")
    assert r.status_correct and (r.format, r.status, r.total) == (0.0, 0.0, 0.0)
    # a turn 2 that confirms the alarm, or breaks its JSON, or is missing still fails
    for second, fmt in (
        (turn2("abnormal", (OD, {1: [BOX]})), 0.0),
        (turn2("normal", valid=False), -0.5),
        (None, -0.5),
    ):
        r = rollout_reward(alarm, second, annotation(), normal_check="final")
        assert not r.status_correct and r.total == pytest.approx(1 * fmt + 2 * -1)
    # ... unless the status is read from invalid answers too: then the broken "normal" passes, costing the format term
    r = rollout_reward(alarm, turn2("normal", valid=False), annotation(), normal_check="final", status_check="read")
    assert r.status_correct and r.total == pytest.approx(1 * -0.5)


def test_final_normal_check_leaves_the_rest_unchanged():
    for gt, t1, t2 in [
        (annotation(), turn1("normal"), None),
        (annotation(), INVALID, None),
        (annotation(GT_OD), turn1("abnormal", (OD, (4, 7))), turn2("normal")),
        (annotation(GT_OD), PARTIAL_T1, PARTIAL_T2),
        (annotation(GT_OD), turn1("normal"), None),
    ]:
        assert rollout_reward(t1, t2, gt, normal_check="final") == rollout_reward(t1, t2, gt)
    with pytest.raises(ValueError, match="normal_check"):
        rollout_reward(turn1("normal"), None, annotation(), normal_check="turn2")


def test_anomalous_turn1_says_normal_ends_rollout():
    perfect_t2 = turn2("abnormal", (OD, {2: [BOX], 4: [BOX]}))
    r = rollout_reward(turn1("normal"), perfect_t2, annotation(GT_OD))
    assert (r.format, r.status) == (0.0, -1.0) and r.turn2 is None
    assert r.total == pytest.approx(2 * 1 * -1)


def test_anomalous_invalid_turn1_ends_everything():
    perfect_t2 = turn2("abnormal", (OD, {2: [BOX], 4: [BOX]}))
    r = rollout_reward(INVALID, perfect_t2, annotation(GT_OD))
    assert (r.format, r.status, r.type, r.temporal, r.spatial) == (-1.0, -1.0, 0.0, 0.0, 0.0)
    assert r.turn2 is None
    assert r.total == pytest.approx(1 * -1 + 2 * 1 * -1 + 0)


def test_anomalous_invalid_turn1_non_salient():
    # Eq. 6 as written: the gated raw terms become R~ = 1 - 0.5 (1 - 0) = 0.5 each
    r = rollout_reward(INVALID, None, annotation({**GT_OD, "saliency": "non-salient"}))
    assert r.total == pytest.approx(1 * -1 + 2 * 0.5 * -1 + (2 + 2 + 5) * 0.5)


def test_invalid_turn1_with_abnormal_status_still_fails():
    bad = turn1("abnormal", (OD, (4, 7)), valid=False)
    r = rollout_reward(bad, turn2("abnormal", (OD, {2: [BOX], 4: [BOX]})), annotation(GT_OD))
    assert (r.format, r.status, r.temporal) == (-1.0, -1.0, 0.0) and r.turn2 is None


def test_weights_override():
    gt = annotation(GT_OD)
    w = (0.5, 1, 0, 3, 1)
    r = rollout_reward(PARTIAL_T1, PARTIAL_T2, gt, weights=w)
    # 0.5*0 + 1*1*0 + (0*(3/4) + 3*(1/3) + 1*(1/2))
    assert r.total == pytest.approx(1.5)
    r = rollout_reward(turn1("abnormal", (OD, (4, 7))), None, gt, weights=(4, 3, 1, 1, 1))
    # 4*(-1/2) + 3*1*(-1) + 0
    assert r.total == pytest.approx(-5.0)


def test_weights_must_have_five_values():
    with pytest.raises(ValueError, match="5 values"):
        rollout_reward(turn1("normal"), None, annotation(), weights=(1, 2, 2, 2))


def test_breakdown_log():
    r = rollout_reward(PARTIAL_T1, PARTIAL_T2, annotation(GT_OD))
    log = r.log("cac/")
    assert log["cac/total"] == r.total and log["cac/temporal_iou"] == pytest.approx(1 / 3)
    assert log["cac/status_correct"] == 1.0
    assert r.discounted(0.5) == 0.5  # gamma_bar = 1


def test_breakdown_is_frozen():
    r = rollout_reward(turn1("normal"), None, annotation())
    with pytest.raises(AttributeError):
        r.total = 1.0


# ---------------------------------------------------------------------------------------------------------------
# Answer texts (parsed with schema.parse_judgment)
# ---------------------------------------------------------------------------------------------------------------


def test_texts_fully_correct():
    t1 = format_judgment("abnormal", [PredAnomaly(label=OD, frames=(4, 7))], cot="scan", turn=1)
    t2 = format_judgment("abnormal", [PredAnomaly(label=OD, bboxes={2: [tuple(BOX)], 4: [tuple(BOX)]})], turn=2)
    r = rollout_reward(t1, t2, annotation(GT_OD))
    assert r.turn1.valid and r.turn2 is not None and r.turn2.valid
    assert r.total == pytest.approx(2 * 1 + 2 * 1 + 5 * 1)


def test_texts_partial_and_mixed_with_judgment():
    t1 = format_judgment("abnormal", [PredAnomaly(label=OD, frames=(2, 5)), PredAnomaly(label=MA, frames=(5, 5))])
    r = rollout_reward(t1, PARTIAL_T2, annotation(GT_OD))
    assert (r.type, r.temporal, r.spatial) == pytest.approx(PARTIAL)


def test_texts_garbage_turn1():
    r = rollout_reward("I think it looks fine", None, annotation(GT_OD))
    assert not r.turn1.valid
    assert (r.format, r.status) == (-1.0, -1.0)
    assert r.total == pytest.approx(1 * -1 + 2 * 1 * -1)


def test_texts_normal_answer_on_normal_video():
    r = rollout_reward(format_judgment("normal", cot="all fine"), None, annotation())
    assert r.total == 0.0 and r.status_correct
