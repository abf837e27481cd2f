"""Expert sheets (export, fill, import, anomaly rate with a Wilson interval) and the disjoint stage splits."""

from __future__ import annotations

import csv
import json
import math
import random

import pytest
import torch

from cac_align.data.sheets import AnomalyRate, collect_videos, export_sheet, import_sheet, wilson_interval
from cac_align.data.splits import build_splits, single_frame_eligible
from cac_align.schema import Annotation, read_manifest, resolve_video
from cac_align.video import save_video

# --------------------------------------------------------------------------------------------------------------------
# Wilson interval
# --------------------------------------------------------------------------------------------------------------------


def test_wilson_interval_hand_cases():
    # 29 of 100 (the paper's base-model rate), worked by hand: centre (.29 + z^2/200) / (1 + z^2/100) = .29777,
    # half-width z sqrt(.29 * .71 / 100 + z^2 / 40000) / (1 + z^2/100) = .08762
    low, high = wilson_interval(29, 100)
    assert low == pytest.approx(0.21015, abs=1e-4) and high == pytest.approx(0.38539, abs=1e-4)
    # the bounds are the roots of (p_hat - p)^2 = z^2 p (1 - p) / n
    z2, ph = 1.959963984540054**2, 0.29
    for b in (low, high):
        assert (ph - b) ** 2 == pytest.approx(z2 * b * (1 - b) / 100, rel=1e-9)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(0, 10)[1] == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(10, 10)[0] == pytest.approx(0.7225, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_wilson_interval_covers_at_nominal_rate():
    """Coverage of the true rate over many simulated sheets is close to 95 % (Wilson's known behaviour)."""
    rng = random.Random(0)
    p, n, hits, trials = 0.2, 60, 0, 2000
    for _ in range(trials):
        k = sum(rng.random() < p for _ in range(n))
        low, high = wilson_interval(k, n)
        hits += low <= p <= high
    assert 0.92 <= hits / trials <= 0.98


# --------------------------------------------------------------------------------------------------------------------
# Sheets
# --------------------------------------------------------------------------------------------------------------------


def _videos(folder, n, seed, seconds=2):
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        save_video(torch.rand(16 * seconds, 3, 16, 24, generator=g), folder / f"clip{i}.mp4", 16)
    return folder


def _fill(sheet, fill):
    with sheet.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
        fields = list(rows[0])
    out = []
    for r in rows:
        out.extend(fill(r))
    with sheet.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(out)


def test_sheet_export_fill_import_rates(tmp_path):
    base = _videos(tmp_path / "base", 4, 0)
    aligned = _videos(tmp_path / "aligned", 3, 1)
    (tmp_path / "m.jsonl").write_text(
        json.dumps({"video": "aligned/clip0.mp4", "prompt": "a cat", "status": "normal"})
    )
    groups = {"base": collect_videos(base), "aligned": collect_videos(aligned)}
    assert collect_videos(tmp_path / "m.jsonl")[0][1] == "a cat"
    sheet = export_sheet(groups, tmp_path / "sheet", seed=3)
    out = sheet.parent
    key = json.loads((out / "key.json").read_text())["videos"]
    with sheet.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 7 and {r["id"] for r in rows} == set(key)
    assert all(r["num_frames"] == "8" and r["status"] == "" for r in rows)  # 2 s at 4 fps
    assert all("base" not in r["video"] and "aligned" not in r["video"] for r in rows)  # blind
    page = (out / "index.html").read_text()
    for r in rows:
        assert f'src="{r["video"]}"' in page and (out / r["video"]).is_file()
        assert (out / "frames" / r["id"] / "007.jpg").is_file()
    assert "Frame 7" in page and "Character Anomalies" in page
    with pytest.raises(FileExistsError):
        export_sheet(groups, out)

    # the expert marks base videos 0 and 1 abnormal (video 1 with two instances), leaves one aligned video empty
    src = {k: v["source"] for k, v in key.items()}

    def fill(r):
        name = src[r["id"]]
        if name.endswith("base/clip0.mp4"):
            return [{**r, "status": "abnormal", "category": "Human Distortion", "start": "2", "end": "3",
                     "object": "hand", "reason": "six fingers", "bboxes": '{"2": [10, 20, 300, 400]}'}]  # fmt: skip
        if name.endswith("base/clip1.mp4"):
            first = {**r, "status": "abnormal", "category": "Motion Anomalies", "start": "0", "end": "5",
                     "object": "ball", "reason": "vanishes"}  # fmt: skip
            return [first, {**first, "category": "Object Distortion", "start": "6", "end": "7", "reason": "bends"}]
        if name.endswith("aligned/clip2.mp4"):
            return [r]
        return [{**r, "status": "normal"}]

    _fill(sheet, fill)
    res = import_sheet(sheet, out / "key.json")
    assert res.rates["base"] == AnomalyRate.of(2, 4)
    assert res.rates["aligned"] == AnomalyRate.of(0, 2)
    assert res.rates["all"].abnormal == 2 and res.rates["all"].annotated == 6
    assert res.rates["base"].low == pytest.approx(wilson_interval(2, 4)[0])
    empty = [i for i, s in src.items() if s.endswith("aligned/clip2.mp4")]
    assert res.unannotated == empty
    assert [p.field for p in res.imported.errors] == ["status"] and "not annotated" in res.imported.errors[0].message
    by_src = {a.video: a for a in res.annotations}
    two = by_src[str((base / "clip1.mp4").resolve())]
    assert [a.label for a in two.anomalies] == ["Motion Anomalies", "Object Distortion"]
    assert two.meta["group"] == "base"
    one = by_src[str((base / "clip0.mp4").resolve())]
    assert one.anomalies[0].bboxes == {2: [(10, 20, 300, 400)]}


def test_sheet_errors_name_row_and_column(tmp_path):
    vids = _videos(tmp_path / "v", 2, 0)
    sheet = export_sheet({"g": collect_videos(vids)}, tmp_path / "s")

    def fill(r):
        return [{**r, "status": "abnormal", "category": "Motion Anomaly", "start": "3", "end": "9"}]

    _fill(sheet, fill)
    res = import_sheet(sheet)
    msgs = sorted(str(p) for p in res.imported.errors)
    assert len(msgs) == 4 and res.annotations == [] and math.isnan(res.rates["all"].rate)
    assert any(":2: error: field 'category': unknown category 'Motion Anomaly'" in m for m in msgs)
    assert any(":3: error: field 'start/end': window [3, 9] outside the video" in m for m in msgs)


# --------------------------------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------------------------------


def _ann(i: int, label: str | None, boxes: bool = True) -> dict:
    d = {"video": f"v/{i}.mp4", "prompt": f"p{i}", "status": "normal" if label is None else "abnormal"}
    if label is not None:
        d["anomalies"] = [{"label": label, "frames": [1, 2], "bboxes": {"1": [[1, 1, 5, 5]]} if boxes else {}}]
        d["cot"] = {"turn1": "t1", "turn2": "t2"}
    return d


def _write(tmp_path, items):
    p = tmp_path / "m.jsonl"
    p.write_text("".join(json.dumps(d) + "\n" for d in items))
    return p


def test_splits_disjoint_balanced_seeded(tmp_path):
    items = [_ann(i, ["Human Distortion", "Motion Anomalies", "Physical Violations"][i % 3]) for i in range(60)]
    items += [_ann(100 + i, None) for i in range(50)]
    m = _write(tmp_path, items)
    rec = build_splits(m, tmp_path / "s", seed=7)
    stages = {s: read_manifest(tmp_path / "s" / f"{s}.jsonl") for s in ("stage1", "stage2", "stage3")}
    videos = [a.video for anns in stages.values() for a in anns]
    assert len(videos) == len(set(videos)) == 100  # disjoint; 50 pairs used
    for s, anns in stages.items():
        n_abn = sum(a.is_abnormal for a in anns)
        assert n_abn == len(anns) - n_abn == rec["counts"][s]["anomalous"] == rec["counts"][s]["normal"]
        assert all(a.meta["split"] == s for a in anns)
        assert all(a.video.startswith("../v/") for a in anns)
        assert all(resolve_video(a, tmp_path / "s" / f"{s}.jsonl").resolve() == tmp_path / a.video[3:] for a in anns)
    assert [rec["counts"][s]["anomalous"] for s in ("stage1", "stage2", "stage3")] == [16, 22, 12]  # .33/.42/.25
    assert all(single_frame_eligible(a) for a in stages["stage1"] if a.is_abnormal)
    assert rec["stage1_shortfall"] == 0 and len(rec["unused"]["anomalous"]) == 10 and rec["unused"]["normal"] == []
    assert rec["counts"]["stage2"]["without_cot"] == 22  # the normal videos of these items have no CoT
    again = build_splits(m, tmp_path / "s2", seed=7)
    assert again["videos"] == rec["videos"] and again["source_sha256"] == rec["source_sha256"]
    assert build_splits(m, tmp_path / "s3", seed=8)["videos"] != rec["videos"]
    saved = json.loads((tmp_path / "s" / "splits.json").read_text())
    assert saved["seed"] == 7 and saved["videos"] == rec["videos"]


def test_splits_stage1_shortfall_moves_to_stage2(tmp_path):
    items = [_ann(0, "Object Distortion"), _ann(1, "Character Anomalies", boxes=False)]
    items += [_ann(2 + i, "Physical Violations") for i in range(8)] + [_ann(20 + i, None) for i in range(10)]
    rec = build_splits(_write(tmp_path, items), tmp_path / "s", fractions=(0.5, 0.3, 0.2))
    assert rec["counts"]["stage1"]["anomalous"] == 1 and rec["stage1_shortfall"] == 4
    assert rec["counts"]["stage2"]["anomalous"] == 7 and rec["counts"]["stage3"]["anomalous"] == 2
    assert sum(c["anomalous"] + c["normal"] for c in rec["counts"].values()) == 20


def test_splits_refuse_duplicates_and_bad_fractions(tmp_path):
    m = _write(tmp_path, [_ann(0, None), _ann(0, None)])
    with pytest.raises(ValueError, match="appears on lines 1 and 2"):
        build_splits(m, tmp_path / "s")
    with pytest.raises(ValueError, match="fractions"):
        build_splits(m, tmp_path / "s", fractions=(1.0, -1.0, 0.5))


def test_single_frame_eligibility():
    assert single_frame_eligible(Annotation.from_dict(_ann(0, "Character Anomalies")))
    assert not single_frame_eligible(Annotation.from_dict(_ann(0, "Character Anomalies", boxes=False)))
    assert not single_frame_eligible(Annotation.from_dict(_ann(0, "Motion Anomalies")))
