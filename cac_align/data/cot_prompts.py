"""Prompts of CoT synthesis (paper Sec. 3.1, App. B.2, Figs. S4-S6), written in cac-align's own words.

CoT synthesis asks a strong VLM to analyse an annotated video with the human annotation as a hint, then asks it again
whether its analysis agrees with the annotation. Three prompts:

* **Turn 1, long video** (Fig. S4-S5, blue parts): the inference prompt of
  :func:`cac_align.reward.prompts.turn1_prompt` (whole video at 4 fps, answer with time windows) plus the pink hint
  branch - for an anomalous video, the annotated phenomena to watch for and the instruction to act as if they had
  been found unaided; for a normal video, that the annotators found it normal and minor imperfections do not count.
* **Turn 2, clipped snippet** (orange parts): :func:`cac_align.reward.prompts.turn2_prompt` (the annotated window
  resampled at 8 fps, answer with per-frame boxes) plus its hint branch - the phenomena, reference boxes for each clip
  frame, that the clip already is the anomalous span, and that the boxes must cover every clip frame.
* **Consistency check** (Fig. S6): whether an analysis identifies and explains the annotated errors - same types,
  same objects, same phenomena, time ranges within 2 frames (turn 1: and 85 % overlap), one-to-one; answered with
  "consistent" or "inconsistent" only. Used for anomalous videos; normal ones are checked by rule alone.

Frame numbers: turn 1 uses the annotation's own sequence (``Annotation.fps``, Frame 0 .. n - 1). Turn 2 renumbers
the clip from Frame 0; an annotated frame ``j`` covers the clip frames whose times fall in ``[j / fps, (j + 1) / fps)``
(:func:`clip_span`; frames ``2 (j - s)`` and ``2 (j - s) + 1`` at 4 -> 8 fps), and its boxes are the reference boxes
of those clip frames. The hints are placed by the ``hint=`` hook of the inference prompt builders, so the answers
follow exactly the format the reward model is trained on.
"""

from __future__ import annotations

import json
import math

from cac_align.reward.prompts import turn1_prompt, turn2_prompt
from cac_align.schema import Annotation, AnomalySpan, Box
from cac_align.video import TURN2_FPS

_UNAWARE = (
    "In your reasoning and in your answer, however, behave as if you had never been given these cues: do not write "
    'anything like "according to the hint", "as stated" or "as I was told". Treat them as suspicious points you '
    "noticed yourself through careful observation, and analyse them independently, objectively and professionally."
)

_TURN1_NORMAL = (
    "Human annotators judged this video to be normal; review it carefully. Their judgement is usually right, so do "
    "not call the video abnormal because of minor imperfections. Only a clear, explicit problem that you can point to "
    "justifies an abnormal verdict, and only if careful observation convinces you that the annotation is wrong may you "
    "keep to your own judgement."
)

_TURN2_NORMAL = (
    "Human annotators judged this clip to be normal; review it carefully. If the clip is smooth and natural overall, "
    "with no obvious visible defect, judge it normal. Only if careful observation convinces you that the annotation is "
    "wrong and the clip shows a clear, explicit and explainable anomaly may you still judge it abnormal."
)


def _frames(s: int, e: int) -> str:
    return f"Frame {s}" if s == e else f"Frame {s}-{e}"


def _box(b: Box) -> str:
    return "[" + ", ".join(str(c) for c in b) + "]"


def clip_span(
    frames: tuple[int, int], window_start: int, num_clip_frames: int, fps: float, clip_fps: float = TURN2_FPS
) -> tuple[int, int] | None:
    """The clip frames covering the annotated frames ``[a, b]`` when the clip starts at frame ``window_start``.

    Annotated frame ``j`` spans the times ``[j / fps, (j + 1) / fps)``; clip frame ``k`` is at
    ``window_start / fps + k / clip_fps`` (:func:`cac_align.video.crop_window`). Returns the inclusive clip window,
    clamped to the clip, or None when it misses the clip entirely.
    """
    r = clip_fps / fps
    k0 = max(0, math.ceil((frames[0] - window_start) * r - 1e-9))
    k1 = min(num_clip_frames - 1, math.ceil((frames[1] + 1 - window_start) * r - 1e-9) - 1)
    return (k0, k1) if k0 <= k1 else None


def clip_boxes(
    span: AnomalySpan, window_start: int, num_clip_frames: int, fps: float, clip_fps: float = TURN2_FPS
) -> dict[int, list[Box]]:
    """The annotated boxes of ``span`` keyed by clip frame: clip frame ``k`` shows annotated frame
    ``window_start + floor(k fps / clip_fps)`` and takes its boxes (if that frame has any)."""
    out: dict[int, list[Box]] = {}
    for k in range(num_clip_frames):
        j = window_start + math.floor(k * fps / clip_fps + 1e-9)
        if j in span.bboxes:
            out[k] = list(span.bboxes[j])
    return out


def error_description(annotation: Annotation, clip: tuple[int, int, float] | None = None) -> str:
    """The annotated errors as numbered lines: category, frames, reason and affected object.

    ``clip = (window_start, num_clip_frames, clip_fps)`` expresses the frames in clip numbering (turn 2).
    """
    lines = []
    for i, a in enumerate(annotation.anomalies, 1):
        frames = a.frames
        if clip is not None:
            frames = clip_span(a.frames, clip[0], clip[1], annotation.fps, clip[2]) or (0, clip[1] - 1)
        parts = [f"{i}. {a.label}, {_frames(*frames)}"]
        if a.region:
            parts.append(f"object: {a.region}")
        if a.reason:
            parts.append(f"reason: {a.reason}")
        lines.append("; ".join(parts))
    return "\n".join(lines)


def turn1_hint(annotation: Annotation) -> str:
    """The turn-1 hint branch of Fig. S4 for this annotation (abnormal or normal)."""
    if not annotation.is_abnormal:
        return _TURN1_NORMAL
    return (
        "While analysing, pay particular attention to the following phenomena, which may be present in the video:\n"
        f"{error_description(annotation)}\n{_UNAWARE}"
    )


def turn2_hint(annotation: Annotation, window_start: int, num_clip_frames: int, clip_fps: float = TURN2_FPS) -> str:
    """The turn-2 hint branch of Fig. S4 for the clip that starts at annotated frame ``window_start``."""
    if not annotation.is_abnormal:
        return _TURN2_NORMAL
    clip = (window_start, num_clip_frames, clip_fps)
    box_lines = []
    for i, a in enumerate(annotation.anomalies, 1):
        boxes = clip_boxes(a, window_start, num_clip_frames, annotation.fps, clip_fps)
        if boxes:
            per_frame = "; ".join(
                f"Frame {k}: " + (_box(v[0]) if len(v) == 1 else "[" + ", ".join(_box(b) for b in v) + "]")
                for k, v in sorted(boxes.items())
            )
            box_lines.append(f"{i}. {a.label}: {per_frame}")
    boxes_text = (
        "Reference coordinates of the target region in the clip frames ([xmin, ymin, xmax, ymax], 0-1000); use them "
        "as a reference for BBOX and refine them to the actual visual content:\n" + "\n".join(box_lines) + "\n"
        if box_lines
        else ""
    )
    return (
        "The following comes from human annotation. It only serves to help you find the key region to observe and is "
        "not guaranteed to be correct: if after careful inspection the whole clip looks normal and the hint does not "
        'match what you see, keep to your observation and answer "normal". This clip has already been cut to the '
        "annotated anomalous time span; if you judge it abnormal, the attributed time region is by default the whole "
        f"clip. Pay particular attention to the following phenomena, which may be present:\n"
        f"{error_description(annotation, clip)}\n{boxes_text}"
        f"The BBOX object of each anomaly must cover every one of the {num_clip_frames} clip frames (Frame 0 to Frame "
        f"{num_clip_frames - 1}) and must not omit any.\n{_UNAWARE}"
    )


def synthesis_prompt_turn1(annotation: Annotation, num_frames: int) -> str:
    """The turn-1 CoT-synthesis prompt (Figs. S4-S5, long-video variant) for the annotation's 4 fps sequence."""
    return turn1_prompt(annotation.prompt, num_frames, annotation.fps, hint=turn1_hint(annotation))


def synthesis_prompt_turn2(
    annotation: Annotation, window_start: int, num_clip_frames: int, clip_fps: float = TURN2_FPS
) -> str:
    """The turn-2 CoT-synthesis prompt (Figs. S4-S5, clipped-snippet variant) for the clip of ``num_clip_frames``
    frames at ``clip_fps`` that starts at annotated frame ``window_start``."""
    hint = turn2_hint(annotation, window_start, num_clip_frames, clip_fps)
    return turn2_prompt(annotation.prompt, num_clip_frames, clip_fps, hint=hint)


def verification_prompt(
    turn: int,
    annotation: Annotation,
    analysis: str,
    video_id: str,
    clip: tuple[int, int, float] | None = None,
) -> str:
    """The Fig. S6 consistency-check prompt for an anomalous video's turn-``turn`` analysis (the model's JSON answer).

    Args:
        turn: 1 (whole video: strict time range) or 2 (clip: same entity or region, time broadly consistent).
        annotation: the ground truth (must be abnormal).
        analysis: the complete answer text to check.
        video_id: how the video is named in the prompt.
        clip: ``(window_start, num_clip_frames, clip_fps)`` for turn 2; the errors are given in clip frames.
    """
    if turn not in (1, 2):
        raise ValueError(f"turn must be 1 or 2, got {turn!r}")
    if not annotation.is_abnormal:
        raise ValueError("the consistency check applies to anomalous videos only")
    if turn == 2 and clip is None:
        raise ValueError("turn 2 needs clip=(window_start, num_clip_frames, clip_fps)")
    if turn == 1:
        segment = f"whole video, Frame 0 onwards at {annotation.fps:g} fps"
        same_object = "the erroneous object the AI names must be the same entity as the annotated one."
        time_rule = (
            "the AI's time range must match the annotated one strictly: its start frame and its end frame may each "
            "differ by at most 2 frames, and the two ranges must overlap by at least 85%."
        )
        errors = error_description(annotation)
    else:
        assert clip is not None
        segment = f"clip of annotated frames from Frame {clip[0]}, renumbered Frame 0-{clip[1] - 1} at {clip[2]:g} fps"
        same_object = (
            "the erroneous object the AI names must be the same entity, or the same region, as the annotated one."
        )
        time_rule = (
            "the AI's time range must be broadly consistent with the annotated one: its start frame and its end frame "
            "may each differ by at most 2 frames."
        )
        errors = error_description(annotation, clip)
    return (
        "You are an expert reviewer of video quality assessments. Judge strictly whether the AI-generated video "
        "analysis report below correctly identifies and explains the errors that human annotators found.\n"
        "[Human-annotated errors]\n"
        f"Segment: {segment}\n"
        f"Video ID: {video_id}\n"
        "Annotation conclusion: the video has problems\n"
        f"Errors:\n{errors}\n"
        "[Complete AI analysis report (JSON)]\n"
        f"{analysis}\n"
        "[Strict criteria] Judge it consistent only if every one of these holds:\n"
        "1. Same error type: the categories the AI uses and describes are exactly those of the annotation.\n"
        f"2. Same object: {same_object}\n"
        "3. Same phenomenon: the phenomenon the AI describes is the same in nature as the annotated one.\n"
        f"4. Time range: {time_rule}\n"
        "5. One-to-one: every anomaly item of the AI report matches exactly one annotated error, and every annotated "
        "error is matched.\n"
        'Answer with only "consistent" or "inconsistent", and nothing else.'
    )


def parse_verdict(text: str) -> bool | None:
    """The consistency check's answer: True for "consistent", False for "inconsistent", None when it is neither.

    Case, quotes, surrounding whitespace and a final full stop are tolerated; anything else is not an answer.
    """
    word = text.strip().strip("\"'`*.").strip().lower() if isinstance(text, str) else ""
    if word == "consistent":
        return True
    if word == "inconsistent":
        return False
    return None


def gt_summary(annotation: Annotation) -> str:
    """A one-line JSON summary of the annotation (for logs and reject records)."""
    return json.dumps(
        [{"label": a.label, "frames": list(a.frames), "reason": a.reason} for a in annotation.anomalies],
        ensure_ascii=False,
    )
