"""Import human anomaly annotations (paper App. B.1.2-B.1.3) into the Annotation manifest, with a validator.

The paper's annotators inspect each video frame by frame on its uniformly sampled frame sequence (4 fps) and, per
anomaly category, record a *group* of frame-grounded instances: a start and an end index on that sequence, the
affected object, the reason, and tight boxes in Qwen's 0-1000 coordinates on the frames of the window (B.1.2); groups
follow the taxonomy order and a category appears in one group only. Two file layouts carry this:

**JSON / JSONL (structured).** A JSON array of videos, or one video per line::

    {"video": "clips/0001.mp4", "prompt": "a man waves", "fps": 4,
     "groups": [{"category": "Human Distortion",
                 "instances": [{"frames": [12, 15], "object": "left hand", "reason": "six fingers",
                                "bboxes": {"12": [[410, 300, 520, 420]], "13": [405, 298, 515, 418]}}]}]}

``groups: []`` (or ``"status": "normal"``) marks a normal video. A frame may carry one box or a list of boxes (B.1.3
allows several disjoint regions). Lines already in manifest form (``"anomalies": [{"label", "frames", ...}]``) are
accepted too, so a manifest can be re-validated against its videos. Other keys are kept in ``Annotation.meta``.

**CSV (flat).** One row per anomaly instance, rows of a video repeated (header names, any order, case-insensitive):
``video, prompt, fps, status, category, start, end, object, reason, bboxes`` (plus optional ``num_frames``, ``id``,
``notes``). ``bboxes`` holds the same JSON object as above. A normal video is one row with an empty ``category``
(and ``status`` normal, when the column exists; an empty ``status`` in a sheet means "not annotated yet").

The validator reports *every* problem, each naming file, row (line of a JSONL/CSV file, 1-based item of a JSON
array) and field: unknown category, inverted or out-of-range boxes, boxes on frames outside the instance's window,
a window outside the video (the video is probed for its length on the ``fps`` sequence), a missing or unreadable
video, conflicting rows. A video with any *error* is left out of the manifest and listed; *warnings* (a category
split over two groups, groups out of taxonomy order, an instance without boxes or reason) keep the video. Nothing
is dropped silently.

In memory, imported annotations carry absolute video paths; :func:`save_manifest` writes them relative to the
manifest's folder, as :func:`cac_align.schema.resolve_video` reads them back.
"""

from __future__ import annotations

import csv
import difflib
import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cac_align.schema import (
    COORD_MAX,
    TAXONOMY,
    Annotation,
    ManifestError,
    write_manifest,
)
from cac_align.video import TURN1_FPS, VideoReadError, probe_video, sample_times

CSV_COLUMNS: tuple[str, ...] = (
    "video",
    "prompt",
    "fps",
    "status",
    "category",
    "start",
    "end",
    "object",
    "reason",
    "bboxes",
)
"""The columns of the flat CSV layout, in the order sheets are written."""


@dataclass(frozen=True)
class Problem:
    """One validation finding. ``row`` is the 1-based line (JSONL, CSV) or item (JSON array); None for the file."""

    file: str
    row: int | None
    field: str
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        where = self.file if self.row is None else f"{self.file}:{self.row}"
        return f"{where}: {self.severity}: field '{self.field}': {self.message}"


@dataclass
class ImportResult:
    """What an import produced: the valid annotations (absolute video paths), their source rows, every problem."""

    source: Path
    annotations: list[Annotation] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    num_records: int = 0

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def dropped_rows(self) -> list[int]:
        """Rows whose video was left out because of an error (each is also listed in :attr:`errors`)."""
        return sorted({p.row for p in self.errors if p.row is not None})

    def summary(self) -> str:
        n_abn = sum(a.is_abnormal for a in self.annotations)
        return (
            f"{self.source}: {self.num_records} videos read, {len(self.annotations)} valid "
            f"({n_abn} abnormal, {len(self.annotations) - n_abn} normal), {len(self.errors)} errors, "
            f"{len(self.warnings)} warnings"
        )


# --------------------------------------------------------------------------------------------------------------------
# The common record every layout is read into
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class _Instance:
    category: Any
    frames: tuple[Any, Any]
    obj: Any
    reason: Any
    bboxes: Any
    row: int
    prefix: str  # field name prefix, e.g. "groups[0].instances[1]." (JSON) or "" (CSV: plain column names)
    category_field: str  # where the category was given: "groups[0].category", "anomalies[2].label", "category"
    saliency: Any = "salient"
    frames_field: str = "frames"
    group: str = ""  # "groups[k]" in the structured JSON layout, else ""


@dataclass
class _Record:
    row: int
    video: Any
    prompt: Any = ""
    fps: Any = None
    status: Any = None
    num_frames: Any = None
    instances: list[_Instance] = field(default_factory=list)
    cot: Any = None
    meta: dict[str, Any] = field(default_factory=dict)
    failed: bool = False  # a row of this video already failed while reading (reported there)


class _Checker:
    """Collects problems for one file; ``fail``/``warn`` name the row and the field."""

    def __init__(self, file: Path) -> None:
        self.file = str(file)
        self.problems: list[Problem] = []
        self.unreadable = 0  # records too broken to read at all (bad JSON line, not an object, CSV row without video)

    def fail(self, row: int | None, fld: str, msg: str) -> None:
        self.problems.append(Problem(self.file, row, fld, msg, "error"))

    def warn(self, row: int | None, fld: str, msg: str) -> None:
        self.problems.append(Problem(self.file, row, fld, msg, "warning"))


# --------------------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------------------


def read_annotations(
    path: str | Path,
    videos_root: str | Path | None = None,
    fps: float = TURN1_FPS,
    check_videos: bool = True,
) -> ImportResult:
    """Read and validate a human annotation file (``.json``, ``.jsonl`` or ``.csv``; layouts in the module doc).

    Args:
        path: the annotation file.
        videos_root: folder that relative video paths are taken from (default: the annotation file's folder).
        fps: the rate of the annotated frame sequence when a record does not give its own ``fps`` (App. B.1.1: the
            uniformly downsampled sequence; 4 fps in the paper).
        check_videos: probe every video (exists, readable, long enough for its windows). Without it only the
            annotation itself is checked (a CSV ``num_frames`` column still bounds the windows).

    Returns:
        An :class:`ImportResult`; its ``problems`` list every error and warning. Never raises for bad content; a
        missing or unreadable file gives one file-level error.
    """
    path = Path(path)
    check = _Checker(path)
    result = ImportResult(source=path)
    root = Path(videos_root) if videos_root is not None else path.parent
    if not path.is_file():
        check.fail(None, "file", "not found")
        result.problems = check.problems
        return result
    suffix = path.suffix.lower()
    if suffix == ".csv":
        records = list(_read_csv(path, check))
    elif suffix in (".json", ".jsonl"):
        records = list(_read_json(path, check))
    else:
        check.fail(None, "file", f"expected a .json, .jsonl or .csv file, got {suffix or 'no suffix'!r}")
        records = []
    seen: dict[str, int] = {}
    for rec in records:
        result.num_records += 1
        ann = _build(rec, root, fps, check_videos, check, seen)
        if ann is not None:
            result.annotations.append(ann)
            result.rows.append(rec.row)
    result.num_records += check.unreadable
    result.problems = sorted(check.problems, key=lambda p: -1 if p.row is None else p.row)  # stable: file order
    return result


def save_manifest(path: str | Path, annotations: Iterable[Annotation]) -> Path:
    """Write annotations as a JSONL manifest (atomically), with video paths relative to the manifest's folder.

    Absolute paths are rewritten relative to ``path.parent``; relative ones are kept as they are.
    """
    path = Path(path)
    base = path.parent.resolve()
    out = []
    for a in annotations:
        v = Path(a.video)
        out.append(replace(a, video=os.path.relpath(v, base)) if v.is_absolute() else a)
    write_manifest(path, out)
    return path


def absolute_videos(annotations: Iterable[Annotation], manifest: str | Path) -> list[Annotation]:
    """Copies of a manifest's annotations with video paths made absolute (relative ones taken from its folder)."""
    base = Path(manifest).parent.resolve()
    return [a if Path(a.video).is_absolute() else replace(a, video=str(base / a.video)) for a in annotations]


def sequence_length(video: str | Path, fps: float = TURN1_FPS) -> int:
    """How many frames the video has on its uniformly sampled ``fps`` sequence (the sampling rule of
    :mod:`cac_align.video`: the samples ``k / fps`` whose source frame exists). Probes the header only.

    Raises:
        VideoReadError: naming the file, when it is not a readable video.
    """
    n, src_fps, _, _ = probe_video(video)
    times = sample_times(0.0, n / src_fps + 1.0 / fps, fps)
    return int(np.count_nonzero(np.floor(times * src_fps + 1e-6) < n))


# --------------------------------------------------------------------------------------------------------------------
# Readers: file -> _Record
# --------------------------------------------------------------------------------------------------------------------


def _read_json(path: Path, check: _Checker) -> Iterator[_Record]:
    text = path.read_text(encoding="utf-8")
    items: list[tuple[int, Any]] = []
    stripped = text.lstrip()
    if path.suffix.lower() == ".json" and stripped.startswith("["):
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as e:
            check.fail(None, "file", f"not valid JSON ({e})")
            return
        items = list(enumerate(data, 1))
    else:  # JSONL, or a .json holding a single object / one object per line
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                items.append((lineno, json.loads(line)))
            except (ValueError, RecursionError) as e:
                check.fail(lineno, "line", f"not valid JSON ({e})")
                check.unreadable += 1
    for row, item in items:
        if not isinstance(item, dict):
            check.fail(row, "record", f"expected a JSON object, got {type(item).__name__}")
            check.unreadable += 1
            continue
        yield _record_from_json(row, item, check)


_JSON_KEYS = {"video", "prompt", "fps", "status", "groups", "anomalies", "cot", "num_frames"}


def _record_from_json(row: int, item: dict[str, Any], check: _Checker) -> _Record:
    rec = _Record(row=row, video=item.get("video"), prompt=item.get("prompt", ""), fps=item.get("fps"))
    rec.status = item.get("status")
    rec.cot = item.get("cot")
    rec.num_frames = item.get("num_frames")
    rec.meta = {k: v for k, v in item.items() if k not in _JSON_KEYS}

    def fail(fld: str, msg: str) -> None:
        check.fail(row, fld, msg)
        rec.failed = True

    if "groups" in item and "anomalies" in item:
        fail("groups", "give either 'groups' (annotation layout) or 'anomalies' (manifest), not both")
        return rec
    if "anomalies" in item:  # manifest layout: a flat list of instances with a label each
        raw = item["anomalies"]
        if not isinstance(raw, list):
            fail("anomalies", f"expected a list, got {type(raw).__name__}")
            return rec
        for i, a in enumerate(raw):
            p = f"anomalies[{i}]"
            if not isinstance(a, dict):
                fail(p, "expected an object")
                continue
            rec.instances.append(
                _Instance(
                    a.get("label"),
                    _pair(a.get("frames")),
                    a.get("region", ""),
                    a.get("reason", ""),
                    a.get("bboxes", {}),
                    row,
                    p + ".",
                    p + ".label",
                    a.get("saliency", "salient"),
                )
            )
        return rec
    groups = item.get("groups", [])
    if not isinstance(groups, list):
        fail("groups", f"expected a list of category groups, got {type(groups).__name__}")
        return rec
    for gi, g in enumerate(groups):
        gp = f"groups[{gi}]"
        if not isinstance(g, dict):
            fail(gp, "expected an object {'category': ..., 'instances': [...]}")
            continue
        insts = g.get("instances")
        if not isinstance(insts, list) or not insts:
            fail(gp + ".instances", "expected a non-empty list of instances")
            continue
        for ii, inst in enumerate(insts):
            ip = f"{gp}.instances[{ii}]"
            if not isinstance(inst, dict):
                fail(ip, "expected an object")
                continue
            frames = inst.get("frames", (inst.get("start"), inst.get("end")))
            rec.instances.append(
                _Instance(
                    g.get("category"),
                    _pair(frames),
                    inst.get("object", inst.get("region", "")),
                    inst.get("reason", ""),
                    inst.get("bboxes", {}),
                    row,
                    ip + ".",
                    gp + ".category",
                    frames_field="frames" if "frames" in inst else "start/end",
                    group=gp,
                )
            )
    return rec


def _pair(v: Any) -> tuple[Any, Any]:
    if isinstance(v, (list, tuple)) and len(v) == 2:
        return (v[0], v[1])
    return (v, None) if v is not None else (None, None)


def _read_csv(path: Path, check: _Checker) -> Iterator[_Record]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            check.fail(None, "file", "empty CSV (no header)")
            return
        cols = [h.strip().lower() for h in header]
        missing = [c for c in ("video", "category", "start", "end") if c not in cols]
        if missing:
            check.fail(1, "header", f"missing columns {missing}; expected {list(CSV_COLUMNS)}")
            return
        has_status = "status" in cols
        by_video: dict[str, _Record] = {}
        order: list[_Record] = []
        for row_values in reader:
            row = reader.line_num
            if not any(v.strip() for v in row_values):
                continue
            if len(row_values) > len(cols):
                check.fail(row, "row", f"{len(row_values)} cells for {len(cols)} columns")
                check.unreadable += 1
                continue
            r = {c: v.strip() for c, v in zip(cols, row_values, strict=False)}
            video = r.get("video", "")
            if not video:
                check.fail(row, "video", "empty")
                check.unreadable += 1
                continue
            rec = by_video.get(video)
            first = rec is None
            if rec is None:
                rec = _Record(row=row, video=video, prompt=r.get("prompt", ""), fps=_csv_num(r.get("fps")))
                rec.num_frames = _csv_num(r.get("num_frames"))
                rec.meta = {k: r[k] for k in ("id", "notes") if r.get(k)}
                by_video[video] = rec
                order.append(rec)
            else:
                for key, old in (("prompt", rec.prompt), ("fps", rec.fps)):
                    new = r.get(key, "")
                    new_v = _csv_num(new) if key == "fps" else new
                    if new and new_v != old:
                        check.fail(row, key, f"{new!r} conflicts with {old!r} given for this video on row {rec.row}")
                        rec.failed = True
            status = r.get("status", "")
            category = r.get("category", "")
            if has_status and not status:
                check.fail(row, "status", "empty (not annotated yet): expected 'normal' or 'abnormal'")
                rec.failed = True
                continue
            if status and status not in ("normal", "abnormal"):
                check.fail(row, "status", f"expected 'normal' or 'abnormal', got {status!r}")
                rec.failed = True
                continue
            row_status = status or ("abnormal" if category else "normal")
            if rec.status is None:
                rec.status = row_status
            elif rec.status != row_status:
                check.fail(row, "status", f"{row_status!r} conflicts with {rec.status!r} on row {rec.row}")
                rec.failed = True
                continue
            if row_status == "normal":
                if category or r.get("start") or r.get("end"):
                    check.fail(row, "category", "a normal row must leave category, start and end empty")
                    rec.failed = True
                elif not first:
                    check.fail(row, "video", f"normal video listed again (first on row {rec.row})")
                    rec.failed = True
                continue
            boxes: Any = {}
            if r.get("bboxes"):
                try:
                    boxes = json.loads(r["bboxes"])
                except (ValueError, RecursionError) as e:
                    check.fail(row, "bboxes", f"not valid JSON ({e})")
                    rec.failed = True
                    continue
            rec.instances.append(
                _Instance(
                    category,
                    (_csv_num(r.get("start", "")), _csv_num(r.get("end", ""))),
                    r.get("object", ""),
                    r.get("reason", ""),
                    boxes,
                    row,
                    "",
                    "category",
                    frames_field="start/end",
                )
            )
        yield from order


def _csv_num(v: str | None) -> Any:
    """A CSV cell as int/float when it is a number, None when empty, else the text itself (reported later)."""
    if v is None or v == "":
        return None
    try:
        x = float(v)
    except ValueError:
        return v
    return int(x) if x.is_integer() else x


# --------------------------------------------------------------------------------------------------------------------
# Validation: _Record -> Annotation
# --------------------------------------------------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _category_hint(c: Any) -> str:
    if not isinstance(c, str):
        return ""
    close = difflib.get_close_matches(c.strip().title(), TAXONOMY, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_box(b: Any) -> str | None:
    """None if ``b`` is a valid box, else what is wrong with it."""
    if not isinstance(b, (list, tuple)) or len(b) != 4:
        return f"expected a box [xmin, ymin, xmax, ymax], got {b!r}"
    if not all(isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) for c in b):
        return f"expected four numbers, got {list(b)}"
    if not all(float(c).is_integer() for c in b):
        return f"expected integer coordinates on the 0-1000 grid, got {list(b)}"
    x1, y1, x2, y2 = (int(c) for c in b)
    if not all(0 <= c <= COORD_MAX for c in (x1, y1, x2, y2)):
        return f"coordinates out of range: expected 0..{COORD_MAX} (Qwen's normalised grid), got {list(b)}"
    if x1 >= x2 or y1 >= y2:
        return f"inverted or empty box: expected xmin < xmax and ymin < ymax, got {list(b)}"
    return None


def _build(
    rec: _Record, root: Path, default_fps: float, check_videos: bool, check: _Checker, seen: dict[str, int]
) -> Annotation | None:
    n_before = len(check.problems)
    row = rec.row

    def errors_since() -> bool:
        return any(p.severity == "error" for p in check.problems[n_before:]) or rec.failed

    # video, prompt, fps ------------------------------------------------------------------------------------------
    video_path: Path | None = None
    if not isinstance(rec.video, str) or not rec.video.strip():
        check.fail(row, "video", f"expected a non-empty path, got {rec.video!r}")
    else:
        p = Path(rec.video)
        video_path = (p if p.is_absolute() else root / p).resolve()
        key = str(video_path)
        if key in seen:
            check.fail(row, "video", f"{rec.video} is already annotated on row {seen[key]}")
        else:
            seen[key] = row
    if not isinstance(rec.prompt, str):
        check.fail(row, "prompt", f"expected a string, got {rec.prompt!r}")
    fps = default_fps if rec.fps is None else rec.fps
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        check.fail(row, "fps", f"expected a positive number, got {rec.fps!r}")
        fps = default_fps
    status = rec.status
    if status is not None and status not in ("normal", "abnormal"):
        check.fail(row, "status", f"expected 'normal' or 'abnormal', got {status!r}")
        status = None

    # length of the frame sequence --------------------------------------------------------------------------------
    length: int | None = None
    if rec.num_frames is not None:
        if _is_int(rec.num_frames) and rec.num_frames > 0:
            length = rec.num_frames
        else:
            check.fail(row, "num_frames", f"expected a positive integer, got {rec.num_frames!r}")
    if check_videos and video_path is not None:
        try:
            probed = sequence_length(video_path, float(fps))
        except VideoReadError as e:
            check.fail(row, "video", str(e))
        else:
            if length is not None and length != probed:
                check.fail(row, "num_frames", f"says {length} frames but the video has {probed} at {fps:g} fps")
            length = probed

    # instances ---------------------------------------------------------------------------------------------------
    if status == "normal" and rec.instances:
        check.fail(row, "status", f"'normal' but {len(rec.instances)} anomaly instances are given")
    if status == "abnormal" and not rec.instances and not rec.failed:
        check.fail(row, "status", "'abnormal' but no anomaly instance is given")
    anomalies = []
    group_order: list[tuple[str, str]] = []  # (category, group field) in file order, JSON layout
    for inst in rec.instances:
        p = inst.prefix
        ok = True
        if inst.category not in TAXONOMY:
            hint = _category_hint(inst.category)
            check.fail(
                inst.row,
                inst.category_field,
                f"unknown category {inst.category!r}{hint}; expected one of {list(TAXONOMY)}",
            )
            ok = False
        elif inst.group:
            group_order.append((inst.category, inst.group))
        s, e = inst.frames
        ff = p + inst.frames_field
        if s is None or e is None:
            check.fail(inst.row, ff, "missing: expected a start and an end frame index")
            ok = False
        elif not (_is_int(s) and _is_int(e)):
            check.fail(inst.row, ff, f"expected integer frame indices, got [{s!r}, {e!r}]")
            ok = False
        elif s < 0 or e < 0:
            check.fail(inst.row, ff, f"negative frame index in [{s}, {e}]")
            ok = False
        elif s > e:
            check.fail(inst.row, ff, f"inverted window [{s}, {e}]: start is after end")
            ok = False
        elif length is not None and e >= length:
            check.fail(
                inst.row,
                ff,
                f"window [{s}, {e}] outside the video: it has {length} frames at {fps:g} fps (0..{length - 1})",
            )
            ok = False
        if not isinstance(inst.reason, str):
            check.fail(inst.row, p + "reason", f"expected a string, got {inst.reason!r}")
            ok = False
        elif not inst.reason.strip():
            check.warn(inst.row, p + "reason", "empty: B.1.2 asks for the underlying reason of each instance")
        if not isinstance(inst.obj, str):
            check.fail(inst.row, p + "object", f"expected a string, got {inst.obj!r}")
            ok = False
        boxes = _check_boxes(inst, s if ok else None, e if ok else None, check)
        if boxes is None:
            ok = False
        elif not boxes:
            check.warn(inst.row, p + "bboxes", "no boxes: B.1.3 asks for a tight box on the frames of the window")
        if ok:
            anomalies.append(
                {
                    "label": inst.category,
                    "frames": [s, e],
                    "reason": inst.reason,
                    "region": inst.obj,
                    "saliency": inst.saliency,
                    "bboxes": boxes,
                }
            )
    _check_group_order(group_order, row, check)

    if errors_since():
        return None
    d: dict[str, Any] = dict(rec.meta)
    d.update(video=str(video_path), prompt=rec.prompt, status="abnormal" if anomalies else "normal", fps=fps)
    d["anomalies"] = anomalies
    if rec.cot is not None:
        d["cot"] = rec.cot
    try:
        return Annotation.from_dict(d, f"{check.file}:{row}")
    except ManifestError as e:  # a case the checks above missed: still reported, never silent
        check.fail(row, "record", str(e))
        return None


def _check_boxes(inst: _Instance, s: int | None, e: int | None, check: _Checker) -> dict[str, list] | None:
    """The instance's boxes as ``{"frame": [[x1, y1, x2, y2], ...]}``, or None after reporting errors."""
    fld = inst.prefix + "bboxes"
    raw = inst.bboxes
    if raw is None or raw == "":
        return {}
    if not isinstance(raw, dict):
        check.fail(inst.row, fld, f"expected an object {{frame: [xmin, ymin, xmax, ymax]}}, got {type(raw).__name__}")
        return None
    out: dict[str, list] = {}
    ok = True
    for key, value in raw.items():
        fk = f"{fld}.{key}"
        k = key.strip() if isinstance(key, str) else key
        if isinstance(k, str) and k.lower().startswith("frame"):
            k = k[5:].strip()
        if not (isinstance(k, str) and k.isdigit()):
            check.fail(inst.row, fk, f"expected a frame index as key, got {key!r}")
            ok = False
            continue
        j = int(k)
        if s is not None and e is not None and not s <= j <= e:
            check.fail(inst.row, fk, f"box on frame {j}, outside the instance's window [{s}, {e}]")
            ok = False
        # a flat list is one box (malformed or not); a list of lists is several boxes
        single = (
            isinstance(value, (list, tuple)) and bool(value) and not any(isinstance(c, (list, tuple)) for c in value)
        )
        boxes = [value] if single else value
        if not isinstance(boxes, list) or not boxes:
            check.fail(inst.row, fk, f"expected a box or a non-empty list of boxes, got {value!r}")
            ok = False
            continue
        for bi, b in enumerate(boxes):
            msg = _check_box(b)
            if msg is not None:
                check.fail(inst.row, fk if single else f"{fk}[{bi}]", msg)
                ok = False
        if ok:
            out[str(j)] = [[int(c) for c in b] for b in boxes]
    return out if ok else None


def _check_group_order(groups: list[tuple[str, str]], row: int, check: _Checker) -> None:
    """B.1.2: one group per category, groups in taxonomy order. Both are warnings (the content is unambiguous)."""
    first_group: dict[str, str] = {}
    last_index = -1
    warned_order = False
    for cat, gfield in groups:
        if cat in first_group and first_group[cat] != gfield:
            check.warn(row, gfield, f"category {cat!r} already has a group ({first_group[cat]}); instances merged")
            continue
        first_group.setdefault(cat, gfield)
        idx = TAXONOMY.index(cat)
        if idx < last_index and not warned_order:
            check.warn(row, gfield, f"groups are not in taxonomy order {list(TAXONOMY)}")
            warned_order = True
        last_index = max(last_index, idx)
