"""Convert Skyra / ViF-CoT-4K artifact annotations into the CaC manifest (paper App. A.2).

Skyra (Li et al., 2025) annotates human-perceivable artifacts of AI-generated videos and writes each one, inside the
``<think>`` block of its chain of thought, as an evidence tag::

    <type>Shape Distortion</type> in <t>[3.89, 4.53]</t> at <bbox>[0.41, 0.30, 0.52, 0.42]</bbox>

followed by the verdict ``<answer>Fake</answer>`` or ``<answer>Real</answer>``. Its taxonomy has L3 types under
"Low-Level Forgery" and "Violation of Laws". The paper maps Skyra's artifact groups onto the CaC taxonomy (A.2):
person inconsistency -> Human Distortion, text artifacts -> Character Anomalies, object inconsistency -> Object
Distortion, physics violations -> Physical Violations, motion artifacts -> Motion Anomalies. :data:`SKYRA_TO_CAC`
spells that out per L3 type; types the paper leaves out of CaC's scope (blur, colour, lighting: global quality
issues, Sec. 3.1) map to None and are skipped with a warning. Read literally, A.2 sends Skyra's whole "Object
Inconsistency" group, including sudden appearance and disappearance, to Object Distortion, although CaC's own
taxonomy (B.1.2) files appearance/disappearance under Motion Anomalies; pass a different ``mapping`` (CLI: ``--map
"Abnormal Object Disappearance=Motion Anomalies"``) to choose the other reading.

Conversion rules (departures from Skyra's format, where CaC's differs):

* **Time** ``[t0, t1]`` seconds -> the inclusive window of the ``fps`` sequence whose frames' times
  ``[j / fps, (j + 1) / fps)`` meet ``[t0, t1]``: ``floor(t0 fps) .. ceil(t1 fps) - 1`` (at least one frame); a window
  running past the video is clipped to its last frame (warning).
* **Box**: Skyra gives one box per evidence; it is put on every frame of the window. Units: ``"unit"`` (0-1),
  ``"pixel"`` (the video's frame size) or ``"qwen"`` (0-1000); ``"auto"`` takes unit when every coordinate is at most 1,
  else pixels. All-zero boxes (Skyra's "no region" placeholder) give no box.
* **Verdict**: Real -> a normal video; Fake -> one anomaly instance per mapped evidence tag. A Fake video none of
  whose tags maps to a CaC category is left out (an error naming its row).

Input: a JSON array or JSONL file of records; each has the video (``video``, or the first of ``videos``), the
annotated text (``response``, ``output``, or the last assistant turn of ``messages`` / ``conversations`` in
OpenAI or ShareGPT form) and optionally the verdict (``gt`` / ``label``: Fake or Real, used when the text has no
``<answer>``) and a ``prompt``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cac_align.data.importer import (
    ImportResult,
    _build,
    _Checker,
    _Instance,
    _Record,
    sequence_length,
)
from cac_align.schema import COORD_MAX, TAXONOMY
from cac_align.video import TURN1_FPS, VideoReadError, probe_video

SKYRA_TO_CAC: dict[str, str | None] = {
    # 1. Low-level forgery
    "Structure Anomaly": "Object Distortion",
    "Texture Jittering": "Motion Anomalies",  # jitter/flicker across frames (B.1.2 Motion Anomalies)
    "Unnatural Blur": None,
    "Color Over-saturation": None,
    "Lighting Inconsistency": None,
    "Camera Motion Inconsistency": "Motion Anomalies",
    # 2.1 Object inconsistency (A.2: object inconsistency -> Object Distortion; person inconsistency -> Human)
    "Abnormal Object Disappearance": "Object Distortion",
    "Abnormal Object Appearance": "Object Distortion",
    "Person Identity Inconsistency": "Human Distortion",
    "General Object Identity Inconsistency": "Object Distortion",
    "Shape Distortion": "Object Distortion",
    # 2.2 Interaction inconsistency (A.2: physics violations)
    "Abnormal Rigid-Body Crossing": "Physical Violations",
    "Abnormal Multi-Object Merging": "Physical Violations",
    "Abnormal Object Splitting": "Physical Violations",
    "General Interaction Anomaly": "Physical Violations",
    # 2.3 Unnatural movement (A.2: motion artifacts)
    "Unnatural Human Movement": "Motion Anomalies",
    "Unnatural Animal Movement": "Motion Anomalies",
    "Unnatural General Object Movement": "Motion Anomalies",
    # 2.4 Violation of causality law (A.2: physics violations)
    "Violation of Physical Law": "Physical Violations",
    "Violation of General Causality Law": "Physical Violations",
    # 2.5 Violation of commonsense
    "Abnormal Human Body Structure": "Human Distortion",
    "Abnormal General Object Structure": "Object Distortion",
    "Text Distortion": "Character Anomalies",
}
"""Skyra's L3 artifact types -> CaC categories (None: outside CaC's scope, skipped)."""

BOX_UNITS = ("auto", "unit", "pixel", "qwen")

_EVIDENCE_RE = re.compile(
    r"<type>\s*(?P<type>[^<]*?)\s*</type>\s*in\s*<t>\s*\[(?P<t>[^\]<]*)\]\s*</t>\s*at\s*<bbox>\s*\[(?P<box>[^\]<]*)\]"
    r"\s*</bbox>",
    re.IGNORECASE,
)
_ANSWER_RE = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.IGNORECASE | re.DOTALL)
_SENTENCE_END_RE = re.compile(r"[.!?](?=\s)|\n")
_TAG_RE = re.compile(r"</?(?:type|t|bbox|think|answer)>", re.IGNORECASE)


def parse_mapping(items: list[str]) -> dict[str, str | None]:
    """``["Skyra Type=CaC Category", "Unnatural Blur=none", ...]`` -> overrides for :data:`SKYRA_TO_CAC`."""
    out: dict[str, str | None] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--map {item!r}: expected 'Skyra Type=CaC Category' (or '=none' to skip the type)")
        key, value = (s.strip() for s in item.split("=", 1))
        if value.lower() == "none":
            out[key] = None
        elif value in TAXONOMY:
            out[key] = value
        else:
            raise ValueError(f"--map {item!r}: {value!r} is not one of {list(TAXONOMY)} or 'none'")
    return out


def convert_skyra(
    path: str | Path,
    videos_root: str | Path | None = None,
    fps: float = TURN1_FPS,
    mapping: Mapping[str, str | None] | None = None,
    box_units: str = "auto",
    check_videos: bool = True,
) -> ImportResult:
    """Read Skyra-style records (module doc) into validated CaC annotations.

    Args:
        path: a ``.json`` array or ``.jsonl`` file of records.
        videos_root: folder for relative video paths (default: the file's folder).
        fps: the annotation frame rate of the CaC manifest (4 in the paper).
        mapping: L3 type -> CaC category or None; defaults to :data:`SKYRA_TO_CAC` (entries given here override it).
        box_units: ``"auto"``, ``"unit"``, ``"pixel"`` or ``"qwen"`` (see module doc).
        check_videos: probe the videos (needed for pixel boxes and to clip windows to the video).

    Returns:
        An :class:`~cac_align.data.importer.ImportResult` (problems name file, row and field).
    """
    if box_units not in BOX_UNITS:
        raise ValueError(f"box_units must be one of {BOX_UNITS}, got {box_units!r}")
    table = {**SKYRA_TO_CAC, **(mapping or {})}
    path = Path(path)
    check = _Checker(path)
    result = ImportResult(source=path)
    root = Path(videos_root) if videos_root is not None else path.parent
    items = _read_items(path, check)
    seen: dict[str, int] = {}
    for row, item in items:
        result.num_records += 1
        rec = _record(row, item, root, fps, table, box_units, check_videos, check)
        if rec is None:
            continue
        ann = _build(rec, root, fps, check_videos, check, seen)
        if ann is not None:
            ann.meta.setdefault("source", "skyra")
            result.annotations.append(ann)
            result.rows.append(row)
    result.problems = sorted(check.problems, key=lambda p: -1 if p.row is None else p.row)
    return result


def _read_items(path: Path, check: _Checker) -> list[tuple[int, Any]]:
    if not path.is_file():
        check.fail(None, "file", "not found")
        return []
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            return list(enumerate(json.loads(text), 1))
        except (ValueError, RecursionError) as e:
            check.fail(None, "file", f"not valid JSON ({e})")
            return []
    items = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                items.append((lineno, json.loads(line)))
            except (ValueError, RecursionError) as e:
                check.fail(lineno, "line", f"not valid JSON ({e})")
    return items


def _text_of(item: dict[str, Any]) -> tuple[str | None, str]:
    """(the annotated text, the field it came from)."""
    for key in ("response", "output"):
        if isinstance(item.get(key), str):
            return item[key], key
    for key, role_key, text_key in (("messages", "role", "content"), ("conversations", "from", "value")):
        turns = item.get(key)
        if isinstance(turns, list):
            for t in reversed(turns):
                if (
                    isinstance(t, dict)
                    and t.get(role_key) in ("assistant", "gpt")
                    and isinstance(t.get(text_key), str)
                ):
                    return t[text_key], key
    return None, "response"


def _record(
    row: int,
    item: Any,
    root: Path,
    fps: float,
    table: Mapping[str, str | None],
    box_units: str,
    check_videos: bool,
    check: _Checker,
) -> _Record | None:
    if not isinstance(item, dict):
        check.fail(row, "record", f"expected a JSON object, got {type(item).__name__}")
        return None
    video = item.get("video")
    if video is None and isinstance(item.get("videos"), list) and item["videos"]:
        video = item["videos"][0]
    if not isinstance(video, str) or not video:
        check.fail(row, "video", f"expected a video path ('video' or 'videos'), got {video!r}")
        return None
    text, text_field = _text_of(item)
    if text is None:
        check.fail(row, "response", "no annotated text ('response', 'output', or an assistant turn in 'messages')")
        return None
    m = _ANSWER_RE.search(text)
    verdict = m.group(1) if m else item.get("gt", item.get("label"))
    verdict_field = text_field if m else "gt"
    if not isinstance(verdict, str) or verdict.strip().lower() not in ("fake", "real"):
        check.fail(row, verdict_field, f"expected the verdict Fake or Real, got {verdict!r}")
        return None
    prompt = item.get("prompt", "")
    rec = _Record(row=row, video=video, prompt=prompt, fps=fps, status="normal")
    rec.meta = {"source": "skyra"}
    if verdict.strip().lower() == "real":
        return rec

    rec.status = "abnormal"
    vpath = Path(video) if Path(video).is_absolute() else root / video
    length: int | None = None
    size: tuple[int, int] | None = None
    if check_videos:
        try:
            length = sequence_length(vpath, fps)
            _, _, h, w = probe_video(vpath)
            size = (w, h)
        except VideoReadError:
            pass  # reported by the validator with the rest of the record
    types = []
    for k, ev in enumerate(_EVIDENCE_RE.finditer(text)):
        fld = f"{text_field}: evidence {k + 1}"
        l3 = ev.group("type")
        if l3 not in table:
            check.warn(row, fld, f"unknown Skyra type {l3!r}: skipped (add it with --map '{l3}=<CaC category>')")
            continue
        category = table[l3]
        if category is None:
            check.warn(row, fld, f"Skyra type {l3!r} is outside CaC's taxonomy (global quality): skipped")
            continue
        window = _window(ev.group("t"), fps, length, row, fld, check)
        if window is None:
            continue
        box = _box(ev.group("box"), box_units, size, row, fld, check)
        if box is False:
            continue
        bboxes = {str(j): [list(box)] for j in range(window[0], window[1] + 1)} if box else {}
        types.append(l3)
        rec.instances.append(
            _Instance(category, window, "", _reason(text, ev, l3), bboxes, row, f"{fld}.", f"{fld}.type", "salient")
        )
    if not rec.instances:
        check.fail(row, text_field, "a Fake video with no evidence tag that maps to a CaC category: not imported")
        return None
    rec.meta["skyra_types"] = types
    return rec


def _numbers(text: str) -> list[float] | None:
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        return None
    return vals if all(math.isfinite(v) for v in vals) else None


def _window(text: str, fps: float, length: int | None, row: int, fld: str, check: _Checker) -> tuple[int, int] | None:
    vals = _numbers(text)
    if vals is None or len(vals) != 2 or vals[0] < 0 or vals[1] < vals[0]:
        check.fail(row, f"{fld}.t", f"expected [start, end] seconds with 0 <= start <= end, got [{text}]")
        return None
    s = math.floor(vals[0] * fps + 1e-6)
    e = max(s, math.ceil(vals[1] * fps - 1e-6) - 1)
    if length is not None and e >= length:
        if s >= length:
            check.fail(row, f"{fld}.t", f"[{text}] s starts after the video ends ({length / fps:g} s)")
            return None
        check.warn(
            row, f"{fld}.t", f"[{text}] s runs past the video's last frame; window clipped to [{s}, {length - 1}]"
        )
        e = length - 1
    return (s, e)


def _box(
    text: str, units: str, size: tuple[int, int] | None, row: int, fld: str, check: _Checker
) -> tuple[int, int, int, int] | None | bool:
    """The box in 0-1000 integers, None for Skyra's all-zero placeholder, False (reported) when it is unusable."""
    vals = _numbers(text)
    if vals is None or len(vals) != 4:
        check.fail(row, f"{fld}.bbox", f"expected [x1, y1, x2, y2], got [{text}]")
        return False
    if all(v == 0 for v in vals):
        return None
    if units == "auto":
        units = "unit" if max(vals) <= 1.0 else "pixel"
    if units == "unit":
        scale = (COORD_MAX, COORD_MAX)
    elif units == "qwen":
        scale = (1.0, 1.0)
    else:
        if size is None:
            check.fail(row, f"{fld}.bbox", f"pixel box [{text}] needs the video's frame size; the video was not read")
            return False
        scale = (COORD_MAX / size[0], COORD_MAX / size[1])
    x1, y1, x2, y2 = (v * scale[i % 2] for i, v in enumerate(vals))
    box = (
        max(0, math.floor(x1 + 1e-6)),
        max(0, math.floor(y1 + 1e-6)),
        min(COORD_MAX, math.ceil(x2 - 1e-6)),
        min(COORD_MAX, math.ceil(y2 - 1e-6)),
    )
    if box[0] >= box[2] or box[1] >= box[3]:
        check.warn(row, f"{fld}.bbox", f"degenerate box [{text}] ({units} units): kept the instance without a box")
        return None
    return box


def _reason(text: str, ev: re.Match[str], l3: str) -> str:
    """``"<L3 type>: <the sentence of the evidence tag, tags removed>"``."""
    starts = [m.end() for m in _SENTENCE_END_RE.finditer(text, 0, ev.start())]
    start = starts[-1] if starts else 0
    end_m = _SENTENCE_END_RE.search(text, ev.end())
    end = end_m.end() if end_m else len(text)
    sentence = " ".join(_TAG_RE.sub("", text[start:end]).split())
    if len(sentence) > 400:
        sentence = sentence[:397] + "..."
    return f"{l3}: {sentence}" if sentence else l3
