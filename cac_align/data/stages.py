"""Training samples of CaC's stage 1 (single-frame warmup) and stage 2 (multi-frame SFT), and the dataset that turns
them into model-ready batches (paper Sec. 3.2, App. C.2).

Splits. "The three training stages use disjoint data splits, and each stage keeps a 1:1 ratio between normal and
anomalous samples" (App. C.2). :func:`cac_align.data.splits.build_splits` (``cac-align data splits``) assigns each
video to one stage, seeded, and records the assignment (``splits.json``, ``stage{1,2,3}.jsonl``); each recipe reads its
stage manifest (``data.manifest``) and the builders below cut that stage's samples from it, again 1:1.

Stage 1 (:func:`stage1_samples`). Anomalous frames come from videos with single-frame anomalies (Object Distortion,
Human Distortion, Character Anomalies): up to ``frames_per_video`` frames (seeded) of the annotation's ``fps``
sequence on which such an anomaly carries boxes and every anomaly covering the frame is a single-frame one with boxes
there (so the target names everything wrong in the frame). Normal frames are random frames of normal videos, as many as
anomalous ones (then both sides are cut to the smaller count). The frame is shown as a **one-frame video** (the chat
format of :mod:`cac_align.reward.chat` shows it twice, as Qwen3-VL patches frames in pairs), so stages 1-3 and
inference share one chat format and one processor path; the prompt is the single-turn prompt for one frame and the
target the turn-2 style answer (status, label, reason, region, ``BBOX`` on ``Frame 0``).

Stage 2 (:func:`stage2_samples`). Two kinds, each 1:1 normal/anomalous:

* **videos** - the whole video at the annotation's rate (4 fps) with the turn-1 prompt; target: the turn-1 answer
  (status, and per anomaly its window ``"Frame s-e"`` and label);
* **clips** - a window ``[s, e]`` of at most ``clip_max_frames`` frames of the 4 fps sequence (4 frames = 1 s: the
  clip's 8 frames at 8 fps span 0.875 s, "all shorter than 1 s") that fully covers at least one anomaly and cuts no
  other anomaly partially ("partial crops ... may introduce ambiguous or incorrect labels"); normal clips are random
  windows of normal videos. A clip sample is the **two-turn conversation** of inference (Sec. 3.4): turn 1 shows the
  whole video with an answer whose windows are ``[s, e]`` (what inference crops), turn 2 the clip cut by
  :func:`cac_align.video.crop_clip` at 8 fps; only turn 2's answer carries loss. Its target gives, per anomaly, the
  clip frames covering the anomaly and the boxes of every clip frame: clip frames ``clip_frame_of(j, s)`` to
  ``clip_frame_of(j + 1, s) - 1`` (frames 2(j - s) and 2(j - s) + 1 at 4 -> 8 fps) get the boxes of annotated frame
  ``j``, the crop rule the spatial reward (Eq. 5) uses. A normal clip's turn 1 is a false alarm on ``[s, e]``, which
  turn 2 rejects: the case turn 2 exists for. The false alarm must not look different from a real one, or turn 2
  learns to read the answer off turn 1's text instead of the clip (and then confirms every alarm of the model's own
  turn 1, whose reasons look real): its label, reason and region are those of a real anomaly of another video of the
  split, and each anomalous clip's window length is given to one normal clip (on the next normal video, in a seeded
  order, with a free window of that length), so both classes have the same window lengths.

Chain of thought. From the manifest's ``cot`` when it was written for the same view: ``cot["turn1"]`` for a video
sample, ``cot["turn2"]`` for a clip sample whose window is the one the CoT was written for
(``meta["cot_synthesis"]["turn2_window"]``, else the span of all anomaly windows / the middle ``clip_max_frames``
frames as :func:`cac_align.data.cot_synthesis.turn2_window` chooses), ``cot["frame"]`` for a stage-1 frame. An empty
``cot["turn2"]`` (answers without a chain of thought) names no frames, so it fits every clip window. Otherwise a short
templated CoT says what the frames show (the video's prompt) and which anomaly is where. A clip sample's turn 1 is
context written as the model will write its own turn 1: an empty ``cot["turn1"]`` gives it an empty CoT, otherwise
the template says the window may show the anomaly (a false alarm follows the anomalous video it copies). Departure
from the paper: its stage-1 CoT is synthesised per frame; our synthesis pipeline writes video and clip CoT only, and a
CoT that describes 16 frames would not fit a single frame, so stage-1 frames use the template unless ``cot["frame"]``
exists.

Batches. :class:`SFTDataset` decodes a sample's frames (:func:`cac_align.video.load_video` / ``crop_clip``) and encodes
the conversation with :func:`cac_align.reward.chat.encode_conversation`; :class:`SFTCollator` pads with
:func:`cac_align.reward.chat.collate` on the **left** (as inference does; :func:`cac_align.reward.sft.sft_loss` relies on
answers sitting at the end of every row) and adds ``labels``: ``input_ids`` on assistant tokens, -100 elsewhere.
:class:`StepSampler` gives a deterministic, resumable order: micro-batch ``m`` of rank ``r`` takes positions
``m B W + r B .. + B`` of an endless stream of seeded per-epoch permutations.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from cac_align.data.importer import absolute_videos
from cac_align.reward.chat import Encoded, Turn, assistant_labels, collate, encode_conversation
from cac_align.reward.prompts import single_turn_prompt, turn1_prompt, turn2_prompt
from cac_align.schema import (
    SINGLE_FRAME_LABELS,
    Annotation,
    AnomalySpan,
    Box,
    PredAnomaly,
    format_judgment,
    read_manifest,
)
from cac_align.video import TURN2_FPS, Sampled, clip_frame_of, crop_clip, crop_window, load_video, probe_video

Kind = Literal["frame", "video", "clip"]
_EPS = 1e-6  # the tolerance of cac_align.video's sampling rule (floor(t * src_fps + eps))


@dataclass
class SFTSample:
    """One SFT conversation, fully specified except for the decoded frames (JSON-able, see :meth:`to_dict`).

    Attributes:
        kind: "frame" (stage 1), "video" or "clip" (stage 2).
        video: the video file (absolute path).
        fps: the rate of the annotation's sequence (the frame and window indices index it; 4 in the paper).
        status: the status the trained answer states.
        labels: the anomaly types the trained answer names.
        prompts: the user prompt of each turn (each contains the video block once).
        answers: the assistant answer of each turn.
        num_frames: frames shown in each turn (checked when the frames are decoded).
        loss_turns: 1-based turns whose answers carry loss.
        cot_source: "manifest" or "template".
        frame: kind "frame": the frame's index on the ``fps`` sequence.
        window: kind "clip": the inclusive window ``[s, e]`` of the ``fps`` sequence cut as turn 2's clip.
        clip_fps: kind "clip": the clip's sampling rate (8 in the paper).
    """

    kind: Kind
    video: str
    fps: float
    status: str
    labels: list[str]
    prompts: list[str]
    answers: list[str]
    num_frames: list[int]
    loss_turns: list[int]
    cot_source: str
    frame: int | None = None
    window: tuple[int, int] | None = None
    clip_fps: float = TURN2_FPS

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["window"] = list(self.window) if self.window is not None else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SFTSample:
        d = dict(d)
        d["window"] = tuple(d["window"]) if d.get("window") is not None else None
        return cls(**d)


@dataclass
class BuildStats:
    """What a builder made and what it left out (written beside a run as ``data_stats.json``)."""

    samples: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    cot_from_manifest: int = 0

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def load_stage_manifest(path: str | Path) -> list[Annotation]:
    """A stage manifest's annotations with absolute video paths (relative ones resolved against its folder)."""
    return absolute_videos(read_manifest(path), path)


# --------------------------------------------------------------------------------------------------- frame counts
@lru_cache(maxsize=4096)
def _probe(video: str) -> tuple[int, float]:
    n, src_fps, _, _ = probe_video(video)
    return n, src_fps


def _count_existing(times: np.ndarray, n_src: int, src_fps: float) -> int:
    """How many sample times have a source frame (the sampling rule of :mod:`cac_align.video`)."""
    return int(np.count_nonzero(np.floor(times * src_fps + _EPS) < n_src))


def sequence_frames(video: str, fps: float) -> int:
    """Frames of the video's ``fps`` sequence (``len(load_video(video, fps).frames)``), from the header only."""
    n_src, src_fps = _probe(video)
    return _count_existing(np.arange(math.ceil(n_src / src_fps * fps) + 1) / fps, n_src, src_fps)


def clip_frames(video: str, window: tuple[int, int], fps: float, clip_fps: float) -> int:
    """Frames of the clip :func:`cac_align.video.crop_clip` cuts at ``window`` (``len(crop_clip(...).frames)``)."""
    n_src, src_fps = _probe(video)
    return _count_existing(crop_window(window[0], window[1], fps, clip_fps), n_src, src_fps)


# ---------------------------------------------------------------------------------------------------- templated CoT
def _scene(ann: Annotation) -> str:
    return ann.prompt.strip().rstrip(".") or "the scene"


def _phrase(where: str, label: str, reason: str, region: str) -> str:
    text = f"{where}: {label}, {reason.strip().rstrip('.') or 'a visible defect'}"
    return text + (f" ({region.strip()})." if region.strip() else ".")


def template_cot(kind: str, ann: Annotation, anomalies: Sequence[PredAnomaly] = ()) -> str:
    """A short chain of thought for a sample without a manifest CoT: what the frames show and which anomaly is where.

    ``kind`` is "frame", "video", "clip" (the trained answers) or "alarm" (turn 1 of a clip sample, no loss).
    ``anomalies`` are the answer's anomalies, their windows already on the frames the turn shows.
    """
    scene = _scene(ann)
    if kind == "alarm":
        where = " and ".join(sorted({a.label or "" for a in anomalies}))
        s, e = anomalies[0].frames or (0, 0)
        return f"The frames show {scene}. Frame {s}-{e} may show {where.lower()}; a closer look is needed."
    head = {
        "frame": f"Frame 0 shows {scene}.",
        "video": f"The frames show {scene}.",
        "clip": f"The clip shows {scene}.",
    }
    if not anomalies:
        return head[kind] + " People, objects and motion look coherent in every frame: no anomaly."
    parts = []
    for a in anomalies:
        s, e = a.frames or (0, 0)
        parts.append(
            _phrase(f"Frame {s}-{e}" if kind != "frame" else "In this frame", a.label or "", a.reason, a.region)
        )
    tail = " The other frames look normal." if kind == "video" else ""
    return " ".join([head[kind], *parts]) + tail


# ------------------------------------------------------------------------------------------------------ stage 1
def _frame_candidates(ann: Annotation) -> list[int]:
    """Frames on which a single-frame anomaly carries boxes and every anomaly covering the frame is a single-frame
    one with boxes there."""
    out = []
    for j in sorted({j for a in ann.anomalies if a.label in SINGLE_FRAME_LABELS for j in a.bboxes}):
        covering = [a for a in ann.anomalies if a.frames[0] <= j <= a.frames[1]]
        if all(a.label in SINGLE_FRAME_LABELS and j in a.bboxes for a in covering):
            out.append(j)
    return out


def _cot(ann: Annotation, key: str) -> str | None:
    return ann.cot.get(key) if ann.cot is not None else None


def _frame_sample(ann: Annotation, j: int, style: str) -> SFTSample:
    items = [
        PredAnomaly(a.label, (0, 0), {0: list(a.bboxes[j])}, a.reason, a.region)
        for a in ann.anomalies
        if a.frames[0] <= j <= a.frames[1]
    ]
    cot = _cot(ann, "frame")
    answer = format_judgment(ann.status, items, cot if cot is not None else template_cot("frame", ann, items), turn=2)
    return SFTSample(
        kind="frame",
        video=ann.video,
        fps=ann.fps,
        status=ann.status,
        labels=sorted({a.label or "" for a in items}),
        prompts=[single_turn_prompt(ann.prompt, 1, fps=ann.fps, style=style)],
        answers=[answer],
        num_frames=[1],
        loss_turns=[1],
        cot_source="manifest" if cot is not None else "template",
        frame=j,
    )


def stage1_samples(
    annotations: Sequence[Annotation], frames_per_video: int = 2, seed: int = 0, prompt_style: str = "full"
) -> tuple[list[SFTSample], BuildStats]:
    """Stage-1 single-frame samples (module doc): anomalous frames of single-frame anomalies and as many normal frames.

    Args:
        annotations: the stage-1 manifest (absolute video paths, :func:`load_stage_manifest`).
        frames_per_video: most anomalous frames taken from one video (the paper: ~10K frames from 5K videos).
        seed: seeds the frame choice.
        prompt_style: the prompts' style, "full" or "compact" (:mod:`cac_align.reward.prompts`).

    Returns:
        ``(samples, stats)``: anomalous samples first, then normal ones, exactly as many of each.
    """
    if frames_per_video < 1:
        raise ValueError(f"frames_per_video must be >= 1, got {frames_per_video}")
    rng = random.Random(seed)
    stats = BuildStats()
    anomalous: list[SFTSample] = []
    normal_pool: list[tuple[Annotation, list[int]]] = []
    for ann in annotations:
        n = sequence_frames(ann.video, ann.fps)
        if ann.is_abnormal:
            if any(a.frames[1] >= n for a in ann.anomalies):
                stats.skip("anomaly window past the video's end")
                continue
            cands = _frame_candidates(ann)
            if not cands:
                stats.skip("no frame with only boxed single-frame anomalies")
                continue
            for j in sorted(rng.sample(cands, min(frames_per_video, len(cands)))):
                anomalous.append(_frame_sample(ann, j, prompt_style))
        else:
            frames = list(range(n))
            rng.shuffle(frames)
            normal_pool.append((ann, frames))
    normal: list[SFTSample] = []
    depth = 0
    while len(normal) < len(anomalous) and any(depth < len(f) for _, f in normal_pool):
        for ann, frames in normal_pool:  # one frame per normal video per round, so frames spread over videos
            if depth < len(frames) and len(normal) < len(anomalous):
                normal.append(_frame_sample(ann, frames[depth], prompt_style))
        depth += 1
    m = min(len(anomalous), len(normal))
    if len(anomalous) > m:
        stats.skipped["anomalous frames beyond the normal count (1:1)"] = len(anomalous) - m
        anomalous = [anomalous[i] for i in sorted(rng.sample(range(len(anomalous)), m))]
    samples = anomalous + normal[:m]
    stats.samples = {"frame/abnormal": m, "frame/normal": m}
    stats.cot_from_manifest = sum(s.cot_source == "manifest" for s in samples)
    return samples, stats


# ------------------------------------------------------------------------------------------------------ stage 2
def _video_sample(ann: Annotation, n: int, style: str) -> SFTSample:
    items = [PredAnomaly(a.label, a.frames, {}, a.reason, a.region) for a in ann.anomalies]
    cot = _cot(ann, "turn1")
    answer = format_judgment(ann.status, items, cot if cot is not None else template_cot("video", ann, items), turn=1)
    return SFTSample(
        kind="video",
        video=ann.video,
        fps=ann.fps,
        status=ann.status,
        labels=sorted(ann.labels),
        prompts=[turn1_prompt(ann.prompt, n, fps=ann.fps, style=style)],
        answers=[answer],
        num_frames=[n],
        loss_turns=[1],
        cot_source="manifest" if cot is not None else "template",
    )


def clip_boxes(
    span: AnomalySpan, window: tuple[int, int], m: int, fps: float, clip_fps: float
) -> dict[int, list[Box]]:
    """The anomaly's boxes on the frames of the clip cut at ``window`` (``m`` clip frames): clip frames
    ``clip_frame_of(j, s)`` .. ``clip_frame_of(j + 1, s) - 1`` get the boxes of annotated frame ``j``."""
    s = window[0]
    out: dict[int, list[Box]] = {}
    for j, boxes in sorted(span.bboxes.items()):
        if not window[0] <= j <= window[1]:
            continue
        lo = clip_frame_of(j, s, fps, clip_fps)
        hi = max(lo + 1, clip_frame_of(j + 1, s, fps, clip_fps))
        for k in range(lo, min(hi, m)):
            out.setdefault(k, []).extend(boxes)
    return out


def clip_region(span: AnomalySpan, window: tuple[int, int], m: int, fps: float, clip_fps: float) -> tuple[int, int]:
    """The clip frames (inclusive) covering the anomaly's window, for a clip cut at ``window`` with ``m`` frames."""
    s = window[0]
    lo = min(clip_frame_of(span.frames[0], s, fps, clip_fps), m - 1)
    hi = max(lo, min(clip_frame_of(span.frames[1] + 1, s, fps, clip_fps) - 1, m - 1))
    return (lo, hi)


def _inside(ann: Annotation, window: tuple[int, int]) -> list[AnomalySpan] | None:
    """The anomalies fully inside ``window``, or None if one is cut partially or none is inside."""
    s, e = window
    inside = []
    for a in ann.anomalies:
        if s <= a.frames[0] and a.frames[1] <= e:
            inside.append(a)
        elif a.frames[0] <= e and s <= a.frames[1]:
            return None
    return inside or None


def _clip_windows(ann: Annotation, n: int, max_frames: int) -> list[tuple[int, int]]:
    """Every window of at most ``max_frames`` frames inside the video that covers anomalies fully (each with a box
    in the window) and cuts none partially."""
    out = []
    for s in range(n):
        for e in range(s, min(n, s + max_frames)):
            inside = _inside(ann, (s, e))
            if inside is not None and all(any(s <= j <= e for j in a.bboxes) for a in inside):
                out.append((s, e))
    return out


def _cot_window(ann: Annotation, n: int, max_frames: int, clip_fps: float) -> tuple[int, int] | None:
    """The window ``cot["turn2"]`` was written for (module doc), or None without one or when it was written for
    clips at another rate (its frame numbers would not match)."""
    if _cot(ann, "turn2") is None:
        return None
    synth = ann.meta.get("cot_synthesis")
    if isinstance(synth, dict) and synth.get("clip_fps", clip_fps) != clip_fps:
        return None
    if isinstance(synth, dict) and isinstance(synth.get("turn2_window"), list) and len(synth["turn2_window"]) == 2:
        return (int(synth["turn2_window"][0]), int(synth["turn2_window"][1]))
    from cac_align.data.cot_synthesis import turn2_window

    try:
        return turn2_window(ann, n, max_frames)
    except ValueError:
        return None


def _clip_cot(ann: Annotation, window: tuple[int, int], cot_window: tuple[int, int] | None) -> str | None:
    """The manifest's turn-2 CoT for the clip ``window`` (module doc): when it was written for that window or is empty
    (it then fits every window); None otherwise, for the template."""
    cot = _cot(ann, "turn2")
    return cot if window == cot_window or cot == "" else None


def _writes_no_cot(ann: Annotation) -> bool:
    """Whether the model is trained to write an empty turn-1 CoT for this video (an empty ``cot["turn1"]``)."""
    return _cot(ann, "turn1") == ""


def _clip_sample(
    ann: Annotation,
    n: int,
    window: tuple[int, int],
    clip_fps: float,
    cot: str | None,
    alarm: tuple[str, str, str, bool] | None,
    style: str,
) -> SFTSample:
    s, e = window
    m = clip_frames(ann.video, window, ann.fps, clip_fps)
    if ann.is_abnormal:
        spans = _inside(ann, window) or []
        turn1_items = [PredAnomaly(a.label, window, {}, a.reason, a.region) for a in spans]
        items = [
            PredAnomaly(
                a.label,
                clip_region(a, window, m, ann.fps, clip_fps),
                clip_boxes(a, window, m, ann.fps, clip_fps),
                a.reason,
                a.region,
            )
            for a in spans
        ]
        bare = _writes_no_cot(ann)
    else:
        assert alarm is not None
        label, reason, region, bare = alarm
        turn1_items = [PredAnomaly(label, window, {}, reason, region)]
        items = []
    # turn 1 is context, written as the model writes its own turn 1: a model trained on answers without a chain of
    # thought (an empty ``cot["turn1"]``) writes none there at inference, so the alarm carries none either; a false
    # alarm takes that from the anomalous video it copies, so a CoT's presence cannot tell the classes apart
    alarm_cot = "" if bare else template_cot("alarm", ann, turn1_items)
    answer1 = format_judgment("abnormal", turn1_items, alarm_cot, turn=1)
    answer2 = format_judgment(ann.status, items, cot if cot is not None else template_cot("clip", ann, items), turn=2)
    return SFTSample(
        kind="clip",
        video=ann.video,
        fps=ann.fps,
        status=ann.status,
        labels=sorted({a.label or "" for a in items}),
        prompts=[
            turn1_prompt(ann.prompt, n, fps=ann.fps, style=style),
            turn2_prompt(ann.prompt, m, fps=clip_fps, window=(s, e), style=style),
        ],
        answers=[answer1, answer2],
        num_frames=[n, m],
        loss_turns=[2],
        cot_source="manifest" if cot is not None else "template",
        window=window,
        clip_fps=clip_fps,
    )


def _balance(a: list[SFTSample], b: list[SFTSample], rng: random.Random) -> tuple[list[SFTSample], list[SFTSample]]:
    """Cut the longer list to the shorter one's length (a seeded subset, order kept)."""
    m = min(len(a), len(b))
    a = a if len(a) == m else [a[i] for i in sorted(rng.sample(range(len(a)), m))]
    b = b if len(b) == m else [b[i] for i in sorted(rng.sample(range(len(b)), m))]
    return a, b


def stage2_samples(
    annotations: Sequence[Annotation],
    seed: int = 0,
    videos: bool = True,
    clips: bool = True,
    clip_fps: float = TURN2_FPS,
    clip_max_frames: int = 4,
    clips_per_video: int = 1,
    max_frames: int = 64,
    prompt_style: str = "full",
) -> tuple[list[SFTSample], BuildStats]:
    """Stage-2 samples (module doc): whole videos (turn 1) and clips (two-turn, loss on turn 2), each kind 1:1.

    Args:
        annotations: the stage-2 manifest (absolute video paths, :func:`load_stage_manifest`).
        seed: seeds the clip windows, the false alarms and the 1:1 cuts.
        videos: make whole-video samples.
        clips: make clip samples.
        clip_fps: the clips' sampling rate (8 in the paper).
        clip_max_frames: most frames of the ``fps`` sequence a clip window spans (4 = 1 s at 4 fps).
        clips_per_video: most clip windows per video (distinct windows).
        max_frames: videos with more frames on their ``fps`` sequence are left out (CaCReward shows at most 64).
        prompt_style: the prompts' style, "full" or "compact" (:mod:`cac_align.reward.prompts`).

    Returns:
        ``(samples, stats)``: anomalous then normal videos, then anomalous then normal clips.
    """
    if clip_max_frames < 1 or clips_per_video < 1:
        raise ValueError(f"clip_max_frames and clips_per_video must be >= 1, got {clip_max_frames}, {clips_per_video}")
    rng = random.Random(seed)
    stats = BuildStats()
    vids: dict[str, list[SFTSample]] = {"abnormal": [], "normal": []}
    cl: dict[str, list[SFTSample]] = {"abnormal": [], "normal": []}
    kept: list[tuple[Annotation, int]] = []
    for ann in annotations:
        n = sequence_frames(ann.video, ann.fps)
        if n > max_frames:
            stats.skip(f"more than {max_frames} frames")
            continue
        if any(a.frames[1] >= n for a in ann.anomalies):
            stats.skip("anomaly window past the video's end")
            continue
        if videos:
            vids[ann.status].append(_video_sample(ann, n, prompt_style))
        kept.append((ann, n))
    # anomalous clips first: the normal clips' false alarms copy their window lengths and real anomalies (module doc)
    lengths: list[int] = []
    for ann, n in kept if clips else []:
        if not ann.is_abnormal:
            continue
        windows = _clip_windows(ann, n, clip_max_frames)
        if not windows:
            stats.skip(f"no window of <= {clip_max_frames} frames covering an anomaly")
            continue
        cot_window = _cot_window(ann, n, clip_max_frames, clip_fps)
        chosen = rng.sample(windows, min(clips_per_video, len(windows)))
        if cot_window in windows:  # the window the manifest's turn-2 CoT describes comes first
            chosen = [cot_window] + [w for w in chosen if w != cot_window][: clips_per_video - 1]
        for w in sorted(chosen):
            cl["abnormal"].append(_clip_sample(ann, n, w, clip_fps, _clip_cot(ann, w, cot_window), None, prompt_style))
            lengths.append(w[1] - w[0] + 1)
    real = [
        (a.label, a.reason, a.region, _writes_no_cot(ann)) for ann, _ in kept if ann.is_abnormal for a in ann.anomalies
    ]
    # one normal clip for each anomalous clip's length, on the next normal video with a free window of that length
    normals = [(ann, n) for ann, n in kept if not ann.is_abnormal]
    chosen_of: list[set[tuple[int, int]]] = [set() for _ in normals]
    order = rng.sample(range(len(normals)), len(normals))
    turn = 0
    for length in rng.sample(lengths, len(lengths)):
        for _ in range(len(order)):  # each normal video at most once
            i = order[turn % len(order)]
            turn += 1
            if len(chosen_of[i]) == clips_per_video:
                continue
            n = normals[i][1]
            free = [(s, s + length - 1) for s in range(n - length + 1) if (s, s + length - 1) not in chosen_of[i]]
            if free:
                chosen_of[i].add(rng.choice(free))
                break
    for (ann, n), chosen in zip(normals, chosen_of, strict=True):
        cot_window = _cot_window(ann, n, clip_max_frames, clip_fps)
        for w in sorted(chosen):
            cot = _clip_cot(ann, w, cot_window)
            cl["normal"].append(_clip_sample(ann, n, w, clip_fps, cot, rng.choice(real), prompt_style))
    vids["abnormal"], vids["normal"] = _balance(vids["abnormal"], vids["normal"], rng)
    cl["abnormal"], cl["normal"] = _balance(cl["abnormal"], cl["normal"], rng)
    samples = vids["abnormal"] + vids["normal"] + cl["abnormal"] + cl["normal"]
    stats.samples = {f"{k}/{s}": len(d[s]) for k, d in (("video", vids), ("clip", cl)) for s in ("abnormal", "normal")}
    stats.cot_from_manifest = sum(s.cot_source == "manifest" for s in samples)
    return samples, stats


def write_samples(path: str | Path, samples: Sequence[SFTSample]) -> None:
    """Record the samples of a run as JSONL (one :meth:`SFTSample.to_dict` per line, written atomically)."""
    from cac_align.utils import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(s.to_dict(), ensure_ascii=False) + "\n" for s in samples))


# --------------------------------------------------------------------------------------------------------- batches
def load_views(sample: SFTSample) -> list[Sampled]:
    """The frames each turn of ``sample`` shows (the frame, the whole video, or the whole video and the clip).

    Raises:
        ValueError: the decoded frame counts differ from those the prompts state (the file changed since).
    """
    path = sample.video
    if sample.kind == "frame":
        assert sample.frame is not None
        j = sample.frame
        views = [load_video(path, sample.fps, j / sample.fps, (j + 1) / sample.fps)]
    elif sample.kind == "video":
        views = [load_video(path, sample.fps)]
    else:
        assert sample.window is not None
        s, e = sample.window
        views = [load_video(path, sample.fps), crop_clip(path, None, s, e, sample.fps, sample.clip_fps)]
    got = [v.frames.shape[0] for v in views]
    if got != sample.num_frames:
        raise ValueError(f"{path}: decoded {got} frames per turn, but the sample was built for {sample.num_frames}")
    return views


def video_kwargs_for(processor, max_pixels: int | None) -> dict[str, Any]:
    """Processor settings capping each frame at ``max_pixels`` (None: the checkpoint's own), as ``CaCReward`` does."""
    if max_pixels is None:
        return {}
    factor = processor.video_processor.patch_size * processor.video_processor.merge_size
    return {"cap_pixels_per_frame": True, "max_video_tokens": max(1, max_pixels // (factor * factor))}


class SFTDataset(Dataset):
    """Samples -> :class:`~cac_align.reward.chat.Encoded` conversations (frames decoded on access).

    Args:
        samples: from :func:`stage1_samples` / :func:`stage2_samples`.
        processor: the model's Qwen3-VL processor.
        max_pixels: per-frame pixel cap (see :func:`video_kwargs_for`).
        cache: keep each encoded sample after its first access (small datasets seen for many epochs, whose decoding
            would otherwise cost as much as the training step; each DataLoader worker keeps its own copy).
    """

    def __init__(
        self, samples: Sequence[SFTSample], processor, max_pixels: int | None = None, cache: bool = False
    ) -> None:
        if not samples:
            raise ValueError("SFTDataset: no samples (is the stage manifest empty or unbalanced?)")
        self.samples = list(samples)
        self.processor = processor
        self.video_kwargs = video_kwargs_for(processor, max_pixels)
        self._cache: dict[int, Encoded] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Encoded:
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        s = self.samples[i]
        turns = [Turn(p, v, a) for p, v, a in zip(s.prompts, load_views(s), s.answers, strict=True)]
        enc = encode_conversation(self.processor, turns, loss_turns=s.loss_turns, video_kwargs=self.video_kwargs)
        if self._cache is not None:
            self._cache[i] = enc
        return enc


class SFTCollator:
    """Pads encoded conversations on the left (:func:`cac_align.reward.chat.collate`) and adds ``labels``."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, items: Sequence[Encoded]) -> dict[str, torch.Tensor]:
        batch = collate(items, self.pad_token_id, padding_side="left")
        batch["labels"] = assistant_labels(batch["input_ids"], batch["assistant_mask"])
        return batch


class StepSampler(Sampler[int]):
    """Endless, resumable sample order for data-parallel training.

    Position ``p`` of the global stream is sample ``perm_k[p mod n]`` with ``k = p // n`` the epoch and ``perm_k`` the
    permutation of ``numpy.random.default_rng([seed, k])``. Micro-batch ``m`` covers positions ``[m B W, (m + 1) B W)``
    and rank ``r`` takes ``B`` of them from ``m B W + r B``; iteration starts at micro-batch ``start``. So a run
    resumed at micro-batch ``m`` sees exactly the samples the uninterrupted run would have seen.
    """

    def __init__(
        self, num_samples: int, batch_size: int, world_size: int = 1, rank: int = 0, seed: int = 0, start: int = 0
    ) -> None:
        if num_samples < 1 or batch_size < 1 or world_size < 1 or not 0 <= rank < world_size or start < 0:
            raise ValueError(
                f"StepSampler: bad arguments num_samples={num_samples}, batch_size={batch_size}, "
                f"world_size={world_size}, rank={rank}, start={start}"
            )
        self.n, self.batch_size, self.world_size, self.rank, self.seed, self.start = (
            num_samples,
            batch_size,
            world_size,
            rank,
            seed,
            start,
        )

    def __iter__(self) -> Iterator[int]:
        epoch, perm = -1, np.arange(0)
        m = self.start
        while True:
            base = (m * self.world_size + self.rank) * self.batch_size
            for p in range(base, base + self.batch_size):
                k, i = divmod(p, self.n)
                if k != epoch:
                    epoch, perm = k, np.random.default_rng([self.seed, k]).permutation(self.n)
                yield int(perm[i])
            m += 1
