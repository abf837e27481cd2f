"""The anomaly-judge benchmark: any CaC-compatible judge over an annotation manifest (paper Sec. 4.1, App. A, C.2-C.3,
D.1-D.2).

    cac-align bench data/manifest.jsonl --model ckpt/cac --out runs/bench-cac               # CaC, two-turn
    cac-align bench data/manifest.jsonl --model ckpt/qwen3-vl-8b --out runs/bench-qwen       # base model, CaC prompt
    cac-align bench data/manifest.jsonl --model ckpt/unifiedreward --out runs/bench-ur --judge unified --threshold 3

:func:`run_bench` asks a :class:`Judge` about every video of the manifest, a batch at a time, and appends one JSON
line per video to ``OUT/predictions.jsonl`` (status, score, windows, boxes, labels, raw answers, seconds). A rerun on
the same ``OUT`` skips the videos already there, so a killed run resumes where it stopped (a torn last line is
dropped). Then it writes what the paper's tables report (:mod:`cac_align.eval.metrics` fixes the conventions):

* ``metrics.json`` (atomic): Table 1 (recall, precision, F1 for anomalous and for normal videos; accuracy), Fig. 4
  (recall per CaC-Bench-Hard difficulty group), Table S3 (recall per anomaly category), Table S4 (temporal and
  spatial IoU) and seconds per video (Table S2: the judge's wall-clock time per video, batching included);
* ``tables.md``: the same numbers in the paper's layouts, each beside the paper's published CaC row;
* one bar chart per table: ``table1.png``, ``fig4_hard_splits.png``, ``tableS3_categories.png``,
  ``tableS4_localization.png``, ``tableS2_seconds.png``.

Judges (App. C.2, baseline protocol). :class:`CaCJudge` wraps :class:`~cac_align.reward.cac.CaCReward`: a CaC
checkpoint, or any local Qwen3-VL checkpoint under CaC's prompt and the same two-turn (or single-turn) machinery.
:class:`UnifiedJudge` runs UnifiedReward under its own prompt and calls a video abnormal when its 1-5 score is below a
threshold; it does not localise, so the IoUs are n/a. The paper reports, for each baseline, the stronger of the
CaC-prompt and the official-protocol evaluations: :func:`stronger_protocol` picks it from two runs' metrics.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cac_align.data.difficulty import HARD_SPLITS
from cac_align.eval.metrics import Prediction, benchmark_metrics
from cac_align.schema import TAXONOMY, Annotation, read_manifest, resolve_video
from cac_align.utils import append_jsonl, atomic_path, atomic_write_json, atomic_write_text, read_jsonl

if TYPE_CHECKING:
    from cac_align.reward.cac import CaCReward, Evidence
    from cac_align.reward.unified import UnifiedReward

PREDICTIONS_FILE = "predictions.jsonl"

PAPER_CAC: dict[str, Any] = {
    "table1": {
        "anomalous": {"recall": 0.910, "precision": 0.767, "f1": 0.833},
        "normal": {"recall": 0.724, "precision": 0.889, "f1": 0.798},
        "accuracy": 0.817,
    },
    "hard_splits": {"<1s,<20%": 0.70, "<1s,>=20%": 0.69, ">=1s,<20%": 0.76, ">=1s,>=20%": 0.71},
    "categories": {
        "Object Distortion": 0.704,
        "Human Distortion": 0.492,
        "Motion Anomalies": 0.414,
        "Physical Violations": 0.633,
        "Character Anomalies": 0.724,
    },
    "localization": {"temporal_iou": 0.695, "spatial_iou": 0.340},
    "seconds_per_video": 33.2,
}
"""The paper's published CaC numbers: Table 1, Fig. 4, Table S3, Table S4 and Table S2 (two-turn, A800, 21 frames)."""


# ----------------------------------------------------------------------------------------------------------------------
# Judges
# ----------------------------------------------------------------------------------------------------------------------


class Judge(Protocol):
    """Anything the benchmark can ask: ``judge(videos, prompts) -> one Prediction per video``.

    ``videos`` are video file paths, ``prompts`` their generation prompts; ``name`` identifies the judge and its
    settings in ``predictions.jsonl`` (a resumed run must use a judge of the same name).
    """

    name: str

    def __call__(self, videos: Sequence[Path], prompts: Sequence[str]) -> list[Prediction]: ...


def prediction_from_evidence(ev: Evidence) -> Prediction:
    """The :class:`Prediction` of a CaCReward verdict: final status and Eq. 7 reward, turn-1 windows on turn 1's
    grid (``ev.fps``), the final boxes (turn-2 clip frames at ``ev.clip_fps`` when turn 2 ran, else turn-1 frames)."""
    first = ev.turns[0].judgment
    return Prediction(
        status=ev.status,
        score=ev.reward,
        fps=ev.fps,
        windows=[a.frames for a in first.anomalies if a.frames is not None],
        boxes={k: list(v) for k, v in ev.boxes.items()},
        clip_fps=ev.clip_fps if len(ev.turns) > 1 else None,
        labels=sorted({a.label for a in ev.anomalies if a.label in TAXONOMY}),
        answers=[t.text for t in ev.turns],
    )


class CaCJudge:
    """CaCReward as a benchmark judge: a CaC checkpoint, or any Qwen3-VL checkpoint under CaC's prompt (App. C.2).

    Args:
        reward: the loaded reward; its ``mode`` (two-turn / single-turn) is the protocol.
        name: the judge's name in the predictions (default ``"cac/<mode>"``).
    """

    def __init__(self, reward: CaCReward, name: str | None = None) -> None:
        self.reward = reward
        self.name = name or f"cac/{reward.mode}"

    def __call__(self, videos: Sequence[Path], prompts: Sequence[str]) -> list[Prediction]:
        return [prediction_from_evidence(ev) for ev in self.reward.judge_batch(list(videos), list(prompts))]


class UnifiedJudge:
    """UnifiedReward under its own prompt and scoring protocol (App. C.2): abnormal when the score is < ``threshold``.

    The score is the mean of the reward's dimensions, in [1, 5]. An unparsable answer (score None) is an invalid
    prediction. No windows or boxes: the IoUs of such a run are n/a.
    """

    def __init__(self, reward: UnifiedReward, threshold: float = 3.0, name: str | None = None) -> None:
        if not math.isfinite(threshold):
            raise ValueError(f"threshold: expected a finite number (scores are 1-5), got {threshold}")
        self.reward = reward
        self.threshold = threshold
        self.name = name or f"unified/threshold={threshold:g}"

    def __call__(self, videos: Sequence[Path], prompts: Sequence[str]) -> list[Prediction]:
        scores = self.reward(list(videos), list(prompts))
        answers = self.reward.last_answers if not self.reward.soft else [""] * len(scores)
        out = []
        for score, answer in zip(scores, answers, strict=True):
            status = None if score is None else ("abnormal" if score < self.threshold else "normal")
            out.append(Prediction(status=status, score=score, answers=[answer] if answer else []))
        return out


# ----------------------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------------------


def run_bench(
    manifest: str | Path,
    judge: Judge,
    out_dir: str | Path,
    batch_size: int = 1,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Judge every video of ``manifest`` (resumably) and write ``metrics.json``, ``tables.md`` and the charts.

    Args:
        manifest: an annotation manifest (JSONL, :func:`cac_align.schema.read_manifest`).
        judge: a :class:`Judge` (:class:`CaCJudge`, :class:`UnifiedJudge` or any other).
        out_dir: where ``predictions.jsonl`` and the reports go; predictions already there are reused.
        batch_size: videos per judge call.
        limit: only the first ``limit`` videos of the manifest.
        progress: show a progress bar.

    Returns:
        The metrics written to ``metrics.json``.

    Raises:
        ValueError: ``predictions.jsonl`` was written for another manifest or judge, or a judge returned the wrong
            number of predictions.
    """
    from tqdm import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    manifest, out_dir = Path(manifest), Path(out_dir)
    annotations = read_manifest(manifest)[:limit]
    path = out_dir / PREDICTIONS_FILE
    records = load_predictions(path, annotations, judge.name)

    todo = [i for i in range(len(annotations)) if i not in records]
    with tqdm(total=len(annotations), initial=len(records), desc="bench", unit="video", disable=not progress) as bar:
        for b in range(0, len(todo), batch_size):
            batch = todo[b : b + batch_size]
            videos = [resolve_video(annotations[i], manifest) for i in batch]
            start = time.perf_counter()
            preds = judge(videos, [annotations[i].prompt for i in batch])
            seconds = (time.perf_counter() - start) / len(batch)
            if len(preds) != len(batch):
                raise ValueError(f"judge {judge.name!r} returned {len(preds)} predictions for {len(batch)} videos")
            for i, pred in zip(batch, preds, strict=True):
                record = {"index": i, "video": annotations[i].video, "judge": judge.name, "seconds": seconds}
                record.update(pred.to_dict())
                append_jsonl(path, record)
                records[i] = record
            bar.update(len(batch))

    ordered = [records[i] for i in range(len(annotations))]
    metrics: dict[str, Any] = {"judge": judge.name, "manifest": str(manifest)}
    metrics.update(benchmark_metrics(annotations, [Prediction.from_dict(r) for r in ordered]))
    metrics["seconds_per_video"] = sum(r["seconds"] for r in ordered) / len(ordered) if ordered else None
    atomic_write_json(out_dir / "metrics.json", metrics)
    atomic_write_text(out_dir / "tables.md", format_tables(metrics))
    plot_tables(metrics, out_dir)
    return metrics


def load_predictions(path: Path, annotations: Sequence[Annotation], judge_name: str) -> dict[int, dict[str, Any]]:
    """The per-video records already in ``path``, by manifest index (those past ``len(annotations)`` are left out).

    A torn last line (a run killed mid-write) is dropped from the file, so later appends start on a fresh line.

    Raises:
        ValueError: a record names another judge, or a video that is not the manifest's video at its index.
    """
    if not path.is_file():
        return {}
    records = read_jsonl(path)
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):  # torn last line: rewrite the complete records only
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    out: dict[int, dict[str, Any]] = {}
    for n, r in enumerate(records, 1):
        where = f"{path}: record {n}"
        if r.get("judge") != judge_name:
            raise ValueError(
                f"{where}: written by judge {r.get('judge')!r}, this run's judge is {judge_name!r}; use another --out"
            )
        i = r.get("index")
        if not isinstance(i, int) or i < 0:
            raise ValueError(f"{where}: field 'index': expected a manifest index, got {i!r}")
        if i >= len(annotations):
            continue
        if r.get("video") != annotations[i].video:
            raise ValueError(
                f"{where}: field 'video' is {r.get('video')!r} but manifest entry {i} is {annotations[i].video!r}; "
                "the predictions belong to another manifest"
            )
        out[i] = r
    return out


def stronger_protocol(*runs: dict[str, Any]) -> dict[str, Any]:
    """App. C.2: of the metrics of several evaluations of one baseline (its official protocol and CaC's prompt),
    the one with the higher overall accuracy (Table 1 "Acc."); ties keep the earlier run, n/a counts lowest."""
    if not runs:
        raise ValueError("stronger_protocol: expected at least one run")

    def accuracy(run: dict[str, Any]) -> float:
        acc = run["table1"]["accuracy"]
        return -math.inf if acc is None else acc

    best = runs[0]
    for run in runs[1:]:
        if accuracy(run) > accuracy(best):
            best = run
    return best


# ----------------------------------------------------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------------------------------------------------

SPLIT_TITLES = {"<1s,<20%": "<1s, <20%", "<1s,>=20%": "<1s, ≥20%", ">=1s,<20%": "≥1s, <20%", ">=1s,>=20%": "≥1s, ≥20%"}
CATEGORY_TITLES = {
    "Object Distortion": "Object Dist.",
    "Human Distortion": "Human Dist.",
    "Motion Anomalies": "Motion Anom.",
    "Physical Violations": "Physics Viol.",
    "Character Anomalies": "Character Anom.",
}


def _fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Markdown table lines."""
    return ["| " + " | ".join(r) + " |" for r in [header, ["---"] * len(header), *rows]]


def _table1_values(m: dict[str, Any]) -> list[float | None]:
    t = m["table1"]
    a, n = t["anomalous"], t["normal"]
    return [a["recall"], a["precision"], a["f1"], n["recall"], n["precision"], n["f1"], t["accuracy"]]


def format_tables(metrics: dict[str, Any]) -> str:
    """``tables.md``: Table 1, Fig. 4, Table S3, Table S4 and Table S2 in the paper's layouts, beside the paper's CaC."""
    run = f"this run ({metrics['judge']})"
    paper = PAPER_CAC
    m = metrics
    splits, cats, loc = m["hard_splits"], m["categories"], m["localization"]
    lines = [
        f"# Anomaly-judge benchmark: {metrics['judge']}",
        "",
        f"Manifest `{metrics['manifest']}`: {m['num_videos']} videos ({m['num_abnormal']} anomalous, "
        f"{m['num_normal']} normal); {m['num_invalid']} predictions without a usable status (counted as errors).",
        "The paper's rows are CaC on CaC-Bench (Main: Table 1, S3, S4; Hard: Fig. 4), for reference only.",
        "",
        "## Table 1: detection (anomalous and normal videos as the positive class)",
        "",
        *_table(
            ["Model", "Anom. Recall", "Anom. Precision", "Anom. F1", "Norm. Recall", "Norm. Precision", "Norm. F1"]
            + ["Acc."],
            [
                [run, *(_fmt(v) for v in _table1_values(m))],
                ["CaC (paper, Table 1)", *(_fmt(v) for v in _table1_values(paper))],
            ],
        ),
        "",
        "Confusion (anomalous = positive): "
        + ", ".join(f"{k.upper() if k != 'invalid' else k} {v}" for k, v in m["table1"]["counts"].items())
        + ".",
        "",
        "## Fig. 4: recall per difficulty group (duration by area)",
        "",
        *_table(
            ["Model", *(SPLIT_TITLES[s] for s in HARD_SPLITS)],
            [
                [run, *(_fmt(splits[s]["recall"], 2) for s in HARD_SPLITS)],
                ["videos", *(str(splits[s]["n"]) for s in HARD_SPLITS)],
                ["CaC (paper, Fig. 4)", *(_fmt(paper["hard_splits"][s], 2) for s in HARD_SPLITS)],
            ],
        ),
        "",
        f"{m['num_unsplit']} anomalous videos without GT boxes have no area and no group.",
        "",
        "## Table S3: recall per anomaly category",
        "",
        *_table(
            ["Model", *(CATEGORY_TITLES[c] for c in TAXONOMY)],
            [
                [run, *(_fmt(cats[c]["recall"]) for c in TAXONOMY)],
                ["label matched", *(_fmt(cats[c]["recall_label_matched"]) for c in TAXONOMY)],
                ["videos", *(str(cats[c]["n"]) for c in TAXONOMY)],
                ["CaC (paper, Table S3)", *(_fmt(paper["categories"][c]) for c in TAXONOMY)],
            ],
        ),
        "",
        "## Table S4: localisation",
        "",
        *_table(
            ["Model", "Temporal IoU", "Spatial IoU"],
            [
                [run, _fmt(loc["temporal_iou"]), _fmt(loc["spatial_iou"])],
                ["detected videos only", _fmt(loc["temporal_iou_detected"]), _fmt(loc["spatial_iou_detected"])],
                ["CaC (paper, Table S4)", *(_fmt(paper["localization"][k]) for k in ("temporal_iou", "spatial_iou"))],
            ],
        ),
        "",
        (
            f"Means over {loc['n_temporal']} anomalous videos (temporal) and the {loc['n_spatial']} with GT boxes "
            "(spatial); a video not called abnormal scores 0."
            if loc["n_temporal"]
            else "n/a: the judge gives no windows or boxes, or there is no anomalous video."
        ),
        "",
        "## Table S2: inference time",
        "",
        *_table(
            ["Model", "Avg. time per video (s)", "Acc."],
            [
                [run, _fmt(m["seconds_per_video"], 2), _fmt(m["table1"]["accuracy"])],
                [
                    "CaC (paper, Table S2, A800)",
                    _fmt(paper["seconds_per_video"], 1),
                    _fmt(paper["table1"]["accuracy"]),
                ],
            ],
        ),
        "",
    ]
    return "\n".join(lines)


def plot_tables(metrics: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """One bar chart (PNG) per table, this run beside the paper's CaC; returns the files written."""
    out_dir = Path(out_dir)
    run, paper = metrics, PAPER_CAC
    loc_keys = ("temporal_iou", "spatial_iou")
    charts = [
        (
            "table1.png",
            "Table 1: detection",
            ["Anom. R", "Anom. P", "Anom. F1", "Norm. R", "Norm. P", "Norm. F1", "Acc."],
            _table1_values(run),
            _table1_values(paper),
        ),
        (
            "fig4_hard_splits.png",
            "Fig. 4: recall per difficulty group",
            [SPLIT_TITLES[s] for s in HARD_SPLITS],
            [run["hard_splits"][s]["recall"] for s in HARD_SPLITS],
            [paper["hard_splits"][s] for s in HARD_SPLITS],
        ),
        (
            "tableS3_categories.png",
            "Table S3: recall per category",
            [CATEGORY_TITLES[c] for c in TAXONOMY],
            [run["categories"][c]["recall"] for c in TAXONOMY],
            [paper["categories"][c] for c in TAXONOMY],
        ),
        (
            "tableS4_localization.png",
            "Table S4: localisation",
            ["Temporal IoU", "Spatial IoU"],
            [run["localization"][k] for k in loc_keys],
            [paper["localization"][k] for k in loc_keys],
        ),
        (
            "tableS2_seconds.png",
            "Table S2: seconds per video",
            ["seconds / video"],
            [run["seconds_per_video"]],
            [paper["seconds_per_video"]],
        ),
    ]
    return [
        _bar_chart(out_dir / f, title, labels, run["judge"], ours, theirs) for f, title, labels, ours, theirs in charts
    ]


def _bar_chart(
    path: Path,
    title: str,
    labels: Sequence[str],
    name: str,
    ours: Sequence[float | None],
    paper: Sequence[float | None],
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = range(len(labels))
    width = 0.38
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(labels) + 1.5), 3.4))
    for offset, values, label, color in (
        (-width / 2, ours, name, "tab:blue"),
        (width / 2, paper, "CaC (paper)", "0.6"),
    ):
        heights = [0.0 if v is None else v for v in values]
        bars = ax.bar([i + offset for i in x], heights, width, label=label, color=color)
        for bar, v in zip(bars, values, strict=True):
            ax.annotate(_fmt(v, 2), (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom")
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.set_title(title)
    ax.margins(y=0.15)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
