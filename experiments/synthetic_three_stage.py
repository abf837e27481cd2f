"""Does CaC's reward training learn? Its three stages on the synthetic world at CPU scale (paper Sec. 3.2-3.4, Tab. 3).

A Qwen3-VL of about a million parameters, built from its config with random weights (no pretrained checkpoint can be
downloaded here), goes through the real recipes as subprocesses, each stage's ``final/`` being the next one's
``init_from``: ``reward/stage1_warmup.py`` (single frames), ``reward/stage2_sft.py`` (4 fps videos and 8 fps clips)
and ``reward/stage3_grpo.py`` (two-turn GRPO with the rewards of Eq. 2-6), on disjoint, balanced stage splits
(:func:`cac_align.data.splits.build_splits`) of synthetic training videos (``cac-align synth``). The untrained model
and the checkpoint after each stage are judged by ``cac-align bench`` (``CaCReward.from_pretrained`` and
:func:`cac_align.eval.bench.run_bench`) on held-out videos rendered with another seed: status accuracy, anomalous and
normal recall, temporal and spatial IoU (the Table 1 / Table S4 conventions of :mod:`cac_align.eval.metrics`), with
two-turn inference and, for the final model, single-turn inference; plus three diagnostics read from the
predictions: the share of valid turn-1 answers (Eq. 2), the share of videos that reach turn 2, and the ROC AUC of the
Eq. 7 reward (does the score rank normal above anomalous videos at all?). Two ablations of Tab. 3 run in the
evaluation lane's idle time (``--no-ablations`` leaves them out): "w/o single-frame warmup" is stage 2 trained from
the random model (read against "after stage 2"), "w/o multi-frame SFT" is stage 3 trained after stage 1 (read
against "after stage 3"). The table goes to ``OUT/results.md`` and into this experiment's section of
``experiments/RESULTS.md`` (replaced on every run), the bar chart to ``experiments/results/synthetic_three_stage.png``::

    python experiments/synthetic_three_stage.py --out runs/three_stage    # 20-30 min on 2 CPU cores
    python experiments/synthetic_three_stage.py --out runs/quick --quick --results runs/quick/RESULTS.md \\
        --png runs/quick/chart.png                                      # the test's smoke run, about 1 min

Measured: 20.4, 28.6 and 27.3 min wall (the same stages 1-2; the machine ran 38% slower the second time, and the
third has the stage-3 preset of commit 6a33e9f) for the data, the stage and ablation runs and the seven evaluations
on an otherwise idle machine with 2 CPU cores (``experiments/RESULTS.md``). A rerun on the same ``--out`` skips every
stage and evaluation already finished and keeps their recorded times. Two queues of child processes run side by
side, on one thread each: one trains the chain (and evaluates the final model), the other evaluates each checkpoint
once it exists and trains the ablations in between.

How it departs from the paper's scale (the stage presets ``experiments/configs/three_stage/*.yaml`` list each
recipe's departures):

- Model: Qwen3-VL-8B becomes a Qwen3-VL of hidden size 128, 3 layers, 4 attention heads of 16, a 2-block vision
  tower of width 64 (:func:`cac_align.testing.tiny_qwen3vl_config`, 1.16M parameters) with the small BPE vocabulary
  of :func:`cac_align.testing.qwen3_tokenizer` (``vocab="bpe"``, 1.2K tokens), trained from random weights:
  full-parameter training in every stage (a LoRA on random weights has nothing to adapt) and learning rates of 3e-4
  (SFT) and 5e-5 (GRPO) instead of 1e-4 and 1e-6 (``experiments/status_probe.py``: at 1e-3 this model learns even a
  trivially visible cue late and unstably, at 3e-4 in 3 epochs).
- Loss: the status token weighs 50 answer tokens in the SFT loss of stages 1 and 2 (``train.status_weight``; the
  paper's plain SFT weighs it once): the judgment is one token of answers of 90-200 tokens; without the weight three
  stage-2 runs answered normal to every held-out video, with it one of the two from random weights still did.
- Prompts: the compact ones (``prompt_style: compact`` in the init's ``cac_reward.json``, kept by every stage and
  read by ``CaCReward``): the same frames, numbering, window and answer keys in 70-90 tokens instead of the paper's
  ~1K-token instructions, which a model without language cannot read and which made every sequence 10 times longer.
- Data: two salient worlds (``cac-align synth --salient``: every anomaly on the largest entity it can take, flickers
  at full strength; the status probe learns nothing of the plain world's kinds but flicker at this budget, and
  salient flicker about twice as fast): a motion world of 2,000 videos whose anomalies are flickers (Motion
  Anomalies) and a distortion world of 2,400 videos whose objects glitch (Object Distortion: part of the object
  turns into a magenta checkerboard, the opt-in ``glitch`` kind; the single-frame kind this model learns to see,
  where melting and stretched objects stay at chance), seeds 0 and 2. The stage splits give stage 1 its share of
  the anomalous videos from those with single-frame anomalies (726 of the 1,200 glitch videos) and stages 2 and 3
  the rest, flickers and the remaining glitches, as the paper's splits leave single-frame categories to the later
  stages too (runs that left stage 2 no or few glitches are in ``experiments/RESULTS.md``). 240 held-out videos,
  120 from each world (seeds 1 and 3), 1 s at 96x96 (4 frames at 4 fps, 9 visual tokens per frame pair), instead of
  ~30K annotated generated videos of about 5 s. One second, because turn 2 writes a box list with one entry per clip
  frame and this model writes no more entries than it was trained on: stage 2 trains clips of up to 1 s (8 frames at
  8 fps), as the paper does, and in 2 s videos its turn 1 named the whole video, so turn 2 saw 16 frames and broke its
  box list (training 2 s clips instead left no valid box list at all; both runs in ``experiments/RESULTS.md``). The
  answers carry no chain of thought (the training manifest's ``cot`` is set to empty strings, so the stage builders
  train ``"COT": ""`` targets, and a clip's turn-1 context has none either, as the model's own turn 1): templated CoT
  text would be most of what a from-scratch model spends its few thousand samples on.
- Steps: 600 optimizer steps of stage 1 (batch 4, 2,400 samples of 2,684 frames), 1,800 of stage 2 (4 samples per
  step: 7,200 passes over 1,848 videos and 3,478 clips cut from them, each decoded once and kept in memory,
  ``data.cache``) and 250 of stage 3 (2 videos, G = 8, sampled at temperature 0.7, Dr. GRPO's constant loss
  normaliser and centred advantages, false alarms judged on the final answer: the preset says why), instead of
  9,330 / 7,000 / 250 steps at 8 / 8 / 64 x 8 samples. Stage 2 is under-trained at 1,800 steps (twice the steps
  write valid turn-2 box lists about four times as often), but the budget has no room for twice the steps in the
  chain and in the ablation: ``experiments/RESULTS.md``.

What it shows: ``experiments/RESULTS.md``, whose section this script writes, has the table, the training curves and
a verdict per stage computed from them (:func:`verdicts`: with against without the stage on the held-out videos,
a paired bootstrap of the status accuracy and reward AUC, and of the share of valid turn-2 answers), so that the text
always matches the numbers of the run.
"""

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cac_align.data.splits import build_splits
from cac_align.eval.metrics import roc_auc
from cac_align.reward.qwen import build_processor
from cac_align.schema import Annotation, parse_judgment, read_manifest, write_manifest
from cac_align.testing import CAC_SETTINGS_FILE, qwen3_tokenizer, tiny_qwen3vl_config
from cac_align.utils import atomic_path, atomic_write_json, atomic_write_text, read_jsonl

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "experiments" / "configs" / "three_stage"
RECIPES = {"stage1": "stage1_warmup.py", "stage2": "stage2_sft.py", "stage3": "stage3_grpo.py"}
RESULTS = ROOT / "experiments" / "RESULTS.md"
PNG = ROOT / "experiments" / "results" / "synthetic_three_stage.png"
SECTION = "synthetic_three_stage"
METRICS = ("status_acc", "anomalous_recall", "normal_recall", "temporal_iou", "spatial_iou")
DIAGNOSTICS = ("valid_turn1", "turn2_rate", "valid_turn2", "reward_auc")


@dataclass(frozen=True)
class World:
    """One rendered synthetic world: ``cac-align synth data/NAME --seed SEED --num-videos N --kinds ... --salient``."""

    name: str
    seed: int
    videos: int
    kinds: tuple[str, ...]
    held_out: bool = False


# A motion world (flickers: Motion Anomalies) and a distortion world (glitching objects: Object Distortion, from
# whose anomalous videos the stage splits draw stage 1's, which trains on single-frame categories only; the rest go
# to stages 2 and 3), in training (seeds 0, 2) and held-out (seeds 1, 3) versions.
FULL_WORLDS = (
    World("train_motion", 0, 2000, ("flicker",)),
    World("train_distortion", 2, 2400, ("glitch",)),
    World("eval_motion", 1, 120, ("flicker",), held_out=True),
    World("eval_distortion", 3, 120, ("glitch",), held_out=True),
)


@dataclass(frozen=True)
class Scale:
    """The sizes of one run: the two synthetic worlds, the model, extra recipe overrides and the evaluation."""

    # The synthetic worlds (``cac-align synth --salient``): the training ones merge into one manifest that the stage
    # splits divide, the held-out ones into the evaluation manifest.
    worlds: tuple[World, ...]
    size: tuple[int, int]
    seconds: float
    hidden: int
    layers: int
    heads: int
    vision_depth: int
    vision_width: int
    # Per stage, `key=value` overrides on top of the preset in experiments/configs/three_stage/.
    overrides: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Generation budget of each turn at evaluation, and videos judged together.
    max_new_tokens: int = 512
    eval_batch: int = 16
    # The prompts the model is trained and judged with (cac_align.reward.prompts), recorded in the init's settings.
    prompt_style: str = "compact"


FULL = Scale(
    worlds=FULL_WORLDS,
    size=(96, 96),
    seconds=1.0,
    hidden=128,
    layers=3,
    heads=4,
    vision_depth=2,
    vision_width=64,
)
QUICK = Scale(
    worlds=(
        World("train_motion", 0, 16, ("flicker",)),
        World("train_distortion", 2, 8, ("glitch",)),
        World("eval_motion", 1, 6, ("flicker",), held_out=True),
        World("eval_distortion", 3, 4, ("glitch",), held_out=True),
    ),
    size=(64, 64),
    seconds=2.0,
    hidden=64,
    layers=1,
    heads=2,
    vision_depth=1,
    vision_width=32,
    overrides={
        "stage1": ("train.max_steps=2", "train.warmup_steps=1", "log.every=1"),
        "stage2": ("train.max_steps=2", "train.warmup_steps=1", "train.grad_accum=1", "log.every=1"),
        "stage3": (
            "train.max_steps=2",
            "grpo.group_size=2",
            "train.grad_accum=1",
            "grpo.max_new_tokens_turn1=24",
            "grpo.max_new_tokens_turn2=24",
        ),
    },
    max_new_tokens=24,
    eval_batch=8,
)


# ------------------------------------------------------------------------------------------------------ processes
@dataclass(frozen=True)
class Job:
    """A child process of the experiment: its command, its log and the checkpoint it needs before it can start."""

    cmd: list[str]
    log: Path
    needs: Path | None = None


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    """Start a child process on one torch thread (the two lanes share 2 cores), its output going to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    with log.open("w", encoding="utf-8") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env)


def finish(proc: subprocess.Popen, log: Path) -> None:
    """Wait for a child process; a failure raises with the end of its log."""
    if proc.wait() != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(map(str, proc.args))} failed (exit {proc.returncode}); end of {log}:\n{tail}")


def stage_cmd(stage: str, out: Path, init: Path, splits: Path, scale: Scale) -> list[str]:
    """A recipe launch: the experiment's preset, the chain's paths, then the scale's overrides."""
    return [
        sys.executable,
        str(ROOT / "reward" / RECIPES[stage]),
        "--config",
        str(CONFIGS / f"{stage}.yaml"),
        f"output_dir={out}",
        f"init_from={init}",
        f"data.manifest={splits / f'{stage}.jsonl'}",
        *scale.overrides.get(stage, ()),
    ]


def synth_cmd(folder: Path, world: World, scale: Scale) -> list[str]:
    w, h = scale.size
    size = ["--size", f"{w}x{h}", "--seconds", str(scale.seconds)]
    return [
        sys.executable,
        "-m",
        "cac_align",
        "synth",
        str(folder),
        "--num-videos",
        str(world.videos),
        "--seed",
        str(world.seed),
        *size,
        "--kinds",
        ",".join(world.kinds),
        "--salient",
    ]


def bench_cmd(model: Path, manifest: Path, out: Path, mode: str, scale: Scale) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cac_align",
        "bench",
        str(manifest),
        "--model",
        str(model),
        "--out",
        str(out),
        "--mode",
        mode,
        "--batch-size",
        str(scale.eval_batch),
        "--max-new-tokens",
        str(scale.max_new_tokens),
    ]


# ----------------------------------------------------------------------------------------------------------- data
def training_manifest(worlds: list[Path], out: Path) -> Path:
    """One manifest over the worlds (video paths relative to ``out``'s folder) with empty chains of thought for every
    view, so that the stage builders train ``"COT": ""`` targets (the held-out manifest's are never read)."""
    empty = {"turn1": "", "turn2": "", "frame": ""}
    merged = []
    for world in worlds:
        prefix = os.path.relpath(world, out.parent)
        for a in read_manifest(world / "manifest.jsonl"):
            merged.append(replace(a, video=f"{prefix}/{a.video}", cot=dict(empty)))
    write_manifest(out, merged)
    return out


def build_init(path: Path, scale: Scale, seed: int = 0) -> Path:
    """The random Qwen3-VL every chain starts from (model, processor, CaCReward settings), written atomically."""
    if (path / "config.json").is_file():
        return path
    from transformers import Qwen3VLForConditionalGeneration

    tok = qwen3_tokenizer("bpe")
    config = tiny_qwen3vl_config(
        tok,
        hidden_size=scale.hidden,
        num_layers=scale.layers,
        num_heads=scale.heads,
        vision_depth=scale.vision_depth,
        vision_hidden_size=scale.vision_width,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3VLForConditionalGeneration(config)
    gen = model.generation_config
    gen.eos_token_id = config.text_config.eos_token_id
    gen.pad_token_id = config.text_config.pad_token_id
    gen.do_sample = False
    tmp = path.with_name(f".tmp_{path.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    build_processor(tok).save_pretrained(tmp)
    atomic_write_json(
        tmp / CAC_SETTINGS_FILE, {"max_new_tokens": scale.max_new_tokens, "prompt_style": scale.prompt_style}
    )
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------------------------------- results
def kinds_of(annotations: list[Annotation]) -> list[str]:
    """The defect kinds of some synthetic videos (their ``meta["kinds"]``), sorted."""
    return sorted({k for a in annotations for k in a.meta.get("kinds", [])})


def summarize(bench: Path, annotations: list[Annotation], mode: str) -> dict[str, Any]:
    """The row of one evaluation: the five metrics from ``metrics.json`` and the diagnostics from the predictions."""
    m = json.loads((bench / "metrics.json").read_text(encoding="utf-8"))
    preds = sorted(read_jsonl(bench / "predictions.jsonl"), key=lambda r: r["index"])
    first_turn = 2 if mode == "single-turn" else 1  # the single-turn answer carries boxes, as a turn-2 answer does
    turn2 = [parse_judgment(r["answers"][1], 2).valid if len(r["answers"]) > 1 else None for r in preds]
    # per defect kind (the motion world's flickers, the distortion world's glitches), which videos show it
    shows = {k: [k in a.meta.get("kinds", []) for a in annotations] for k in kinds_of(annotations)}
    return {
        "status_acc": m["table1"]["accuracy"],
        "anomalous_recall": m["table1"]["anomalous"]["recall"],
        "normal_recall": m["table1"]["normal"]["recall"],
        "temporal_iou": m["localization"]["temporal_iou"],
        "spatial_iou": m["localization"]["spatial_iou"],
        "valid_turn1": sum(parse_judgment(r["answers"][0], first_turn).valid for r in preds) / len(preds),
        "turn2_rate": sum(len(r["answers"]) > 1 for r in preds) / len(preds),
        # of the answers that reached turn 2, the share whose turn-2 answer is valid (Eq. 2): boxes need it
        "valid_turn2": (sum(v for v in turn2 if v is not None) / n)
        if (n := sum(v is not None for v in turn2))
        else None,
        # Eq. 7 is high for normal videos: AUC of the reward with normal as the positive class
        "reward_auc": roc_auc([r["score"] for r in preds], [not a.is_abnormal for a in annotations]),
        # per defect kind: the share of the videos showing it that were called abnormal
        "recall_by_kind": {
            kind: sum(r["status"] == "abnormal" for r, s in zip(preds, v, strict=True) if s) / sum(v)
            for kind, v in shows.items()
        },
        # per held-out video, what the paired bootstrap of :func:`verdicts` resamples
        "per_video": {
            "correct": [r["status"] == a.status for r, a in zip(preds, annotations, strict=True)],
            "score": [r["score"] for r in preds],
            "valid_turn2": turn2,  # None where the answer ended after turn 1
            "kinds": shows,  # per defect kind, which videos show it
        },
    }


RUNS = {
    "stage1": "Stage 1 SFT loss",
    "stage2": "Stage 2 SFT loss (from stage 1)",
    "no_s1_stage2": "Stage 2 SFT loss from random weights (w/o stage 1)",
    "stage3": "Stage 3 (from stage 2)",
    "no_s2_stage3": "Stage 3 w/o stage 2 (from stage 1)",
}


# Stage 3's logged rollout statistics (reward/stage3_grpo.py) that the results follow from the start to the end
STAGE3_CURVES = ("reward/total", "reward/status_acc", "reward/status_acc_abnormal", "rollout/turn2_valid")


def training_curves(out: Path) -> dict[str, dict]:
    """Mean of the first and of the last fifth of the logged values of each finished run of :data:`RUNS`: the SFT loss
    of stages 1-2, the mean rollout reward (Eq. 6) and the rollout status accuracy of stage 3."""
    curves: dict[str, dict] = {}
    for name in RUNS:
        path = out / name / "metrics.jsonl"
        if not (out / name / "final").is_dir() or not path.is_file():
            continue
        records = read_jsonl(path)
        keys = STAGE3_CURVES if name.endswith("stage3") else ("train/loss",)
        curves[name] = {}
        for key in keys:
            values = [r[key] for r in records if key in r]
            k = max(1, len(values) // 5)
            curves[name][key] = (sum(values[:k]) / k, sum(values[-k:]) / k) if values else (None, None)
        curves[name]["points"] = len(records)
    return curves


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def format_results(rows: list[dict], curves: dict, info: dict) -> str:
    """The Markdown body of the results: the table, the training curves and the run's facts."""
    header = (
        "| Model | Inference | Status acc. | Anom. recall | Normal recall | Temporal IoU | Spatial IoU "
        "| Valid turn-1 answers | Reached turn 2 | Valid turn-2 answers | Reward AUC |"
    )
    lines = [header, "|" + "---|" * 11]
    for r in rows:
        cells = [r["label"], r["mode"], *(_f(r[k]) for k in METRICS + DIAGNOSTICS)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for name, c in curves.items():
        if "train/loss" in c:
            first, last = c["train/loss"]
            lines.append(f"- {RUNS[name]}: {_f(first)} -> {_f(last)}.")
        else:
            (r0, r1), (a0, a1) = c["reward/total"], c["reward/status_acc"]
            (b0, b1), (v0, v1) = c["reward/status_acc_abnormal"], c["rollout/turn2_valid"]
            lines.append(
                f"- {RUNS[name]}: mean rollout reward (Eq. 6) {_f(r0)} -> {_f(r1)}, rollout status accuracy "
                f"{_f(a0)} -> {_f(a1)} (on anomalous videos {_f(b0)} -> {_f(b1)}), valid turn-2 answers "
                f"{_f(v0)} -> {_f(v1)}."
            )
    if curves:
        lines.append("  (Means of the first and of the last fifth of each run's logged steps.)")
    splits = ", ".join(f"{n} ({k.replace('stage', 'stage ')})" for k, n in info["split_counts"].items())
    lines += [
        "",
        f"{info['eval_videos']} held-out videos ({info['eval_abnormal']} anomalous); {info['train_videos']} training "
        f"videos, of which the stage splits use {splits} (half of each anomalous); model {info['params'] / 1e6:.2f}M "
        f"parameters. Wall time {info['seconds'] / 60:.1f} min for the data, the "
        + ("stage and ablation runs and the seven" if info.get("ablations") else "three stages and the five")
        + f" evaluations ({info['cpu_seconds'] / 60:.1f} CPU-min in the child processes), on {info['cpus']} CPU "
        f"cores; {info['date']}, commit {info['commit']}.",
    ]
    return "\n".join(lines)


def plot(rows: list[dict], png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["status acc.", "anom. recall", "normal recall", "temporal IoU", "spatial IoU", "reward AUC"]
    keys = (*METRICS, "reward_auc")
    fig, ax = plt.subplots(figsize=(10, 4.6))
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(keys))]
        ax.bar(xs, [r[k] or 0.0 for k in keys], width, label=f"{r['label']} ({r['mode']})")
    ax.axhline(0.5, color="0.5", lw=0.8, ls="--")
    ax.set_xticks(range(len(keys)), names)
    ax.set_ylim(0, 1.05)
    ax.set_title("CaC stages on the synthetic world (held-out split, ~1M-parameter Qwen3-VL from random weights)")
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.08), frameon=False)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return png


def findings(rows: list[dict], n_abnormal: int, n_normal: int) -> str:
    """What the table says, in sentences computed from it (so that a rerun's text matches its numbers): each metric
    along the chain untrained -> stage 1 -> stage 2 -> stage 3, then two-turn against single-turn inference on the
    final model. The AUC's standard error is the Mann-Whitney one under no separation, sqrt((n1 + n2 + 1) / (12 n1
    n2))."""
    by = {r["name"]: r for r in rows}
    chain = [by[n] for n in ("untrained", "stage1", "stage2", "stage3")]
    names = {
        "valid_turn1": "valid turn-1 answers",
        "status_acc": "status accuracy",
        "reward_auc": "reward AUC",
        "temporal_iou": "temporal IoU",
        "spatial_iou": "spatial IoU",
    }

    def path(key: str) -> str:
        return " -> ".join(_f(r[key]) for r in chain)

    two, one = by["stage3"], by["stage3_single"]
    kinds = "; ".join(
        f"{k} " + " -> ".join(_f(r.get("recall_by_kind", {}).get(k)) for r in chain)
        for k in sorted(two.get("recall_by_kind", {}))
    )
    se = ((n_abnormal + n_normal + 1) / (12 * n_abnormal * n_normal)) ** 0.5
    versus = ", ".join(f"{names[k]} {_f(two[k])} vs {_f(one[k])}" for k in ("status_acc", "reward_auc", "spatial_iou"))
    ablations = ""
    for name, ref, what in (
        ("no_s1", "stage2", "Stage 1's share (after stage 2, with against without stage 1)"),
        ("no_s2", "stage3", "Stage 2's share (after stage 3, with against without stage 2)"),
    ):
        if name in by:
            pairs = ", ".join(f"{label} {_f(by[ref][k])} vs {_f(by[name][k])}" for k, label in names.items())
            ablations += f" {what}: {pairs}."
    return (
        "**Reading.** Along untrained -> stage 1 -> stage 2 -> stage 3 (two-turn inference): "
        + "; ".join(f"{label} {path(key)}" for key, label in names.items())
        + (f". Anomalous recall by defect kind along the chain: {kinds}" if kinds else "")
        + f".{ablations} Two-turn against single-turn inference on the final model: {versus}. The AUC's standard "
        f"error is about {se:.3f} at {n_abnormal} + {n_normal} videos; an accuracy's is about "
        f"{0.5 / (n_abnormal + n_normal) ** 0.5:.3f}."
    )


# What "does the stage help?" is decided on: the status (the paper's Tab. 3 reports accuracy) and the turn-2 answer
# that spatial grounding needs, each against the bootstrap's 95% interval.
VERDICT_METRICS = {"status_acc": "status accuracy", "reward_auc": "reward AUC", "valid_turn2": "valid turn-2 answers"}


def resampled_metrics(row: dict, counts: np.ndarray, normal: np.ndarray) -> dict[str, np.ndarray]:
    """The :data:`VERDICT_METRICS` of one model on each resample of the held-out videos, a resample being how often
    each video is drawn (``counts``, draws x videos; a row of ones is the held-out split itself). The AUC is
    :func:`roc_auc` with every pair weighted by the two videos' counts."""
    v = row["per_video"]
    score = np.asarray(v["score"], dtype=float)
    wins = (score[:, None] > score[None, :]) + 0.5 * (score[:, None] == score[None, :])
    pos, neg = counts * normal, counts * (1.0 - normal)
    reached = np.asarray([x is not None for x in v["valid_turn2"]], dtype=float)
    valid = np.asarray([bool(x) for x in v["valid_turn2"]], dtype=float)
    correct = np.asarray(v["correct"], dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):  # a resample without normal videos or turn-2 answers
        out = {
            "status_acc": counts @ correct / counts.sum(1),
            "reward_auc": ((pos @ wins) * neg).sum(1) / (pos.sum(1) * neg.sum(1)),
            "valid_turn2": (counts @ valid) / (counts @ reached),
        }
        for kind, shows in v.get("kinds", {}).items():  # recall on the anomalous videos of each defect kind
            shows = np.asarray(shows, dtype=float)
            out[f"recall/{kind}"] = (counts @ (shows * correct)) / (counts @ shows)
    return out


def paired_bootstrap(
    with_: dict, without: dict, normal: list[bool], draws: int = 2000, seed: int = 0
) -> dict[str, tuple[float, float, float] | None]:
    """Per key of :func:`resampled_metrics` (:data:`VERDICT_METRICS` and the recall of each defect kind), the
    difference ``with_ - without`` on the held-out split and its 95% percentile interval over ``draws`` resamples of
    the held-out videos with replacement, the same resample for both models (they judged the same videos: the
    comparison is paired); None where a model never answered it."""
    n = len(normal)
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=draws).astype(float)
    counts = np.vstack([np.ones((1, n)), counts])  # row 0: the held-out split itself, for the point estimate
    lab = np.asarray(normal, dtype=float)
    a, b = resampled_metrics(with_, counts, lab), resampled_metrics(without, counts, lab)
    out: dict[str, tuple[float, float, float] | None] = {}
    for key in a.keys() & b.keys():
        diff = a[key] - b[key]
        d = diff[1:][np.isfinite(diff[1:])]
        point = float(diff[0])
        out[key] = (point, *map(float, np.percentile(d, [2.5, 97.5]))) if d.size and math.isfinite(point) else None
    return out


def verdict(diffs: list[tuple[float, float, float] | None]) -> str:
    """The word for a set of differences (:func:`paired_bootstrap`): "helps" when some interval lies above zero and
    none below it, "hurts" in the mirror case, otherwise "no measurable effect" ("not measured" when there is nothing
    to compare)."""
    known = [d for d in diffs if d is not None]
    if not known:
        return "not measured"
    above, below = any(lo > 0 for _, lo, _ in known), any(hi < 0 for _, _, hi in known)
    return "helps" if above and not below else "hurts" if below and not above else "no measurable effect"


def verdicts(rows: list[dict], curves: dict, normal: list[bool]) -> str:
    """Does each stage help? One line per stage, computed from the table (so that it cannot disagree with a rerun's
    numbers): the model with the stage against the model without it on the held-out videos, judged by the paired
    bootstrap of :func:`paired_bootstrap`, once on the status (accuracy and reward AUC: Tab. 3's measure) and once on
    the turn-2 answer (the share of valid ones among the videos that reach turn 2, which spatial grounding needs);
    the IoUs are given beside, without a test. The comparisons are Tab. 3's: stage 1 is stage 2 with against without
    it (w/o single-frame warmup), stage 2 is stage 2 against stage 1 and stage 3 after stage 2 against stage 3 after
    stage 1 (w/o multi-frame SFT), stage 3 is stage 3 against stage 2 (w/o two-turn GRPO)."""
    by = {r["name"]: r for r in rows}

    def shown(key: str, with_: dict, without: dict, d: tuple[float, float, float] | None) -> str:
        text = f"{VERDICT_METRICS[key]} {_f(with_[key])} vs {_f(without[key])}"
        return text + (f" ({d[0]:+.3f}, 95% interval {d[1]:+.3f} to {d[2]:+.3f})" if d else "")

    pairs = [("Stage 1 (single-frame warmup)", "stage2", "no_s1", "after stage 2, with against without stage 1")]
    pairs += [("Stage 2 (multi-frame SFT)", "stage2", "stage1", "after stage 2 against after stage 1")]
    pairs += [("Stage 2 (multi-frame SFT)", "stage3", "no_s2", "after stage 3, with against without stage 2")]
    pairs += [("Stage 3 (two-turn GRPO)", "stage3", "stage2", "after stage 3 against after stage 2")]
    lines = [
        "**Does each stage help?** (held-out; a paired bootstrap over the held-out videos, 2,000 resamples: an effect "
        "counts when its 95% interval excludes zero)"
    ]
    for stage, w, wo, what in pairs:
        if w not in by or wo not in by:
            continue
        with_, without = by[w], by[wo]
        d = paired_bootstrap(with_, without, normal)
        status = "; ".join(shown(k, with_, without, d[k]) for k in ("status_acc", "reward_auc"))
        ious = ", ".join(f"{k.replace('_iou', '')} IoU {_f(with_[k])} vs {_f(without[k])}" for k in METRICS[3:])
        recall = {k.split("/", 1)[1]: v for k, v in sorted(d.items()) if k.startswith("recall/") and v is not None}
        kinds = "; ".join(
            f"{kind} **{verdict([diff])}** ({_f(with_['recall_by_kind'].get(kind))} vs "
            f"{_f(without['recall_by_kind'].get(kind))}, {diff[0]:+.3f}, 95% interval {diff[1]:+.3f} to {diff[2]:+.3f})"
            for kind, diff in recall.items()
        )
        lines.append(
            f"- {stage}, {what}: on the status **{verdict([d['status_acc'], d['reward_auc']])}** ({status}); on the "
            f"turn-2 answer **{verdict([d['valid_turn2']])}** ({shown('valid_turn2', with_, without, d['valid_turn2'])}"
            f"); {ious}" + (f"; recall by defect kind: {kinds}." if kinds else ".")
        )
    loss = {n: curves.get(n, {}).get("train/loss") for n in ("stage2", "no_s1_stage2")}
    if all(v and v[0] is not None for v in loss.values()):
        (f1, l1), (f0, l0) = loss["stage2"], loss["no_s1_stage2"]
        lines.append(
            f"- Stage 1 on stage 2's own objective: its training loss goes {f1:.3f} -> {l1:.3f} after stage 1 and "
            f"{f0:.3f} -> {l0:.3f} from random weights, in the same steps."
        )
    return "\n".join(lines)


def diagnosis(rows: list[dict], curves: dict, info: dict) -> str:
    """Why the stages move what they move: the mechanisms measured while this experiment was set up, with this
    run's figures filled in from the table and the training logs."""
    by = {r["name"]: r for r in rows}
    s3 = curves.get("stage3", {})
    t2 = s3.get("rollout/turn2_valid", (None, None))
    ab = s3.get("reward/status_acc_abnormal", (None, None))

    def recall(name: str, kind: str) -> str:
        return _f(by.get(name, {}).get("recall_by_kind", {}).get(kind))

    seen = info.get("split_kinds", {})
    glitch = [seen.get(k, {}).get("glitch", 0) for k in ("stage1", "stage2", "stage3")]
    flicker = sum(seen.get(k, {}).get("flicker", 0) for k in ("stage2", "stage3"))

    return (
        "**Why.** (1) *Stage 1 is the stage that shows most of the glitches.* Its single frames come from "
        f"{glitch[0]} of the {sum(glitch)} glitch videos of the splits; stages 2 and 3 see the other "
        f"{glitch[1] + glitch[2]} beside {flicker} flicker videos. Held-out "
        f"glitch recall goes {recall('untrained', 'glitch')} -> {recall('stage1', 'glitch')} through stage 1 (the "
        "reward reads the status token even where the stage-1 model cannot yet write a valid turn-1 answer), and "
        f"after stage 2 it is {recall('stage2', 'glitch')} with and {recall('no_s1', 'glitch')} without stage 1 "
        f"(flicker recall {recall('stage2', 'flicker')} and {recall('no_s1', 'flicker')}). (2) *Turn 2 "
        "gates stage 3.* Under Eq. 2-6 an anomalous video answered `abnormal` whose turn-2 box list breaks its JSON "
        "scores -2.5 (format -0.5, status -2), below answering `normal` (-2), so GRPO rewards seeing an anomaly only "
        "once turn-2 answers are valid often enough; turn-2 answers (a box per clip frame) are this model's hardest "
        "output, and it writes no more boxes than stage 2's clips had frames (hence 1 s videos). Valid box lists are "
        "not enough either: from a stage 2 of twice the steps, whose box lists are valid, stage 3 still lowered the "
        "accuracy (the third subsection below). The preset also judges a normal video on its final answer "
        "(`grpo.normal_check=final`) and takes Dr. GRPO's two changes to the loss: each rollout's loss is divided by "
        "a constant 640 tokens, not by its length (`grpo.length_norm`), and each group's rewards are only centred, "
        "not divided by their std (`grpo.adv_scale=none`). Under Eq. 10's 1/|y_i| the status token of a `normal` "
        "answer (about 20 tokens) weighed 5 to 8 times that of an `abnormal` answer with its turn 2 (100 to 180); "
        "under Eq. 8's std the one false alarm in a normal video's group of 8 gets an advantage of about -2.6 while "
        "an anomalous video's group split 4:4 gets +-1. Both pushed towards `normal`. On 960 validation videos the "
        "three changes took stage 3 from -0.064 to +0.019, +0.006 and +0.018 against its stage 2 (three seeds; the "
        "first subsection below). In stage 3 its "
        f"rollouts' valid turn-2 answers go {_f(t2[0])} -> {_f(t2[1])} and their status accuracy on anomalous videos "
        f"{_f(ab[0])} -> {_f(ab[1])} (first and last fifth of the run): "
        + (
            "the second near 0 means GRPO has settled on answering `normal`, as most stage-3 runs of the 2 s worlds "
            "below did."
            if ab[1] is not None and ab[1] < 0.05
            else "GRPO did not settle on answering `normal`, which most stage-3 runs of the 2 s worlds below did."
        )
        + " (3) *The judgment is one token.* Stages 1 and 2 "
        "weigh the status token 50 times (`train.status_weight`); with the paper's plain SFT loss three stage-2 "
        "runs of this experiment answered `normal` to every held-out video (the runs below this section), and with "
        "the weight stage 2 from random weights still did in one of two worlds, so a single run's stage-2 outcome "
        "is partly the draw. The paper's gains at full size start from a pretrained VLM: the presets in "
        "`reward/configs/` on a GPU."
    )


def write_section(result: dict, results_md: Path, png: Path, command: str) -> None:
    """Replace (or append) this experiment's section of RESULTS.md: the table, its reading and what was tried."""
    rows, info = result["rows"], result["info"]
    n_abnormal = info["eval_abnormal"]
    rel = os.path.relpath(png, results_md.parent)
    section = "\n".join(
        [
            f"<!-- {SECTION}:start -->",
            "## The three reward stages on the synthetic world (CPU, from random weights)",
            "",
            f"`{command}` trains a ~1M-parameter Qwen3-VL from random weights through the three stage recipes and "
            "judges the untrained model and each stage's checkpoint on a held-out synthetic split (set-up and "
            "departures from the paper in the script's docstring).",
            "",
            f"![metrics per stage]({rel})",
            "",
            format_results(rows, result["curves"], info),
            "",
            findings(rows, n_abnormal, info["eval_videos"] - n_abnormal),
            "",
            verdicts(rows, result["curves"], result["normal"]),
            "",
            diagnosis(rows, result["curves"], info),
            f"<!-- {SECTION}:end -->",
        ]
    )
    text = results_md.read_text(encoding="utf-8") if results_md.is_file() else "# Results\n"
    start, end = f"<!-- {SECTION}:start -->", f"<!-- {SECTION}:end -->"
    if start in text and end in text:
        text = text[: text.index(start)] + section + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    atomic_write_text(results_md, text)


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


# ------------------------------------------------------------------------------------------------------------- main
def run(out: Path, scale: Scale, ablations: bool = True) -> dict:
    """Data, the three stages and the evaluations (two lanes: one trains while the other evaluates)."""
    out = out.resolve()
    logs = out / "logs"
    timings_file = out / "timings.json"  # per phase, wall and child CPU seconds; kept for phases a rerun skips
    timings = json.loads(timings_file.read_text(encoding="utf-8")) if timings_file.is_file() else {}

    def lanes(name: str, *queues: list[Job | None]) -> None:
        """Run the queues side by side, each job after the previous one of its queue and once the checkpoint it
        needs exists; wait for all of them and record the phase's time."""
        todo = [[j for j in q if j is not None] for q in queues]
        todo = [q for q in todo if q]
        if not todo:
            return
        began, cpu = time.perf_counter(), _child_cpu()
        running: list[tuple[subprocess.Popen, Job] | None] = [None] * len(todo)

        def ready(job: Job) -> bool:
            return job.needs is None or job.needs.is_file()

        while any(todo) or any(running):
            for i, q in enumerate(todo):
                if running[i] is None and q and ready(q[0]):
                    job = q.pop(0)
                    running[i] = (start(job.cmd, job.log), job)
            if not any(running):  # every queue waits on a checkpoint that no job will write
                missing = [str(q[0].needs) for q in todo if q]
                raise RuntimeError(f"phase {name!r}: nothing left to write {', '.join(missing)}")
            time.sleep(0.2)
            for i, r in enumerate(running):
                if r is not None and r[0].poll() is not None:
                    finish(r[0], r[1].log)
                    running[i] = None
        timings[name] = {"seconds": time.perf_counter() - began, "cpu_seconds": _child_cpu() - cpu}
        atomic_write_json(timings_file, timings)

    # 1. data: the worlds, rendered side by side; one training and one held-out manifest over them
    synth = [
        Job(synth_cmd(out / "data" / w.name, w, scale), logs / f"synth_{w.name}.log")
        for w in scale.worlds
        if not (out / "data" / w.name / "manifest.jsonl").is_file()
    ]
    lanes("data", *([j] for j in synth))
    folders = {h: [out / "data" / w.name for w in scale.worlds if w.held_out == h] for h in (False, True)}
    train_manifest = training_manifest(folders[False], out / "data" / "train.jsonl")
    eval_manifest = training_manifest(folders[True], out / "data" / "eval.jsonl")
    splits = out / "splits"
    record = build_splits(train_manifest, splits, seed=0)
    init = build_init(out / "init", scale)

    # 2. the chains; every stage's final/ is the next one's init_from
    def train(name: str, stage: str, init_from: Path) -> Job | None:
        if (out / name / "final" / "config.json").is_file():
            return None
        shutil.rmtree(out / name, ignore_errors=True)  # an unfinished run starts over
        cmd = stage_cmd(stage, out / name, init_from, splits, scale)
        return Job(cmd, logs / f"{name}.log", init_from / "config.json")

    def evaluate(name: str, model: Path, mode: str = "two-turn") -> Job | None:
        if (out / "eval" / name / "metrics.json").is_file():
            return None
        cmd = bench_cmd(model, eval_manifest, out / "eval" / name, mode, scale)
        return Job(cmd, logs / f"eval_{name}.log", model / "config.json")

    s1, s2, s3 = (out / f"stage{k}" / "final" for k in (1, 2, 3))
    # Two queues on one core each. The ablations fill the evaluation queue's idle time: w/o stage 1 is stage 2
    # from the random model (compared with "after stage 2"), w/o stage 2 is stage 3 from stage 1.
    lanes(
        "stage1, stage2 | eval untrained" + (", w/o stage 1: stage2" if ablations else "") + ", eval stage1",
        [train("stage1", "stage1", init), train("stage2", "stage2", s1)],
        [
            evaluate("untrained", init),
            train("no_s1_stage2", "stage2", init) if ablations else None,
            evaluate("stage1", s1),
        ],
    )
    lanes(
        "stage3, eval stage3 two-turn, single-turn | eval stage2"
        + (", eval w/o stage 1, w/o stage 2: stage3, eval w/o stage 2" if ablations else ""),
        [train("stage3", "stage3", s2), evaluate("stage3", s3), evaluate("stage3_single", s3, "single-turn")],
        [
            evaluate("stage2", s2),
            *(
                [
                    evaluate("no_s1", out / "no_s1_stage2" / "final"),
                    train("no_s2_stage3", "stage3", s1),
                    evaluate("no_s2", out / "no_s2_stage3" / "final"),
                ]
                if ablations
                else []
            ),
        ],
    )
    variants = [
        ("untrained", "Untrained (random weights)", "two-turn"),
        ("stage1", "After stage 1 (single-frame warmup)", "two-turn"),
        ("stage2", "After stage 2 (multi-frame SFT)", "two-turn"),
        ("stage3", "After stage 3 (two-turn GRPO): CaC", "two-turn"),
        ("stage3_single", "After stage 3 (two-turn GRPO): CaC", "single-turn"),
    ]
    if ablations:
        variants += [
            ("no_s1", "w/o stage 1: stage 2 from random weights", "two-turn"),
            ("no_s2", "w/o stage 2: stage 3 after stage 1", "two-turn"),
        ]

    # 3. the table
    annotations = read_manifest(eval_manifest)
    rows = [
        {"name": n, "label": label, "mode": mode, **summarize(out / "eval" / n, annotations, mode)}
        for n, label, mode in variants
    ]
    info = {
        "seconds": sum(t["seconds"] for t in timings.values()),
        "cpu_seconds": sum(t["cpu_seconds"] for t in timings.values()),
        "ablations": ablations,
        "timings": timings,
        "cpus": os.cpu_count(),
        "date": date.today().isoformat(),
        "commit": _commit(),
        "params": sum(p.numel() for p in _load_params(init)),
        "train_videos": sum(w.videos for w in scale.worlds if not w.held_out),
        "eval_videos": len(annotations),
        "eval_abnormal": sum(a.is_abnormal for a in annotations),
        "split_counts": {k: v["anomalous"] + v["normal"] for k, v in record["counts"].items()},
        # per stage, how many of its anomalous videos show each defect kind
        "split_kinds": {
            k: {kind: sum(kind in a.meta.get("kinds", []) for a in stage) for kind in kinds_of(stage)}
            for k in record["counts"]
            if (stage := read_manifest(splits / f"{k}.jsonl"))
        },
    }
    result = {
        "rows": rows,
        "curves": training_curves(out),
        "info": info,
        "normal": [not a.is_abnormal for a in annotations],
    }
    atomic_write_json(out / "results.json", result)
    atomic_write_text(out / "results.md", format_results(rows, result["curves"], info) + "\n")
    return result


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _load_params(model: Path) -> list[torch.Tensor]:
    from safetensors.torch import load_file

    return list(load_file(model / "model.safetensors").values())


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "three_stage", help="working folder")
    p.add_argument("--quick", action="store_true", help="a few steps per stage on a few videos (smoke test)")
    p.add_argument(
        "--no-ablations", action="store_true", help="leave out w/o stage 1 and w/o stage 2 (Tab. 3, rows 2-3)"
    )
    p.add_argument("--png", type=Path, default=PNG, help="where the bar chart goes")
    p.add_argument("--results", type=Path, default=RESULTS, help="the RESULTS.md whose section is replaced")
    args = p.parse_args(argv)
    result = run(args.out, QUICK if args.quick else FULL, ablations=not args.no_ablations)
    plot(result["rows"], args.png)
    command = (
        "python experiments/synthetic_three_stage.py" + " --quick" * args.quick + " --no-ablations" * args.no_ablations
    )
    write_section(result, args.results, args.png, command)
    print((args.out / "results.md").read_text(encoding="utf-8"))
    print(f"wrote {args.out / 'results.json'}, {args.png} and {args.results}", flush=True)
    return result


if __name__ == "__main__":
    main()
