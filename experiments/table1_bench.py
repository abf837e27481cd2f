"""Table 1, Fig. 4, Table S3 and Table S4 of the paper: anomaly judges on a benchmark manifest (Sec. 4.1, App. C.2).

Every judge of the config runs over the benchmark with :func:`cac_align.eval.bench.run_bench` (resumable: a killed
run goes on where it stopped), under one or two protocols (App. C.2): ``cac`` is CaC's prompt and two-turn (or
single-turn) machinery (:class:`~cac_align.eval.bench.CaCJudge`, which works for any Qwen3-VL checkpoint, CaC or not);
``unified`` is UnifiedReward's own prompt, a video being abnormal when its 1-5 score is below a threshold
(:class:`~cac_align.eval.bench.UnifiedJudge`). A judge with both protocols is reported under the stronger one
(higher accuracy, :func:`~cac_align.eval.bench.stronger_protocol`), as the paper does for its baselines.

Real scale (CaC-Bench-Main and -Hard as annotation manifests, local checkpoints; one GPU)::

    python experiments/table1_bench.py --config experiments/configs/table1_bench.yaml \\
        data.manifest=bench/main.jsonl data.hard_manifest=bench/hard.jsonl output_dir=runs/table1 \\
        judges.CaC.path=ckpt/CaC-8B judges.Qwen3-VL-8B.path=ckpt/Qwen3-VL-8B-Instruct \\
        judges.UnifiedReward.path=ckpt/UnifiedReward-2.0-qwen3vl-8b device=cuda:0 dtype=bfloat16

Tiny (CPU, about a minute; tiny random checkpoints on the synthetic anomaly world, meaningless numbers)::

    python experiments/table1_bench.py --config experiments/configs/tiny/table1_bench.yaml output_dir=runs/table1_tiny

Outputs in ``output_dir``: ``table1.md`` (Table 1, Fig. 4, Table S3 and Table S4 in the paper's layouts, this run's
rows above the paper's published rows), ``fig4.png`` (recall per difficulty group, every judge and the paper's),
``summary.json`` (the chosen protocol and metrics per judge), and ``runs/<judge>/<protocol>[-hard]/`` (each bench
run's ``predictions.jsonl``, ``metrics.json``, ``tables.md`` and charts); ``config.yaml``.

Departures from the paper: Fig. 4 uses the judges' runs on ``data.hard_manifest`` when one is given (the paper's
CaC-Bench-Hard), else the anomalous videos of the main manifest, split by the same duration/area rules
(:func:`cac_align.data.difficulty.hard_split`). The protocol is chosen on the main manifest and kept for the hard
one. UnifiedReward's threshold is a setting (3 by default: below the middle of its 1-5 scale); the paper does not
give the one it used.
"""

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cac_align.config import load_config, save_config
from cac_align.data.difficulty import HARD_SPLITS
from cac_align.eval.bench import CATEGORY_TITLES, SPLIT_TITLES, CaCJudge, UnifiedJudge, run_bench, stronger_protocol
from cac_align.schema import TAXONOMY
from cac_align.utils import atomic_path, atomic_write_json, atomic_write_text

# The paper's published numbers: Table 1 (anomalous R/P/F1, normal R/P/F1, accuracy), Fig. 4 (recall per difficulty
# group, in HARD_SPLITS order), Table S3 (recall per category, in TAXONOMY order), Table S4 (temporal, spatial IoU).
PAPER_TABLE1: dict[str, tuple[float, ...]] = {
    "Gemini-2.5-Pro": (0.854, 0.530, 0.654, 0.244, 0.626, 0.351, 0.549),
    "Gemini-3.1-Pro": (0.537, 0.692, 0.605, 0.583, 0.476, 0.524, 0.560),
    "GPT-4o": (0.364, 0.454, 0.404, 0.562, 0.469, 0.511, 0.463),
    "Qwen3-VL-8B": (0.108, 0.574, 0.182, 0.920, 0.508, 0.654, 0.514),
    "Qwen3-VL-32B": (0.066, 0.702, 0.121, 0.972, 0.510, 0.669, 0.519),
    "UnifiedReward": (0.538, 0.563, 0.550, 0.582, 0.557, 0.569, 0.560),
    "UnifiedReward-Think": (0.428, 0.504, 0.463, 0.578, 0.503, 0.538, 0.503),
    "VR-Thinker": (0.382, 0.554, 0.452, 0.692, 0.528, 0.599, 0.537),
    "Skyra-RL": (0.982, 0.500, 0.663, 0.018, 0.500, 0.035, 0.500),
    "VideoVeritas": (0.414, 0.539, 0.468, 0.646, 0.524, 0.579, 0.530),
    "Ours (CaC)": (0.910, 0.767, 0.833, 0.724, 0.889, 0.798, 0.817),
}
PAPER_FIG4: dict[str, tuple[float, ...]] = {
    "Gemini-3.1-Pro": (0.21, 0.46, 0.31, 0.57),
    "UnifiedReward": (0.32, 0.53, 0.37, 0.51),
    "VR-Thinker": (0.23, 0.39, 0.40, 0.33),
    "CaC (Ours)": (0.70, 0.69, 0.76, 0.71),
}
PAPER_S3: dict[str, tuple[float, ...]] = {
    "Gemini-3.1-Pro": (0.498, 0.361, 0.343, 0.578, 0.621),
    "Qwen3-VL-32B": (0.072, 0.136, 0.125, 0.111, 0.483),
    "UnifiedReward-Think": (0.162, 0.157, 0.106, 0.223, 0.474),
    "VideoVeritas": (0.245, 0.176, 0.171, 0.198, 0.572),
    "Ours (CaC)": (0.704, 0.492, 0.414, 0.633, 0.724),
}
PAPER_S4: dict[str, tuple[float, float]] = {
    "Gemini-3.1-Pro": (0.163, 0.085),
    "Base Model w/ Inference Strategy": (0.235, 0.067),
    "Ours (CaC)": (0.695, 0.340),
}

Protocol = Literal["cac", "unified"]


# ----------------------------------------------------------------------------------------------------------- config
@dataclass
class DataConfig:
    # CaC-Bench-Main manifest (JSONL, cac_align.schema); null renders the synthetic anomaly world into output_dir/data.
    manifest: str | None = None
    # CaC-Bench-Hard manifest (anomalous videos) for Fig. 4; null: Fig. 4 from the main manifest's anomalous videos.
    hard_manifest: str | None = None
    # Only the first N videos of each manifest (null: all).
    limit: int | None = None
    # Synthetic world (when manifest is null): number of videos, seed, frame size [W, H] and length in seconds.
    synthetic_videos: int = 8
    synthetic_seed: int = 1
    synthetic_size: tuple[int, int] = (64, 64)
    synthetic_seconds: float = 2.0


@dataclass
class JudgeConfig:
    # Checkpoint folder (model + processor); "tiny" writes a tiny random Qwen3-VL to output_dir/models/<name> (smoke
    # runs only: its scores are noise).
    path: str
    # Protocols to run (App. C.2): cac (CaC's prompt, CaCReward) and/or unified (UnifiedReward's prompt + threshold);
    # with both, the row reports the stronger one (higher accuracy).
    protocols: list[Protocol] = field(default_factory=lambda: ["cac"])
    # cac protocol: two-turn or single-turn inference; null keeps the checkpoint's (cac_reward.json, else two-turn).
    mode: Literal["two-turn", "single-turn"] | None = None
    # unified protocol: a video is abnormal when its 1-5 score is below this.
    threshold: float = 3.0
    # Keyword settings of CaCReward under the cac protocol, e.g. {max_new_tokens: 1024}.
    cac_settings: dict[str, Any] = field(default_factory=dict)
    # Keyword settings of UnifiedReward under the unified protocol, e.g. {soft: true}.
    unified_settings: dict[str, Any] = field(default_factory=dict)
    # Seed of the tiny random checkpoint (path: tiny).
    seed: int = 0


@dataclass
class Table1Config:
    """Table 1 / Fig. 4 / Table S3 / Table S4: anomaly judges on a benchmark manifest (paper Sec. 4.1, App. C.2)."""

    # Output folder (tables, chart, every bench run; a rerun resumes).
    output_dir: str
    data: DataConfig = field(default_factory=DataConfig)
    # The judges, by the name of their row; the table keeps this order.
    judges: dict[str, JudgeConfig] = field(default_factory=dict)
    # Videos judged together.
    batch_size: int = 4
    # Device of the judges, e.g. cuda:0 (null: CPU).
    device: str | None = None
    # Weights dtype: bfloat16 | float16 | float32 (null: the checkpoint's).
    dtype: str | None = None

    def __post_init__(self) -> None:
        if not self.judges:
            raise ValueError("judges: expected at least one judge, e.g. {CaC: {path: ckpt/CaC-8B}}")
        for name, j in self.judges.items():
            if not j.protocols or len(set(j.protocols)) != len(j.protocols):
                raise ValueError(
                    f"judges.{name}.protocols: expected distinct protocols (cac, unified), got {j.protocols}"
                )


# ------------------------------------------------------------------------------------------------------------ runs
def checkpoint(name: str, judge: JudgeConfig, out: Path) -> Path:
    """The judge's checkpoint folder; for ``path: tiny`` a tiny random Qwen3-VL built once under ``out/models``."""
    if judge.path != "tiny":
        return Path(judge.path)
    from cac_align.testing import build_tiny_qwen3vl

    folder = out / "models" / name.replace("/", "_")
    if not (folder / "config.json").is_file():
        build_tiny_qwen3vl(folder, seed=judge.seed, vocab="bpe")
    return folder


def make_judge(protocol: Protocol, path: Path, judge: JudgeConfig, device: str | None, dtype: str | None):
    if protocol == "cac":
        from cac_align.reward.cac import CaCReward

        settings = dict(judge.cac_settings)
        if judge.mode is not None:
            settings["mode"] = judge.mode
        return CaCJudge(CaCReward.from_pretrained(path, device=device, dtype=dtype, **settings))
    from cac_align.reward.unified import UnifiedReward

    reward = UnifiedReward.from_pretrained(path, device=device, dtype=dtype, **judge.unified_settings)
    return UnifiedJudge(reward, threshold=judge.threshold)


def synthetic_manifest(data: DataConfig, out: Path) -> Path:
    from cac_align.data.synthetic import generate

    return generate(
        out / "data",
        num_videos=data.synthetic_videos,
        seed=data.synthetic_seed,
        size=data.synthetic_size,
        seconds=data.synthetic_seconds,
        progress=False,
    )


# --------------------------------------------------------------------------------------------------------- tables
def fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(r) + " |" for r in [header, ["---"] * len(header), *rows]]


def table1_values(m: dict[str, Any]) -> list[float | None]:
    t = m["table1"]
    a, n = t["anomalous"], t["normal"]
    return [a["recall"], a["precision"], a["f1"], n["recall"], n["precision"], n["f1"], t["accuracy"]]


def format_tables(summary: dict[str, Any]) -> str:
    """``table1.md``: Table 1, Fig. 4, Table S3 and Table S4 (this run's rows, then the paper's)."""
    judges = summary["judges"]
    paper = "*(paper)* "
    protocol_note = {
        name: j["protocol"] + ("" if len(j["tried"]) == 1 else f" (stronger of {', '.join(j['tried'])})")
        for name, j in judges.items()
    }
    main, hard = summary["manifest"], summary["hard_manifest"]
    first = next(iter(judges.values()))["main"]
    lines = [
        "# Anomaly-judge benchmark: Table 1, Fig. 4, Table S3, Table S4",
        "",
        f"Main manifest `{main}`: {first['num_videos']} videos ({first['num_abnormal']} anomalous, "
        f"{first['num_normal']} normal). Protocols (App. C.2): `cac` = CaC's prompt and machinery, `unified` = "
        "UnifiedReward's own prompt with a score threshold; a judge run under both is reported under the stronger.",
        "Rows marked *(paper)* are the published numbers on CaC-Bench, for reference.",
        "",
        "## Table 1: CaC-Bench-Main",
        "",
        *md_table(
            ["Model", "Protocol", "Anom. Recall", "Anom. Precision", "Anom. F1", "Norm. Recall", "Norm. Precision"]
            + ["Norm. F1", "Acc."],
            [[name, protocol_note[name], *(fmt(v) for v in table1_values(j["main"]))] for name, j in judges.items()]
            + [[paper + name, "", *(fmt(v) for v in vals)] for name, vals in PAPER_TABLE1.items()],
        ),
        "",
        "Invalid predictions (no usable status, counted as errors): "
        + ", ".join(f"{name} {j['main']['num_invalid']}" for name, j in judges.items())
        + ".",
        "",
        "## Fig. 4: recall per difficulty group (CaC-Bench-Hard)",
        "",
        (
            f"From `{hard}`."
            if hard
            else "No hard manifest given: the main manifest's anomalous videos, split by the same duration/area rules."
        ),
        "",
        *md_table(
            ["Model", *(SPLIT_TITLES[s] for s in HARD_SPLITS)],
            [
                [name, *(fmt(j["hard"]["hard_splits"][s]["recall"], 2) for s in HARD_SPLITS)]
                for name, j in judges.items()
            ]
            + [["videos", *(str(first_hard(judges)["hard_splits"][s]["n"]) for s in HARD_SPLITS)]]
            + [[paper + name, *(fmt(v, 2) for v in vals)] for name, vals in PAPER_FIG4.items()],
        ),
        "",
        "## Table S3: recall per anomaly category (CaC-Bench-Main)",
        "",
        *md_table(
            ["Model", *(CATEGORY_TITLES[c] for c in TAXONOMY)],
            [[name, *(fmt(j["main"]["categories"][c]["recall"]) for c in TAXONOMY)] for name, j in judges.items()]
            + [["videos", *(str(first["categories"][c]["n"]) for c in TAXONOMY)]]
            + [[paper + name, *(fmt(v) for v in vals)] for name, vals in PAPER_S3.items()],
        ),
        "",
        "## Table S4: localisation (CaC-Bench-Main)",
        "",
        *md_table(
            ["Model", "Temporal IoU", "Spatial IoU"],
            [
                [name, fmt(j["main"]["localization"]["temporal_iou"]), fmt(j["main"]["localization"]["spatial_iou"])]
                for name, j in judges.items()
            ]
            + [[paper + name, fmt(t), fmt(s)] for name, (t, s) in PAPER_S4.items()],
        ),
        "",
        "n/a: the judge gives no windows or boxes (UnifiedReward's protocol), or no video of that kind exists.",
        "",
    ]
    return "\n".join(lines)


def first_hard(judges: dict[str, Any]) -> dict[str, Any]:
    return next(iter(judges.values()))["hard"]


def plot_fig4(summary: dict[str, Any], path: Path) -> Path:
    """Fig. 4 as grouped bars: recall per difficulty group, this run's judges then the paper's (hatched)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [
        (name, [j["hard"]["hard_splits"][s]["recall"] for s in HARD_SPLITS], False)
        for name, j in summary["judges"].items()
    ]
    series += [(f"{name} (paper)", list(vals), True) for name, vals in PAPER_FIG4.items()]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for k, (name, values, published) in enumerate(series):
        xs = [i - 0.4 + width * (k + 0.5) for i in range(len(HARD_SPLITS))]
        ax.bar(xs, [0.0 if v is None else v for v in values], width, label=name, hatch="//" if published else None)
    ax.set_xticks(range(len(HARD_SPLITS)), [SPLIT_TITLES[s] for s in HARD_SPLITS])
    ax.set_ylabel("recall")
    ax.set_ylim(0, 1)
    ax.set_title("Fig. 4: recall per difficulty group (duration, area)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> Path:
    cfg = load_config(Table1Config, argv, prog="table1_bench.py")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    manifest = Path(cfg.data.manifest) if cfg.data.manifest else synthetic_manifest(cfg.data, out)
    hard = Path(cfg.data.hard_manifest) if cfg.data.hard_manifest else None

    judges: dict[str, Any] = {}
    for name, judge in cfg.judges.items():
        path = checkpoint(name, judge, out)
        runs: dict[str, dict[str, Any]] = {}
        for protocol in judge.protocols:
            start = time.perf_counter()
            print(f"[table1] {name}: protocol {protocol} on {manifest}", flush=True)
            bench = make_judge(protocol, path, judge, cfg.device, cfg.dtype)
            folder = out / "runs" / name.replace("/", "_") / protocol
            runs[protocol] = run_bench(manifest, bench, folder, cfg.batch_size, cfg.data.limit, progress=False)
            runs[protocol]["protocol"] = protocol
            acc = fmt(runs[protocol]["table1"]["accuracy"])
            print(f"[table1] {name}/{protocol}: accuracy {acc} ({time.perf_counter() - start:.1f} s)", flush=True)
        best = stronger_protocol(*runs.values())
        entry = {"path": str(path), "protocol": best["protocol"], "tried": list(runs), "main": best, "hard": best}
        if hard is not None:
            print(f"[table1] {name}: protocol {best['protocol']} on {hard}", flush=True)
            bench = make_judge(best["protocol"], path, judge, cfg.device, cfg.dtype)
            folder = out / "runs" / name.replace("/", "_") / f"{best['protocol']}-hard"
            entry["hard"] = run_bench(hard, bench, folder, cfg.batch_size, cfg.data.limit, progress=False)
        judges[name] = entry

    summary = {"manifest": str(manifest), "hard_manifest": None if hard is None else str(hard), "judges": judges}
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "table1.md", format_tables(summary))
    plot_fig4(summary, out / "fig4.png")
    print(f"[table1] wrote {out / 'table1.md'} and {out / 'fig4.png'}", flush=True)
    return out / "table1.md"


if __name__ == "__main__":
    main()
