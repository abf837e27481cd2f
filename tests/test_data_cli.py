"""``cac-align data``: every command documented, and the README path from annotated videos to stage manifests."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from test_data_cot_synthesis import Plan, ScriptedServer  # the scripted OpenAI-compatible server

from cac_align.cli import main
from cac_align.schema import read_manifest
from cac_align.video import save_video

DATA_COMMANDS = ("import", "validate", "skyra", "synthesize-cot", "export-sheet", "import-sheet", "splits")


def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def test_every_data_command_has_help(capsys):
    assert "data" in _help(capsys)
    top = _help(capsys, "data")
    for cmd in DATA_COMMANDS:
        assert cmd in top
        text = _help(capsys, "data", cmd)
        assert f"usage: cac-align data {cmd}" in text and len(text) > 400
    assert "--base-url" in _help(capsys, "data", "synthesize-cot") and "--local-model" in _help(
        capsys, "data", "synthesize-cot"
    )
    assert main(["data"]) == 2


def _annotated_folder(tmp_path, n_abnormal=6, n_normal=6):
    """A folder of videos with a structured annotation file, as a user would bring it."""
    (tmp_path / "videos").mkdir()
    g = torch.Generator().manual_seed(0)
    labels = ["Human Distortion", "Object Distortion", "Physical Violations"]
    items = []
    for i in range(n_abnormal + n_normal):
        save_video(torch.rand(48, 3, 24, 32, generator=g), tmp_path / "videos" / f"{i}.mp4", 16)  # 12 frames at 4 fps
        item = {"video": f"videos/{i}.mp4", "prompt": f"scene {i}", "groups": []}
        if i < n_abnormal:
            inst = {"frames": [4, 5], "object": "cup", "reason": "bends", "bboxes": {"4": [100, 100, 400, 400]}}
            item["groups"] = [{"category": labels[i % 3], "instances": [inst]}]
        items.append(item)
    return items


def test_readme_path_from_annotated_videos_to_stage_manifests(tmp_path, capsys):
    items = _annotated_folder(tmp_path)
    broken = dict(items[0], video="videos/none.mp4")
    ann = tmp_path / "annotations.json"
    ann.write_text(json.dumps([*items, broken]))

    assert main(["data", "validate", str(ann)]) == 1
    err = capsys.readouterr().err
    assert f"{ann}:13: error: field 'video'" in err and "no such video file" in err
    assert main(["data", "import", str(ann), "-o", str(tmp_path / "data" / "manifest.jsonl")]) == 1
    assert not (tmp_path / "data" / "manifest.jsonl").exists()  # nothing written while there are errors
    capsys.readouterr()
    rc = main(["data", "import", str(ann), "-o", str(tmp_path / "data" / "manifest.jsonl"), "--skip-invalid"])
    assert rc == 0 and "left out rows 13" in capsys.readouterr().err
    manifest = tmp_path / "data" / "manifest.jsonl"
    anns = {a.prompt: a for a in read_manifest(manifest)}
    assert len(anns) == 12

    plans = {p: Plan() for p in anns}
    plans["scene 0"] = Plan(t1_pass=4)  # one non-salient
    plans["scene 1"] = Plan(t2_pass=None)  # one discarded
    with ScriptedServer(anns, plans) as server:
        argv = ["data", "synthesize-cot", str(manifest), "-o", str(tmp_path / "data" / "cot")]
        argv += ["--base-url", server.url, "--model", "scripted", "--no-progress", "--concurrency", "2"]
        assert main(argv) == 0
    out = capsys.readouterr().out
    assert "passed 11 (salient 4, non-salient 1, normal 6), discarded 1" in out
    cot = read_manifest(tmp_path / "data" / "cot" / "manifest.jsonl")
    assert len(cot) == 11 and all(a.cot and a.cot["turn1"] and a.cot["turn2"] for a in cot)

    assert (
        main(["data", "splits", str(tmp_path / "data" / "cot" / "manifest.jsonl"), "-o", str(tmp_path / "splits")])
        == 0
    )
    counts = json.loads(capsys.readouterr().out.splitlines()[0])
    stage1 = read_manifest(tmp_path / "splits" / "stage1.jsonl")
    assert counts["stage1"]["anomalous"] == counts["stage1"]["normal"] == sum(a.is_abnormal for a in stage1) > 0
    assert sum(c["anomalous"] for c in counts.values()) == 5  # 5 anomalous passed, 6 normal: 5 pairs
    assert all((tmp_path / "splits" / a.video).resolve().is_file() for a in stage1)


def test_synthesize_cot_reports_auth_errors(tmp_path, capsys):
    items = _annotated_folder(tmp_path, 1, 1)
    ann = tmp_path / "a.json"
    ann.write_text(json.dumps(items))
    assert main(["data", "import", str(ann), "-o", str(tmp_path / "m.jsonl")]) == 0
    anns = {a.prompt: a for a in read_manifest(tmp_path / "m.jsonl")}
    with ScriptedServer(anns, {p: Plan(auth_fail=True) for p in anns}) as server:
        argv = ["data", "synthesize-cot", str(tmp_path / "m.jsonl"), "-o", str(tmp_path / "cot")]
        assert main([*argv, "--base-url", server.url, "--model", "m", "--no-progress"]) == 1
    assert "HTTP 401" in capsys.readouterr().err
    assert main([*argv, "--base-url", "http://127.0.0.1:9/v1", "--no-progress"]) == 2  # --model missing


def test_skyra_and_sheet_commands(tmp_path, capsys):
    _annotated_folder(tmp_path, 0, 3)  # three normal videos
    rec = {"video": "videos/0.mp4", "response": "<think>ok</think><answer>Real</answer>"}
    bad = {"video": "videos/1.mp4", "response": "<think><type>Shape Distortion</type> in <t>[0.2, 0.6]</t> at <bbox>[0.1, 0.1, 0.4, 0.4]</bbox></think><answer>Fake</answer>"}  # fmt: skip
    (tmp_path / "s.jsonl").write_text(json.dumps(rec) + "\n" + json.dumps(bad) + "\n")
    argv = ["data", "skyra", str(tmp_path / "s.jsonl"), "-o", str(tmp_path / "skyra.jsonl")]
    assert main([*argv, "--map", "Shape Distortion=Blur"]) == 2
    assert main([*argv, "--map", "Shape Distortion=Motion Anomalies"]) == 0
    assert [a.anomalies[0].label if a.anomalies else None for a in read_manifest(tmp_path / "skyra.jsonl")] == [
        None,
        "Motion Anomalies",
    ]

    assert main(["data", "export-sheet", str(tmp_path / "sheet"), f"base={tmp_path / 'videos'}"]) == 0
    sheet = tmp_path / "sheet" / "sheet.csv"
    with sheet.open() as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["status"] = "normal"
    rows[0].update(status="abnormal", category="Motion Anomalies", start="1", end="2", reason="flicker")
    with sheet.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    capsys.readouterr()
    rates = tmp_path / "rates.json"
    assert main(["data", "import-sheet", str(sheet), "--json", str(rates), "-o", str(tmp_path / "expert.jsonl")]) == 0
    assert "anomaly rate base: 0.333" in capsys.readouterr().out
    saved = json.loads(rates.read_text())["rates"]
    assert saved["base"]["abnormal"] == 1 and saved["base"]["annotated"] == 3
    assert len(read_manifest(tmp_path / "expert.jsonl")) == 3
