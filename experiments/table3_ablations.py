"""Table 3 and Table S5 of the paper: ablations of CaC's training stages, inference strategy and rewards (Sec. 4.3,
App. D.3).

Each ablation is a chain of training stages run from the base model with the reward recipes
(``reward/stage{1_warmup,2_sft,3_grpo}.py``, as subprocesses with ``--config`` and overrides), then benchmarked on
CaC-Bench-Main under a given inference protocol (:func:`cac_align.eval.bench.run_bench`). The variants are data in the
config (:class:`Variant`): which stages run, with which extra overrides (e.g. ``weights.temporal=0`` for stage 3),
and the inference mode. Chains that share a prefix share its runs (the full pipeline's stage 1 and stage 2 are trained
once for rows 3, 4, 7-10), and every finished run or benchmark is skipped when the script is run again.

The paper's rows and how the default configs express them:

==  ================================  =====================================================================
1   Base Model (Qwen3-VL-8B)          no training, single-turn inference
2   w/o Single-frame Warmup           stages 2, 3
3   w/o Multi-frame SFT               stages 1, 3
4   w/o Two-Turn GRPO                 stages 1, 2
5   Base Model w/ Inference Strategy  no training, two-turn inference
6   w/o Inference Strategy*           the paper retrains stages 2 and 3 in a single-turn format, which the stage
                                      recipes do not offer; the default row runs single-turn inference on the full
                                      CaC instead (labelled so). A recipe option for it goes into that variant's
                                      ``overrides`` (e.g. ``{stage2: [...], stage3: [...]}``).
7   w/o Temporal IoU Reward           stages 1, 2, 3 with ``weights.temporal=0``
8   w/o Spatial IoU Reward            stages 1, 2, 3 with ``weights.spatial=0``
9   w/o Attribution IoU Reward        stages 1, 2, 3 with ``weights.type=0``
10  Ours (CaC)                        stages 1, 2, 3, two-turn inference
==  ================================  =====================================================================

Real scale (the stage presets of ``reward/configs/``, each launched as its preset's header says; three weeks of H200
time at the paper's settings, so run the chains as cluster jobs and rerun this script to collect them)::

    python experiments/table3_ablations.py --config experiments/configs/table3_ablations.yaml \\
        output_dir=runs/table3 base=ckpt/Qwen3-VL-8B-Instruct data.manifest=data/cot/manifest.jsonl \\
        data.bench_manifest=bench/main.jsonl

Tiny (CPU, about 10 minutes on 2 cores; tiny random models on the synthetic world, meaningless numbers)::

    python experiments/table3_ablations.py --config experiments/configs/tiny/table3_ablations.yaml \\
        output_dir=runs/table3_tiny

Outputs in ``output_dir``: ``table3.md`` (Table 3: overall accuracy, and Table S5: every metric, each beside the
published numbers), ``results.json``, ``runs/<chain>/`` (one folder per trained stage of a chain, e.g.
``runs/s1-s2-s3_<hash>/``), ``bench/<variant>/`` (predictions, metrics, tables), ``logs/``, ``config.yaml``.

Departures from the paper: row 6 (see above); the data splits are made once (``cac-align data splits``) and every
chain trains on the same stage splits, so a chain without a stage simply does not use that stage's data.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cac_align.config import load_config, save_config
from cac_align.utils import atomic_write_json, atomic_write_text

REPO = Path(__file__).resolve().parents[1]
STAGE_SCRIPTS = {"stage1": "stage1_warmup.py", "stage2": "stage2_sft.py", "stage3": "stage3_grpo.py"}

# Table S5 as published: anomalous R/P/F1, normal R/P/F1, accuracy (Table 3 reports the accuracy column).
PAPER_S5: dict[str, tuple[str, tuple[float, ...]]] = {
    "1": ("Base Model (Qwen3-VL-8B)", (0.108, 0.574, 0.182, 0.920, 0.508, 0.654, 0.514)),
    "2": ("w/o Single-frame Grounding Warmup", (0.706, 0.699, 0.702, 0.696, 0.703, 0.699, 0.701)),
    "3": ("w/o Multi-frame SFT", (0.506, 0.713, 0.592, 0.796, 0.617, 0.695, 0.651)),
    "4": ("w/o Two-Turn GRPO", (0.600, 0.704, 0.648, 0.748, 0.652, 0.696, 0.674)),
    "5": ("Base Model w/ Inference Strategy", (0.102, 0.785, 0.181, 0.972, 0.520, 0.677, 0.537)),
    "6": ("w/o Inference Strategy*", (0.802, 0.706, 0.751, 0.666, 0.771, 0.715, 0.734)),
    "7": ("w/o Temporal IoU Reward", (0.484, 0.682, 0.566, 0.774, 0.600, 0.676, 0.629)),
    "8": ("w/o Spatial IoU Reward", (0.610, 0.774, 0.682, 0.822, 0.678, 0.743, 0.716)),
    "9": ("w/o Attribution IoU Reward", (0.668, 0.729, 0.697, 0.752, 0.694, 0.722, 0.710)),
    "10": ("Ours (CaC)", (0.910, 0.767, 0.833, 0.724, 0.889, 0.798, 0.817)),
}


# ----------------------------------------------------------------------------------------------------------- config
@dataclass
class Variant:
    # Row label in the table.
    label: str
    # The paper's row ID it reproduces (Table 3 / S5), for the published numbers beside it; null: none.
    paper_id: str | None = None
    # Training stages run in order from the base model, any of stage1, stage2, stage3 ([]: the base model itself).
    stages: list[Literal["stage1", "stage2", "stage3"]] = field(default_factory=list)
    # Extra recipe overrides per stage for this variant, e.g. {stage3: [weights.temporal=0]}.
    overrides: dict[str, list[str]] = field(default_factory=dict)
    # Inference protocol of the benchmark.
    mode: Literal["two-turn", "single-turn"] = "two-turn"

    def __post_init__(self) -> None:
        if len(set(self.stages)) != len(self.stages):
            raise ValueError(f"variant {self.label!r}: stages: each stage at most once, got {self.stages}")
        if sorted(self.stages) != list(self.stages):
            raise ValueError(f"variant {self.label!r}: stages: expected them in training order, got {self.stages}")
        if extra := [s for s in self.overrides if s not in self.stages]:
            raise ValueError(f"variant {self.label!r}: overrides for stages it does not run: {extra}")


@dataclass
class DataConfig:
    # Training manifest (with CoT), split into the three disjoint stage manifests (cac-align data splits); null
    # renders the synthetic anomaly world into output_dir/data.
    manifest: str | None = None
    # Benchmark manifest (CaC-Bench-Main); null renders a held-out synthetic world (seed + 1).
    bench_manifest: str | None = None
    # Seed of the splits and of the synthetic worlds.
    seed: int = 0
    # Synthetic worlds (when the manifests are null): training and benchmark videos, frame size [W, H], seconds.
    synthetic_videos: int = 24
    synthetic_bench_videos: int = 8
    synthetic_size: tuple[int, int] = (64, 64)
    synthetic_seconds: float = 2.0


@dataclass
class Table3Config:
    """Table 3 / Table S5: CaC ablations (training stages, inference strategy, reward terms; paper Sec. 4.3)."""

    # Output folder (runs, benchmarks, tables; a rerun skips what is finished).
    output_dir: str
    # The base model every chain starts from (a Qwen3-VL folder); "tiny" builds a tiny random one.
    base: str = "tiny"
    data: DataConfig = field(default_factory=DataConfig)
    # Recipe preset per stage (relative to the checkout).
    presets: dict[str, str] = field(
        default_factory=lambda: {s: f"reward/configs/{s}.yaml" for s in ("stage1", "stage2", "stage3")}
    )
    # Overrides applied to every run of a stage, e.g. {stage3: [train.max_steps=100]}.
    stage_overrides: dict[str, list[str]] = field(default_factory=dict)
    # Command prefix per stage, e.g. {stage2: [accelerate, launch, --config_file, reward/configs/accelerate/zero2.yaml]};
    # a stage not listed runs with this Python interpreter.
    launchers: dict[str, list[str]] = field(default_factory=dict)
    # The ablations, by ID; the table keeps this order.
    variants: dict[str, Variant] = field(default_factory=dict)
    # CaCReward settings of the benchmark (e.g. {max_new_tokens: 1024}), videos per call, device, weights dtype.
    cac_settings: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 4
    device: str | None = None
    dtype: str | None = None

    def __post_init__(self) -> None:
        if not self.variants:
            raise ValueError("variants: expected at least one ablation")
        for key in (*self.presets, *self.stage_overrides, *self.launchers):
            if key not in STAGE_SCRIPTS:
                raise ValueError(f"{key}: not a stage; expected stage1, stage2 or stage3")


# ------------------------------------------------------------------------------------------------------------ runs
def chain_name(stages: list[str], overrides: dict[str, list[str]]) -> str:
    """A folder name for a chain of stages: ``s1-s2-s3``, with a short hash of its own overrides when it has any."""
    name = "-".join("s" + s[-1] for s in stages)
    extra = {s: overrides[s] for s in stages if overrides.get(s)}
    if extra:
        name += "_" + hashlib.sha1(json.dumps(extra, sort_keys=True).encode()).hexdigest()[:8]
    return name


def run_stage(cfg: Table3Config, stage: str, init: Path, manifest: Path, folder: Path, extra: list[str], log: Path):
    """Train one stage (unless ``folder/final`` exists); returns ``folder/final``."""
    final = folder / "final"
    if (final / "config.json").is_file():
        return final
    args = [
        "--config",
        cfg.presets[stage],
        f"output_dir={folder.resolve()}",
        f"init_from={init.resolve()}",
        f"data.manifest={manifest.resolve()}",
        f"seed={cfg.data.seed}",
        *cfg.stage_overrides.get(stage, []),
        *extra,
    ]
    if (folder / "checkpoints").is_dir():
        args.append("resume=true")
    cmd = [*cfg.launchers.get(stage, [sys.executable]), str(REPO / "reward" / STAGE_SCRIPTS[stage]), *args]
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("w", encoding="utf-8") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, check=False).returncode
    if rc != 0 or not (final / "config.json").is_file():
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"{STAGE_SCRIPTS[stage]} for {folder.name} exited with {rc}; end of {log}:\n{tail}")
    print(f"[table3]   {folder.name}: {stage} trained in {time.perf_counter() - start:.0f} s", flush=True)
    return final


def train_variant(cfg: Table3Config, variant: Variant, base: Path, splits: dict[str, Path], out: Path) -> Path:
    """The checkpoint of a variant: its chain of stages, each run once for every chain sharing that prefix."""
    model = base
    for k, stage in enumerate(variant.stages):
        name = chain_name(variant.stages[: k + 1], variant.overrides)
        model = run_stage(
            cfg,
            stage,
            model,
            splits[stage],
            out / "runs" / name,
            variant.overrides.get(stage, []),
            out / "logs" / f"{name}.log",
        )
    return model


def prepare_data(cfg: Table3Config, out: Path) -> tuple[dict[str, Path], Path]:
    """The three stage manifests and the benchmark manifest (synthetic worlds where the config names none)."""
    from cac_align.data.splits import build_splits
    from cac_align.data.synthetic import generate

    d = cfg.data
    world = {"size": d.synthetic_size, "seconds": d.synthetic_seconds, "progress": False}
    manifest = Path(d.manifest) if d.manifest else generate(out / "data", d.synthetic_videos, d.seed, **world)
    if not (out / "splits" / "splits.json").is_file():
        build_splits(manifest, out / "splits", seed=d.seed)
    splits = {s: out / "splits" / f"{s}.jsonl" for s in STAGE_SCRIPTS}
    bench = Path(d.bench_manifest) if d.bench_manifest else None
    if bench is None:
        bench = generate(out / "bench_data", d.synthetic_bench_videos, d.seed + 1, **world)
    return splits, bench


def base_model(cfg: Table3Config, out: Path) -> Path:
    if cfg.base != "tiny":
        return Path(cfg.base)
    from cac_align.testing import build_tiny_cac

    folder = out / "models" / "base"
    if not folder.is_dir():
        tmp = folder.with_name(".base.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        build_tiny_cac(tmp, seed=cfg.data.seed, vocab="bpe", max_new_tokens=24)
        os.replace(tmp, folder)
    return folder


def benchmark(cfg: Table3Config, vid: str, variant: Variant, model: Path, bench: Path, out: Path) -> dict[str, Any]:
    from cac_align.eval.bench import CaCJudge, run_bench
    from cac_align.reward.cac import CaCReward

    reward = CaCReward.from_pretrained(
        model, device=cfg.device, dtype=cfg.dtype, **{**cfg.cac_settings, "mode": variant.mode}
    )
    return run_bench(bench, CaCJudge(reward), out / "bench" / vid, batch_size=cfg.batch_size, progress=False)


# ----------------------------------------------------------------------------------------------------------- table
def s5_values(m: dict[str, Any]) -> list[float | None]:
    t = m["table1"]
    a, n = t["anomalous"], t["normal"]
    return [a["recall"], a["precision"], a["f1"], n["recall"], n["precision"], n["f1"], t["accuracy"]]


def format_tables(results: dict[str, Any]) -> str:
    def f(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    rows3, rows5 = [], []
    for vid, r in results["variants"].items():
        pid = r["paper_id"]
        paper = PAPER_S5[pid][1] if pid in PAPER_S5 else None
        rows3.append([vid, r["label"], f(r["metrics"]["table1"]["accuracy"]), "" if paper is None else f(paper[-1])])
        rows5.append([vid, r["label"], *(f(v) for v in s5_values(r["metrics"]))])
    rows5 += [[f"*(paper)* {pid}", label, *(f(v) for v in vals)] for pid, (label, vals) in PAPER_S5.items()]
    header5 = ["ID", "Ablation", "Anom. Recall", "Anom. Precision", "Anom. F1", "Norm. Recall", "Norm. Precision"]
    lines = [
        "# Table 3 / Table S5: ablations on the benchmark",
        "",
        f"Benchmark `{results['bench_manifest']}`: {results['num_videos']} videos. Each row's chain of stages and "
        "inference mode are in `results.json`; the paper's numbers are on CaC-Bench-Main with Qwen3-VL-8B.",
        "",
        "## Table 3: overall accuracy",
        "",
        "| ID | Ablation | Overall Acc. | Overall Acc. (paper) |",
        "| --- | --- | --- | --- |",
        *("| " + " | ".join(r) + " |" for r in rows3),
        "",
        "## Table S5: every metric",
        "",
        "| " + " | ".join([*header5, "Norm. F1", "Acc."]) + " |",
        "|" + " --- |" * (len(header5) + 2),
        *("| " + " | ".join(r) + " |" for r in rows5),
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> Path:
    cfg = load_config(Table3Config, argv, prog="table3_ablations.py")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    splits, bench = prepare_data(cfg, out)
    base = base_model(cfg, out)

    results: dict[str, Any] = {"bench_manifest": str(bench), "variants": {}}
    for vid, variant in cfg.variants.items():
        chain = " -> ".join(variant.stages) or "no training"
        print(f"[table3] {vid} {variant.label}: {chain}, {variant.mode} inference", flush=True)
        model = train_variant(cfg, variant, base, splits, out)
        metrics = benchmark(cfg, vid, variant, model, bench, out)
        results["num_videos"] = metrics["num_videos"]
        results["variants"][vid] = {
            "label": variant.label,
            "paper_id": variant.paper_id,
            "stages": list(variant.stages),
            "overrides": variant.overrides,
            "mode": variant.mode,
            "model": str(model),
            "metrics": metrics,
        }
        print(f"[table3] {vid}: accuracy {metrics['table1']['accuracy']}", flush=True)
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "table3.md", format_tables(results))
    print(f"[table3] wrote {out / 'table3.md'}", flush=True)
    return out / "table3.md"


if __name__ == "__main__":
    main()
