"""The anomaly-judge benchmark: metrics worked out by hand, run_bench with a scripted judge (resume, torn lines),
the UnifiedReward threshold judge, and the ``cac-align bench`` command on synthetic videos with a tiny checkpoint."""

import json
from pathlib import Path

import pytest
import torch

from cac_align.eval.bench import (
    PAPER_CAC,
    PREDICTIONS_FILE,
    UnifiedJudge,
    prediction_from_evidence,
    run_bench,
    stronger_protocol,
)
from cac_align.eval.metrics import (
    Prediction,
    benchmark_metrics,
    binary_metrics,
    category_recall,
    gt_on_grid,
    localization_metrics,
    split_recall,
    video_localization,
    video_split,
)
from cac_align.schema import Annotation, Judgment, PredAnomaly, write_manifest

OD, HD, MA, PV, CA = (
    "Object Distortion",
    "Human Distortion",
    "Motion Anomalies",
    "Physical Violations",
    "Character Anomalies",
)
BOX = [0, 0, 100, 100]


def ann(*anomalies: dict, fps: float = 4, video: str = "v.mp4") -> Annotation:
    status = "abnormal" if anomalies else "normal"
    return Annotation.from_dict(
        {"video": video, "prompt": f"prompt of {video}", "status": status, "fps": fps, "anomalies": list(anomalies)}
    )


def span(label: str = OD, frames=(2, 5), boxes: dict | None = None) -> dict:
    return {"label": label, "frames": list(frames), "bboxes": boxes if boxes is not None else {str(frames[0]): [BOX]}}


# ----------------------------------------------------------------------------------------------------------------------
# Table 1
# ----------------------------------------------------------------------------------------------------------------------


def test_confusion_matrix_hand_computed():
    # 3 TP (anomalous -> abnormal), 1 FN (anomalous -> normal), 2 FP (normal -> abnormal), 4 TN (normal -> normal)
    gt = [True] * 4 + [False] * 6
    pred = ["abnormal"] * 3 + ["normal"] + ["abnormal"] * 2 + ["normal"] * 4
    m = binary_metrics(gt, pred)
    assert m["counts"] == {"tp": 3, "fn": 1, "fp": 2, "tn": 4, "invalid": 0}
    a, n = m["anomalous"], m["normal"]
    assert a["recall"] == pytest.approx(3 / 4)  # TP / (TP + FN)
    assert a["precision"] == pytest.approx(3 / 5)  # TP / (TP + FP)
    assert a["f1"] == pytest.approx(2 * 0.75 * 0.6 / (0.75 + 0.6))  # = 2/3
    assert a["f1"] == pytest.approx(2 / 3)
    assert n["recall"] == pytest.approx(4 / 6)  # TN / (TN + FP)
    assert n["precision"] == pytest.approx(4 / 5)  # TN / (TN + FN)
    assert n["f1"] == pytest.approx(8 / 11)  # 2 (2/3)(4/5) / (2/3 + 4/5) = (16/15) / (22/15)
    assert m["accuracy"] == pytest.approx(7 / 10)


def test_invalid_predictions_count_as_errors_but_in_no_precision():
    # anomalous: abnormal, None; normal: normal, None
    m = binary_metrics([True, True, False, False], ["abnormal", None, "normal", None])
    assert m["counts"] == {"tp": 1, "fn": 0, "fp": 0, "tn": 1, "invalid": 2}
    assert m["anomalous"]["recall"] == pytest.approx(1 / 2)
    assert m["anomalous"]["precision"] == 1.0
    assert m["anomalous"]["f1"] == pytest.approx(2 / 3)  # 2 TP / (2 TP + FP + FN) = 2 / 3
    assert m["normal"]["recall"] == pytest.approx(1 / 2)
    assert m["normal"]["precision"] == 1.0
    assert m["accuracy"] == pytest.approx(2 / 4)


def test_zero_division_is_none():
    m = binary_metrics([False, False], ["normal", "normal"])  # no anomalous video, none predicted
    assert m["anomalous"] == {"recall": None, "precision": None, "f1": None}
    assert m["normal"] == {"recall": 1.0, "precision": 1.0, "f1": 1.0}
    m = binary_metrics([True, True], ["normal", "normal"])  # anomalies exist, never predicted
    assert m["anomalous"] == {"recall": 0.0, "precision": None, "f1": 0.0}
    assert m["normal"] == {"recall": None, "precision": 0.0, "f1": 0.0}
    assert binary_metrics([], [])["accuracy"] is None
    with pytest.raises(ValueError, match=r"pred_status\[0\]"):
        binary_metrics([True], ["anomalous"])
    with pytest.raises(ValueError, match="2 ground truths but 1"):
        binary_metrics([True, False], ["normal"])


# ----------------------------------------------------------------------------------------------------------------------
# Table S3 and Fig. 4
# ----------------------------------------------------------------------------------------------------------------------


def test_category_recall_counts_each_category_of_a_video():
    anns = [ann(span(OD), span(PV)), ann(span(OD)), ann(span(CA)), ann()]
    status = ["abnormal", "normal", "abnormal", "abnormal"]
    labels = [[OD], [OD], [], [CA]]
    r = category_recall(anns, status, labels)
    assert r[OD] == {"n": 2, "detected": 1, "label_matched": 1, "recall": 0.5, "recall_label_matched": 0.5}
    assert r[PV] == {"n": 1, "detected": 1, "label_matched": 0, "recall": 1.0, "recall_label_matched": 0.0}
    assert r[CA] == {"n": 1, "detected": 1, "label_matched": 0, "recall": 1.0, "recall_label_matched": 0.0}
    assert r[HD]["n"] == 0 and r[HD]["recall"] is None
    assert r[MA]["recall_label_matched"] is None


def test_split_assignment_at_the_boundaries():
    one_second = (0, 3)  # 4 frames at 4 fps = exactly 1 s -> ">=1s"
    short = (0, 2)  # 0.75 s -> "<1s"
    area20 = [0, 0, 200, 1000]  # exactly 20 % of the 1000 x 1000 frame -> ">=20%"
    area_below = [0, 0, 199, 1000]  # 19.9 % -> "<20%"
    cases = [
        (ann(span(frames=one_second, boxes={"0": [area20]})), ">=1s,>=20%"),
        (ann(span(frames=one_second, boxes={"0": [area_below]})), ">=1s,<20%"),
        (ann(span(frames=short, boxes={"1": [area20]})), "<1s,>=20%"),
        (ann(span(frames=short, boxes={"1": [area_below]})), "<1s,<20%"),
        (ann(span(frames=(0, 1), boxes={"0": [area20]}), fps=2), ">=1s,>=20%"),  # 2 frames at 2 fps = 1 s
        # two boxes of 10 % each, disjoint, on one frame: union 20 %
        (ann(span(frames=short, boxes={"0": [[0, 0, 100, 1000], [500, 0, 600, 1000]]})), "<1s,>=20%"),
        # area is the mean over boxed frames: 20 % and 10 % -> 15 %
        (ann(span(frames=short, boxes={"0": [area20], "1": [[0, 0, 100, 1000]]})), "<1s,<20%"),
        # two anomalies: duration of the union of windows {0, 1} u {2, 3} = 4 frames = 1 s
        (ann(span(frames=(0, 1), boxes={"0": [area20]}), span(PV, (2, 3), {"2": [area20]})), ">=1s,>=20%"),
    ]
    for a, expected in cases:
        assert video_split(a) == expected, a.anomalies
    assert video_split(ann()) is None
    assert video_split(ann(span(boxes={}))) is None  # no box, no area
    anns = [a for a, _ in cases[:4]] + [ann(span(boxes={})), ann()]
    r = split_recall(anns, ["abnormal", "normal", "abnormal", "abnormal", "abnormal", "abnormal"])
    assert {s: (v["n"], v["detected"]) for s, v in r.items()} == {
        ">=1s,>=20%": (1, 1),
        ">=1s,<20%": (1, 0),
        "<1s,>=20%": (1, 1),
        "<1s,<20%": (1, 1),
    }
    assert r[">=1s,<20%"]["recall"] == 0.0 and r["<1s,<20%"]["recall"] == 1.0


# ----------------------------------------------------------------------------------------------------------------------
# Table S4
# ----------------------------------------------------------------------------------------------------------------------

# GT frames 2..5 with boxes on frames 2, 4 and 5.
GT_LOC = span(OD, (2, 5), {"2": [BOX], "4": [BOX], "5": [BOX]})


def test_temporal_and_spatial_iou_two_turn():
    # turn 1 predicts frames 4..7: temporal IoU |{4,5}| / |{2..7}| = 2/6. Turn 2 saw frames 4..7 at 8 fps, so GT frame
    # 4 -> clip frame 0 and GT frame 5 -> clip frame 2 (frame 2 is not predicted and does not count).
    # frame 4: [0,0,100,50] vs BOX -> 5000 / 10000 = 1/2; frame 5: [50,0,150,100] vs BOX -> 5000 / 15000 = 1/3.
    pred = Prediction(
        "abnormal", fps=4, windows=[(4, 7)], clip_fps=8, boxes={0: [(0, 0, 100, 50)], 2: [(50, 0, 150, 100)]}
    )
    t, s = video_localization(ann(GT_LOC), pred)
    assert t == pytest.approx(1 / 3)
    assert s == pytest.approx((1 / 2 + 1 / 3) / 2)
    # the best of several boxes on a frame counts; a box on the wrong clip frame does not
    pred.boxes = {0: [(500, 500, 600, 600), (0, 0, 100, 100)], 1: [(50, 0, 150, 100)]}
    assert video_localization(ann(GT_LOC), pred)[1] == pytest.approx((1 + 0) / 2)


def test_spatial_iou_single_turn_boxes_index_turn1_frames():
    pred = Prediction("abnormal", fps=4, windows=[(4, 7)], boxes={4: [(0, 0, 100, 50)], 5: [(50, 0, 150, 100)]})
    t, s = video_localization(ann(GT_LOC), pred)
    assert t == pytest.approx(1 / 3)
    assert s == pytest.approx((1 / 2 + 1 / 3) / 2)


def test_localization_on_the_judges_grid():
    # annotation at 4 fps, frames 4..7 (1-2 s), a box on frame 4; the judge sampled at 2 fps: grid frame i shows
    # annotation frame floor(2 i), so F_gt = {2, 3} and the box sits on grid frame 2.
    a = ann(span(OD, (4, 7), {"4": [BOX]}))
    assert gt_on_grid(a, 2.0) == ({2, 3}, {2: [tuple(BOX)]})
    assert gt_on_grid(a, 4.0) == ({4, 5, 6, 7}, {4: [tuple(BOX)]})
    # window (2, 2): temporal 1/2; turn 2 cropped at grid frame 2 (1 s), clip frame 0 is at 1 s -> the box matches
    pred = Prediction("abnormal", fps=2, windows=[(2, 2)], clip_fps=8, boxes={0: [tuple(BOX)]})
    assert video_localization(a, pred) == (pytest.approx(1 / 2), pytest.approx(1.0))


def test_localization_means_and_gating():
    two_turn = Prediction(
        "abnormal", fps=4, windows=[(4, 7)], clip_fps=8, boxes={0: [(0, 0, 100, 50)], 2: [(50, 0, 150, 100)]}
    )
    anns = [ann(GT_LOC), ann(GT_LOC), ann(span(MA, (1, 2), boxes={})), ann()]
    preds = [
        two_turn,  # t 1/3, s 5/12
        Prediction("normal", fps=4, windows=[(2, 5)]),  # called normal: its window does not count -> 0, 0
        Prediction("abnormal", fps=4, windows=[(1, 2)]),  # exact window, no GT box: t 1, s undefined
        Prediction("abnormal", fps=4, windows=[(0, 3)]),  # GT-normal: not averaged
    ]
    assert video_localization(anns[1], preds[1]) == (0.0, 0.0)
    assert video_localization(anns[3], preds[3]) == (None, None)
    m = localization_metrics(anns, preds)
    assert m["temporal_iou"] == pytest.approx((1 / 3 + 0 + 1) / 3)
    assert m["spatial_iou"] == pytest.approx((5 / 12 + 0) / 2)
    assert m["temporal_iou_detected"] == pytest.approx((1 / 3 + 1) / 2)
    assert m["spatial_iou_detected"] == pytest.approx(5 / 12)
    assert (m["n_temporal"], m["n_spatial"], m["n_detected_temporal"], m["n_detected_spatial"]) == (3, 2, 2, 1)
    # a judge without localisation (UnifiedReward): n/a, not 0
    m = localization_metrics(anns, [Prediction("abnormal", score=2.0) for _ in anns])
    assert m["temporal_iou"] is None and m["spatial_iou"] is None and m["n_temporal"] == 0


def test_prediction_round_trip_and_validation():
    p = Prediction("abnormal", 0.25, 4.0, [(1, 3)], {2: [(0, 0, 10, 10)]}, 8.0, [OD], ["{...}", "{...}"])
    assert Prediction.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    assert Prediction("normal", score=float("nan")).to_dict()["score"] is None
    with pytest.raises(ValueError, match="Prediction.status"):
        Prediction("unknown")


def test_prediction_from_evidence():
    from cac_align.reward.cac import Evidence, TurnResult

    def turn(k: int, judgment: Judgment) -> TurnResult:
        return TurnResult(k, f"answer {k}", judgment, [], 4.0 * k, [], [], 0.3, 0.6, 1 / 3, "generated")

    t1 = Judgment(True, "abnormal", [PredAnomaly(OD, (3, 4)), PredAnomaly(PV, (6, 6)), PredAnomaly(MA)])
    box = (0, 0, 10, 10)
    t2 = Judgment(True, "abnormal", [PredAnomaly(PV, bboxes={1: [box]}), PredAnomaly("Made Up", bboxes={})])
    ev = Evidence(
        "abnormal", 1 / 3, 0.3, 0.6, [turn(1, t1), turn(2, t2)], 4.0, (3, 6), 8.0, [], t2.anomalies, {1: [box]}
    )
    p = prediction_from_evidence(ev)
    assert p == Prediction("abnormal", 1 / 3, 4.0, [(3, 4), (6, 6)], {1: [box]}, 8.0, [PV], ["answer 1", "answer 2"])
    single = Evidence("normal", 0.9, 0.9, 0.1, [turn(1, Judgment(True, "normal"))], 4.0)
    assert prediction_from_evidence(single) == Prediction("normal", 0.9, 4.0, answers=["answer 1"])


# ----------------------------------------------------------------------------------------------------------------------
# run_bench with a scripted judge
# ----------------------------------------------------------------------------------------------------------------------


class ScriptedJudge:
    """A plain judge that answers from a fixed table by video file name and records what it was asked."""

    def __init__(self, answers: dict[str, Prediction], name: str = "scripted", fail_after: int | None = None):
        self.answers = answers
        self.name = name
        self.fail_after = fail_after
        self.asked: list[str] = []

    def __call__(self, videos, prompts):
        out = []
        for v, p in zip(videos, prompts, strict=True):
            if self.fail_after is not None and len(self.asked) >= self.fail_after:
                raise KeyboardInterrupt  # the run is killed here
            assert p == f"prompt of {Path(v).name}"
            self.asked.append(Path(v).name)
            out.append(self.answers[Path(v).name])
        return out


@pytest.fixture
def bench_case(tmp_path):
    """10 videos: 3 TP, 1 FN, 2 FP, 4 TN (the hand-computed confusion matrix above)."""
    anns, answers = [], {}
    hit = Prediction("abnormal", 0.1, 4.0, [(2, 5)], {2: [tuple(BOX)]}, None, [OD])  # exact window and box
    for i in range(10):
        name = f"{i:02d}.mp4"
        anns.append(ann(span(OD, (2, 5)), video=name) if i < 4 else ann(video=name))
        if i < 3 or i in (4, 5):
            answers[name] = hit
        else:
            answers[name] = Prediction("normal", 0.9, 4.0)
    manifest = tmp_path / "data" / "manifest.jsonl"
    write_manifest(manifest, anns)
    return manifest, answers


def test_run_bench_metrics_and_reports(bench_case, tmp_path):
    manifest, answers = bench_case
    judge = ScriptedJudge(answers)
    m = run_bench(manifest, judge, tmp_path / "out", batch_size=3, progress=False)
    assert sorted(judge.asked) == sorted(answers)
    t1 = m["table1"]
    assert t1["counts"] == {"tp": 3, "fn": 1, "fp": 2, "tn": 4, "invalid": 0}
    assert t1["anomalous"]["recall"] == pytest.approx(3 / 4) and t1["normal"]["f1"] == pytest.approx(8 / 11)
    assert m["categories"][OD]["recall"] == pytest.approx(3 / 4)
    assert m["categories"][OD]["recall_label_matched"] == pytest.approx(3 / 4)
    # the 3 detected videos localise exactly, the missed one scores 0
    assert m["localization"]["temporal_iou"] == pytest.approx(3 / 4)
    assert m["localization"]["spatial_iou"] == pytest.approx(3 / 4)
    assert m["localization"]["temporal_iou_detected"] == pytest.approx(1.0)
    # every GT video is 4 frames (1 s) with one 1 % box
    assert m["hard_splits"][">=1s,<20%"] == {"n": 4, "detected": 3, "recall": pytest.approx(3 / 4)}
    assert m["seconds_per_video"] >= 0
    out = tmp_path / "out"
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(m))
    tables = (out / "tables.md").read_text()
    for text in ("## Table 1", "## Fig. 4", "## Table S3", "## Table S4", "## Table S2", "0.750", "0.727", "0.700"):
        assert text in tables
    assert f"{PAPER_CAC['table1']['accuracy']:.3f}" in tables
    for png in ("table1", "fig4_hard_splits", "tableS3_categories", "tableS4_localization", "tableS2_seconds"):
        assert (out / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert m == benchmark_metrics_of(manifest, answers, m)


def benchmark_metrics_of(manifest, answers, m):
    """The metrics of the run recomputed straight from the answers (no files, no resume)."""
    from cac_align.schema import read_manifest

    anns = read_manifest(manifest)
    expected = {"judge": m["judge"], "manifest": m["manifest"]}
    expected.update(benchmark_metrics(anns, [answers[a.video] for a in anns]))
    expected["seconds_per_video"] = m["seconds_per_video"]
    return expected


def test_run_bench_resumes_after_a_kill(bench_case, tmp_path):
    manifest, answers = bench_case
    out = tmp_path / "out"
    killed = ScriptedJudge(answers, fail_after=4)
    with pytest.raises(KeyboardInterrupt):
        run_bench(manifest, killed, out, batch_size=1, progress=False)
    assert len((out / PREDICTIONS_FILE).read_text().splitlines()) == 4
    assert not (out / "metrics.json").exists()
    resumed = ScriptedJudge(answers)
    m = run_bench(manifest, resumed, out, batch_size=2, progress=False)
    assert resumed.asked == [f"{i:02d}.mp4" for i in range(4, 10)]  # nothing judged twice
    assert m["table1"]["counts"] == {"tp": 3, "fn": 1, "fp": 2, "tn": 4, "invalid": 0}
    # a third run judges nothing and gives the same numbers
    again = ScriptedJudge(answers)
    assert run_bench(manifest, again, out, progress=False)["table1"] == m["table1"] and again.asked == []


def test_run_bench_drops_a_torn_last_line(bench_case, tmp_path):
    manifest, answers = bench_case
    out = tmp_path / "out"
    run_bench(manifest, ScriptedJudge(answers), out, limit=3, progress=False)
    path = out / PREDICTIONS_FILE
    path.write_text(path.read_text() + '{"index": 3, "video": "03.mp4", "judge": "scr')  # killed mid-write
    judge = ScriptedJudge(answers)
    m = run_bench(manifest, judge, out, progress=False)
    assert judge.asked == [f"{i:02d}.mp4" for i in range(3, 10)]
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(10))
    assert m["num_videos"] == 10


def test_run_bench_refuses_other_judges_and_manifests(bench_case, tmp_path):
    manifest, answers = bench_case
    out = tmp_path / "out"
    run_bench(manifest, ScriptedJudge(answers), out, limit=2, progress=False)
    with pytest.raises(ValueError, match="record 1: written by judge 'scripted'"):
        run_bench(manifest, ScriptedJudge(answers, name="other"), out, progress=False)
    other = tmp_path / "other.jsonl"
    write_manifest(other, [ann(video="x.mp4"), ann(video="y.mp4")])
    with pytest.raises(ValueError, match="field 'video' is '00.mp4' but manifest entry 0 is 'x.mp4'"):
        run_bench(other, ScriptedJudge(answers), out, progress=False)

    class Short(ScriptedJudge):
        def __call__(self, videos, prompts):
            return super().__call__(videos, prompts)[:-1]

    with pytest.raises(ValueError, match="returned 1 predictions for 2 videos"):
        run_bench(manifest, Short(answers), tmp_path / "short", batch_size=2, progress=False)


def test_stronger_protocol_picks_higher_accuracy():
    a = {"table1": {"accuracy": 0.55}, "name": "cac prompt"}
    b = {"table1": {"accuracy": 0.56}, "name": "official"}
    c = {"table1": {"accuracy": None}, "name": "empty"}
    assert stronger_protocol(a, b)["name"] == "official"
    assert stronger_protocol(b, a)["name"] == "official"
    assert stronger_protocol(c, a)["name"] == "cac prompt"
    assert stronger_protocol(a, dict(a, name="tie"))["name"] == "cac prompt"


# ----------------------------------------------------------------------------------------------------------------------
# Real judges on tiny checkpoints
# ----------------------------------------------------------------------------------------------------------------------


def test_unified_judge_threshold(tmp_path):
    from cac_align.reward.unified import UnifiedReward
    from cac_align.testing import build_tiny_qwen3vl
    from cac_align.video import save_video

    ckpt = build_tiny_qwen3vl(tmp_path / "ur", seed=1, vocab="bytes")
    g = torch.Generator().manual_seed(0)
    videos = [save_video(torch.rand(6, 3, 32, 32, generator=g), tmp_path / f"{i}.mp4", fps=8) for i in range(2)]
    prompts = ["a ball", "a car"]
    # a short question and one dimension keep the byte-level prompt small (one forward per video)
    short = {"num_frames": 2, "dimensions": ("alignment",), "prompt_template": "Rate: {prompt}"}
    soft = UnifiedReward.from_pretrained(ckpt, soft=True, **short)
    scores = soft(videos, prompts)
    assert all(1.0 < s < 5.0 for s in scores)
    cut = (scores[0] + scores[1]) / 2  # between the two scores: one video each side
    preds = UnifiedJudge(soft, threshold=cut)(videos, prompts)
    assert [p.status for p in preds] == ["abnormal" if s < cut else "normal" for s in scores]
    assert {p.status for p in preds} == {"normal", "abnormal"}
    assert [p.score for p in preds] == pytest.approx(scores)
    assert all(p.fps is None and not p.windows for p in preds)  # no localisation
    assert [p.status for p in UnifiedJudge(soft, threshold=1.0)(videos, prompts)] == ["normal", "normal"]
    assert UnifiedJudge(soft, threshold=3).name == "unified/threshold=3"
    # a hard-mode answer of random weights has no score: an invalid prediction, raw answer kept
    hard = UnifiedReward(soft.model, soft.processor, max_new_tokens=4, **short)
    preds = UnifiedJudge(hard)(videos, prompts)
    assert [p.status for p in preds] == [None, None] and all(len(p.answers) <= 1 for p in preds)
    with pytest.raises(ValueError, match="threshold"):
        UnifiedJudge(soft, threshold=float("nan"))


def test_cli_bench_on_synthetic_videos(tmp_path):
    from cac_align.cli import main
    from cac_align.data.synthetic import generate
    from cac_align.testing import build_tiny_cac

    manifest = generate(tmp_path / "data", num_videos=6, seed=0, progress=False)
    ckpt = build_tiny_cac(tmp_path / "cac")
    out = tmp_path / "bench"
    args = [str(manifest), "--model", str(ckpt), "--out", str(out), "--max-new-tokens", "6", "--batch-size", "6"]
    assert main(["bench", *args]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["judge"] == "cac/two-turn" and m["num_videos"] == 6
    assert m["num_abnormal"] + m["num_normal"] == 6
    counts = m["table1"]["counts"]
    assert sum(counts.values()) == 6 and counts["invalid"] == 0  # CaC always decides a status
    for cls in ("anomalous", "normal"):
        assert set(m["table1"][cls]) == {"recall", "precision", "f1"}
    assert set(m["hard_splits"]) == {"<1s,<20%", "<1s,>=20%", ">=1s,<20%", ">=1s,>=20%"}
    assert sum(v["n"] for v in m["hard_splits"].values()) + m["num_unsplit"] == m["num_abnormal"]
    assert len(m["categories"]) == 5
    assert m["localization"]["n_temporal"] == m["num_abnormal"]
    assert m["localization"]["temporal_iou"] is not None  # CaC localises (0 where it found nothing)
    assert m["seconds_per_video"] > 0
    records = (out / PREDICTIONS_FILE).read_text().splitlines()
    assert len(records) == 6 and all(json.loads(r)["fps"] == 4.0 for r in records)
    for f in ("tables.md", "table1.png", "fig4_hard_splits.png", "tableS3_categories.png", "tableS4_localization.png"):
        assert (out / f).stat().st_size > 0
    # a rerun resumes: nothing is judged again, the predictions file is unchanged
    assert main(["bench", *args]) == 0
    assert (out / PREDICTIONS_FILE).read_text().splitlines() == records
    # flags of the other protocol are refused
    assert main(["bench", *args, "--threshold", "3"]) == 2
    assert main(["bench", *args, "--judge", "unified", "--mode", "single-turn"]) == 2
