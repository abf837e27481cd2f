"""The annotation importer and its validator (App. B.1.2-B.1.3), and the Skyra converter (App. A.2).

A corpus of broken annotations: each must produce exactly the expected problem (file, row, field, message), the
broken video must be left out, and the valid neighbour next to it must still be imported.
"""

from __future__ import annotations

import json

import pytest
import torch

from cac_align.data.importer import read_annotations, save_manifest, sequence_length
from cac_align.data.skyra import SKYRA_TO_CAC, convert_skyra, parse_mapping
from cac_align.schema import TAXONOMY, read_manifest, resolve_video
from cac_align.video import load_video, save_video


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Three 2 s videos at 16 fps (8 frames at 4 fps), 32x24 pixels, and a file that is not a video."""
    d = tmp_path_factory.mktemp("videos")
    g = torch.Generator().manual_seed(0)
    for name in ("a", "b", "c"):
        save_video(torch.rand(32, 3, 24, 32, generator=g), d / f"{name}.mp4", 16)
    (d / "broken.mp4").write_bytes(b"not a video at all")
    return d


GOOD = {
    "video": "a.mp4",
    "prompt": "a man waves",
    "groups": [
        {
            "category": "Human Distortion",
            "instances": [
                {"frames": [2, 3], "object": "left hand", "reason": "six fingers", "bboxes": {"2": [10, 20, 300, 400]}}
            ],
        }
    ],
}


def _inst(**kw):
    return {"frames": [2, 3], "object": "cup", "reason": "bends", "bboxes": {"2": [10, 20, 300, 400]}, **kw}


def _rec(video="b.mp4", groups=None, **kw):
    g = [{"category": "Object Distortion", "instances": [_inst()]}] if groups is None else groups
    return {"video": video, "prompt": "p", "groups": g, **kw}


# (record, field, message fragment)
BROKEN = [
    (
        _rec(groups=[{"category": "Human distortion", "instances": [_inst()]}]),
        "groups[0].category",
        "unknown category 'Human distortion' (did you mean 'Human Distortion'?)",
    ),
    (_rec(groups=[{"category": "Blur", "instances": [_inst()]}]), "groups[0].category", "unknown category 'Blur'"),
    (
        _rec(groups=[{"category": "Object Distortion", "instances": [_inst(bboxes={"2": [0, 0, 1200, 50]})]}]),
        "groups[0].instances[0].bboxes.2",
        "coordinates out of range: expected 0..1000",
    ),
    (
        _rec(
            groups=[
                {"category": "Object Distortion", "instances": [_inst(bboxes={"2": [[1, 1, 9, 9], [0, -5, 9, 9]]})]}
            ]
        ),
        "groups[0].instances[0].bboxes.2[1]",
        "coordinates out of range",
    ),
    (
        _rec(groups=[{"category": "Object Distortion", "instances": [_inst(bboxes={"3": [300, 100, 200, 400]})]}]),
        "groups[0].instances[0].bboxes.3",
        "inverted or empty box: expected xmin < xmax and ymin < ymax, got [300, 100, 200, 400]",
    ),
    (
        _rec(groups=[{"category": "Object Distortion", "instances": [_inst(bboxes={"2": [5, 5, 5, 9]})]}]),
        "groups[0].instances[0].bboxes.2",
        "inverted or empty box",
    ),
    (
        _rec(groups=[{"category": "Object Distortion", "instances": [_inst(bboxes={"5": [1, 1, 9, 9]})]}]),
        "groups[0].instances[0].bboxes.5",
        "box on frame 5, outside the instance's window [2, 3]",
    ),
    (
        _rec(groups=[{"category": "Object Distortion", "instances": [_inst(bboxes={"2": [1, 1, 9]})]}]),
        "groups[0].instances[0].bboxes.2",
        "expected a box [xmin, ymin, xmax, ymax]",
    ),
    (
        _rec(groups=[{"category": "Object Distortion", "instances": [_inst(bboxes={"2": [1.5, 1, 9, 9]})]}]),
        "groups[0].instances[0].bboxes.2",
        "expected integer coordinates on the 0-1000 grid",
    ),
    (
        _rec(groups=[{"category": "Object Distortion", "instances": [_inst(bboxes={"x": [1, 1, 9, 9]})]}]),
        "groups[0].instances[0].bboxes.x",
        "expected a frame index as key",
    ),
    (
        _rec(groups=[{"category": "Object Distortion", "instances": [_inst(frames=[6, 12], bboxes={})]}]),
        "groups[0].instances[0].frames",
        "window [6, 12] outside the video: it has 8 frames at 4 fps (0..7)",
    ),
    (
        _rec(groups=[{"category": "Object Distortion", "instances": [_inst(frames=[5, 2], bboxes={})]}]),
        "groups[0].instances[0].frames",
        "inverted window [5, 2]: start is after end",
    ),
    (
        _rec(groups=[{"category": "Object Distortion", "instances": [_inst(frames=[-1, 2], bboxes={})]}]),
        "groups[0].instances[0].frames",
        "negative frame index",
    ),
    (
        _rec(groups=[{"category": "Object Distortion", "instances": [_inst(frames=[1.5, 3], bboxes={})]}]),
        "groups[0].instances[0].frames",
        "expected integer frame indices",
    ),
    (
        _rec(groups=[{"category": "Object Distortion", "instances": [{"object": "x", "reason": "y"}]}]),
        "groups[0].instances[0].start/end",
        "missing: expected a start and an end frame index",
    ),
    (_rec(groups=[{"category": "Object Distortion", "instances": []}]), "groups[0].instances", "non-empty list"),
    (_rec(groups="Object Distortion"), "groups", "expected a list of category groups"),
    (_rec(video="missing.mp4"), "video", "no such video file"),
    (_rec(video="broken.mp4"), "video", "not a readable video"),
    (_rec(video=""), "video", "expected a non-empty path"),
    (_rec(status="normal"), "status", "'normal' but 1 anomaly instances are given"),
    (_rec(groups=[], status="abnormal"), "status", "'abnormal' but no anomaly instance"),
    (_rec(status="broken"), "status", "expected 'normal' or 'abnormal'"),
    (_rec(fps=-4), "fps", "expected a positive number"),
    (_rec(prompt=3), "prompt", "expected a string"),
    (_rec(video="a.mp4"), "video", "a.mp4 is already annotated on row 1"),
    (_rec(anomalies=[]), "groups", "give either 'groups' (annotation layout) or 'anomalies'"),
    (
        {"video": "b.mp4", "prompt": "p", "status": "abnormal", "anomalies": [{"label": "Glitch", "frames": [1, 2]}]},
        "anomalies[0].label",
        "unknown category 'Glitch'",
    ),
    ([1, 2, 3], "record", "expected a JSON object, got list"),
]


@pytest.mark.parametrize(("record", "fld", "message"), BROKEN, ids=[f"{b[1]}:{b[2][:30]}" for b in BROKEN])
def test_broken_annotation_is_reported_and_left_out(videos, tmp_path, record, fld, message):
    src = tmp_path / "ann.jsonl"
    src.write_text(json.dumps(GOOD) + "\n\n" + json.dumps(record) + "\n")  # the broken record is on line 3
    res = read_annotations(src, videos_root=videos)
    assert len(res.errors) == 1, [str(p) for p in res.problems]
    p = res.errors[0]
    assert (p.file, p.row, p.field) == (str(src), 3, fld)
    assert message in p.message
    assert str(p).startswith(f"{src}:3: error: field '{fld}': ")
    assert res.rows == [1] and [a.prompt for a in res.annotations] == ["a man waves"]  # the good one survives
    assert res.dropped_rows == [3] and res.num_records == 2


def test_not_json_line_and_missing_file(tmp_path):
    src = tmp_path / "ann.jsonl"
    src.write_text('{"video": "x.mp4"\n')
    res = read_annotations(src, check_videos=False)
    assert [(p.row, p.field) for p in res.errors] == [(1, "line")] and "not valid JSON" in res.errors[0].message
    res = read_annotations(tmp_path / "nope.json")
    assert [str(p) for p in res.errors] == [f"{tmp_path / 'nope.json'}: error: field 'file': not found"]


def test_warnings_keep_the_video(videos, tmp_path):
    rec = _rec(
        groups=[
            {"category": "Physical Violations", "instances": [_inst(reason="", bboxes={})]},
            {"category": "Object Distortion", "instances": [_inst()]},
            {"category": "Physical Violations", "instances": [_inst(frames=[5, 6], bboxes={})]},
        ]
    )
    src = tmp_path / "ann.json"
    src.write_text(json.dumps([rec]))
    res = read_annotations(src, videos_root=videos)
    assert res.errors == []
    got = sorted((p.field, p.message.split(":")[0]) for p in res.warnings)
    assert got == [
        ("groups[0].instances[0].bboxes", "no boxes"),
        ("groups[0].instances[0].reason", "empty"),
        ("groups[1]", "groups are not in taxonomy order ['Object Distortion', 'Human Distortion', 'Motion Anomalies', 'Physical Violations', 'Character Anomalies']"),
        ("groups[2]", "category 'Physical Violations' already has a group (groups[0]); instances merged"),
        ("groups[2].instances[0].bboxes", "no boxes"),
    ]  # fmt: skip
    (ann,) = res.annotations
    assert [a.label for a in ann.anomalies] == ["Physical Violations", "Object Distortion", "Physical Violations"]


def test_structured_import_round_trip(videos, tmp_path):
    normal = {"video": str(videos / "c.mp4"), "prompt": "calm lake", "groups": [], "source": "batch 3"}
    two = _rec(
        video="b.mp4",
        groups=[
            {"category": "Object Distortion", "instances": [_inst(), _inst(frames=[5, 7], bboxes={"7": [[1, 2, 3, 4], [5, 6, 7, 8]]})]},
            {"category": "Character Anomalies", "instances": [_inst(frames=[0, 0], object="sign", bboxes={"Frame 0": [1, 1, 50, 50]})]},
        ],
    )  # fmt: skip
    src = tmp_path / "sub" / "ann.json"
    src.parent.mkdir()
    src.write_text(json.dumps([GOOD, two, normal], indent=2))
    res = read_annotations(src, videos_root=videos)
    assert res.problems == [] and res.rows == [1, 2, 3]
    out = tmp_path / "data" / "manifest.jsonl"
    save_manifest(out, res.annotations)
    anns = read_manifest(out)
    assert [resolve_video(a, out).resolve() for a in anns] == [videos / "a.mp4", videos / "b.mp4", videos / "c.mp4"]
    assert not any(a.video.startswith("/") for a in anns)  # relative to the manifest
    a, b, c = anns
    assert a.status == "abnormal" and a.anomalies[0].region == "left hand" and a.anomalies[0].reason == "six fingers"
    assert a.anomalies[0].bboxes == {2: [(10, 20, 300, 400)]}
    assert [(s.label, s.frames) for s in b.anomalies] == [
        ("Object Distortion", (2, 3)),
        ("Object Distortion", (5, 7)),
        ("Character Anomalies", (0, 0)),
    ]
    assert b.anomalies[1].bboxes == {7: [(1, 2, 3, 4), (5, 6, 7, 8)]} and b.anomalies[2].bboxes == {
        0: [(1, 1, 50, 50)]
    }
    assert c.status == "normal" and c.anomalies == [] and c.meta == {"source": "batch 3"}
    assert all(s.saliency == "salient" for s in b.anomalies)


def test_sequence_length_matches_load_video(videos, tmp_path):
    save_video(torch.rand(29, 3, 8, 8), tmp_path / "odd.mp4", 15)  # 1.93 s at 15 fps
    for path in (videos / "a.mp4", tmp_path / "odd.mp4"):
        for fps in (4.0, 8.0, 3.0):
            assert sequence_length(path, fps) == load_video(path, fps).frames.shape[0]


CSV_HEADER = "video,prompt,fps,status,category,start,end,object,reason,bboxes\n"


def test_csv_import_and_its_problems(videos, tmp_path):
    rows = [
        'a.mp4,a man waves,4,abnormal,Human Distortion,2,3,left hand,six fingers,"{""2"": [10, 20, 300, 400]}"',
        "a.mp4,a man waves,4,abnormal,Motion Anomalies,4,7,ball,vanishes,",
        "c.mp4,calm lake,4,normal,,,,,,",
        "b.mp4,p,4,abnormal,Object Distortion,1,2,cup,bends,{not json}",  # row 5
        "b.mp4,another prompt,4,abnormal,Object Distortion,1,2,cup,bends,",  # row 6
        "missing.mp4,p,4,,,,,,,",  # row 7: not annotated
        "c.mp4,calm lake,4,abnormal,Object Distortion,1,2,cup,bends,",  # row 8: conflicts with row 4
    ]
    src = tmp_path / "ann.csv"
    src.write_text(CSV_HEADER + "\n".join(rows) + "\n")
    res = read_annotations(src, videos_root=videos)
    errors = [(p.row, p.field) for p in res.errors]
    assert errors == [(5, "bboxes"), (6, "prompt"), (7, "status"), (7, "video"), (8, "status")]
    assert "not valid JSON" in res.errors[0].message and "conflicts with 'p'" in res.errors[1].message
    assert "not annotated yet" in res.errors[2].message and "no such video file" in res.errors[3].message
    assert "'abnormal' conflicts with 'normal' on row 4" in res.errors[4].message
    assert res.dropped_rows == [5, 6, 7, 8]
    a = next(x for x in res.annotations if x.prompt == "a man waves")
    assert [(s.label, s.frames, s.region) for s in a.anomalies] == [
        ("Human Distortion", (2, 3), "left hand"),
        ("Motion Anomalies", (4, 7), "ball"),
    ]
    assert [x.prompt for x in res.annotations] == ["a man waves"]  # c.mp4's rows conflict: left out


def test_csv_needs_its_columns_and_checks_num_frames_without_videos(tmp_path):
    src = tmp_path / "ann.csv"
    src.write_text("video,category\nx.mp4,Human Distortion\n")
    res = read_annotations(src)
    assert [(p.row, p.field) for p in res.errors] == [(1, "header")] and "['start', 'end']" in res.errors[0].message
    src.write_text("video,num_frames,category,start,end\nx.mp4,8,Human Distortion,3,8\ny.mp4,8,,,\n")
    res = read_annotations(src, check_videos=False)
    assert [(p.row, p.field) for p in res.errors] == [(2, "start/end")]
    assert "outside the video: it has 8 frames" in res.errors[0].message
    assert [a.status for a in res.annotations] == ["normal"]


# --------------------------------------------------------------------------------------------------------------------
# Skyra
# --------------------------------------------------------------------------------------------------------------------


def _skyra(video, text, **kw):
    return {"video": video, "response": text, **kw}


def test_skyra_mapping_covers_the_l3_taxonomy_and_the_paper_groups():
    assert all(v is None or v in TAXONOMY for v in SKYRA_TO_CAC.values())
    assert SKYRA_TO_CAC["Person Identity Inconsistency"] == "Human Distortion"  # person inconsistency
    assert SKYRA_TO_CAC["Text Distortion"] == "Character Anomalies"  # text artifacts
    assert SKYRA_TO_CAC["General Object Identity Inconsistency"] == "Object Distortion"  # object inconsistency
    assert SKYRA_TO_CAC["Violation of Physical Law"] == "Physical Violations"  # physics violations
    assert SKYRA_TO_CAC["Unnatural General Object Movement"] == "Motion Anomalies"  # motion artifacts
    assert {v for v in SKYRA_TO_CAC.values()} == set(TAXONOMY) | {None}
    assert parse_mapping(["Texture Jittering=none", "Shape Distortion = Motion Anomalies"]) == {
        "Texture Jittering": None,
        "Shape Distortion": "Motion Anomalies",
    }
    with pytest.raises(ValueError, match="not one of"):
        parse_mapping(["Shape Distortion=Blur"])


def test_skyra_conversion(videos, tmp_path):
    fake = (
        "<think>A kitchen. The cup shows <type>Shape Distortion</type> in <t>[0.5, 1.1]</t> at "
        "<bbox>[0.1, 0.2, 0.5, 0.6]</bbox>, its rim bends. Then <type>Unnatural Blur</type> in <t>[0.0, 2.0]</t> at "
        "<bbox>[0.0, 0.0, 0.0, 0.0]</bbox>. A person: <type>Person Identity Inconsistency</type> in "
        "<t>[1.5, 9.0]</t> at <bbox>[0.0, 0.0, 0.0, 0.0]</bbox>.</think>\n<answer>Fake</answer>"
    )
    pixel = "<think><type>Text Distortion</type> in <t>[0.25, 0.5]</t> at <bbox>[8, 6, 24, 18]</bbox></think>"
    records = [
        _skyra("a.mp4", fake),
        {"videos": ["b.mp4"], "conversations": [{"from": "human", "value": "?"}, {"from": "gpt", "value": pixel}], "gt": "Fake"},
        {"video": "c.mp4", "messages": [{"role": "user", "content": "?"}, {"role": "assistant", "content": "<answer>Real</answer>"}]},
        _skyra("b.mp4", "<think><type>Color Over-saturation</type> in <t>[0, 1]</t> at <bbox>[0,0,0,0]</bbox></think><answer>Fake</answer>"),
        _skyra("c.mp4", "<answer>Maybe</answer>"),
        _skyra("a.mp4", "<think><type>Shape Distortion</type> in <t>[1.0, 0.5]</t> at <bbox>[0,0,0,0]</bbox></think><answer>Fake</answer>"),
    ]  # fmt: skip
    src = tmp_path / "skyra.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    res = convert_skyra(src, videos_root=videos)
    a, b, c = res.annotations
    assert res.rows == [1, 2, 3]
    # times: [0.5, 1.1] s -> frames 2..4 at 4 fps; [1.5, 9] s clipped to the video's 8 frames
    assert [(s.label, s.frames) for s in a.anomalies] == [("Object Distortion", (2, 4)), ("Human Distortion", (6, 7))]
    assert a.anomalies[0].bboxes == {j: [(100, 200, 500, 600)] for j in (2, 3, 4)}
    assert a.anomalies[1].bboxes == {}  # Skyra's all-zero placeholder: no box
    assert (
        a.anomalies[0].reason
        == "Shape Distortion: The cup shows Shape Distortion in [0.5, 1.1] at [0.1, 0.2, 0.5, 0.6], its rim bends."
    )
    assert a.meta["skyra_types"] == ["Shape Distortion", "Person Identity Inconsistency"]
    # pixel boxes on a 32x24 video: x * 1000 / 32, y * 1000 / 24
    assert b.anomalies[0].label == "Character Anomalies" and b.anomalies[0].frames == (1, 1)
    assert b.anomalies[0].bboxes == {1: [(250, 250, 750, 750)]}
    assert c.status == "normal" and c.anomalies == []
    fields = sorted((p.row, p.severity, p.field) for p in res.problems)
    assert fields == [
        (1, "warning", "response: evidence 2"),  # blur: out of CaC's scope
        (1, "warning", "response: evidence 3.bboxes"),  # the validator notes the instance has no box
        (1, "warning", "response: evidence 3.t"),  # clipped to the video
        (4, "error", "response"),  # nothing left that maps to CaC
        (4, "warning", "response: evidence 1"),
        (5, "error", "response"),  # verdict neither Fake nor Real
        (6, "error", "response"),
        (6, "error", "response: evidence 1.t"),  # inverted time range
    ]  # fmt: skip
    # overriding the mapping and the units
    res = convert_skyra(src, videos_root=videos, mapping={"Unnatural Blur": "Motion Anomalies"}, box_units="qwen")
    assert [s.label for s in res.annotations[0].anomalies][:2] == ["Object Distortion", "Motion Anomalies"]
    assert res.annotations[0].anomalies[0].bboxes[2] == [(0, 0, 1, 1)]  # 0.1 .. 0.6 read as 0-1000 units
