"""The annotation and judgment contract: manifest validation and parse_judgment (Eq. 2, Fig. S5)."""

import copy
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cac_align.schema import (
    COORD_MAX,
    MAX_FRAME,
    STATUS_PREFIX,
    STATUSES,
    TAXONOMY,
    Annotation,
    Judgment,
    ManifestError,
    PredAnomaly,
    format_judgment,
    format_time_region,
    parse_judgment,
    parse_time_region,
    read_manifest,
    resolve_video,
    write_manifest,
)

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

EXAMPLE = {
    "video": "clips/0001.mp4",
    "prompt": "A woman waves at the camera on a beach.",
    "status": "abnormal",
    "fps": 4,
    "anomalies": [
        {
            "label": "Human Distortion",
            "frames": [12, 15],
            "reason": "The left hand has six fingers.",
            "region": "left hand",
            "saliency": "salient",
            "bboxes": {"12": [[100, 200, 180, 300]], "13": [[102, 201, 182, 305], [400, 400, 450, 480]]},
        }
    ],
    "source": "kling",
    "split": "train",
}


# --------------------------------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------------------------------


def test_annotation_round_trip_keeps_everything():
    a = Annotation.from_dict(copy.deepcopy(EXAMPLE), "example")
    assert a.status == "abnormal" and a.fps == 4.0 and a.is_abnormal
    assert a.meta == {"source": "kling", "split": "train"}
    span = a.anomalies[0]
    assert span.frames == (12, 15)
    assert span.bboxes == {12: [(100, 200, 180, 300)], 13: [(102, 201, 182, 305), (400, 400, 450, 480)]}
    assert a.frame_set == {12, 13, 14, 15}
    assert a.labels == {"Human Distortion"}
    assert a.to_dict() == EXAMPLE
    assert Annotation.from_dict(a.to_dict()) == a


def test_annotation_accepts_a_single_box_per_frame_and_defaults():
    d = copy.deepcopy(EXAMPLE)
    d["anomalies"][0]["bboxes"] = {"14": [1, 2, 3, 4]}
    del d["fps"], d["anomalies"][0]["saliency"]
    a = Annotation.from_dict(d)
    assert a.anomalies[0].bboxes == {14: [(1, 2, 3, 4)]}
    assert a.fps == 4.0 and a.anomalies[0].saliency == "salient"


def test_mean_discount_follows_saliency():
    d = copy.deepcopy(EXAMPLE)
    d["anomalies"].append(dict(d["anomalies"][0], saliency="non-salient"))
    assert Annotation.from_dict(d).mean_discount == pytest.approx(0.75)
    normal = Annotation.from_dict({"video": "v.mp4", "prompt": "", "status": "normal"})
    assert normal.mean_discount == 1.0 and normal.frame_set == set()


def test_manifest_write_read_round_trip(tmp_path):
    normal = {"video": "clips/0002.mp4", "prompt": "Ein Hund läuft.", "status": "normal", "fps": 4, "anomalies": []}
    anns = [Annotation.from_dict(copy.deepcopy(EXAMPLE)), Annotation.from_dict(normal)]
    path = tmp_path / "sub" / "manifest.jsonl"
    write_manifest(path, anns)
    assert read_manifest(path) == anns
    assert resolve_video(anns[0], path) == tmp_path / "sub" / "clips" / "0001.mp4"


def _mutated(edit):
    d = copy.deepcopy(EXAMPLE)
    edit(d)
    return json.dumps(d)


def _set_anomaly(key, value):
    return lambda d: d["anomalies"][0].__setitem__(key, value)


def _set_box(frame, value):
    return lambda d: d["anomalies"][0]["bboxes"].__setitem__(frame, value)


BAD_LINES = {
    "not JSON": ('{"video": "clips/0001.mp4", "prompt": ', None),
    "deep nesting": ("[" * 100000, None),
    "not an object": ("[1, 2]", None),
    "missing video": (_mutated(lambda d: d.pop("video")), "video"),
    "missing prompt": (_mutated(lambda d: d.pop("prompt")), "prompt"),
    "missing status": (_mutated(lambda d: d.pop("status")), "status"),
    "empty video": (_mutated(lambda d: d.update(video="")), "video"),
    "wrong status": (_mutated(lambda d: d.update(status="Abnormal")), "status"),
    "unknown label": (_mutated(_set_anomaly("label", "Hand Distortion")), "anomalies[0].label"),
    "missing label": (_mutated(lambda d: d["anomalies"][0].pop("label")), "anomalies[0].label"),
    "inverted window": (_mutated(_set_anomaly("frames", [15, 12])), "anomalies[0].frames"),
    "negative window": (_mutated(_set_anomaly("frames", [-1, 12])), "anomalies[0].frames"),
    "window of one": (_mutated(_set_anomaly("frames", [12])), "anomalies[0].frames"),
    "fractional window": (_mutated(_set_anomaly("frames", [12.5, 15])), "anomalies[0].frames"),
    "box out of range": (_mutated(_set_box("12", [[0, 0, 1001, 10]])), "anomalies[0].bboxes.12"),
    "box negative": (_mutated(_set_box("12", [[-1, 0, 10, 10]])), "anomalies[0].bboxes.12"),
    "box inverted": (_mutated(_set_box("13", [[10, 10, 5, 20]])), "anomalies[0].bboxes.13"),
    "box empty area": (_mutated(_set_box("13", [[10, 10, 10, 20]])), "anomalies[0].bboxes.13"),
    "box wrong length": (_mutated(_set_box("12", [[1, 2, 3]])), "anomalies[0].bboxes.12"),
    "box of bools": (_mutated(_set_box("12", [[True, 0, 10, 10]])), "anomalies[0].bboxes.12"),
    "no boxes for a frame": (_mutated(_set_box("12", [])), "anomalies[0].bboxes.12"),
    "box frame outside window": (_mutated(_set_box("20", [[1, 2, 3, 4]])), "anomalies[0].bboxes.20"),
    "box frame not an index": (_mutated(_set_box("Frame 12", [[1, 2, 3, 4]])), "anomalies[0].bboxes.Frame 12"),
    "bboxes not an object": (_mutated(_set_anomaly("bboxes", [[1, 2, 3, 4]])), "anomalies[0].bboxes"),
    "normal with anomalies": (_mutated(lambda d: d.update(status="normal")), "anomalies"),
    "abnormal without": (_mutated(lambda d: d.update(anomalies=[])), "anomalies"),
    "anomalies not a list": (_mutated(lambda d: d.update(anomalies={})), "anomalies"),
    "anomaly not an object": (_mutated(lambda d: d.update(anomalies=["Human Distortion"])), "anomalies[0]"),
    "fps zero": (_mutated(lambda d: d.update(fps=0)), "fps"),
    "fps string": (_mutated(lambda d: d.update(fps="4")), "fps"),
    "fps bool": (_mutated(lambda d: d.update(fps=True)), "fps"),
    "fps NaN": (_mutated(lambda d: d.update(fps=float("nan"))), "fps"),
    "bad saliency": (_mutated(_set_anomaly("saliency", "very")), "anomalies[0].saliency"),
    "reason not a string": (_mutated(_set_anomaly("reason", 3)), "anomalies[0].reason"),
    "cot not strings": (_mutated(lambda d: d.update(cot={"turn1": 1})), "cot"),
}


@pytest.mark.parametrize("lineno", [1, 4])
@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_manifest_line_names_file_line_and_field(tmp_path, case, lineno):
    bad, fld = BAD_LINES[case]
    good = json.dumps(EXAMPLE)
    lines = [good, "", good][: lineno - 1] + [bad, good]  # line 2 is blank: line numbers still count it
    path = tmp_path / "manifest.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ManifestError) as err:
        read_manifest(path)
    msg = str(err.value)
    assert f"{path}:{lineno}:" in msg
    if fld is None:
        assert "JSON" in msg
    else:
        assert f"field '{fld}'" in msg


def test_missing_manifest_names_the_path(tmp_path):
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "nope.jsonl")


# --------------------------------------------------------------------------------------------------------------------
# parse_time_region
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ("Frame 4-5", (4, 5)),
        ("Frame 4 - Frame 5", (4, 5)),
        ("4-5", (4, 5)),
        ([4, 5], (4, 5)),
        ("Frame 4", (4, 4)),
        ("  frames 4 to 5 ", (4, 5)),
        ("Frame 4–6", (4, 6)),
        ("FRAME 0-0", (0, 0)),
        ([4.0, 5.0], (4, 5)),
        (7, (7, 7)),
        (f"Frame 0-{MAX_FRAME}", (0, MAX_FRAME)),
        ("Frame 5-4", None),
        ([5, 4], None),
        ([-1, 4], None),
        ([True, 4], None),
        ([4.5, 5], None),
        ([4, 5, 6], None),
        ("Frame ٣", None),
        ("Frame 4-", None),
        ("Frame -1", None),
        ("Frames", None),
        ("", None),
        (f"Frame 0-{MAX_FRAME + 1}", None),
        ("Frame 0-1234567890123", None),
        (None, None),
        ({"start": 4}, None),
        (float("nan"), None),
    ],
)
def test_parse_time_region(value, expected):
    assert parse_time_region(value) == expected


@given(st.integers(0, MAX_FRAME), st.integers(0, MAX_FRAME))
@FUZZ
def test_time_region_round_trip(a, b):
    s, e = min(a, b), max(a, b)
    assert parse_time_region(format_time_region((s, e))) == (s, e)


# --------------------------------------------------------------------------------------------------------------------
# parse_judgment: hand cases
# --------------------------------------------------------------------------------------------------------------------


def _item(**kw):
    item = {
        "Attributed Time Region": "Frame 4-5",
        "Attributed Label": "Object Distortion",
        "Reason for Anomaly": "The cup melts into the table.",
        "Problem Region": "cup",
        "BBOX": {"Frame 4": [10, 20, 300, 400], "Frame 5": [12, 22, 302, 402]},
    }
    item.update(kw)
    return {k: v for k, v in item.items() if v is not ...}


def _answer(status="abnormal", anomalies=None, **kw):
    """An answer object; ``None`` anomalies means the default for the status, ``...`` drops a key."""
    if anomalies is None:
        anomalies = [_item()] if status == "abnormal" else []
    obj = {"COT": "Step 1: Frame 0: ...", "status": status, "anomalies": anomalies}
    obj.update(kw)
    return {k: v for k, v in obj.items() if v is not ...}


def _text(obj):
    return json.dumps(obj, ensure_ascii=False)


@pytest.mark.parametrize("turn", [1, 2])
def test_valid_answers(turn):
    j = parse_judgment(_text(_answer()), turn)
    assert j.valid and j.errors == []
    assert j.status == "abnormal" and j.cot == "Step 1: Frame 0: ..."
    (a,) = j.anomalies
    assert a.label == "Object Distortion" and a.frames == (4, 5)
    assert a.bboxes == {4: [(10, 20, 300, 400)], 5: [(12, 22, 302, 402)]}
    assert a.reason == "The cup melts into the table." and a.region == "cup"
    assert j.labels == {"Object Distortion"} and j.frame_set == {4, 5} and j.window == (4, 5)

    n = parse_judgment(_text(_answer("normal")), turn)
    assert n.valid and n.status == "normal" and n.anomalies == [] and n.window is None


@pytest.mark.parametrize(
    "region, frames",
    [("Frame 4-5", (4, 5)), ("Frame 4 - Frame 5", (4, 5)), ("4-5", (4, 5)), ([4, 5], (4, 5)), ("Frame 4", (4, 4))],
)
def test_each_time_region_form_is_valid(region, frames):
    j = parse_judgment(_text(_answer(anomalies=[_item(**{"Attributed Time Region": region})])), turn=1)
    assert j.valid, j.errors
    assert j.anomalies[0].frames == frames


@pytest.mark.parametrize("key", ["Frame 3", "3", "frame 3", "Frame3", " Frame 3 "])
def test_bbox_frame_key_forms(key):
    j = parse_judgment(_text(_answer(anomalies=[_item(BBOX={key: [1, 2, 3, 4]})])), turn=2)
    assert j.valid, j.errors
    assert j.anomalies[0].bboxes == {3: [(1, 2, 3, 4)]}


def test_several_boxes_per_frame_and_integral_floats():
    boxes = {"Frame 4": [[0, 0, 10, 10], [20.0, 20, 1000, 1000.0]], "Frame 5": [5, 5, 6, 6]}
    j = parse_judgment(_text(_answer(anomalies=[_item(BBOX=boxes)])), turn=2)
    assert j.valid, j.errors
    assert j.anomalies[0].bboxes == {4: [(0, 0, 10, 10), (20, 20, 1000, 1000)], 5: [(5, 5, 6, 6)]}


def test_turn2_time_region_is_optional_turn1_boxes_are_not_needed():
    no_region = _text(_answer(anomalies=[_item(**{"Attributed Time Region": ...})]))
    assert parse_judgment(no_region, turn=2).valid
    j1 = parse_judgment(no_region, turn=1)
    assert not j1.valid and any("Attributed Time Region" in e for e in j1.errors)
    no_boxes = _text(_answer(anomalies=[_item(BBOX=...)]))
    assert parse_judgment(no_boxes, turn=1).valid
    j2 = parse_judgment(no_boxes, turn=2)
    assert not j2.valid and any("BBOX" in e for e in j2.errors)


def test_surrounding_whitespace_is_fine():
    assert parse_judgment("\n  " + _text(_answer()) + " \n\t", 1).valid


def test_utf8_bytes_are_decoded():
    j = parse_judgment(_text(_answer(COT="Schritt 1: Fräulein")).encode("utf-8"), 1)
    assert j.valid and j.cot == "Schritt 1: Fräulein"


INVALID = {
    # name: (text, turn, a substring of some error)
    "markdown fence": ("```json\n" + _text(_answer()) + "\n```", 1, "bare JSON"),
    "prose before": ("Here is my answer: " + _text(_answer()), 1, "bare JSON"),
    "prose after": (_text(_answer()) + "\nHope this helps.", 1, "bare JSON"),
    "two objects": (_text(_answer()) + _text(_answer()), 1, "bare JSON"),
    "top-level list": ("[" + _text(_answer()) + "]", 1, "JSON object"),
    "NaN literal": (_text(_answer(COT=float("nan"))), 1, "NaN"),
    "Infinity in a box": (_text(_answer(anomalies=[_item(BBOX={"Frame 4": [0, 0, float("inf"), 5]})])), 2, "Infinity"),
    "duplicate status": (_text(_answer("normal"))[:-1] + ', "status": "abnormal"}', 1, "duplicate"),
    "missing status": (_text(_answer(status=...)), 1, "status"),
    "capitalised status": (_text(_answer("Abnormal", anomalies=[_item()])), 1, "status"),
    "status not a string": (_text(_answer(1)), 1, "status"),
    "missing anomalies": (_text(_answer("normal", anomalies=...)), 1, "anomalies"),
    "anomalies not a list": (_text(_answer("normal", anomalies={})), 1, "anomalies"),
    "normal with anomalies": (_text(_answer("normal", anomalies=[_item()])), 1, "empty anomaly list"),
    "abnormal without anomalies": (_text(_answer("abnormal", anomalies=[])), 2, "at least one anomaly"),
    "anomaly not an object": (_text(_answer(anomalies=["Object Distortion"])), 1, "anomalies[0]"),
    "label outside taxonomy": (
        _text(_answer(anomalies=[_item(**{"Attributed Label": "Hand Distortion"})])),
        1,
        "Label",
    ),
    "label lower case": (_text(_answer(anomalies=[_item(**{"Attributed Label": "object distortion"})])), 2, "Label"),
    "label missing": (_text(_answer(anomalies=[_item(**{"Attributed Label": ...})])), 2, "Label"),
    "inverted window": (_text(_answer(anomalies=[_item(**{"Attributed Time Region": "Frame 5-4"})])), 1, "Time"),
    "negative window": (_text(_answer(anomalies=[_item(**{"Attributed Time Region": [-2, 3]})])), 1, "Time"),
    "bool window": (_text(_answer(anomalies=[_item(**{"Attributed Time Region": [True, 3]})])), 1, "Time"),
    "prose window": (_text(_answer(anomalies=[_item(**{"Attributed Time Region": "the end"})])), 2, "Time"),
    "huge window": (_text(_answer(anomalies=[_item(**{"Attributed Time Region": [0, 10**12]})])), 1, "Time"),
    "box x1 == x2": (_text(_answer(anomalies=[_item(BBOX={"Frame 4": [10, 0, 10, 5]})])), 2, "dropped"),
    "box inverted": (_text(_answer(anomalies=[_item(BBOX={"Frame 4": [10, 9, 20, 5]})])), 2, "dropped"),
    "box past 1000": (_text(_answer(anomalies=[_item(BBOX={"Frame 4": [10, 0, 1001, 5]})])), 2, "dropped"),
    "box negative": (_text(_answer(anomalies=[_item(BBOX={"Frame 4": [-1, 0, 10, 5]})])), 2, "dropped"),
    "box of bools": (_text(_answer(anomalies=[_item(BBOX={"Frame 4": [False, 0, True, 5]})])), 2, "dropped"),
    "box fractional": (_text(_answer(anomalies=[_item(BBOX={"Frame 4": [0.5, 0, 10, 5]})])), 2, "dropped"),
    "box of strings": (_text(_answer(anomalies=[_item(BBOX={"Frame 4": ["0", "0", "10", "5"]})])), 2, "dropped"),
    "box too short": (_text(_answer(anomalies=[_item(BBOX={"Frame 4": [0, 0, 10]})])), 2, "dropped"),
    "empty box list": (_text(_answer(anomalies=[_item(BBOX={"Frame 4": []})])), 2, "dropped"),
    "box frame key": (_text(_answer(anomalies=[_item(BBOX={"F4": [0, 0, 10, 5]})])), 2, "frame key"),
    "negative frame key": (_text(_answer(anomalies=[_item(BBOX={"Frame -4": [0, 0, 10, 5]})])), 2, "frame key"),
    "BBOX a list": (_text(_answer(anomalies=[_item(BBOX=[[0, 0, 10, 5]])])), 2, "BBOX"),
    "BBOX empty": (_text(_answer(anomalies=[_item(BBOX={})])), 2, "BBOX"),
    "bad box in turn 1": (_text(_answer(anomalies=[_item(BBOX={"Frame 4": [9, 9, 1, 1]})])), 1, "dropped"),
    "COT not a string": (_text(_answer(COT=["step 1"])), 1, "COT"),
    "reason not a string": (_text(_answer(anomalies=[_item(**{"Reason for Anomaly": 5})])), 1, "Reason"),
    "region not a string": (_text(_answer(anomalies=[_item(**{"Problem Region": {}})])), 1, "Problem Region"),
    "empty text": ("", 1, "bare JSON"),
    "plain prose": ("The video is abnormal.", 1, "bare JSON"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_answers(case):
    text, turn, needle = INVALID[case]
    j = parse_judgment(text, turn)
    _check_judgment(j, turn)
    assert not j.valid
    assert any(needle in e for e in j.errors), j.errors


def test_invalid_boxes_are_dropped_good_ones_kept():
    boxes = {"Frame 4": [[0, 0, 10, 10], [30, 30, 20, 40]], "Frame 5": [1, 2, 3, 4], "Frame 6": [1, 1, 2000, 2]}
    j = parse_judgment(_text(_answer(anomalies=[_item(BBOX=boxes)])), turn=2)
    assert not j.valid
    assert j.anomalies[0].bboxes == {4: [(0, 0, 10, 10)], 5: [(1, 2, 3, 4)]}
    assert len(j.errors) == 2
    assert any("'Frame 4'][1]" in e and "[30, 30, 20, 40]" in e for e in j.errors)
    assert any("'Frame 6'" in e for e in j.errors)


def test_status_is_read_from_invalid_answers():
    answer = _text(_answer())
    for text in ("```json\n" + answer + "\n```", "Sure! " + answer + " Done.", "[" + answer + "]"):
        j = parse_judgment(text, 1)
        assert not j.valid and j.status == "abnormal"
        assert j.anomalies[0].frames == (4, 5) and j.cot == "Step 1: Frame 0: ..."
    truncated = parse_judgment(answer[: answer.index('"anomalies"') + 20], 1)
    assert not truncated.valid and truncated.status == "abnormal" and truncated.anomalies == []
    # The first object with a status wins over an inner one that has none.
    nested_first = '{"BBOX": {"Frame 1": [1, 2, 3, 4]}} then ' + _text(_answer("normal"))
    assert parse_judgment(nested_first, 1).status == "normal"
    assert parse_judgment("no json here", 1).status is None


def test_bad_turn_is_a_caller_error():
    with pytest.raises(ValueError, match="turn"):
        parse_judgment(_text(_answer()), turn=3)


# --------------------------------------------------------------------------------------------------------------------
# format_judgment round trips
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("turn", [1, 2])
@pytest.mark.parametrize("boxes_per_frame", [1, 3])
def test_format_judgment_round_trip(turn, boxes_per_frame):
    anomalies = [
        PredAnomaly(
            "Human Distortion",
            (12, 15),
            {12 + k: [(10 * i, 10 * i, 10 * i + 5, 10 * i + 7) for i in range(boxes_per_frame)] for k in range(4)},
            '左手有六根手指 — «six fingers» "quoted"\n',
            "linke Hand",
        ),
        PredAnomaly("Physical Violations", (0, 0), {0: [(0, 0, 1000, 1000)]}, "", ""),
    ]
    text = format_judgment("abnormal", anomalies, cot="Step 1: Frame 0: ü", turn=turn)
    assert STATUS_PREFIX + "abnormal" in text and "左手" in text
    j = parse_judgment(text, turn)
    assert j.valid, j.errors
    assert j.status == "abnormal" and j.cot == "Step 1: Frame 0: ü"
    expected = anomalies if turn == 2 else [PredAnomaly(a.label, a.frames, {}, a.reason, a.region) for a in anomalies]
    assert j.anomalies == expected
    assert j.window == (0, 15)


@pytest.mark.parametrize("turn", [1, 2])
def test_format_judgment_normal_round_trip(turn):
    text = format_judgment("normal", [PredAnomaly("Human Distortion", (1, 2))], cot="fine", turn=turn)
    j = parse_judgment(text, turn)
    assert j.valid and j.status == "normal" and j.anomalies == [] and j.cot == "fine"
    assert STATUS_PREFIX + "normal" in text


# --------------------------------------------------------------------------------------------------------------------
# parse_judgment: fuzzing
# --------------------------------------------------------------------------------------------------------------------


def _check_judgment(j, turn):
    """The documented types of a Judgment, and the validity invariants of a valid one."""
    assert type(j) is Judgment
    assert type(j.valid) is bool
    assert j.status is None or j.status in STATUSES
    assert type(j.cot) is str
    assert type(j.errors) is list and all(type(e) is str for e in j.errors)
    assert not any(e.startswith("internal error") for e in j.errors), j.errors
    assert j.valid == (not j.errors)
    assert type(j.anomalies) is list
    for a in j.anomalies:
        assert type(a) is PredAnomaly
        assert a.label is None or type(a.label) is str
        assert type(a.reason) is str and type(a.region) is str
        if a.frames is not None:
            assert type(a.frames) is tuple and len(a.frames) == 2
            assert all(type(v) is int for v in a.frames)
            assert 0 <= a.frames[0] <= a.frames[1] <= MAX_FRAME
        assert type(a.bboxes) is dict
        for k, boxes in a.bboxes.items():
            assert type(k) is int and 0 <= k <= MAX_FRAME
            assert type(boxes) is list and boxes
            for b in boxes:
                assert type(b) is tuple and len(b) == 4 and all(type(c) is int for c in b)
                assert 0 <= b[0] < b[2] <= COORD_MAX and 0 <= b[1] < b[3] <= COORD_MAX
    assert isinstance(j.labels, set) and isinstance(j.frame_set, set)
    if j.valid:
        assert j.status in STATUSES
        if j.status == "normal":
            assert j.anomalies == []
        else:
            assert j.anomalies
            for a in j.anomalies:
                assert a.label in TAXONOMY
                if turn == 1:
                    assert a.frames is not None
                else:
                    assert a.bboxes
            assert j.labels <= set(TAXONOMY)


_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_coord = st.integers(-3, 1003) | st.sampled_from([0.0, 999.0, 2.5, float("nan"), True, "7", None])
_window = st.tuples(st.integers(0, 300), st.integers(0, 40)).map(lambda t: (t[0], t[0] + t[1]))
_box = st.tuples(
    st.lists(st.integers(0, COORD_MAX), min_size=2, max_size=2, unique=True).map(sorted),
    st.lists(st.integers(0, COORD_MAX), min_size=2, max_size=2, unique=True).map(sorted),
).map(lambda t: (t[0][0], t[1][0], t[0][1], t[1][1]))
_region = (
    _window.map(format_time_region)
    | _window.map(list)
    | st.sampled_from(["Frame 4 - Frame 5", "4-5", "Frame 7", "Frame 5-4", "", "Frame -1", "frames 2 to 3"])
    | _json
)
_box_value = (
    _box.map(list)
    | st.lists(_box.map(list), min_size=1, max_size=3)
    | st.lists(_coord, min_size=3, max_size=5)
    | st.lists(st.lists(_coord, min_size=4, max_size=4), max_size=3)
    | _json
)
_frame_key = st.integers(0, 60).map("Frame {}".format) | st.sampled_from(["3", "frame 12", "Frame x", "F3", "-1", ""])
_valid_item = st.fixed_dictionaries(
    {
        "Attributed Label": st.sampled_from(TAXONOMY),
        "Attributed Time Region": _window.map(format_time_region) | _window.map(list),
        "BBOX": st.dictionaries(st.integers(0, 60).map("frame {}".format), _box.map(list), min_size=1, max_size=3),
    },
    optional={"Reason for Anomaly": st.text(max_size=20), "Problem Region": st.text(max_size=20)},
)
_item_st = (
    _valid_item
    | st.fixed_dictionaries(
        {"Attributed Label": st.sampled_from(TAXONOMY)},
        optional={
            "Attributed Time Region": _region,
            "Reason for Anomaly": st.text(max_size=20) | _json,
            "Problem Region": st.text(max_size=20),
            "BBOX": st.dictionaries(_frame_key, _box_value, max_size=3) | _json,
        },
    )
    | st.fixed_dictionaries({"Attributed Label": st.text(max_size=20) | _json})
    | _json
)
_answer_st = (
    st.fixed_dictionaries(
        {
            "status": st.sampled_from(STATUSES),
            "anomalies": st.lists(_valid_item, max_size=2) | st.lists(_item_st, max_size=3),
        },
        optional={"COT": st.text(max_size=30)},
    )
    | st.fixed_dictionaries({"COT": _json, "status": _json, "anomalies": st.lists(_item_st, max_size=2) | _json})
    | st.dictionaries(st.sampled_from(["COT", "status", "anomalies", "x"]), _json, max_size=4)
)


def _pred(turn):
    frames = _window if turn == 1 else st.none() | _window
    min_boxes = 1 if turn == 2 else 0
    return st.builds(
        PredAnomaly,
        label=st.sampled_from(TAXONOMY),
        frames=frames,
        bboxes=st.dictionaries(
            st.integers(0, 300), st.lists(_box, min_size=1, max_size=3), min_size=min_boxes, max_size=4
        ),
        reason=st.text(max_size=30),
        region=st.text(max_size=30),
    )


@st.composite
def _formatted(draw):
    turn = draw(st.sampled_from([1, 2]))
    status = draw(st.sampled_from(STATUSES))
    anomalies = draw(st.lists(_pred(turn), min_size=1, max_size=3)) if status == "abnormal" else []
    cot = draw(st.text(max_size=40))
    return turn, status, anomalies, cot, format_judgment(status, anomalies, cot=cot, turn=turn)


@given(st.text(), st.sampled_from([1, 2]))
@FUZZ
def test_fuzz_random_text(text, turn):
    _check_judgment(parse_judgment(text, turn), turn)


@given(_json, st.sampled_from([1, 2]))
@FUZZ
def test_fuzz_random_json_values(value, turn):
    _check_judgment(parse_judgment(json.dumps(value), turn), turn)
    _check_judgment(parse_judgment(value, turn), turn)  # not a string at all


@given(_answer_st, st.sampled_from([1, 2]))
@FUZZ
def test_fuzz_answer_shaped_objects(obj, turn):
    _check_judgment(parse_judgment(json.dumps(obj, ensure_ascii=False), turn), turn)


@given(_formatted())
@FUZZ
def test_fuzz_format_judgment_round_trip(case):
    turn, status, anomalies, cot, text = case
    j = parse_judgment(text, turn)
    _check_judgment(j, turn)
    assert j.valid, j.errors
    assert j.status == status and j.cot == cot
    if turn == 1:
        anomalies = [PredAnomaly(a.label, a.frames, {}, a.reason, a.region) for a in anomalies]
    assert j.anomalies == anomalies


@given(_formatted(), st.data())
@FUZZ
def test_fuzz_mutated_answers(case, data):
    turn, _, _, _, text = case
    i = data.draw(st.integers(0, len(text)))
    op = data.draw(st.sampled_from(["truncate", "delete", "insert", "replace"]))
    char = data.draw(st.characters())
    if op == "truncate":
        text = text[:i]
    elif op == "delete":
        text = text[:i] + text[i + 1 :]
    elif op == "insert":
        text = text[:i] + char + text[i:]
    else:
        text = text[:i] + char + text[i + 1 :]
    _check_judgment(parse_judgment(text, turn), turn)


def _break_status(obj, draw):
    obj["status"] = draw(_json.filter(lambda v: v not in STATUSES))


def _drop_key(obj, draw):
    del obj[draw(st.sampled_from(["status", "anomalies"]))]


def _flip_status(obj, draw):
    obj["status"] = "abnormal" if obj["status"] == "normal" else "normal"


def _break_label(obj, draw):
    if obj["anomalies"]:
        obj["anomalies"][0]["Attributed Label"] = draw(st.text(max_size=20).filter(lambda v: v not in TAXONOMY))
    else:
        obj["anomalies"] = [{"Attributed Label": "Human Distortion", "Attributed Time Region": "Frame 1-2"}]


def _break_window_or_box(obj, draw):
    if not obj["anomalies"]:
        obj["status"] = "abnormal"
        return
    item = obj["anomalies"][0]
    item["Attributed Time Region"] = draw(st.sampled_from(["Frame 9-3", [3, -1], "soon", [1.5, 2], [0, 10**9]]))
    boxes = item.get("BBOX")
    if boxes:
        boxes[next(iter(boxes))] = draw(st.sampled_from([[5, 5, 5, 9], [0, 0, 1001, 3], [1, 2, 3], [True, 0, 4, 4]]))


def _wrap(obj, draw):
    return draw(st.sampled_from(["```json\n{}\n```", "Answer: {}", "{} ok", "[{}]"]))


DEFECTS = [_break_status, _drop_key, _flip_status, _break_label, _break_window_or_box, _wrap]


@given(_formatted(), st.sampled_from(DEFECTS), st.data())
@FUZZ
def test_fuzz_one_defect_makes_a_valid_answer_invalid(case, defect, data):
    turn, _, _, _, text = case
    obj = json.loads(text)
    template = defect(obj, data.draw)
    broken = json.dumps(obj, ensure_ascii=False)
    if template is not None:
        broken = template.replace("{}", broken, 1)
    j = parse_judgment(broken, turn)
    _check_judgment(j, turn)
    assert not j.valid


NASTY = [
    "[" * 100000,
    "{" * 100000,
    '{"a":' * 100000,
    '{"status": "abnormal", "anomalies": ' + "[" * 100000,
    "[" * 50000 + "]" * 50000,
    '{"COT": NaN, "status": "normal", "anomalies": []}',
    '{"COT": "", "status": Infinity, "anomalies": -Infinity}',
    '{"COT": "\\ud800", "status": "normal", "anomalies": []}',
    '{"COT": "\ud800\udfff\udc00", "status": "normal", "anomalies": []}',
    '{"status": "\\udc80", "anomalies": []}',
    "\ufeff" + _text(_answer("normal")),
    "\x00" * 1000,
    "1" * 5000,
    '{"status": "normal", "anomalies": [], "COT": ' + "1" * 5000 + "}",
    '{"status": "abnormal", "anomalies": [{"BBOX": {"Frame 1": [' + "9" * 5000 + ", 0, 1, 1]}}]}",
    '{"status": "abnormal", "anomalies": [{"Attributed Time Region": "Frame ' + " " * 100000 + 'x"}]}',
    " " * 100000,
    b"\xff\xfe\x00garbage",
    bytearray(_text(_answer()).encode()),
    None,
    42,
    3.5,
    [],
    {"status": "normal", "anomalies": []},
    object(),
]


@pytest.mark.parametrize("turn", [1, 2])
@pytest.mark.parametrize("text", NASTY, ids=range(len(NASTY)))
def test_nasty_inputs_never_raise(text, turn):
    j = parse_judgment(text, turn)
    _check_judgment(j, turn)


def test_lone_surrogates_in_a_valid_answer_are_kept():
    j = parse_judgment('{"COT": "\\ud800x", "status": "normal", "anomalies": []}', 1)
    assert j.valid and j.cot == "\ud800x"


@given(st.text(alphabet=st.characters(categories=["Cs", "Lo", "Zs", "Cc"]), max_size=30), st.sampled_from([1, 2]))
@FUZZ
def test_fuzz_surrogates_and_control_characters(cot, turn):
    text = format_judgment("normal", cot=cot, turn=turn)
    j = parse_judgment(text, turn)
    _check_judgment(j, turn)
    assert j.valid and j.cot == cot
    _check_judgment(parse_judgment(text.encode("utf-8", errors="surrogatepass"), turn), turn)
