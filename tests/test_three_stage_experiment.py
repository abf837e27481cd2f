"""``experiments/synthetic_three_stage.py``: the --quick run end to end (data, the three recipes chained through
their ``final/`` folders, the held-out evaluations, the table, the chart and the RESULTS.md section), a rerun that
skips finished work, and the pieces it computes itself (ROC AUC, the paired bootstrap and the verdicts it gives, the
CoT-free manifest, the smaller-head config)."""

import json
import math
import runpy
from pathlib import Path

import numpy as np
import pytest
import yaml

from cac_align.schema import Annotation, read_manifest, write_manifest
from cac_align.testing import qwen3_tokenizer, tiny_qwen3vl_config

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "synthetic_three_stage.py"


@pytest.fixture(scope="module")
def exp() -> dict:
    return runpy.run_path(str(SCRIPT), run_name="synthetic_three_stage")


@pytest.fixture(scope="module")
def quick(exp, tmp_path_factory):
    root = tmp_path_factory.mktemp("three_stage")
    results_md = root / "RESULTS.md"
    results_md.write_text("# Results\n\nother sections stay\n", encoding="utf-8")
    args = ["--out", str(root / "run"), "--quick", "--results", str(results_md), "--png", str(root / "chart.png")]
    return root, args, exp["main"](args)


def test_quick_run_writes_a_well_formed_table(exp, quick):
    root, _, result = quick
    out = root / "run"
    rows = result["rows"]
    assert [(r["name"], r["mode"]) for r in rows] == [
        ("untrained", "two-turn"),
        ("stage1", "two-turn"),
        ("stage2", "two-turn"),
        ("stage3", "two-turn"),
        ("stage3_single", "single-turn"),
        ("no_s1", "two-turn"),
        ("no_s2", "two-turn"),
    ]
    held_out = read_manifest(out / "data" / "eval.jsonl")
    assert len(held_out) == sum(w.videos for w in exp["QUICK"].worlds if w.held_out)
    for r in rows:
        for key in exp["METRICS"] + exp["DIAGNOSTICS"]:
            assert r[key] is None or (isinstance(r[key], float) and 0.0 <= r[key] <= 1.0), (r["name"], key)
        assert r["status_acc"] is not None and r["reward_auc"] is not None  # both classes are in the held-out split
        preds = [json.loads(line) for line in (out / "eval" / r["name"] / "predictions.jsonl").open()]
        assert sorted(p["index"] for p in preds) == list(range(len(held_out)))
        assert {p["judge"] for p in preds} == {f"cac/{r['mode']}"}
    # the per-video data the verdicts resample give back the table's numbers on the held-out split itself
    normal = np.asarray(result["normal"], dtype=float)
    assert result["normal"] == [not a.is_abnormal for a in held_out]
    for r in rows:
        m = exp["resampled_metrics"](r, np.ones((1, len(held_out))), normal)
        assert m["status_acc"][0] == pytest.approx(r["status_acc"]), r["name"]
        assert m["reward_auc"][0] == pytest.approx(r["reward_auc"]), r["name"]
        assert (r["valid_turn2"] is None) == (not np.isfinite(m["valid_turn2"][0]))
        assert r["valid_turn2"] is None or m["valid_turn2"][0] == pytest.approx(r["valid_turn2"])
        assert r["recall_by_kind"] and {f"recall/{k}" for k in r["recall_by_kind"]} <= m.keys()
        for kind, recall in r["recall_by_kind"].items():
            assert m[f"recall/{kind}"][0] == pytest.approx(recall), (r["name"], kind)
    assert "**Does each stage help?**" in (root / "RESULTS.md").read_text()
    # the same numbers in results.json, results.md, the RESULTS.md section and the chart
    assert json.loads((out / "results.json").read_text())["rows"] == rows
    table = (out / "results.md").read_text()
    assert sum(line.startswith("| ") for line in table.splitlines()) == 1 + len(rows)  # the header and a line a row
    section = (root / "RESULTS.md").read_text()
    assert section.startswith("# Results\n\nother sections stay\n")
    assert "<!-- synthetic_three_stage:start -->" in section and table.strip() in section
    assert (root / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    info = result["info"]
    assert info["train_videos"] == sum(w.videos for w in exp["QUICK"].worlds if not w.held_out)
    assert info["params"] > 0 and info["seconds"] > 0


def test_quick_run_chains_the_real_recipes(quick):
    root, _, _ = quick
    out = root / "run"
    inits = {}
    for stage in ("stage1", "stage2", "stage3"):
        cfg = yaml.safe_load((out / stage / "config.yaml").read_text())
        inits[stage] = Path(cfg["init_from"])
        assert Path(cfg["data"]["manifest"]) == out / "splits" / f"{stage}.jsonl"
        assert (out / stage / "final" / "model.safetensors").is_file()
    assert inits == {"stage1": out / "init", "stage2": out / "stage1" / "final", "stage3": out / "stage2" / "final"}
    # the ablations: w/o stage 1 is stage 2 from the random model, w/o stage 2 is stage 3 from stage 1
    for name, init in (("no_s1_stage2", out / "init"), ("no_s2_stage3", out / "stage1" / "final")):
        assert Path(yaml.safe_load((out / name / "config.yaml").read_text())["init_from"]) == init
    # the compact prompts: set once in the init's settings, trained with in every stage, kept by every checkpoint
    for folder in ("init", "stage1/final", "stage2/final", "stage3/final", "no_s1_stage2/final"):
        assert json.loads((out / folder / "cac_reward.json").read_text())["prompt_style"] == "compact"
    prompts = [p for line in (out / "stage2" / "samples.jsonl").open() for p in json.loads(line)["prompts"]]
    assert prompts and all(len(p) < 1000 for p in prompts)  # the paper's prompts are ~4K characters
    # the salient motion (flicker) and distortion (glitch) worlds; stage 1 gets the distortion world's anomalies
    for world, kind in (("train_motion", "flicker"), ("train_distortion", "glitch"), ("eval_motion", "flicker")):
        spec = json.loads((out / "data" / world / "world.json").read_text())
        assert spec["kinds"] == [kind] and spec["salient"] is True
        kinds = {k for a in read_manifest(out / "data" / world / "manifest.jsonl") for k in a.meta["kinds"]}
        assert kinds == {kind}
    stage1 = read_manifest(out / "splits" / "stage1.jsonl")
    assert {k for a in stage1 for k in a.meta["kinds"]} == {"glitch"}
    # the SFT targets carry no chain of thought (the experiment's manifest has empty CoT for every view)
    for stage in ("stage1", "stage2"):
        answers = [a for line in (out / stage / "samples.jsonl").open() for a in json.loads(line)["answers"]]
        trained = [json.loads(line) for line in (out / stage / "samples.jsonl").open()]
        assert trained and all(s["cot_source"] == "manifest" for s in trained)
        assert any(a.startswith('{"COT": "", "status": ') for a in answers)


def test_rerun_skips_finished_work(exp, quick):
    root, args, first = quick
    out = root / "run"
    stamps = {p: p.stat().st_mtime_ns for p in [out / "stage3" / "final" / "model.safetensors"]}
    stamps.update({p: p.stat().st_mtime_ns for p in (out / "eval").glob("*/predictions.jsonl")})
    second = exp["main"](args)
    assert second["rows"] == first["rows"]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert second["info"]["timings"] == first["info"]["timings"]  # no phase ran again; the first run's times stay


def test_roc_auc_by_hand(exp):
    auc = exp["roc_auc"]
    assert auc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert auc([0.1, 0.2, 0.9, 0.8], [True, True, False, False]) == 0.0
    assert auc([0.5, 0.5], [True, False]) == 0.5
    assert auc([0.3, 0.7, 0.5], [True, False, True]) == pytest.approx(0.0)  # both positives below the negative
    assert auc([0.6, 0.7, 0.5], [True, False, True]) == pytest.approx(0.0)
    assert auc([0.8, 0.7, 0.5], [True, False, True]) == pytest.approx(0.5)
    assert auc([0.1, 0.2], [True, True]) is None
    assert math.isclose(auc([3.0, 1.0, 2.0, 0.0], [True, False, False, True]), 0.5)


def test_resampled_metrics_weight_each_video_by_its_count(exp):
    row = {"per_video": {"correct": [True, False, True, True], "score": [0.9, 0.2, 0.4, 0.4]}}
    row["per_video"]["valid_turn2"] = [None, True, False, None]
    normal = np.array([1.0, 0.0, 1.0, 0.0])
    m = exp["resampled_metrics"](row, np.array([[1.0, 1.0, 1.0, 1.0], [2.0, 0.0, 1.0, 1.0]]), normal)
    assert m["status_acc"].tolist() == [0.75, 1.0]
    # the split itself: roc_auc's pairs; the resample: normal video 0 twice against anomalous video 3 once, normal
    # video 2 once against it (a tie), anomalous video 1 not drawn: (2 * 1 + 1 * 0.5) / (3 * 1)
    assert m["reward_auc"][0] == exp["roc_auc"](row["per_video"]["score"], [True, False, True, False]) == 0.875
    assert m["reward_auc"][1] == pytest.approx(2.5 / 3)
    assert m["valid_turn2"][0] == 0.5 and m["valid_turn2"][1] == 0.0  # video 1 (the valid one) not drawn
    # recall per defect kind: anomalous videos 1 (missed) and 3 (found) flicker
    row["per_video"]["kinds"] = {"flicker": [False, True, False, True]}
    m = exp["resampled_metrics"](row, np.array([[1.0, 1.0, 1.0, 1.0], [2.0, 0.0, 1.0, 1.0]]), normal)
    assert m["recall/flicker"].tolist() == [0.5, 1.0]


def _model(
    exp, name: str, correct: list[bool], score: list[float], turn2: list, normal: list[bool], kinds=None
) -> dict:
    per = {"correct": correct, "score": score, "valid_turn2": turn2, "kinds": kinds or {}}
    m = exp["resampled_metrics"]({"per_video": per}, np.ones((1, len(normal))), np.asarray(normal, dtype=float))
    row = {"name": name, "per_video": per, "temporal_iou": 0.0, "spatial_iou": 0.0}
    row["recall_by_kind"] = {k.split("/")[1]: float(v[0]) for k, v in m.items() if k.startswith("recall/")}
    return row | {k: float(v[0]) if np.isfinite(v[0]) else None for k, v in m.items()}


def test_verdicts_give_the_recall_of_each_defect_kind(exp):
    n = 160
    normal = [i % 2 == 0 for i in range(n)]
    kinds = {"flicker": [i % 4 == 1 for i in range(n)], "glitch": [i % 4 == 3 for i in range(n)]}
    score = [0.9 if g else 0.1 for g in normal]
    # after stage 2: with stage 1 every anomaly is found, without it the glitches are all missed
    found = _model(exp, "stage2", [True] * n, score, [None] * n, normal, kinds)
    missed = _model(exp, "no_s1", [not g for g in kinds["glitch"]], score, [None] * n, normal, kinds)
    assert found["recall_by_kind"] == {"flicker": 1.0, "glitch": 1.0}
    assert missed["recall_by_kind"] == {"flicker": 1.0, "glitch": 0.0}
    diff = exp["paired_bootstrap"](found, missed, normal)
    assert diff["recall/glitch"][0] == 1.0 and diff["recall/flicker"] == (0.0, 0.0, 0.0)
    (line,) = exp["verdicts"]([found, missed], {}, normal).splitlines()[1:]
    assert line.startswith("- Stage 1 (single-frame warmup)")
    assert "recall by defect kind: flicker **no measurable effect** (1.000 vs 1.000, +0.000" in line
    assert "glitch **helps** (1.000 vs 0.000, +1.000, 95% interval +1.000 to +1.000)" in line


def test_verdicts_follow_the_paired_bootstrap(exp):
    rng = np.random.default_rng(0)
    n = 120
    normal = [i % 2 == 0 for i in range(n)]
    # a model that sees (right, normal scored high, valid turn-2 answers) and one that guesses
    sees = dict(correct=[True] * n, score=[0.9 if g else 0.1 for g in normal])
    sees["turn2"] = [None if g else True for g in normal]
    guesses = dict(
        correct=list(rng.random(n) < 0.5), score=list(rng.random(n)), turn2=[None if g else False for g in normal]
    )
    good, bad = _model(exp, "a", **sees, normal=normal), _model(exp, "b", **guesses, normal=normal)
    boot = exp["paired_bootstrap"]
    diff = boot(good, bad, normal)
    assert all(d is not None and d[1] > 0 for d in diff.values())
    assert diff["status_acc"][0] == pytest.approx(good["status_acc"] - bad["status_acc"])
    assert exp["verdict"](list(diff.values())) == "helps"
    assert exp["verdict"](list(boot(bad, good, normal).values())) == "hurts"
    assert exp["verdict"](list(boot(good, good, normal).values())) == "no measurable effect"  # intervals are [0, 0]
    assert exp["verdict"]([None]) == "not measured"
    assert exp["verdict"]([(0.1, 0.02, 0.2), (-0.1, -0.2, -0.01)]) == "no measurable effect"  # one up, one down
    # a model that never reaches turn 2 has no turn-2 comparison
    never = _model(exp, "c", **(guesses | {"turn2": [None] * n}), normal=normal)
    assert boot(good, never, normal)["valid_turn2"] is None
    # the per-stage lines: stage 2 sees, stage 1 and the model without stage 2 guess, stage 3 and the model without
    # stage 1 see as stage 2 does
    rows = [
        _model(exp, "stage1", **(guesses | {"turn2": [None] * n}), normal=normal),
        _model(exp, "stage2", **sees, normal=normal),
        _model(exp, "stage3", **sees, normal=normal),
        _model(exp, "no_s1", **sees, normal=normal),
        _model(exp, "no_s2", **guesses, normal=normal),
    ]
    lines = exp["verdicts"](rows, {}, normal).splitlines()[1:]
    assert [line.split(":")[0] for line in lines] == [
        "- Stage 1 (single-frame warmup), after stage 2, with against without stage 1",
        "- Stage 2 (multi-frame SFT), after stage 2 against after stage 1",
        "- Stage 2 (multi-frame SFT), after stage 3, with against without stage 2",
        "- Stage 3 (two-turn GRPO), after stage 3 against after stage 2",
    ]
    words = [
        (line.split("on the status **")[1].split("**")[0], line.split("turn-2 answer **")[1].split("**")[0])
        for line in lines
    ]
    assert words == [
        ("no measurable effect", "no measurable effect"),
        ("helps", "not measured"),
        ("helps", "helps"),
        ("no measurable effect", "no measurable effect"),
    ]


def test_diagnosis_names_a_stage3_collapse_only_when_its_curve_shows_one(exp):
    def why(last: float) -> str:
        curves = {"stage3": {"rollout/turn2_valid": (0.3, 0.8), "reward/status_acc_abnormal": (0.2, last)}}
        return exp["diagnosis"]([], curves, {"split_kinds": {}})

    assert "0.200 -> 0.000" in why(0.0) and "GRPO has settled on answering `normal`" in why(0.0)
    assert "0.200 -> 0.470" in why(0.47) and "GRPO did not settle on answering `normal`" in why(0.47)


def test_training_manifest_merges_worlds_and_empties_every_cot(exp, tmp_path):
    worlds = []
    for name, prompt in (("world_a", "a ball"), ("world_b", "a box")):
        anns = [Annotation("videos/000000.mp4", prompt, "normal", cot={"turn1": "long text"}, meta={"id": name})]
        write_manifest(tmp_path / "data" / name / "manifest.jsonl", anns)
        worlds.append(tmp_path / "data" / name)
    merged = exp["training_manifest"](worlds, tmp_path / "data" / "train.jsonl")
    out = read_manifest(merged)
    assert [a.video for a in out] == ["world_a/videos/000000.mp4", "world_b/videos/000000.mp4"]
    assert [(a.prompt, a.meta) for a in out] == [("a ball", {"id": "world_a"}), ("a box", {"id": "world_b"})]
    assert [a.cot for a in out] == [{"turn1": "", "turn2": "", "frame": ""}] * 2


def test_tiny_config_num_heads():
    tok = qwen3_tokenizer("bytes")
    default = tiny_qwen3vl_config(tok, hidden_size=128).text_config
    assert (default.num_attention_heads, default.num_key_value_heads, default.head_dim) == (8, 4, 16)
    fewer = tiny_qwen3vl_config(tok, hidden_size=128, num_heads=4).text_config
    assert (fewer.num_attention_heads, fewer.num_key_value_heads, fewer.head_dim) == (4, 2, 16)
    with pytest.raises(ValueError, match="num_heads"):
        tiny_qwen3vl_config(tok, num_heads=0)
