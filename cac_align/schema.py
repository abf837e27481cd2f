"""The annotation and judgment contract (paper Sec. 3.1, App. B.1.2-B.1.3, Fig. S5).

Two shapes cross every boundary of cac-align:

* :class:`Annotation` - one line of a dataset manifest (JSONL): the ground truth of one video. Frame windows are
  inclusive indices into the video sampled uniformly at ``fps`` (4 by default, as the paper annotates the 4 fps
  sequence); boxes are integers in Qwen's 0-1000 normalised coordinates ``[x1, y1, x2, y2]``, one or more per frame.
* :class:`Judgment` - what :func:`parse_judgment` makes of a model's answer (the Fig. S5 JSON object). Model output is
  data, never an exception: whatever the text, ``parse_judgment`` returns a ``Judgment`` whose ``.valid`` and
  ``.errors`` say what was wrong.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cac_align.utils import atomic_write_text

TAXONOMY: tuple[str, ...] = (
    "Object Distortion",
    "Human Distortion",
    "Motion Anomalies",
    "Physical Violations",
    "Character Anomalies",
)
"""The five anomaly categories of Sec. 3.1, in the taxonomy order of App. B.1.2."""

SINGLE_FRAME_LABELS: frozenset[str] = frozenset({"Object Distortion", "Human Distortion", "Character Anomalies"})
"""Categories recognisable from a single frame (stage 1); the other two need several frames (stage 2)."""

STATUSES: tuple[str, ...] = ("normal", "abnormal")
SALIENCY: tuple[str, ...] = ("salient", "non-salient")
COORD_MAX = 1000

Box = tuple[int, int, int, int]


class ManifestError(ValueError):
    """A manifest line that does not match the Annotation shape; the message names file, line and field."""


# --------------------------------------------------------------------------------------------------------------------
# Ground truth
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class AnomalySpan:
    """One ground-truth anomaly instance: a category, an inclusive frame window and per-frame boxes."""

    label: str
    frames: tuple[int, int]
    reason: str = ""
    region: str = ""
    saliency: str = "salient"
    bboxes: dict[int, list[Box]] = field(default_factory=dict)

    @property
    def discount(self) -> float:
        """The saliency discount gamma(s_n) of Eq. 6: 1 for salient, 0.5 for non-salient anomalies."""
        return 1.0 if self.saliency == "salient" else 0.5


@dataclass
class Annotation:
    """Ground truth for one video, one line of a manifest.

    ``video`` is a path (relative paths are resolved against the manifest's folder by :func:`read_manifest`).
    ``cot`` optionally holds synthesised chain-of-thought text (``{"turn1": ..., "turn2": ...}``) and ``meta`` keeps
    any other keys of the line so that a round trip loses nothing.
    """

    video: str
    prompt: str
    status: str
    fps: float = 4.0
    anomalies: list[AnomalySpan] = field(default_factory=list)
    cot: dict[str, str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def is_abnormal(self) -> bool:
        return self.status == "abnormal"

    @property
    def labels(self) -> set[str]:
        return {a.label for a in self.anomalies}

    @property
    def frame_set(self) -> set[int]:
        """The union of all anomalous frame indices (F_gt of Eq. 4)."""
        return {j for a in self.anomalies for j in range(a.frames[0], a.frames[1] + 1)}

    @property
    def mean_discount(self) -> float:
        """gamma-bar of Eq. 6: 1 for GT-normal videos, else the mean saliency discount over GT anomalies."""
        if not self.anomalies:
            return 1.0
        return sum(a.discount for a in self.anomalies) / len(self.anomalies)

    @classmethod
    def from_dict(cls, d: Any, where: str = "annotation") -> Annotation:
        """Validate and build from a decoded manifest line; errors name ``where`` and the field."""
        return _annotation_from_dict(d, where)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.meta)
        out.update(video=self.video, prompt=self.prompt, status=self.status, fps=_num(self.fps))
        out["anomalies"] = [
            {
                "label": a.label,
                "frames": [a.frames[0], a.frames[1]],
                "reason": a.reason,
                "region": a.region,
                "saliency": a.saliency,
                "bboxes": {str(k): [list(b) for b in v] for k, v in sorted(a.bboxes.items())},
            }
            for a in self.anomalies
        ]
        if self.cot is not None:
            out["cot"] = dict(self.cot)
        return out


def _num(x: float) -> float | int:
    return int(x) if float(x).is_integer() else float(x)


def _fail(where: str, fld: str, msg: str) -> ManifestError:
    return ManifestError(f"{where}: field '{fld}': {msg}")


def _int(v: Any, where: str, fld: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not float(v).is_integer():
        raise _fail(where, fld, f"expected an integer, got {v!r}")
    return int(v)


def _box(v: Any, where: str, fld: str) -> Box:
    if not isinstance(v, (list, tuple)) or len(v) != 4:
        raise _fail(where, fld, f"expected a box [x1, y1, x2, y2], got {v!r}")
    x1, y1, x2, y2 = (_int(c, where, fld) for c in v)
    if not (0 <= x1 < x2 <= COORD_MAX and 0 <= y1 < y2 <= COORD_MAX):
        raise _fail(where, fld, f"expected 0 <= x1 < x2 <= 1000 and 0 <= y1 < y2 <= 1000, got {list(v)}")
    return (x1, y1, x2, y2)


def _annotation_from_dict(d: Any, where: str) -> Annotation:
    if not isinstance(d, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(d).__name__}")
    for key in ("video", "prompt", "status"):
        if key not in d:
            raise _fail(where, key, "missing")
    video, prompt, status = d["video"], d["prompt"], d["status"]
    if not isinstance(video, str) or not video:
        raise _fail(where, "video", f"expected a non-empty path string, got {video!r}")
    if not isinstance(prompt, str):
        raise _fail(where, "prompt", f"expected a string, got {prompt!r}")
    if status not in STATUSES:
        raise _fail(where, "status", f"expected 'normal' or 'abnormal', got {status!r}")
    fps = d.get("fps", 4)
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise _fail(where, "fps", f"expected a positive number, got {fps!r}")
    raw_anoms = d.get("anomalies", [])
    if not isinstance(raw_anoms, list):
        raise _fail(where, "anomalies", f"expected a list, got {type(raw_anoms).__name__}")
    if status == "normal" and raw_anoms:
        raise _fail(where, "anomalies", "a normal video must have an empty anomaly list")
    if status == "abnormal" and not raw_anoms:
        raise _fail(where, "anomalies", "an abnormal video needs at least one anomaly")
    anomalies = []
    for i, a in enumerate(raw_anoms):
        p = f"anomalies[{i}]"
        if not isinstance(a, dict):
            raise _fail(where, p, "expected an object")
        label = a.get("label")
        if label not in TAXONOMY:
            raise _fail(where, f"{p}.label", f"expected one of {list(TAXONOMY)}, got {label!r}")
        fr = a.get("frames")
        if not isinstance(fr, (list, tuple)) or len(fr) != 2:
            raise _fail(where, f"{p}.frames", f"expected [start, end], got {fr!r}")
        s, e = _int(fr[0], where, f"{p}.frames"), _int(fr[1], where, f"{p}.frames")
        if not 0 <= s <= e:
            raise _fail(where, f"{p}.frames", f"expected 0 <= start <= end, got {[s, e]}")
        saliency = a.get("saliency", "salient")
        if saliency not in SALIENCY:
            raise _fail(where, f"{p}.saliency", f"expected 'salient' or 'non-salient', got {saliency!r}")
        for key in ("reason", "region"):
            if not isinstance(a.get(key, ""), str):
                raise _fail(where, f"{p}.{key}", f"expected a string, got {a.get(key)!r}")
        raw_boxes = a.get("bboxes", {})
        if not isinstance(raw_boxes, dict):
            raise _fail(where, f"{p}.bboxes", "expected an object {frame: [[x1, y1, x2, y2], ...]}")
        bboxes: dict[int, list[Box]] = {}
        for k, v in raw_boxes.items():
            fk = f"{p}.bboxes.{k}"
            if not (isinstance(k, str) and k.isdigit()):
                raise _fail(where, fk, "expected a frame index as key")
            j = int(k)
            if not s <= j <= e:
                raise _fail(where, fk, f"frame {j} is outside the anomaly window [{s}, {e}]")
            if isinstance(v, list) and len(v) == 4 and all(isinstance(c, (int, float)) for c in v):
                v = [v]  # a single box is accepted for a frame
            if not isinstance(v, list) or not v:
                raise _fail(where, fk, "expected a non-empty list of boxes")
            bboxes[j] = [_box(b, where, fk) for b in v]
        anomalies.append(AnomalySpan(label, (s, e), a.get("reason", ""), a.get("region", ""), saliency, bboxes))
    cot = d.get("cot")
    if cot is not None and not (isinstance(cot, dict) and all(isinstance(v, str) for v in cot.values())):
        raise _fail(where, "cot", "expected an object of strings such as {'turn1': ..., 'turn2': ...}")
    known = {"video", "prompt", "status", "fps", "anomalies", "cot"}
    meta = {k: v for k, v in d.items() if k not in known}
    return Annotation(video, prompt, status, float(fps), anomalies, cot, meta)


def iter_manifest(path: str | Path) -> Iterator[Annotation]:
    """Yield the annotations of a JSONL manifest; a bad line raises ManifestError naming file, line and field.

    Relative ``video`` paths stay as written; use :func:`resolve_video` to turn them into paths.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise ManifestError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            except (ValueError, RecursionError) as e:  # an integer too long to convert, or nesting too deep
                raise ManifestError(f"{where}: not valid JSON ({type(e).__name__}: {e})") from None
            yield Annotation.from_dict(d, where)


def read_manifest(path: str | Path) -> list[Annotation]:
    return list(iter_manifest(path))


def write_manifest(path: str | Path, annotations: Iterable[Annotation]) -> None:
    """Write a JSONL manifest atomically (a reader never sees half a file)."""
    text = "".join(json.dumps(a.to_dict(), ensure_ascii=False) + "\n" for a in annotations)
    atomic_write_text(path, text)


def resolve_video(annotation: Annotation, manifest: str | Path) -> Path:
    """The annotation's video path, relative paths taken from the manifest's folder."""
    p = Path(annotation.video)
    return p if p.is_absolute() else Path(manifest).parent / p


# --------------------------------------------------------------------------------------------------------------------
# Model output (Fig. S5)
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class PredAnomaly:
    """One anomaly of a model's answer. ``frames`` is an inclusive window or None; ``bboxes`` maps frame -> boxes."""

    label: str | None = None
    frames: tuple[int, int] | None = None
    bboxes: dict[int, list[Box]] = field(default_factory=dict)
    reason: str = ""
    region: str = ""


@dataclass
class Judgment:
    """A parsed model answer. ``valid`` follows the format rule of Eq. 2; ``errors`` says what failed."""

    valid: bool
    status: str | None
    anomalies: list[PredAnomaly] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    cot: str = ""

    @property
    def labels(self) -> set[str]:
        return {a.label for a in self.anomalies if a.label in TAXONOMY}

    @property
    def frame_set(self) -> set[int]:
        """The union of the predicted windows (F_pred of Eq. 4)."""
        return {j for a in self.anomalies if a.frames for j in range(a.frames[0], a.frames[1] + 1)}

    @property
    def window(self) -> tuple[int, int] | None:
        """The span of all predicted windows (first start, last end): what turn 2 crops. None if there is none."""
        wins = [a.frames for a in self.anomalies if a.frames]
        if not wins:
            return None
        return (min(w[0] for w in wins), max(w[1] for w in wins))


MAX_FRAME = 100_000
"""The largest frame index an answer may name (about 7 h at 4 fps). Larger indices are malformed output: accepting
them would let a model's ``"Frame 0-99999999999"`` make :attr:`Judgment.frame_set` exhaust memory."""

# Time regions ("Frame 4-5", "Frame 4 - Frame 5", "frames 4 to 5", "4-5", "Frame 4") and BBOX frame keys ("Frame 3",
# "frame 3", "3"). ASCII digits only (``int`` would read other scripts' digits) and at most 9 of them. Matched with
# ``fullmatch`` on stripped text; no two unbounded runs of whitespace touch, so matching stays linear.
_TIME_RE = re.compile(r"(?:frames?\s*)?([0-9]{1,9})(?:\s*(?:-|–|—|to)\s*(?:frames?\s*)?([0-9]{1,9}))?", re.IGNORECASE)
_FRAME_KEY_RE = re.compile(r"(?:frame\s*)?([0-9]{1,9})", re.IGNORECASE)
_STATUS_RE = re.compile(r'"status"\s{0,8}:\s{0,8}"(normal|abnormal)"')
_MAX_OBJECT_TRIES = 64
"""How many ``{`` positions the lenient reader of an invalid answer tries before giving up."""


def _as_int(v: Any) -> int | None:
    """``v`` as an int if it is an int or an integral finite float; None otherwise (bools, NaN and inf included)."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return None


def parse_time_region(value: Any) -> tuple[int, int] | None:
    """Parse an ``Attributed Time Region``: "Frame 4-5" (canonical), "Frame 4 - Frame 5", "4-5", [4, 5], "Frame 4".

    Case, "Frames", "to" and en/em dashes are tolerated. Returns an inclusive (start, end) window with
    ``0 <= start <= end <= MAX_FRAME``, or None when the value is not one of these forms or the window is inverted.
    """
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            return None
        s, e = _as_int(value[0]), _as_int(value[1])
    elif isinstance(value, str):
        m = _TIME_RE.fullmatch(value.strip())
        if not m:
            return None
        s = int(m.group(1))
        e = int(m.group(2)) if m.group(2) is not None else s
    else:
        s = e = _as_int(value)
    if s is None or e is None or not 0 <= s <= e <= MAX_FRAME:
        return None
    return (s, e)


def format_time_region(frames: tuple[int, int]) -> str:
    """The canonical ``Attributed Time Region`` string, ``"Frame 4-5"``."""
    return f"Frame {frames[0]}-{frames[1]}"


def _show(v: Any) -> str:
    """A short description of a decoded JSON value for error messages (never the whole of a large value)."""
    if isinstance(v, str):
        return repr(v) if len(v) <= 40 else repr(v[:40]) + "..."
    if v is None or isinstance(v, (bool, float)):
        return repr(v)
    if isinstance(v, int):
        return repr(v) if abs(v) < 10**30 else "a very large integer"
    if isinstance(v, list):
        if len(v) <= 8 and all(v_ is None or isinstance(v_, (bool, int, float, str)) for v_ in v):
            return "[" + ", ".join(_show(x) for x in v) + "]"
        return f"a list of {len(v)} items"
    if isinstance(v, dict):
        return f"an object with {len(v)} keys"
    return type(v).__name__


def _as_box(v: Any) -> Box | None:
    """A valid box ``[x1, y1, x2, y2]`` (integers, 0 <= x1 < x2 <= 1000, 0 <= y1 < y2 <= 1000) or None."""
    if not isinstance(v, list) or len(v) != 4:
        return None
    x1, y1, x2, y2 = (_as_int(c) for c in v)
    if x1 is None or y1 is None or x2 is None or y2 is None:
        return None
    if not (0 <= x1 < x2 <= COORD_MAX and 0 <= y1 < y2 <= COORD_MAX):
        return None
    return (x1, y1, x2, y2)


def _read_bboxes(raw: Any, where: str, errors: list[str]) -> dict[int, list[Box]]:
    """Read a ``BBOX`` object ``{"Frame k": box or [box, ...]}``; malformed keys and boxes are dropped and reported."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        errors.append(f"{where}: expected an object {{'Frame k': [x1, y1, x2, y2]}}, got {_show(raw)}")
        return {}
    out: dict[int, list[Box]] = {}
    for key, value in raw.items():
        m = _FRAME_KEY_RE.fullmatch(key.strip())
        if not m or int(m.group(1)) > MAX_FRAME:
            errors.append(f"{where}: expected a frame key like 'Frame 3' (at most {MAX_FRAME}), got {_show(key)}")
            continue
        j = int(m.group(1))
        many = isinstance(value, list) and len(value) > 0 and all(isinstance(b, list) for b in value)
        boxes = value if many else [value]
        for i, b in enumerate(boxes):
            box = _as_box(b)
            if box is None:
                at = f"{where}[{key!r}]" + (f"[{i}]" if many else "")
                errors.append(
                    f"{at}: dropped {_show(b)}: expected integers [x1, y1, x2, y2] with "
                    f"0 <= x1 < x2 <= {COORD_MAX} and 0 <= y1 < y2 <= {COORD_MAX}"
                )
                continue
            out.setdefault(j, []).append(box)
    return out


def _read_anomaly(item: Any, turn: int, where: str, errors: list[str]) -> PredAnomaly | None:
    """Read one entry of ``anomalies`` (Fig. S5): label, time region, reason, problem region, BBOX."""
    if not isinstance(item, dict):
        errors.append(f"{where}: expected an object, got {_show(item)}")
        return None
    a = PredAnomaly()
    label = item.get("Attributed Label")
    if isinstance(label, str):
        a.label = label
    if label not in TAXONOMY:
        errors.append(f"{where}['Attributed Label']: expected one of {list(TAXONOMY)}, got {_show(label)}")
    region = item.get("Attributed Time Region")
    if region is not None:
        a.frames = parse_time_region(region)
        if a.frames is None:
            errors.append(
                f"{where}['Attributed Time Region']: expected a window like 'Frame 4-5' with "
                f"0 <= start <= end <= {MAX_FRAME}, got {_show(region)}"
            )
    elif turn == 1:
        errors.append(f"{where}['Attributed Time Region']: missing (turn 1 needs a frame window)")
    a.bboxes = _read_bboxes(item.get("BBOX"), f"{where}['BBOX']", errors)
    if turn == 2 and not a.bboxes:
        errors.append(f"{where}['BBOX']: turn 2 needs at least one valid frame-indexed box")
    for key in ("Reason for Anomaly", "Problem Region"):
        text = item.get(key, "")
        if not isinstance(text, str):
            errors.append(f"{where}[{key!r}]: expected a string, got {_show(text)}")
        elif key == "Reason for Anomaly":
            a.reason = text
        else:
            a.region = text
    return a


def _read_answer(obj: dict[str, Any], turn: int, errors: list[str]) -> tuple[str | None, list[PredAnomaly], str]:
    """Check a decoded answer object against the status-conditioned schema of Eq. 2; return status, anomalies, COT."""
    cot = obj.get("COT", "")
    if not isinstance(cot, str):
        errors.append(f"COT: expected a string, got {_show(cot)}")
        cot = ""
    status = obj.get("status")
    if "status" not in obj:
        errors.append("status: missing")
    elif status not in STATUSES:
        errors.append(f"status: expected 'normal' or 'abnormal', got {_show(status)}")
    if status not in STATUSES:
        status = None
    raw = obj.get("anomalies")
    if "anomalies" not in obj:
        errors.append("anomalies: missing")
        raw = []
    elif not isinstance(raw, list):
        errors.append(f"anomalies: expected a list, got {_show(raw)}")
        raw = []
    if status == "normal" and raw:
        errors.append("anomalies: a normal answer must have an empty anomaly list")
    if status == "abnormal" and not raw:
        errors.append("anomalies: an abnormal answer needs at least one anomaly")
    anomalies = []
    for i, item in enumerate(raw):
        a = _read_anomaly(item, turn, f"anomalies[{i}]", errors)
        if a is not None:
            anomalies.append(a)
    return status, anomalies, cot


class _NonFiniteConstant(ValueError):
    """Raised by the strict decoder on ``NaN``, ``Infinity`` and ``-Infinity``, which JSON does not have."""


def _reject_constant(name: str) -> Any:
    raise _NonFiniteConstant(f"{name} is not valid JSON")


def _find_object(text: str) -> dict[str, Any] | None:
    """The first decodable JSON object in ``text`` that has a ``status`` key, else the first object at all.

    Used only for invalid answers (fenced, with prose, truncated), so that callers can still read a status.
    """
    decoder = json.JSONDecoder()
    first = None
    start = text.find("{")
    for _ in range(_MAX_OBJECT_TRIES):
        if start < 0:
            break
        try:
            obj, end = decoder.raw_decode(text, start)
        except (ValueError, RecursionError):
            start = text.find("{", start + 1)
            continue
        if "status" in obj:
            return obj
        if first is None:
            first = obj
        start = text.find("{", end)
    return first


def parse_judgment(text: Any, turn: int = 1) -> Judgment:
    """Parse a model answer of turn 1 or 2 into a :class:`Judgment`. Never raises, whatever ``text`` is.

    Implements Valid_t of the format reward (Eq. 2, Sec. 3.3) for the Fig. S5 answer object. An answer is valid when

    * the text is one bare JSON object (surrounding whitespace only; no Markdown fence, no prose, no NaN/Infinity,
      no duplicate keys);
    * ``status`` is "normal" or "abnormal", ``anomalies`` is a list, empty for normal and non-empty for abnormal;
    * every anomaly has an ``Attributed Label`` from :data:`TAXONOMY` and, in turn 1, an ``Attributed Time Region``
      (see :func:`parse_time_region`); in turn 2 the region is optional and ``BBOX`` needs at least one box;
    * every field present is well formed: ``COT``, ``Reason for Anomaly`` and ``Problem Region`` are strings, BBOX
      keys are frames ("Frame 3", "frame 3", "3") and boxes are integers (integral floats accepted) with
      0 <= x1 < x2 <= 1000, 0 <= y1 < y2 <= 1000, one box ``[x1, y1, x2, y2]`` or a list of boxes per frame.

    ``valid`` is True exactly when ``errors`` is empty. Malformed boxes and windows are dropped (and reported), so
    ``anomalies`` only ever holds well-formed windows and boxes. Turn-2 box frames are indices into the cropped clip
    and are not checked against the time region. When the text is not a bare object, the first JSON object found in
    it is still read (and, failing that, a ``"status": "..."`` pair), so an invalid answer may carry a status.

    Args:
        text: The decoded answer (``str``; UTF-8 ``bytes`` are decoded; anything else gives an invalid Judgment).
        turn: 1 (global scan: windows) or 2 (cropped clip: boxes).

    Raises:
        ValueError: if ``turn`` is not 1 or 2 (a caller's bug, not model output).
    """
    if turn not in (1, 2):
        raise ValueError(f"parse_judgment: turn must be 1 or 2, got {turn!r}")
    errors: list[str] = []
    try:
        return _parse_judgment(text, turn, errors)
    except Exception as e:  # model output is data: a parser bug must not kill a training run
        errors.append(f"internal error while parsing: {type(e).__name__}: {e}")
        return Judgment(False, None, [], errors)


def _parse_judgment(text: Any, turn: int, errors: list[str]) -> Judgment:
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            errors.append("answer bytes are not valid UTF-8")
            text = bytes(text).decode("utf-8", errors="replace")
    if not isinstance(text, str):
        errors.append(f"expected the answer as a string, got {type(text).__name__}")
        return Judgment(False, None, [], errors)

    duplicates: list[str] = []

    def strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for k, v in pairs:
            if k in d:
                duplicates.append(k)
            d[k] = v
        return d

    obj: Any = None
    try:
        obj = json.loads(text.strip(), parse_constant=_reject_constant, object_pairs_hook=strict_object)
    except json.JSONDecodeError as e:
        errors.append(f"not a bare JSON object: {e.msg} (line {e.lineno}, column {e.colno})")
    except RecursionError:
        errors.append("not a bare JSON object: nested too deeply")
    except ValueError as e:  # NaN/Infinity, or an integer too long to convert
        errors.append(f"not a bare JSON object: {e}")
    else:
        if not isinstance(obj, dict):
            errors.append(f"expected a JSON object, got {_show(obj)}")
            obj = None
        elif duplicates:
            errors.append(f"duplicate keys: {', '.join(_show(k) for k in duplicates[:5])}")
    bare = obj is not None
    if not bare:
        obj = _find_object(text)
    status, anomalies, cot = _read_answer(obj, turn, errors) if obj is not None else (None, [], "")
    if status is None and not bare:  # e.g. a truncated answer: read the status pair the object would have had
        m = _STATUS_RE.search(text)
        status = m.group(1) if m else None
    return Judgment(not errors, status, anomalies, errors, cot)


def format_judgment(
    status: str,
    anomalies: Iterable[PredAnomaly] = (),
    cot: str = "",
    turn: int = 1,
) -> str:
    """Render the canonical answer text of a turn (the Fig. S5 JSON object).

    The exact formatting is pinned because the reward of Eq. 7 reads the token after ``"status": "``: keys in the
    order ``COT, status, anomalies``, ``json.dumps`` separators (``", "`` and ``": "``), non-ASCII kept. Turn 1 writes
    windows and no boxes; turn 2 writes ``BBOX`` as ``{"Frame k": [x1, y1, x2, y2]}`` (a list of boxes when a frame
    has several).
    """
    items = []
    for a in anomalies if status == "abnormal" else ():
        item: dict[str, Any] = {}
        if a.frames is not None:
            item["Attributed Time Region"] = format_time_region(a.frames)
        item["Attributed Label"] = a.label
        item["Reason for Anomaly"] = a.reason
        item["Problem Region"] = a.region
        if turn == 2:
            item["BBOX"] = {
                f"Frame {k}": (list(v[0]) if len(v) == 1 else [list(b) for b in v])
                for k, v in sorted(a.bboxes.items())
            }
        items.append(item)
    return json.dumps({"COT": cot, "status": status, "anomalies": items}, ensure_ascii=False)


STATUS_PREFIX = '"status": "'
"""The text right before the status value in canonical answers; Eq. 7 reads the next-token distribution here."""
