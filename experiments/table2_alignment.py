"""Table 2 of the paper: aligning Wan-2.1 with UnifiedReward (UR) alone vs UR + CaC (Sec. 4.2, App. C.4).

Five sets of videos on the same evaluation prompts, one video per prompt each:

* **Base model**: Wan-2.1 as is (``generators/best_of_n.py`` with one candidate, seeds ``seed * 2**32 + index``);
* **Best-of-N, UR** and **Best-of-N, UR+CaC**: one ``best_of_n.py`` run with N candidates per prompt scored by both
  rewards; the UR+CaC winner is the recipe's (average of group-normalised UR and CaC scores), the UR winner is the
  candidate with the highest raw UR score (the same candidates, so the two columns differ only by the reward);
* **Flow-GRPO, UR** and **Flow-GRPO, UR+CaC**: two ``generators/flow_grpo.py`` trainings on the training prompts,
  one with UR alone and one with the UR+CaC mix, then one video per evaluation prompt sampled with each LoRA
  (``best_of_n.py`` with one candidate and ``model.lora``, the base model's seeds).

Each set is scored on the three VBench dimensions (App. C.4.1, :mod:`cac_align.eval.vbench`) and judged by CaC
(:class:`~cac_align.eval.bench.CaCJudge`): the **CaC-predicted anomaly rate** is the fraction of videos CaC calls
abnormal, with a 95 % Wilson interval. For the paper's **expert anomaly rate** all videos go into one blind expert
sheet (``OUT/expert_sheet/``: ``sheet.csv``, ``index.html`` with the frames, ``key.json``; see
:mod:`cac_align.data.sheets`). Once experts have filled ``sheet.csv``, rerun with ``--import-sheet`` to add the rate
per method to the table (every finished step is skipped)::

    python experiments/table2_alignment.py --config CONFIG output_dir=OUT --import-sheet OUT/expert_sheet/sheet.csv

Real scale (the paper: Wan-2.1-T2V-1.3B at 480x832, 81 frames, 50 steps; N = 5; Flow-GRPO on 240 training prompts,
120 steps on 32 H200, group 16, LoRA rank 32, noise level 0.3)::

    python experiments/table2_alignment.py --config experiments/configs/table2_alignment.yaml \\
        output_dir=runs/table2 eval_prompts=prompts/eval.txt train_prompts=prompts/train240.txt \\
        models.wan=ckpt/Wan2.1-T2V-1.3B-Diffusers models.unified=ckpt/UnifiedReward-2.0-qwen3vl-8b \\
        models.cac=runs/stage3/final vbench.weights=~/.cache/vbench

(its ``launcher`` runs each recipe under ``accelerate launch``; on a cluster run the two Flow-GRPO trainings as their
own jobs with the configs this script writes to ``OUT/configs/`` and rerun it: finished steps are skipped.)

Tiny (CPU, about 6 minutes on 2 cores; tiny random models, meaningless numbers)::

    python experiments/table2_alignment.py --config experiments/configs/tiny/table2_alignment.yaml \\
        output_dir=runs/table2_tiny

Outputs in ``output_dir``: ``table2.md`` (the paper's layout, this run's columns above the published numbers),
``results.json``, ``videos/<method>/<index>.mp4`` with ``videos.json``, ``vbench/<method>/``, ``cac_judge/``,
``expert_sheet/``, and the recipe runs (``base/``, ``best_of_n/``, ``flow_grpo_ur/``, ``flow_grpo_ur_cac/``,
``samples_*``) with their configs in ``configs/`` and logs in ``logs/``.

Departures from the paper: it does not say which prompts Table 2 is evaluated on, how many videos per prompt, or how
the UR-only Best-of-N was run; here one video per evaluation prompt and method, and the UR winner is taken among
the same candidates. The CaC-predicted rate is ours (the paper reports the expert rate only).
"""

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cac_align.algos.best_of_n import best_index
from cac_align.config import load_config, save_config
from cac_align.data.sheets import AnomalyRate, export_sheet, import_sheet
from cac_align.utils import atomic_path, atomic_write_json, atomic_write_text

REPO = Path(__file__).resolve().parents[1]
METHODS: dict[str, str] = {
    "base": "Base model",
    "bon_ur": "Best-of-N UR",
    "bon_ur_cac": "Best-of-N UR+CaC",
    "grpo_ur": "Flow-GRPO UR",
    "grpo_ur_cac": "Flow-GRPO UR+CaC",
}
VBENCH_ROWS = (
    ("dynamic_degree", "Dynamic Degree ↑"),
    ("subject_consistency", "Subject Consistency ↑"),
    ("imaging_quality", "Imaging Quality ↑"),
)
# Table 2 as published, in METHODS order.
PAPER_TABLE2: dict[str, tuple[float, ...]] = {
    "dynamic_degree": (0.347, 0.542, 0.514, 0.597, 0.583),
    "subject_consistency": (0.949, 0.959, 0.965, 0.947, 0.970),
    "imaging_quality": (0.633, 0.637, 0.648, 0.640, 0.667),
    "expert_rate": (0.290, 0.253, 0.216, 0.241, 0.173),
}


# ----------------------------------------------------------------------------------------------------------- config
@dataclass
class ModelsConfig:
    # Wan-2.1 text-to-video (diffusers layout); "tiny" builds a tiny random Wan in output_dir/models/wan.
    wan: str = "tiny"
    # UnifiedReward checkpoint folder; "tiny" builds a tiny random Qwen3-VL in output_dir/models/unified.
    unified: str = "tiny"
    # CaC checkpoint folder (reward/stage3_grpo.py's final/); "tiny" builds a tiny random one in output_dir/models/cac.
    cac: str = "tiny"
    # UnifiedReward settings in the reward mixes, e.g. {soft: true}.
    unified_settings: dict[str, Any] = field(default_factory=dict)
    # CaCReward settings in the reward mixes and the judge, e.g. {max_new_tokens: 1024}.
    cac_settings: dict[str, Any] = field(default_factory=dict)
    # Weights dtype of the reward models in the recipes (null: the checkpoint's).
    reward_dtype: str | None = None


@dataclass
class VBenchConfig:
    # VBench cache folder (dino_model/, pyiqa_model/, raft_model/); "tiny" writes random weights in that layout to
    # output_dir/models/vbench (smoke runs); null: $VBENCH_CACHE_DIR or ~/.cache/vbench.
    weights: str | None = None
    # Frames (pairs) per network call, and the device (null: cuda if available).
    batch_size: int = 16
    device: str | None = None


@dataclass
class Table2Config:
    """Table 2: Wan-2.1 base vs Best-of-N and Flow-GRPO with UR and UR+CaC, on VBench and anomaly rates (Sec. 4.2)."""

    # Output folder (every step's results; a rerun skips finished steps).
    output_dir: str
    # Evaluation prompts (.txt, one per line, or .jsonl with "prompt"): every method makes one video per prompt.
    eval_prompts: str
    # Flow-GRPO training prompts (the paper: 240).
    train_prompts: str
    # Base seed of every sampling run.
    seed: int = 0
    models: ModelsConfig = field(default_factory=ModelsConfig)
    # Recipe presets the runs start from (this script sets prompts, output folders, models and rewards).
    best_of_n_preset: str = "generators/configs/best_of_n_wan2.1_1.3b.yaml"
    flow_grpo_preset: str = "generators/configs/flow_grpo_wan2.1_1.3b.yaml"
    # Best-of-N candidates per prompt (the paper: 5).
    num_candidates: int = 5
    # Overrides of both recipes' `sample` section (e.g. {height: 128, width: 128}); Flow-GRPO's own keys (group_size,
    # noise_level, ...) go in flow_grpo.
    sample: dict[str, Any] = field(default_factory=dict)
    # Overrides of the Flow-GRPO config, by section: e.g. {train: {max_steps: 120}, sample: {group_size: 16}}.
    flow_grpo: dict[str, Any] = field(default_factory=dict)
    # Command prefix of the recipes, e.g. [accelerate, launch, --config_file, generators/configs/accelerate/8gpu.yaml];
    # empty: this Python interpreter.
    launcher: list[str] = field(default_factory=list)
    vbench: VBenchConfig = field(default_factory=VBenchConfig)
    # CaC judge of the predicted anomaly rate: videos per call and device (null: CPU).
    judge_batch_size: int = 4
    judge_device: str | None = None
    # Frames per second shown to the experts on the sheet's page.
    sheet_fps: float = 4.0
    # A filled expert sheet (sheet.csv beside its key.json) to read the expert anomaly rate from.
    import_sheet: str | None = None

    def __post_init__(self) -> None:
        if self.num_candidates < 2:
            raise ValueError(f"num_candidates: Best-of-N needs at least 2 candidates, got {self.num_candidates}")


# --------------------------------------------------------------------------------------------------------- helpers
def merge(base: dict[str, Any], updates: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``updates`` merged in key by key (``reward.components`` is replaced whole)."""
    out = dict(base)
    for k, v in updates.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "components" else v
    return out


def write_recipe_config(preset: str, updates: dict[str, Any], path: Path) -> Path:
    base = yaml.safe_load((REPO / preset).read_text(encoding="utf-8"))
    atomic_write_text(path, yaml.safe_dump(merge(base, updates), sort_keys=False))
    return path


def run_recipe(launcher: list[str], script: str, config: Path, log: Path) -> None:
    """Run a recipe (``generators/<script>``) on ``config``, output to ``log``; raise naming the log on failure."""
    cmd = [*(launcher or [sys.executable]), str(REPO / "generators" / script), "--config", str(config)]
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("w", encoding="utf-8") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, check=False).returncode
    if rc != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"{script} on {config} exited with {rc}; end of {log}:\n{tail}")
    print(f"[table2]   {script} done in {time.perf_counter() - start:.0f} s (log {log})", flush=True)


def records(folder: Path) -> list[dict[str, Any]]:
    """The per-prompt records of a best_of_n.py run, in prompt order."""
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text(encoding="utf-8").splitlines() if line]


def model_paths(cfg: Table2Config, out: Path) -> dict[str, Path]:
    """The Wan, UnifiedReward and CaC folders; ``tiny`` ones are built once under ``out/models``."""
    from cac_align.generators.tiny import build_tiny_wan
    from cac_align.testing import build_tiny_cac, build_tiny_qwen3vl

    builders = {
        "wan": (cfg.models.wan, build_tiny_wan),
        "unified": (cfg.models.unified, lambda p: build_tiny_qwen3vl(p, seed=1, vocab="bytes")),
        "cac": (cfg.models.cac, lambda p: build_tiny_cac(p, seed=0, vocab="bpe", max_new_tokens=24)),
    }
    paths = {}
    for name, (path, build) in builders.items():
        if path != "tiny":
            paths[name] = Path(path)
            continue
        folder = out / "models" / name
        if not folder.is_dir():
            tmp = folder.with_name(f".{name}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            build(tmp)
            os.replace(tmp, folder)
        paths[name] = folder
    return paths


def components(cfg: Table2Config, paths: dict[str, Path], names: tuple[str, ...]) -> dict[str, Any]:
    """Reward components of the recipes: UR and/or CaC, each group-normalised, equal weights (Sec. 4.2)."""
    specs = {
        "unified": {"path": str(paths["unified"]), "settings": dict(cfg.models.unified_settings)},
        "cac": {"path": str(paths["cac"]), "settings": dict(cfg.models.cac_settings)},
    }
    return {n: {"weight": 1.0, "norm": "group", "dtype": cfg.models.reward_dtype, **specs[n]} for n in names}


# ----------------------------------------------------------------------------------------------------------- steps
def sample_one_per_prompt(cfg: Table2Config, paths: dict[str, Path], out: Path, name: str, lora: Path | None) -> Path:
    """One video per evaluation prompt (best_of_n.py with N = 1; the reward only fills its record)."""
    folder = out / name
    config = write_recipe_config(
        cfg.best_of_n_preset,
        {
            "prompts": str(Path(cfg.eval_prompts).resolve()),
            "output_dir": str(folder.resolve()),
            "resume": True,
            "num_candidates": 1,
            "seed": cfg.seed,
            "model": {"path": str(paths["wan"].resolve()), "lora": None if lora is None else str(lora.resolve())},
            "sample": {**cfg.sample, "batch_size": 1},
            "reward": {"components": {"brightness": {"weight": 1.0, "norm": "none"}}},
        },
        out / "configs" / f"{name}.yaml",
    )
    run_recipe(cfg.launcher, "best_of_n.py", config, out / "logs" / f"{name}.log")
    return folder


def best_of_n(cfg: Table2Config, paths: dict[str, Path], out: Path) -> Path:
    folder = out / "best_of_n"
    config = write_recipe_config(
        cfg.best_of_n_preset,
        {
            "prompts": str(Path(cfg.eval_prompts).resolve()),
            "output_dir": str(folder.resolve()),
            "resume": True,
            "num_candidates": cfg.num_candidates,
            "seed": cfg.seed,
            "model": {"path": str(paths["wan"].resolve())},
            "sample": dict(cfg.sample),
            "reward": {"components": components(cfg, paths, ("unified", "cac"))},
        },
        out / "configs" / "best_of_n.yaml",
    )
    run_recipe(cfg.launcher, "best_of_n.py", config, out / "logs" / "best_of_n.log")
    return folder


def flow_grpo(cfg: Table2Config, paths: dict[str, Path], out: Path, name: str, rewards: tuple[str, ...]) -> Path:
    folder = out / name
    updates = merge(
        {"sample": dict(cfg.sample)},
        {
            "prompts": str(Path(cfg.train_prompts).resolve()),
            "output_dir": str(folder.resolve()),
            "resume": (folder / "checkpoints").is_dir(),
            "seed": cfg.seed,
            "model": {"path": str(paths["wan"].resolve())},
            "reward": {"components": components(cfg, paths, rewards)},
        },
    )
    config = write_recipe_config(cfg.flow_grpo_preset, merge(updates, cfg.flow_grpo), out / "configs" / f"{name}.yaml")
    run_recipe(cfg.launcher, "flow_grpo.py", config, out / "logs" / f"{name}.log")
    return folder / "final"


def collect_videos(out: Path, runs: dict[str, Path]) -> dict[str, list[dict[str, str]]]:
    """Copy each method's video per prompt to ``out/videos/<method>/<index>.mp4``; returns ``videos.json``'s content."""
    chosen: dict[str, list[tuple[str, Path]]] = {}
    for method in ("base", "grpo_ur", "grpo_ur_cac"):
        chosen[method] = [(r["prompt"], runs[method] / r["candidates"][0]["video"]) for r in records(runs[method])]
    bon = records(runs["bon"])
    chosen["bon_ur_cac"] = [(r["prompt"], runs["bon"] / r["best_video"]) for r in bon if r["best_video"] is not None]
    chosen["bon_ur"] = []
    for r in bon:
        k = best_index([c["components"]["unified"]["raw"] for c in r["candidates"]])
        if k is not None:
            chosen["bon_ur"].append((r["prompt"], runs["bon"] / r["candidates"][k]["video"]))
    listing: dict[str, list[dict[str, str]]] = {}
    for method in METHODS:
        listing[method] = []
        for i, (prompt, src) in enumerate(chosen[method]):
            dst = out / "videos" / method / f"{i:06d}.mp4"
            if not dst.is_file():
                with atomic_path(dst) as tmp:
                    shutil.copyfile(src, tmp)
            listing[method].append({"video": str(dst.relative_to(out)), "prompt": prompt, "source": str(src)})
    atomic_write_json(out / "videos.json", listing)
    return listing


def vbench_scores(cfg: Table2Config, out: Path, listing: dict[str, list[dict[str, str]]]) -> dict[str, dict]:
    from cac_align.eval.vbench import evaluate_vbench, load_vbench_models, write_vbench_outputs

    weights = cfg.vbench.weights
    if weights == "tiny":
        from cac_align.eval.vbench_testing import build_tiny_vbench_weights

        folder = out / "models" / "vbench"
        if not (folder / ".complete").is_file():
            build_tiny_vbench_weights(folder)
            atomic_write_text(folder / ".complete", "")
        weights = str(folder)
    device = cfg.vbench.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    models = load_vbench_models(None if weights is None else Path(weights).expanduser(), device=device)
    scores = {}
    for method, videos in listing.items():
        files = [out / v["video"] for v in videos]
        result = evaluate_vbench(files, models, names=[v["video"] for v in videos], batch_size=cfg.vbench.batch_size)
        write_vbench_outputs(result, out / "vbench" / method)
        scores[method] = result["overall"]
        print(f"[table2]   {METHODS[method]}: {result['overall']}", flush=True)
    return scores


def cac_rates(cfg: Table2Config, paths: dict[str, Path], out: Path, listing: dict[str, list[dict[str, str]]]):
    """CaC's verdict on every video (two-turn, Sec. 3.4): per method, the anomaly rate and the mean Eq. 7 reward."""
    from cac_align.eval.bench import CaCJudge
    from cac_align.reward.cac import CaCReward

    judge = CaCJudge(CaCReward.from_pretrained(paths["cac"], device=cfg.judge_device, **cfg.models.cac_settings))
    rates = {}
    for method, videos in listing.items():
        preds = []
        for i in range(0, len(videos), cfg.judge_batch_size):
            chunk = videos[i : i + cfg.judge_batch_size]
            preds += judge([out / v["video"] for v in chunk], [v["prompt"] for v in chunk])
        valid = [p for p in preds if p.status is not None]
        rate = AnomalyRate.of(sum(p.status == "abnormal" for p in valid), len(valid))
        scores = [p.score for p in preds if p.score is not None]
        rates[method] = {
            "abnormal": rate.abnormal,
            "judged": rate.annotated,
            "invalid": len(preds) - len(valid),
            "rate": rate.rate if valid else None,
            "low": rate.low,
            "high": rate.high,
            "mean_reward": sum(scores) / len(scores) if scores else None,
            "predictions": [{"video": v["video"], **p.to_dict()} for v, p in zip(videos, preds, strict=True)],
        }
    return rates


def expert_rates(sheet: Path) -> dict[str, Any]:
    """The expert anomaly rate per method from a filled sheet (its key.json beside it)."""
    result = import_sheet(sheet, key=sheet.parent / "key.json", check_videos=False)
    for problem in result.imported.problems:  # unfilled or invalid rows: their videos are left out of the rates
        print(f"[table2] {problem}", flush=True)
    return {
        "unannotated": result.unannotated,
        "rates": {
            g: {"abnormal": r.abnormal, "annotated": r.annotated, "rate": r.rate, "low": r.low, "high": r.high}
            for g, r in result.rates.items()
            if g in METHODS
        },
    }


# ----------------------------------------------------------------------------------------------------------- table
def format_table(results: dict[str, Any]) -> str:
    def f(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    def rate(r: dict[str, Any] | None) -> str:
        if r is None or r.get("rate") is None:
            return "n/a"
        n = r.get("annotated", r.get("judged"))
        return f"{r['rate']:.3f} [{r['low']:.2f}, {r['high']:.2f}] ({r['abnormal']}/{n})"

    header = ["Group", "Metric", *METHODS.values()]
    rows = [
        ["VBench" if i == 0 else "", label, *(f(results["vbench"][m].get(key)) for m in METHODS)]
        for i, (key, label) in enumerate(VBENCH_ROWS)
    ]
    cac = results["cac"]
    rows.append(["Anomaly", "CaC-predicted Anomaly Rate ↓", *(rate(cac.get(m)) for m in METHODS)])
    rows.append(["", "CaC mean reward (Eq. 7) ↑", *(f(cac[m]["mean_reward"]) for m in METHODS)])
    expert = results.get("expert")
    if expert is None:
        rows.append(["", "Expert Anomaly Rate ↓", *(["pending"] * len(METHODS))])
    else:
        rows.append(["", "Expert Anomaly Rate ↓", *(rate(expert["rates"].get(m)) for m in METHODS)])
    paper = [["*(paper)* VBench", label, *(f"{v:.3f}" for v in PAPER_TABLE2[key])] for key, label in VBENCH_ROWS] + [
        ["*(paper)* Expert", "Expert Anomaly Rate ↓", *(f"{v:.3f}" for v in PAPER_TABLE2["expert_rate"])]
    ]
    lines = [
        "# Table 2: aligning Wan-2.1 with UnifiedReward (UR) vs UR + CaC",
        "",
        f"{results['num_prompts']} evaluation prompts, one video per prompt and method; Best-of-N over "
        f"{results['num_candidates']} candidates. Rates: value [95 % Wilson interval] (abnormal/judged). "
        "Rows marked *(paper)* are the published numbers (Wan-2.1-1.3B, 480P, 81 frames).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows + paper),
        "",
        f"Expert sheet: `{results['sheet']}` (blind; `key.json` beside it maps ids to methods)"
        + ("." if expert is not None else "; fill it, then rerun with `--import-sheet` for the expert rate."),
        "",
    ]
    if expert is not None and expert["unannotated"]:
        n = len(expert["unannotated"])
        lines += [f"{n} sheet videos have no valid annotation yet and are left out of the expert rates.", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------ main
def step(out: Path, name: str, fn):
    """Run ``fn()`` once: its JSON result is kept in ``out/steps/<name>.json`` and reused by later runs."""
    path = out / "steps" / f"{name}.json"
    if path.is_file():
        print(f"[table2] {name}: done earlier", flush=True)
        return json.loads(path.read_text(encoding="utf-8"))
    print(f"[table2] {name} ...", flush=True)
    start = time.perf_counter()
    value = fn()
    atomic_write_json(path, value)
    print(f"[table2] {name}: {time.perf_counter() - start:.0f} s", flush=True)
    return value


def main(argv: list[str] | None = None) -> Path:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--import-sheet" in args:  # a flag for the one step people run by hand
        i = args.index("--import-sheet")
        if i + 1 >= len(args):
            raise SystemExit("--import-sheet needs the filled sheet.csv")
        args[i : i + 2] = [f"import_sheet={args[i + 1]}"]
    cfg = load_config(Table2Config, args, prog="table2_alignment.py")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    paths = model_paths(cfg, out)

    runs = {
        "base": Path(step(out, "base", lambda: str(sample_one_per_prompt(cfg, paths, out, "base", None)))),
        "bon": Path(step(out, "best_of_n", lambda: str(best_of_n(cfg, paths, out)))),
    }
    for method, rewards in (("grpo_ur", ("unified",)), ("grpo_ur_cac", ("unified", "cac"))):
        lora = Path(
            step(out, f"flow_{method}", lambda m=method, r=rewards: str(flow_grpo(cfg, paths, out, f"flow_{m}", r)))
        )
        runs[method] = Path(
            step(
                out,
                f"samples_{method}",
                lambda m=method, lo=lora: str(sample_one_per_prompt(cfg, paths, out, f"samples_{m}", lo)),
            )
        )
    listing = step(out, "videos", lambda: collect_videos(out, runs))
    vbench = step(out, "vbench", lambda: vbench_scores(cfg, out, listing))
    cac = step(out, "cac_judge", lambda: cac_rates(cfg, paths, out, listing))
    sheet = out / "expert_sheet"
    step(
        out,
        "expert_sheet",
        lambda: str(
            export_sheet(
                {m: [(out / v["video"], v["prompt"]) for v in vids] for m, vids in listing.items()},
                sheet,
                fps=cfg.sheet_fps,
                seed=cfg.seed,
            )
        ),
    )
    results = {
        "num_prompts": len(listing["base"]),
        "num_candidates": cfg.num_candidates,
        "vbench": vbench,
        "cac": {m: {k: v for k, v in r.items() if k != "predictions"} for m, r in cac.items()},
        "sheet": str(sheet / "sheet.csv"),
        "expert": None if cfg.import_sheet is None else expert_rates(Path(cfg.import_sheet)),
    }
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "table2.md", format_table(results))
    print(f"[table2] wrote {out / 'table2.md'}", flush=True)
    return out / "table2.md"


if __name__ == "__main__":
    main()
