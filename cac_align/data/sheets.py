"""Expert annotation sheets for generated videos, and the expert anomaly rate (paper Sec. 4.2, Table 2).

Table 2's "Expert Anomaly Rate" is the fraction of generated videos in which human experts find an anomaly.
:func:`export_sheet` turns sets of generated videos (e.g. one per method: base model, Best-of-N, Flow-GRPO) into a
blind annotation sheet:

* ``sheet.csv`` - one row per video in a seeded random order, with an anonymous id and the columns of the flat
  annotation layout of :mod:`cac_align.data.importer` (``status``, ``category``, ``start``, ``end``, ``object``,
  ``reason``, ``bboxes`` left empty for the expert; ``num_frames`` and ``fps`` filled in);
* ``index.html`` - a static page showing each video and its frames at ``fps`` (4 by default) with their indices, the
  taxonomy, and how to fill the sheet (frame indices are those shown on the page);
* ``videos/`` and ``frames/`` - copies of the videos under their ids, and the frame thumbnails;
* ``key.json`` - which id is which video of which group. Keep it away from the experts (the sheet and the page name
  no method).

The expert writes ``normal`` or ``abnormal`` in ``status``; an anomalous video gets one row per anomaly instance (copy
the id and video cells to a new row for each further instance), boxes optional. :func:`import_sheet` validates the
filled sheet with the importer (every problem named by row and column; an unfilled ``status`` is reported, never
counted as normal), returns the annotations and the anomaly rate of each group with a Wilson score interval.
"""

from __future__ import annotations

import csv
import html
import json
import math
import random
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image

from cac_align.data.importer import CSV_COLUMNS, ImportResult, read_annotations
from cac_align.reward.prompts import TYPE_DEFINITIONS
from cac_align.schema import Annotation, read_manifest, resolve_video
from cac_align.utils import atomic_path, atomic_write_json, atomic_write_text
from cac_align.video import TURN1_FPS, load_video, to_uint8

SHEET_COLUMNS: tuple[str, ...] = ("id", "num_frames", *CSV_COLUMNS, "notes")
Z_95 = 1.959963984540054


def wilson_interval(k: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``k / n`` (95 % for the default ``z``); ``(0, 1)`` when n = 0."""
    if not 0 <= k <= n:
        raise ValueError(f"expected 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if k == 0 else max(0.0, center - half)  # exact at the edges, where rounding would leave 1e-17
    high = 1.0 if k == n else min(1.0, center + half)
    return (low, high)


@dataclass(frozen=True)
class AnomalyRate:
    """``abnormal`` of ``annotated`` videos were found anomalous; ``low``/``high`` bound the rate (Wilson, 95 %)."""

    abnormal: int
    annotated: int
    rate: float
    low: float
    high: float

    @classmethod
    def of(cls, abnormal: int, annotated: int) -> AnomalyRate:
        low, high = wilson_interval(abnormal, annotated)
        return cls(abnormal, annotated, abnormal / annotated if annotated else math.nan, low, high)

    def __str__(self) -> str:
        return f"{self.rate:.3f} [{self.low:.3f}, {self.high:.3f}] ({self.abnormal}/{self.annotated})"


@dataclass
class SheetResult:
    """A filled sheet read back: the annotations, every problem, the rate per group, what is still unannotated."""

    imported: ImportResult
    rates: dict[str, AnomalyRate] = field(default_factory=dict)
    unannotated: list[str] = field(default_factory=list)  # ids without a valid annotation

    @property
    def annotations(self) -> list[Annotation]:
        return self.imported.annotations


def collect_videos(source: str | Path) -> list[tuple[Path, str]]:
    """``(video, prompt)`` pairs of a folder (its ``*.mp4`` files, sorted; no prompts) or a JSONL manifest."""
    source = Path(source)
    if source.is_dir():
        videos = sorted(source.glob("*.mp4"))
        if not videos:
            raise FileNotFoundError(f"{source}: no .mp4 files in this folder")
        return [(v.resolve(), "") for v in videos]
    if source.suffix == ".jsonl":
        return [(resolve_video(a, source).resolve(), a.prompt) for a in read_manifest(source)]
    raise FileNotFoundError(f"{source}: expected a folder of .mp4 files or a .jsonl manifest")


def export_sheet(
    groups: Mapping[str, Sequence[tuple[Path, str]]],
    out_dir: str | Path,
    fps: float = TURN1_FPS,
    seed: int = 0,
    thumb_height: int = 120,
) -> Path:
    """Write a blind expert sheet (module doc) for ``{group name: [(video, prompt), ...]}``; returns ``sheet.csv``.

    Raises:
        VideoReadError: naming the file, when a video cannot be read.
        FileExistsError: when ``out_dir`` already holds a sheet (never overwrite experts' work).
    """
    out = Path(out_dir)
    if (out / "sheet.csv").exists():
        raise FileExistsError(f"{out / 'sheet.csv'} exists; export to a new folder")
    items = [(g, Path(v), p) for g, vids in groups.items() for v, p in vids]
    if not items:
        raise ValueError("export_sheet: no videos")
    random.Random(seed).shuffle(items)
    width = max(4, len(str(len(items))))
    rows, key, sections = [], {}, []
    for i, (group, video, prompt) in enumerate(items, 1):
        vid = f"v{i:0{width}d}"
        rel_video = f"videos/{vid}{video.suffix}"
        seq = load_video(video, fps)
        (out / "videos").mkdir(parents=True, exist_ok=True)
        with atomic_path(out / rel_video) as tmp:
            shutil.copyfile(video, tmp)
        thumbs = []
        for k, frame in enumerate(to_uint8(seq.frames)):
            img = Image.fromarray(frame)
            img = img.resize((max(1, round(img.width * thumb_height / img.height)), thumb_height))
            rel = f"frames/{vid}/{k:03d}.jpg"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            img.save(out / rel, quality=90)
            thumbs.append(rel)
        n = len(thumbs)
        rows.append({"id": vid, "num_frames": n, "video": rel_video, "prompt": prompt, "fps": f"{fps:g}"})
        key[vid] = {"group": group, "source": str(video.resolve())}
        sections.append(_section(vid, rel_video, prompt, thumbs))
    with atomic_path(out / "sheet.csv") as tmp:
        with tmp.open("w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, fieldnames=SHEET_COLUMNS)
            w.writeheader()
            for r in rows:
                w.writerow({c: r.get(c, "") for c in SHEET_COLUMNS})
    atomic_write_text(out / "index.html", _page(sections, fps))
    atomic_write_json(out / "key.json", {"seed": seed, "fps": fps, "videos": key})
    return out / "sheet.csv"


def import_sheet(sheet: str | Path, key: str | Path | None = None, check_videos: bool = True) -> SheetResult:
    """Read a filled sheet: validated annotations, problems, and the anomaly rate per group (``"all"`` without key).

    With ``key`` (the ``key.json`` written beside the sheet), annotations point at the original videos and carry
    ``meta["group"]``; rates are given per group and for ``"all"``.
    """
    sheet = Path(sheet)
    imported = read_annotations(sheet, videos_root=sheet.parent, check_videos=check_videos)
    ids = _sheet_ids(sheet)
    mapping = json.loads(Path(key).read_text(encoding="utf-8"))["videos"] if key is not None else None
    if mapping is not None:
        fixed = []
        for a in imported.annotations:
            entry = mapping.get(a.meta.get("id", ""))
            if entry is None:
                raise ValueError(f"{sheet}: id {a.meta.get('id')!r} of {a.video} is not in the key {key}")
            fixed.append(replace(a, video=entry["source"], meta={**a.meta, "group": entry["group"]}))
        imported.annotations = fixed
    done = {a.meta.get("id") for a in imported.annotations}
    result = SheetResult(imported, unannotated=[i for i in ids if i not in done])
    by_group: dict[str, list[Annotation]] = {"all": list(imported.annotations)}
    if mapping is not None:
        for g in sorted({e["group"] for e in mapping.values()}):
            by_group[g] = [a for a in imported.annotations if a.meta["group"] == g]
    for g, anns in by_group.items():
        result.rates[g] = AnomalyRate.of(sum(a.is_abnormal for a in anns), len(anns))
    return result


def _sheet_ids(sheet: Path) -> list[str]:
    with sheet.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        ids = []
        for r in reader:
            i = (r.get("id") or "").strip()
            if i and i not in ids:
                ids.append(i)
    return ids


def _section(vid: str, video: str, prompt: str, thumbs: list[str]) -> str:
    strip = "\n".join(
        f'<figure><img src="{html.escape(t)}" alt="Frame {k}"><figcaption>Frame {k}</figcaption></figure>'
        for k, t in enumerate(thumbs)
    )
    prompt_html = f'<p class="prompt">Prompt: {html.escape(prompt)}</p>' if prompt else ""
    return (
        f'<section id="{vid}"><h2>{vid}</h2>{prompt_html}'
        f'<video src="{html.escape(video)}" controls loop muted preload="metadata"></video>'
        f'<div class="strip">{strip}</div></section>'
    )


def _page(sections: list[str], fps: float) -> str:
    types = "\n".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in TYPE_DEFINITIONS.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>cac-align expert sheet</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
section {{ border-top: 1px solid #999; padding: 0.5em 0; }}
video {{ max-width: 640px; max-height: 360px; display: block; }}
.strip {{ display: flex; flex-wrap: wrap; gap: 4px; margin-top: 0.5em; }}
figure {{ margin: 0; text-align: center; font-size: 12px; }}
.prompt {{ color: #333; }}
</style></head><body>
<h1>Anomaly annotation</h1>
<p>Each video below is shown with its frames sampled at {fps:g} frames per second; frame indices start at 0. For
every video, fill its row of <code>sheet.csv</code>: <code>status</code> is <code>normal</code> or
<code>abnormal</code>. For an abnormal video give, per anomaly instance (one row each: copy the id and video cells to
a new row for a further instance), the <code>category</code>, the first and last frame index (<code>start</code>,
<code>end</code>) of the frames shown here, the affected <code>object</code> and the <code>reason</code>. Boxes are
optional: <code>bboxes</code> takes <code>{{"frame": [xmin, ymin, xmax, ymax]}}</code> in coordinates scaled to
0-1000. Leave category, start and end empty for a normal video.</p>
<h3>Categories</h3><ul>
{types}
</ul>
{"".join(sections)}
</body></html>
"""
