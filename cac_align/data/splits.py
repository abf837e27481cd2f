"""Disjoint training splits for CaC's three stages from one manifest (paper Sec. 3.2, App. C.2).

App. C.2: "The three training stages use disjoint data splits, and each stage keeps a 1:1 ratio between normal and
anomalous samples." Stage 1 (single-frame warmup) samples anomalous *frames* from videos that contain single-frame
recognisable anomalies (Object Distortion, Human Distortion, Character Anomalies) and normal frames from normal
videos; stage 2 (multi-frame SFT) uses full videos and clips cut from them; stage 3 (two-turn GRPO) a non-overlapping
set of instances. :func:`build_splits` assigns each *video* to at most one stage:

1. ``m = min(#anomalous, #normal)`` videos of each kind can be used (the rest of the larger pool is recorded as
   unused); the anomalous budget is divided by ``fractions`` (default about 1/3 : 0.42 : 1/4, the proportions of the
   paper's 5K : ~6.6K : 3.75K anomalous videos).
2. Stage 1 draws its anomalous videos from those with a single-frame anomaly that carries boxes (the warmup teaches
   grounding); if there are too few, the shortfall moves to stage 2 and is recorded. Stage 3, then stage 2, draw from
   the remaining anomalous videos.
3. Each stage then gets exactly as many normal videos as anomalous ones.

Which frames or clips a stage cuts from its videos is the stage's data builder's business. Everything is seeded;
``splits.json`` records the seed, the fractions, the source manifest and its SHA-256, the counts, the shortfall and
the video lists (relative to ``out_dir``), and ``stage{1,2,3}.jsonl`` are manifests (input order kept, video paths relative to ``out_dir``,
``meta["split"]`` set) that the recipes read as ``data.manifest=...``.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

from cac_align.data.importer import absolute_videos, save_manifest
from cac_align.schema import SINGLE_FRAME_LABELS, Annotation, read_manifest
from cac_align.utils import atomic_write_json

STAGES: tuple[str, ...] = ("stage1", "stage2", "stage3")
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.33, 0.42, 0.25)


def single_frame_eligible(annotation: Annotation) -> bool:
    """Whether an anomalous video can give stage-1 frames: it has a single-frame category anomaly with boxes."""
    return any(a.label in SINGLE_FRAME_LABELS and a.bboxes for a in annotation.anomalies)


def build_splits(
    manifest: str | Path,
    out_dir: str | Path,
    seed: int = 0,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
) -> dict[str, Any]:
    """Split a manifest into disjoint, balanced stage manifests (module doc); returns the ``splits.json`` record."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"fractions must be three non-negative numbers with a positive sum, got {fractions}")
    total = sum(fractions)
    f1, _, f3 = (f / total for f in fractions)
    manifest = Path(manifest)
    out = Path(out_dir)
    anns = absolute_videos(read_manifest(manifest), manifest)
    seen: dict[str, int] = {}
    for i, a in enumerate(anns):
        if a.video in seen:
            raise ValueError(f"{manifest}: video {a.video} appears on lines {seen[a.video] + 1} and {i + 1}")
        seen[a.video] = i
    rng = random.Random(seed)
    abnormal = [i for i, a in enumerate(anns) if a.is_abnormal]
    normal = [i for i, a in enumerate(anns) if not a.is_abnormal]
    rng.shuffle(abnormal)
    rng.shuffle(normal)
    m = min(len(abnormal), len(normal))
    t1, t3 = round(f1 * m), round(f3 * m)
    t3 = min(t3, m - t1)

    eligible = [i for i in abnormal if single_frame_eligible(anns[i])]
    stage_abn: dict[str, list[int]] = {"stage1": eligible[:t1]}
    shortfall = t1 - len(stage_abn["stage1"])
    taken = set(stage_abn["stage1"])
    rest = [i for i in abnormal if i not in taken]
    stage_abn["stage3"] = rest[:t3]
    t2 = m - len(stage_abn["stage1"]) - len(stage_abn["stage3"])
    stage_abn["stage2"] = rest[t3 : t3 + t2]
    used_abn = set().union(*stage_abn.values())

    stage_norm: dict[str, list[int]] = {}
    start = 0
    for s in STAGES:
        k = len(stage_abn[s])
        stage_norm[s] = normal[start : start + k]
        start += k

    base = out.resolve()

    def rel(i: int) -> str:
        return os.path.relpath(anns[i].video, base)

    record: dict[str, Any] = {
        "source": str(manifest),
        "source_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(),
        "seed": seed,
        "fractions": list(fractions),
        "counts": {},
        "stage1_shortfall": shortfall,
        "unused": {
            "anomalous": sorted(rel(i) for i in abnormal if i not in used_abn),
            "normal": sorted(rel(i) for i in normal[start:]),
        },
        "videos": {},
    }
    for s in STAGES:
        idx = sorted(stage_abn[s] + stage_norm[s])  # input order
        stage = [replace(anns[i], meta={**anns[i].meta, "split": s}) for i in idx]
        save_manifest(out / f"{s}.jsonl", stage)
        record["counts"][s] = {
            "anomalous": len(stage_abn[s]),
            "normal": len(stage_norm[s]),
            "without_cot": sum(a.cot is None for a in stage),
        }
        record["videos"][s] = [rel(i) for i in idx]
    atomic_write_json(out / "splits.json", record)
    return record
