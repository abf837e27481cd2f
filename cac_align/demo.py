"""``cac-align demo``: the whole CaC pipeline at tiny scale on CPU, ending in one HTML report (paper Sec. 3-4).

    cac-align demo runs/demo          # a few minutes on 2 CPU cores; rerun to resume, delete the folder to start over

Steps, in order (each one's record is written last to ``OUT/steps/<name>.json``, so a rerun skips finished steps):

1. ``data``: the synthetic anomaly world (:mod:`cac_align.data.synthetic`), its disjoint stage splits (App. C.2) and
   a held-out benchmark world rendered from another seed.
2. ``stage1`` / ``stage2`` / ``stage3``: the reward recipes ``reward/stage1_warmup.py``, ``stage2_sft.py`` and
   ``stage3_grpo.py`` on their tiny presets, a few steps each, each stage starting from the previous one's
   ``final/`` (the first from a tiny random Qwen3-VL). Run as subprocesses with ``--config`` and overrides.
3. ``evidence``: two-turn scoring of the benchmark videos with the trained CaC (Sec. 3.4), evidence mp4s (boxes and
   the window on a timeline) and their HTML page (:mod:`cac_align.evidence`).
4. ``best_of_n``: ``generators/best_of_n.py`` with a tiny random Wan-2.1: N candidates per prompt, the winner by the
   mixed reward (group-normalised tiny UnifiedReward + the trained CaC, Sec. 4.2).
5. ``flow_grpo``: ``generators/flow_grpo.py``, a few Flow-GRPO steps with the same mix, then one video per prompt
   sampled with the trained LoRA (``best_of_n.py`` with one candidate).
6. ``bench``: the anomaly-judge benchmark of the trained CaC on the held-out world (Table 1, Fig. 4, S3, S4 layouts).
7. ``vbench``: the three VBench dimensions (App. C.4.1) of base, Best-of-N and Flow-GRPO videos on random weights in
   VBench's cache layout.
8. ``report``: ``OUT/report.html`` linking every video, table and plot.

Every model here is tiny and (nearly) random, so every score is meaningless; the demo shows that the stages connect
and what each one writes. The report says how to run each stage on real checkpoints (:data:`REAL_SCALE`).

The recipes are scripts of a cac-align checkout (``reward/``, ``generators/``), not part of the installed package:
the demo finds them next to the package (an editable install) or in the current folder.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from cac_align.utils import atomic_path, atomic_write_json, atomic_write_text, read_jsonl

STEPS: tuple[str, ...] = (
    "data",
    "stage1",
    "stage2",
    "stage3",
    "evidence",
    "best_of_n",
    "flow_grpo",
    "bench",
    "vbench",
    "report",
)
DEMO_PROMPTS = ("a red fox runs across a snowy field", "a glass of water falls off a table")
MEANINGLESS = (
    "Every model in this demo is tiny and (nearly) random: a 64-wide Qwen3-VL trained for a few steps, a tiny random "
    "Wan-2.1, random VBench networks. All rewards, accuracies, VBench scores and winners below are therefore "
    "meaningless. The demo shows that every stage runs, hands its output to the next, and what each one writes."
)
REAL_SCALE: tuple[tuple[str, str], ...] = (
    (
        "Data",
        "cac-align data import annotations.csv -o data/annotated.jsonl   # your expert annotations (App. B.1)\n"
        "cac-align data synthesize-cot data/annotated.jsonl -o data/cot --base-url $VLM_URL   # CoT (Sec. 3.1)\n"
        "cac-align data splits data/cot/manifest.jsonl -o data/splits",
    ),
    (
        "Stage 1 (warmup)",
        "accelerate launch --config_file reward/configs/accelerate/8gpu_ddp.yaml reward/stage1_warmup.py \\\n"
        "    --config reward/configs/stage1.yaml data.manifest=data/splits/stage1.jsonl \\\n"
        "    init_from=checkpoints/Qwen3-VL-8B-Instruct output_dir=runs/stage1",
    ),
    (
        "Stage 2 (SFT)",
        "accelerate launch --config_file reward/configs/accelerate/zero2.yaml reward/stage2_sft.py \\\n"
        "    --config reward/configs/stage2.yaml data.manifest=data/splits/stage2.jsonl \\\n"
        "    init_from=runs/stage1/final output_dir=runs/stage2",
    ),
    (
        "Stage 3 (two-turn GRPO)",
        "accelerate launch --config_file reward/configs/accelerate/zero2.yaml reward/stage3_grpo.py \\\n"
        "    --config reward/configs/stage3.yaml data.manifest=data/splits/stage3.jsonl \\\n"
        "    init_from=runs/stage2/final output_dir=runs/stage3",
    ),
    ("Scoring with evidence", "cac-align score videos/*.mp4 --model runs/stage3/final --render runs/evidence"),
    (
        "Best-of-N",
        "accelerate launch generators/best_of_n.py --config generators/configs/best_of_n_wan2.1_1.3b.yaml \\\n"
        "    prompts=prompts.txt output_dir=runs/bon model.path=checkpoints/Wan2.1-T2V-1.3B-Diffusers \\\n"
        "    reward.components.unified.path=checkpoints/UnifiedReward-2.0-qwen3vl-8b \\\n"
        "    reward.components.cac.path=runs/stage3/final",
    ),
    (
        "Flow-GRPO",
        "accelerate launch generators/flow_grpo.py --config generators/configs/flow_grpo_wan2.1_1.3b.yaml \\\n"
        "    prompts=train_prompts.txt output_dir=runs/grpo model.path=checkpoints/Wan2.1-T2V-1.3B-Diffusers \\\n"
        "    reward.components.unified.path=checkpoints/UnifiedReward-2.0-qwen3vl-8b \\\n"
        "    reward.components.cac.path=runs/stage3/final",
    ),
    ("Benchmark", "cac-align bench bench/main.jsonl --model runs/stage3/final --out runs/bench"),
    ("VBench", "cac-align vbench runs/bon/best --weights ~/.cache/vbench --out runs/vbench"),
    (
        "The paper's tables",
        "python experiments/table1_bench.py --config experiments/configs/table1_bench.yaml ...\n"
        "python experiments/table2_alignment.py --config experiments/configs/table2_alignment.yaml ...\n"
        "python experiments/table3_ablations.py --config experiments/configs/table3_ablations.yaml ...\n"
        "python experiments/tableS2_speed.py --config experiments/configs/tableS2_speed.yaml ...",
    ),
)
"""What to run instead of each demo step on real checkpoints (each script's docstring has the details)."""

# Scale of the demo: small enough for a few minutes on 2 CPU cores.
WORLD = {"num_videos": 24, "size": (64, 64), "seconds": 2.0}
BENCH_VIDEOS = 8
STAGE_OVERRIDES = {
    "stage1": ["train.max_steps=6", "train.save_every=6", "log.every=1"],
    "stage2": ["train.max_steps=6", "train.save_every=6", "log.every=1"],
    "stage3": ["train.max_steps=2", "train.save_every=2", "grpo.group_size=4", "train.videos_per_step=2"],
}
# Generated videos: 128 x 128 is the smallest size VBench's dynamic degree (RAFT) accepts; 5 frames keep it cheap.
SAMPLE = {"num_frames": 5, "height": 128, "width": 128, "num_steps": 4, "fps": 16}
NUM_CANDIDATES = 3
FLOW_GRPO_STEPS = 2


class DemoError(RuntimeError):
    """A demo step failed; the message names the step and the log to read."""


@dataclass
class Demo:
    """What every step gets: the demo folder, the checkout with the recipes, the settings and the records so far."""

    out: Path
    repo: Path
    seed: int = 0
    num_videos: int = WORLD["num_videos"]
    records: dict[str, dict[str, Any]] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------------
# Plumbing: where the recipes are, running them, step records
# ---------------------------------------------------------------------------------------------------------------------


def find_checkout() -> Path:
    """The cac-align checkout that holds the recipes (``reward/``, ``generators/``): next to the package, else cwd."""
    for root in (Path(__file__).resolve().parents[1], Path.cwd()):
        if (root / "reward" / "stage1_warmup.py").is_file() and (root / "generators" / "best_of_n.py").is_file():
            return root
    raise DemoError(
        "the demo runs the recipes in reward/ and generators/ of a cac-align checkout, which are not installed with "
        "the package; run it from a checkout (git clone ...; pip install -e .; cac-align demo)"
    )


def run_script(script: Path, args: Sequence[str], log: Path, cwd: Path) -> str:
    """Run ``python script args`` with output to ``log``; returns the command line. Raises DemoError on failure."""
    cmd = [sys.executable, str(script), *args]
    line = " ".join(_quote_arg(a) for a in ["python", os.path.relpath(script, cwd), *args])
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w", encoding="utf-8") as f:
        f.write(f"$ {line}\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=cwd, check=False)
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise DemoError(f"{script.name} exited with {proc.returncode}; end of {log}:\n{tail}")
    return line


def _quote_arg(arg: str) -> str:
    return arg if re.fullmatch(r"[\w@%+=:,./-]+", arg) else "'" + arg.replace("'", "'\"'\"'") + "'"


def step_record(out: Path, name: str) -> dict[str, Any] | None:
    path = out / "steps" / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def rel(path: Path, out: Path) -> str:
    """``path`` relative to the demo folder, with forward slashes (records and links stay valid if it moves)."""
    return Path(os.path.relpath(Path(path).resolve(), out.resolve())).as_posix()


# ---------------------------------------------------------------------------------------------------------------------
# The steps: each takes the demo folder and the records so far, does its work and returns its own record
# ---------------------------------------------------------------------------------------------------------------------


def step_data(d: Demo) -> dict[str, Any]:
    out, seed = d.out, d.seed
    from cac_align.data.splits import build_splits
    from cac_align.data.synthetic import generate, summarize

    manifest = generate(out / "data", seed=seed, progress=False, **{**WORLD, "num_videos": d.num_videos})
    splits = build_splits(manifest, out / "splits", seed=seed)
    world = {**WORLD, "num_videos": BENCH_VIDEOS}
    bench = generate(out / "bench_data", seed=seed + 1, progress=False, **world)
    atomic_write_text(out / "prompts.txt", "\n".join(DEMO_PROMPTS) + "\n")
    return {
        "manifest": rel(manifest, out),
        "splits": {s: rel(out / "splits" / f"{s}.jsonl", out) for s in ("stage1", "stage2", "stage3")},
        "split_counts": splits["counts"],
        "bench_manifest": rel(bench, out),
        "summary": summarize(manifest),
        "bench_summary": summarize(bench),
        "prompts": rel(out / "prompts.txt", out),
    }


def _stage(name: str, script: str, init: str):
    def run(d: Demo) -> dict[str, Any]:
        out, records, seed, repo = d.out, d.records, d.seed, d.repo
        folder = out / "reward" / name
        start_from = init if init == "tiny" else str(out / records[init]["final"])
        args = [
            "--config",
            f"reward/configs/tiny/{name}.yaml",  # relative to the checkout, the scripts' working folder
            f"output_dir={folder}",
            f"init_from={start_from}",
            f"data.manifest={out / records['data']['splits'][name]}",
            f"seed={seed}",
            *STAGE_OVERRIDES[name],
        ]
        if (folder / "checkpoints").is_dir():
            args.append("resume=true")
        command = run_script(repo / "reward" / script, args, out / "logs" / f"{name}.log", repo)
        keys = ("train/loss",) if name != "stage3" else ("reward/total", "rollout/turn1_valid", "grpo/kl")
        plot = plot_metrics(folder / "metrics.jsonl", keys, out / "plots" / f"{name}.png", f"{name} ({script})")
        return {
            "final": rel(folder / "final", out),
            "command": command,
            "log": rel(out / "logs" / f"{name}.log", out),
            "plot": None if plot is None else rel(plot, out),
            "last": last_metrics(folder / "metrics.jsonl", keys),
        }

    return run


def step_evidence(d: Demo) -> dict[str, Any]:
    out, records = d.out, d.records
    from cac_align.evidence import render_evidence_video, score_files, write_report
    from cac_align.reward.cac import CaCReward
    from cac_align.schema import read_manifest, resolve_video
    from cac_align.video import load_video

    manifest = out / records["data"]["bench_manifest"]
    annotations = read_manifest(manifest)
    files = [resolve_video(a, manifest) for a in annotations]
    reward = CaCReward.from_pretrained(out / records["stage3"]["final"])
    folder = out / "evidence"
    results, videos = [], []
    for ann, r in zip(annotations, score_files(reward, files, [a.prompt for a in annotations]), strict=True):
        if r.ok and r.evidence is not None:
            full = load_video(r.path, None)
            r.render = render_evidence_video(full.frames, full.src_fps, r.evidence, folder / f"{r.path.stem}.mp4")
        results.append(r)
        rec = r.to_dict()
        videos.append(
            {
                "video": None if r.render is None else rel(r.render, out),
                "source": rel(r.path, out),
                "truth": ann.status,
                "status": rec["status"],
                "reward": rec["reward"],
                "labels": rec["labels"],
            }
        )
    page = write_report(results, folder / "index.html", title="CaC evidence (demo, tiny model)")
    return {"page": rel(page, out), "videos": videos, "mode": reward.mode}


def _components(unified: Path, cac: Path) -> dict[str, Any]:
    return {
        "unified": {"weight": 1.0, "norm": "group", "path": str(unified), "settings": {"soft": True, "num_frames": 4}},
        "cac": {"weight": 1.0, "norm": "group", "path": str(cac)},
    }


def _generator_config(repo: Path, preset: str, updates: dict[str, Any], path: Path) -> Path:
    """The tiny preset ``generators/configs/tiny/<preset>.yaml`` with ``updates`` merged in, written to ``path``."""
    base = yaml.safe_load((repo / "generators" / "configs" / "tiny" / f"{preset}.yaml").read_text(encoding="utf-8"))
    atomic_write_text(path, yaml.safe_dump(_merge(base, updates), sort_keys=False))
    return path


def _merge(base: dict[str, Any], updates: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``updates`` merged in, nested mappings key by key (``reward.components`` is replaced whole)."""
    merged = dict(base)
    for k, v in updates.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict) and k != "components":
            merged[k] = _merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def _tiny_models(out: Path) -> tuple[Path, Path]:
    """A tiny random Wan and a tiny random UnifiedReward (Qwen3-VL) under ``out/models``, built once."""
    from cac_align.generators.tiny import build_tiny_wan
    from cac_align.testing import build_tiny_qwen3vl

    wan, unified = out / "models" / "wan", out / "models" / "unified"
    for folder, build in ((wan, build_tiny_wan), (unified, lambda p: build_tiny_qwen3vl(p, seed=1, vocab="bytes"))):
        if not folder.is_dir():
            tmp = folder.with_name(f".{folder.name}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            build(tmp)
            os.replace(tmp, folder)
    return wan, unified


def _read_records(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text(encoding="utf-8").splitlines() if line]


def step_best_of_n(d: Demo) -> dict[str, Any]:
    out, records, seed, repo = d.out, d.records, d.seed, d.repo
    wan, unified = _tiny_models(out)
    folder = out / "best_of_n"
    cfg = _generator_config(
        repo,
        "best_of_n",
        {
            "prompts": str(out / records["data"]["prompts"]),
            "output_dir": str(folder),
            "resume": True,
            "num_candidates": NUM_CANDIDATES,
            "seed": seed,
            "model": {"path": str(wan)},
            "sample": {**SAMPLE, "batch_size": NUM_CANDIDATES},
            "reward": {"components": _components(unified, out / records["stage3"]["final"])},
        },
        out / "configs" / "best_of_n.yaml",
    )
    command = run_script(repo / "generators" / "best_of_n.py", ["--config", str(cfg)], out / "logs" / "bon.log", repo)
    prompts = []
    for r in _read_records(folder):
        cands = r["candidates"]
        prompts.append(
            {
                "prompt": r["prompt"],
                "best": r["best"],
                "winner": None if r["best_video"] is None else rel(folder / r["best_video"], out),
                "base": rel(folder / cands[0]["video"], out),  # candidate 0: one plain sample of the base model
                "candidates": [
                    {
                        "video": rel(folder / c["video"], out),
                        "total": c["total"],
                        "raw": {k: v["raw"] for k, v in c["components"].items()},
                    }
                    for c in cands
                ],
            }
        )
    return {"command": command, "config": rel(cfg, out), "prompts": prompts, "log": rel(out / "logs" / "bon.log", out)}


def step_flow_grpo(d: Demo) -> dict[str, Any]:
    out, records, seed, repo = d.out, d.records, d.seed, d.repo
    wan, unified = _tiny_models(out)
    folder = out / "flow_grpo"
    cfg = _generator_config(
        repo,
        "flow_grpo",
        {
            "prompts": str(out / records["data"]["prompts"]),
            "output_dir": str(folder),
            "resume": (folder / "checkpoints").is_dir(),
            "seed": seed,
            "model": {"path": str(wan)},
            "sample": dict(SAMPLE),
            "train": {"max_steps": FLOW_GRPO_STEPS},
            "reward": {"components": _components(unified, out / records["stage3"]["final"])},
            "log": {"video_every": 0},
        },
        out / "configs" / "flow_grpo.yaml",
    )
    log = out / "logs" / "flow_grpo.log"
    command = run_script(repo / "generators" / "flow_grpo.py", ["--config", str(cfg)], log, repo)
    # One video per prompt from the trained LoRA: Best-of-N with a single candidate (seeded like the base samples).
    eval_folder = out / "flow_grpo_eval"
    eval_cfg = _generator_config(
        repo,
        "best_of_n",
        {
            "prompts": str(out / records["data"]["prompts"]),
            "output_dir": str(eval_folder),
            "resume": True,
            "num_candidates": 1,
            "seed": seed,
            "model": {"path": str(wan), "lora": str(folder / "final")},
            "sample": {**SAMPLE, "batch_size": 1},
            "reward": {"components": {"brightness": {"weight": 1.0, "norm": "none"}}},  # records only; N = 1
        },
        out / "configs" / "flow_grpo_eval.yaml",
    )
    eval_command = run_script(
        repo / "generators" / "best_of_n.py", ["--config", str(eval_cfg)], out / "logs" / "flow_grpo_eval.log", repo
    )
    keys = ("reward/total_mean", "reward/cac/raw_mean", "reward/unified/raw_mean")
    plot = plot_metrics(folder / "metrics.jsonl", keys, out / "plots" / "flow_grpo.png", "Flow-GRPO (flow_grpo.py)")
    videos = [rel(eval_folder / r["candidates"][0]["video"], out) for r in _read_records(eval_folder)]
    return {
        "command": command,
        "eval_command": eval_command,
        "config": rel(cfg, out),
        "lora": rel(folder / "final", out),
        "plot": None if plot is None else rel(plot, out),
        "videos": videos,
        "last": last_metrics(folder / "metrics.jsonl", keys),
        "log": rel(log, out),
    }


def step_bench(d: Demo) -> dict[str, Any]:
    out, records = d.out, d.records
    from cac_align.eval.bench import CaCJudge, run_bench
    from cac_align.reward.cac import CaCReward

    judge = CaCJudge(CaCReward.from_pretrained(out / records["stage3"]["final"]))
    folder = out / "bench"
    m = run_bench(out / records["data"]["bench_manifest"], judge, folder, batch_size=4, progress=False)
    charts = sorted(rel(p, out) for p in folder.glob("*.png"))
    return {"tables": rel(folder / "tables.md", out), "charts": charts, "accuracy": m["table1"]["accuracy"]}


def step_vbench(d: Demo) -> dict[str, Any]:
    out, records = d.out, d.records
    from cac_align.eval.vbench import DIMENSIONS, evaluate_vbench, load_vbench_models, write_vbench_outputs
    from cac_align.eval.vbench_testing import build_tiny_vbench_weights

    weights = out / "models" / "vbench"
    if not (weights / ".complete").is_file():
        build_tiny_vbench_weights(weights)
        atomic_write_text(weights / ".complete", "")
    models = load_vbench_models(weights)
    bon = records["best_of_n"]["prompts"]
    groups = {
        "Base (Wan, 1 sample)": [p["base"] for p in bon],
        "Best-of-N (UR+CaC)": [p["winner"] for p in bon if p["winner"] is not None],
        "Flow-GRPO (UR+CaC)": list(records["flow_grpo"]["videos"]),
    }
    results: dict[str, Any] = {}
    for k, (group, videos) in enumerate(groups.items()):
        result = evaluate_vbench([out / v for v in videos], models, names=videos, batch_size=8)
        write_vbench_outputs(result, out / "vbench" / f"group{k}")
        results[group] = {
            "videos": videos,
            "overall": result["overall"],
            "folder": rel(out / "vbench" / f"group{k}", out),
        }
    return {"dimensions": list(DIMENSIONS), "groups": results}


def step_report(d: Demo) -> dict[str, Any]:
    return {"page": rel(write_demo_report(d.out, d.records), d.out)}


STEP_FUNCTIONS: dict[str, Callable[[Demo], dict[str, Any]]] = {
    "data": step_data,
    "stage1": _stage("stage1", "stage1_warmup.py", "tiny"),
    "stage2": _stage("stage2", "stage2_sft.py", "stage1"),
    "stage3": _stage("stage3", "stage3_grpo.py", "stage2"),
    "evidence": step_evidence,
    "best_of_n": step_best_of_n,
    "flow_grpo": step_flow_grpo,
    "bench": step_bench,
    "vbench": step_vbench,
    "report": step_report,
}
STEP_TITLES = {
    "data": "synthetic anomaly world, stage splits, held-out benchmark world",
    "stage1": "reward stage 1: single-frame warmup (LoRA)",
    "stage2": "reward stage 2: multi-frame SFT",
    "stage3": "reward stage 3: two-turn GRPO",
    "evidence": "two-turn scoring with rendered evidence",
    "best_of_n": "Best-of-N with the mixed reward (UR + CaC)",
    "flow_grpo": "Flow-GRPO steps with the mixed reward, then sampling with the LoRA",
    "bench": "anomaly-judge benchmark (Table 1 / Fig. 4 / S3 / S4 layouts)",
    "vbench": "VBench subject consistency, imaging quality, dynamic degree",
    "report": "the HTML report",
}


def run_demo(
    out: str | Path, seed: int = 0, num_videos: int = WORLD["num_videos"], log: Callable[[str], None] = print
) -> Path:
    """Run (or resume) every step of the demo into ``out``; returns ``out/report.html``.

    A step whose record ``out/steps/<name>.json`` exists is skipped, except the report, which is always rewritten.

    Raises:
        DemoError: the recipes cannot be found, or a step failed (the message names its log).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    demo = Demo(out, find_checkout(), seed, num_videos)
    records = demo.records
    total = time.perf_counter()
    for i, name in enumerate(STEPS, 1):
        done = step_record(out, name)
        if done is not None and name != "report":
            records[name] = done
            log(f"[demo] {i}/{len(STEPS)} {name}: done earlier ({done['seconds']:.0f} s), skipped")
            continue
        log(f"[demo] {i}/{len(STEPS)} {name}: {STEP_TITLES[name]} ...")
        start = time.perf_counter()
        record = STEP_FUNCTIONS[name](demo)
        record["seconds"] = round(time.perf_counter() - start, 1)
        records[name] = record
        if name == "report":  # the report lists every step's time, its own included on the next run
            record["page"] = rel(write_demo_report(out, records), out)
        atomic_write_json(out / "steps" / f"{name}.json", record)
        log(f"[demo] {i}/{len(STEPS)} {name}: {record['seconds']:.0f} s")
    log(f"[demo] finished in {time.perf_counter() - total:.0f} s; open {out / 'report.html'}")
    return out / "report.html"


# ---------------------------------------------------------------------------------------------------------------------
# Plots and metrics of the training runs
# ---------------------------------------------------------------------------------------------------------------------


def last_metrics(path: Path, keys: Sequence[str]) -> dict[str, float]:
    """The last logged finite value of each of ``keys`` in a ``metrics.jsonl`` (keys never logged are left out)."""
    out: dict[str, float] = {}
    if not path.is_file():
        return out
    for row in read_jsonl(path):
        for k in keys:
            v = row.get(k)
            if isinstance(v, (int, float)) and math.isfinite(v):
                out[k] = float(v)
    return out


def plot_metrics(path: Path, keys: Sequence[str], png: Path, title: str) -> Path | None:
    """Curves of ``keys`` over steps from a ``metrics.jsonl`` (one panel each), or None when none was logged."""
    if not path.is_file():
        return None
    rows = read_jsonl(path)
    series = {
        k: [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])]
        for k in keys
    }
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(series), figsize=(3.2 * len(series), 2.6), squeeze=False)
    for ax, (k, points) in zip(axes[0], series.items(), strict=True):
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o")
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return png


# ---------------------------------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------------------------------

_CSS = """
body { font: 14px/1.5 system-ui, sans-serif; margin: 24px auto; max-width: 1100px; color: #18181b; padding: 0 16px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #e4e4e7; }
h3 { font-size: 15px; }
.warn { background: #fef3c7; border: 1px solid #f59e0b; border-radius: 6px; padding: 10px 14px; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
th, td { border: 1px solid #e4e4e7; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f5; }
pre { background: #fafafa; border: 1px solid #e4e4e7; padding: 8px; border-radius: 4px; white-space: pre-wrap;
  font-size: 12px; }
.videos { display: flex; flex-wrap: wrap; gap: 12px; }
.videos figure { margin: 0; width: 220px; font-size: 12px; }
video, img.plot { max-width: 100%; border-radius: 4px; } video { width: 220px; background: #000; }
.missing { color: #a1a1aa; font-style: italic; }
"""


def _href(target: str) -> str:
    return quote(target)


def _video(path: str | None, caption: str) -> str:
    if path is None:
        return f'<figure><div class="missing">no video</div><figcaption>{html.escape(caption)}</figcaption></figure>'
    src = _href(path)
    return (
        f'<figure><video controls loop muted src="{src}"></video>'
        f'<figcaption>{html.escape(caption)} (<a href="{src}">mp4</a>)</figcaption></figure>'
    )


def _img(path: str | None) -> str:
    return "" if path is None else f'<p><img class="plot" src="{_href(path)}" alt="{html.escape(path)}"></p>'


def _fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _inline(text: str) -> str:
    """Escape ``text`` and render Markdown's inline code, bold and emphasis."""
    s = html.escape(text, quote=False)
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    s = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", s)
    return re.sub(r"\*([^*]+)\*", r"<i>\1</i>", s)


def markdown_to_html(text: str) -> str:
    """The Markdown subset of the tables this project writes: ``#`` headings, pipe tables, paragraphs."""
    parts: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        if not line:
            i += 1
        elif line.startswith("#"):
            level = min(6, len(line) - len(line.lstrip("#")) + 2)  # the report's own h1/h2 stay above
            parts.append(f"<h{level}>{_inline(line.lstrip('#').strip())}</h{level}>")
            i += 1
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                if not all(set(c) <= set("-: ") and c for c in cells):  # skip the |---| rule
                    rows.append(cells)
                i += 1
            head, body = rows[0], rows[1:]
            parts.append(
                "<table><tr>"
                + "".join(f"<th>{_inline(c)}</th>" for c in head)
                + "</tr>"
                + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body)
                + "</table>"
            )
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not lines[i].startswith(("#", "|")):
                para.append(lines[i].strip())
                i += 1
            parts.append(f"<p>{_inline(' '.join(para))}</p>")
    return "\n".join(parts)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An HTML table; cells are HTML already (escape text before)."""
    return (
        "<table><tr>"
        + "".join(f"<th>{h}</th>" for h in header)
        + "</tr>"
        + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
        + "</table>"
    )


def write_demo_report(out: str | Path, records: dict[str, dict[str, Any]]) -> Path:
    """Write ``out/report.html``: every step's videos, tables and plots, linked relative to ``out``.

    Args:
        out: the demo folder; every path in ``records`` is relative to it.
        records: the step records by step name (:data:`STEPS`); missing steps are shown as not run.
    """
    out = Path(out)
    e = html.escape
    body = [
        "<h1>cac-align demo: the CaC pipeline at tiny scale</h1>",
        f'<p class="warn"><b>Meaningless numbers.</b> {e(MEANINGLESS)} See <a href="#real">running each stage on '
        "real checkpoints</a>.</p>",
    ]

    rows = []
    for name in STEPS:
        r = records.get(name)
        secs = "not run" if r is None else ("this run" if "seconds" not in r else f"{r['seconds']:.0f} s")
        log = "" if r is None or "log" not in r else f'<a href="{_href(r["log"])}">log</a>'
        rows.append([e(name), e(STEP_TITLES[name]), secs, log])
    known = [r["seconds"] for r in records.values() if "seconds" in r]
    body += ["<h2>Pipeline</h2>", _table(["step", "what", "time", ""], rows)]
    body.append(f"<p>Total of the timed steps: {sum(known):.0f} s.</p>")

    d = records.get("data")
    body.append("<h2>1. Data: the synthetic anomaly world</h2>")
    if d is None:
        body.append('<p class="missing">not run</p>')
    else:
        splits = ", ".join(
            f'<a href="{_href(p)}">{e(s)}</a> ({d["split_counts"][s]["anomalous"]} anomalous + '
            f"{d['split_counts'][s]['normal']} normal)"
            for s, p in d["splits"].items()
        )
        body += [
            f'<p>Training world <a href="{_href(d["manifest"])}">manifest</a>; disjoint 1:1 stage splits: {splits}. '
            f'Held-out benchmark world: <a href="{_href(d["bench_manifest"])}">manifest</a>.</p>',
            f"<pre>{e(d['summary'])}</pre>",
        ]

    body.append("<h2>2. Reward training: three stages</h2>")
    for name in ("stage1", "stage2", "stage3"):
        r = records.get(name)
        body.append(f"<h3>{e(STEP_TITLES[name])}</h3>")
        if r is None:
            body.append('<p class="missing">not run</p>')
            continue
        last = ", ".join(f"{e(k)} {_fmt(v)}" for k, v in r["last"].items()) or "no metrics logged"
        body += [
            f'<p>Checkpoint <a href="{_href(r["final"])}">{e(r["final"])}</a>; last logged: {last}.</p>',
            _img(r["plot"]),
            f"<pre>{e(r['command'])}</pre>",
        ]

    ev = records.get("evidence")
    body.append("<h2>3. Two-turn scoring with rendered evidence</h2>")
    if ev is None:
        body.append('<p class="missing">not run</p>')
    else:
        body.append(
            f'<p>The trained CaC ({e(ev["mode"])}) on the held-out world: <a href="{_href(ev["page"])}">evidence page'
            "</a> (reward, status, window, labels, reasons, raw answers). Boxes are drawn on the frames, the turn-1 "
            "window on the timeline under each video.</p>"
        )
        figs = [
            _video(v["video"], f"truth {v['truth']}; CaC {v['status']}, reward {_fmt(v['reward'])}")
            for v in ev["videos"]
        ]
        body.append(f'<div class="videos">{"".join(figs)}</div>')

    bon, fg = records.get("best_of_n"), records.get("flow_grpo")
    body.append("<h2>4. Alignment: Best-of-N and Flow-GRPO with UR + CaC</h2>")
    if bon is None:
        body.append('<p class="missing">Best-of-N not run</p>')
    else:
        rows = []
        for i, p in enumerate(bon["prompts"]):
            cands = "<br>".join(
                f"{k}: total {_fmt(c['total'])}; "
                + ", ".join(f"{e(n)} {_fmt(v)}" for n, v in c["raw"].items())
                + (" <b>(winner)</b>" if k == p["best"] else "")
                for k, c in enumerate(p["candidates"])
            )
            after = fg["videos"][i] if fg is not None and i < len(fg["videos"]) else None
            videos = _video(p["base"], "base sample") + _video(p["winner"], "Best-of-N winner")
            videos += _video(after, "after Flow-GRPO")
            rows.append([e(p["prompt"]), cands, f'<div class="videos">{videos}</div>'])
        body += [
            "<p>Each candidate's mixed score is the average of the group-normalised UnifiedReward and CaC scores "
            "(Sec. 4.2); the raw component scores are shown beside it.</p>",
            _table(["prompt", "candidates (mixed total; raw scores)", "videos"], rows),
            f"<pre>{e(bon['command'])}</pre>",
        ]
    if fg is not None:
        last = ", ".join(f"{e(k)} {_fmt(v)}" for k, v in fg["last"].items()) or "no metrics logged"
        body += [
            f'<h3>Flow-GRPO</h3><p>LoRA <a href="{_href(fg["lora"])}">{e(fg["lora"])}</a>; last logged: {last}.</p>',
            _img(fg["plot"]),
            f"<pre>{e(fg['command'])}\n{e(fg['eval_command'])}</pre>",
        ]

    b = records.get("bench")
    body.append("<h2>5. Benchmark: the trained CaC on the held-out world</h2>")
    if b is None:
        body.append('<p class="missing">not run</p>')
    else:
        tables = (out / b["tables"]).read_text(encoding="utf-8")
        body += [
            f'<p>Accuracy {_fmt(b["accuracy"])}; <a href="{_href(b["tables"])}">tables.md</a>.</p>',
            markdown_to_html(tables),
            "".join(_img(c) for c in b["charts"]),
        ]

    v = records.get("vbench")
    body.append("<h2>6. VBench: subject consistency, imaging quality, dynamic degree</h2>")
    if v is None:
        body.append('<p class="missing">not run</p>')
    else:
        dims = v["dimensions"]
        rows = [
            [f'<a href="{_href(g["folder"] + "/vbench.md")}">{e(name)}</a>', str(len(g["videos"]))]
            + [_fmt(g["overall"].get(d)) for d in dims]
            for name, g in v["groups"].items()
        ]
        body += [
            "<p>Random VBench networks in VBench's cache layout; the Table 2 layout with the paper's numbers is "
            "written by <code>experiments/table2_alignment.py</code>.</p>",
            _table(["videos", "n", *(e(d) for d in dims)], rows),
        ]

    body += [
        '<h2 id="real">Running each stage on real checkpoints</h2>',
        "<p>Replace each demo step by its real-scale command (each recipe's docstring and YAML preset give the "
        "GPUs it was tuned for):</p>",
    ]
    body += [f"<h3>{e(title)}</h3><pre>{e(cmd)}</pre>" for title, cmd in REAL_SCALE]

    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>cac-align demo</title>\n'
        f"<style>{_CSS}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )
    path = out / "report.html"
    atomic_write_text(path, page)
    return path
