"""CaC's prompts for turn 1 (whole video, 4 fps), turn 2 (the cropped clip, 8 fps) and the single-turn ablation.

Written from the paper's CoT-creation prompt (Figs. S4-S5) in cac-align's own words, with the same structure: the
role, the frames, the five anomaly types, the three-step chain of thought (per-frame analysis of people, objects and
environment; inter-frame coherence; overall assessment per type) and the JSON answer format with its filling rules.

The figures' human-hint branches (the annotated error description, box hints, "the annotation says normal", and the
instruction to behave as if unaware of them) exist only for CoT synthesis; at inference there is no annotation, so
they are removed. Each builder takes ``hint=None``: a CoT-synthesis pipeline passes the branch text it wants and it is
placed where the figures put the branches (after the task statement, before the frames).

Every prompt contains :data:`~cac_align.reward.qwen.VIDEO_BLOCK` exactly once, where the frames go; the answer format
is that of :func:`cac_align.schema.format_judgment` (keys ``COT``, ``status``, ``anomalies``; one line of JSON).

Two styles (``style=``), one per checkpoint (``prompt_style`` in its ``cac_reward.json``, read by ``CaCReward`` and
the training recipes so that training and inference always agree):

* ``"full"`` (default): the paper's prompts above, about 900 (turn 1) and 1,100 (turn 2) tokens of instructions.
* ``"compact"``: the same frames, numbering, window and answer keys in one or two lines (30-60 tokens). For models
  that cannot read instructions anyway, trained from random weights (the synthetic experiments), where the long
  prompts would be over 90% of every sequence and of the compute (a departure from the paper).
"""

from __future__ import annotations

import json

from cac_align.reward.qwen import VIDEO_BLOCK

PROMPT_STYLES = ("full", "compact")
"""The prompt styles (module doc): the paper's full instructions, or a compact statement of the task."""

TYPE_DEFINITIONS: dict[str, str] = {
    "Object Distortion": "deformation, mutation, clipping artifacts or other structural defects of inanimate objects.",
    "Human Distortion": "deformed limbs, abnormal fingers, extra limbs, a body splitting apart or other structural "
    "defects of people.",
    "Motion Anomalies": "unnatural trajectories, abnormal jitter or flicker, and entities that suddenly disappear or "
    "appear between frames.",
    "Physical Violations": "unsupported floating, entities passing through each other, or other behaviour that "
    "contradicts real-world physics.",
    "Character Anomalies": "unreadable text, abnormal text layout, or text whose content changes across frames.",
}
"""The five anomaly types of Sec. 3.1 (in :data:`cac_align.schema.TAXONOMY` order) with what to look for (Fig. S4)."""

_ROLE = (
    "You are an expert in assessing AI-generated videos, and your task is to detect whether a video contains "
    "anomalies. Analyse the AI-generated video below."
)

_STEP1_ASPECTS = (
    "Cover the following three aspects in this order and in full; if an aspect does not apply, say so explicitly "
    "instead of leaving it out.\n"
    '1. People (write "no visible person" if there is none), stating explicitly whether there is an anomaly. '
    "Clothing: the type, colour, clarity of patterns or textures, and every accessory. Posture: the overall pose and "
    "the position of each limb. Expression: eyebrow shape, gaze direction and mouth state, and whether they look "
    "natural. Hands: each finger one by one, whether the hand holds an object, and hand details.\n"
    "2. Objects, stating explicitly whether there is an anomaly. Identification: every visible object. Attributes: "
    "the shape, colour and texture clarity of each object, and whether its size is in plausible proportion. Spatial "
    "relations: where objects are relative to people and to each other.\n"
    "3. Environment, stating explicitly whether there is an anomaly. Scene: the type of background. Lighting: the "
    "direction of the main light source and the position, length and softness or hardness of shadows. Details: "
    "whether the background shows blur, repeated textures, geometric distortion, pixel tearing or unnatural patterns."
)

_STEP2 = (
    "Step 2: Inter-frame coherence and motion trajectories. Building on the people, objects and environment of Step "
    "1, and using several preceding and following frames, check one by one whether there is any object distortion, "
    "human distortion, motion anomaly, physical violation or character anomaly. Describe each anomaly you find; where "
    'nothing changes or nothing is wrong, still write "no anomaly".'
)

_STEP3 = (
    "Step 3: Overall assessment. From all the details of Steps 1 and 2, decide for each of Object Distortion, Human "
    "Distortion, Motion Anomalies, Physical Violations and Character Anomalies whether it occurs in the video: give "
    'the reason if it does, and write "no anomaly" if it does not.'
)

_NORMAL_RULES = (
    'Rules for "anomalies": when "status" is "normal" the video has no defect and "anomalies" must be the empty list '
    '[]; do not describe normal content in it. When "status" is "abnormal", give one object per independent anomaly '
    "(a single object when there is a single problem), each with every field filled in."
)


def _types_block() -> str:
    return "The anomaly types are:\n" + "\n".join(f"- {name}: {text}" for name, text in TYPE_DEFINITIONS.items())


def _video_line(video_prompt: str | None) -> str:
    if video_prompt is None or not video_prompt.strip():
        return ""
    return f"The video was generated from the text prompt: {json.dumps(video_prompt.strip(), ensure_ascii=False)}\n"


def _hint_block(hint: str | None) -> str:
    return f"{hint.strip()}\n" if hint is not None and hint.strip() else ""


def _step1(first: int, last: int, what: str) -> str:
    frames = f"Frame {first}" if first == last else f"Frame {first}, Frame {first + 1}, ..., Frame {last}"
    return (
        f"Step 1: Frame-by-frame analysis. Analyse the visual content of {what} one frame at a time, starting from "
        f"Frame {first}, and decide whether there is object distortion, human distortion, a motion anomaly, a "
        f'physical violation or a character anomaly. Each frame gets its own paragraph beginning with "Frame N:" (N '
        f'is the frame index); Step 1 must describe every frame: {frames}. Groupings such as "Frame 0-2" or "the '
        f'first few frames" are not allowed. ' + _STEP1_ASPECTS
    )


def _steps(first: int, last: int, what: str) -> str:
    return (
        'Analysis steps. Write your complete chain of thought in the "COT" field of the JSON answer, following the '
        "three steps below in order, coherently, without omitting, merging or skipping any step.\n"
        + _step1(first, last, what)
        + "\n"
        + _STEP2
        + "\n"
        + _STEP3
    )


def _format_block(item: dict[str, object], extra_rules: str = "") -> str:
    example = json.dumps(
        {
            "COT": "the complete Step 1 / Step 2 / Step 3 analysis",
            "status": "abnormal or normal",
            "anomalies": [item],
        },
        ensure_ascii=False,
    ).replace(_BOX_PLACEHOLDER, "[xmin, ymin, xmax, ymax]")  # as in Fig. S5: the values are integers
    return (
        "Output format. Output exactly one valid JSON object and nothing else: no Markdown code block, no text before "
        f"or after it. Its structure is:\n{example}\n{_NORMAL_RULES}{extra_rules}\nBegin your analysis."
    )


_ITEM_BASE: dict[str, object] = {
    "Attributed Time Region": "the frame range, e.g. Frame 4-6",
    "Attributed Label": "one of the anomaly types",
    "Reason for Anomaly": "a concrete description naming the object and the specific phenomenon",
    "Problem Region": "a description of where the problem is",
}

_BOX_PLACEHOLDER = '["xmin", "ymin", "xmax", "ymax"]'
_BOX = ["xmin", "ymin", "xmax", "ymax"]

_BOX_RULES = (
    '\nRules for "BBOX": the keys are frame numbers such as "Frame 0"; each value is an integer box '
    "[xmin, ymin, xmax, ymax] in coordinates normalised to 0-1000 (0 is the left or top edge, 1000 the right or "
    "bottom edge)."
)


def turn1_prompt(
    video_prompt: str | None, num_frames: int, fps: float = 4.0, hint: str | None = None, style: str = "full"
) -> str:
    """The turn-1 prompt (Sec. 3.4, global temporal scan): the whole video sampled at ``fps`` (4 by default).

    The answer gives the status and, for each anomaly, the time window ``"Frame s-e"`` on this frame sequence (no
    boxes); a window is what turn 2 crops.

    Args:
        video_prompt: the text the video was generated from (omitted from the prompt when None or empty).
        num_frames: how many frames the model is shown (numbered Frame 0 .. num_frames - 1).
        fps: the sampling rate of those frames.
        hint: text of a CoT-synthesis hint branch (Fig. S4's pink branches); None at inference.
        style: "full" (the paper's prompt) or "compact" (module doc).
    """
    _check(num_frames, fps, style)
    if style == "compact":
        return _compact(
            video_prompt, hint, f"Video at {_rate(fps)} fps, Frame 0 to Frame {num_frames - 1}", _COMPACT_TURN1
        )
    return (
        f"{_ROLE}\n{_video_line(video_prompt)}{_hint_block(hint)}"
        f"The video is sampled at {_rate(fps)} frames per second; its {num_frames} frames are numbered Frame 0 to "
        f"Frame {num_frames - 1}. The sampled video frames are as follows:\n{VIDEO_BLOCK}\n"
        f"{_types_block()}\n{_steps(0, num_frames - 1, 'the video')}\n{_format_block(_ITEM_BASE)}"
    )


def turn2_prompt(
    video_prompt: str | None,
    num_frames: int,
    fps: float = 8.0,
    window: tuple[int, int] | None = None,
    hint: str | None = None,
    style: str = "full",
) -> str:
    """The turn-2 prompt (Sec. 3.4, fine-grained spatial reasoning): the clip cut at the turn-1 window, resampled at
    ``fps`` (8 by default), sent after turn 1's answer in the same conversation.

    Clip frames are re-indexed from Frame 0 (the indices of :func:`cac_align.video.crop_window`). The answer confirms
    or rejects the anomaly and gives a box for every clip frame of each anomaly; if it is abnormal, the attributed
    time region defaults to the whole clip.

    Args:
        video_prompt: the text the video was generated from (omitted when None or empty).
        num_frames: how many clip frames the model is shown.
        fps: the clip's sampling rate.
        window: the turn-1 window ``(s, e)`` the clip was cut from, stated in the prompt when given.
        hint: text of a CoT-synthesis hint branch (Fig. S4's pink branches); None at inference.
        style: "full" (the paper's prompt) or "compact" (module doc).
    """
    _check(num_frames, fps, style)
    source = f" (Frames {window[0]}-{window[1]} of the sequence you analysed)" if window is not None else ""
    last = num_frames - 1
    if style == "compact":
        return _compact(
            video_prompt, hint, f"Clip{source} at {_rate(fps)} fps, Frame 0 to Frame {last}", _COMPACT_TURN2
        )
    item = {**_ITEM_BASE, "Attributed Time Region": f"the frame range, by default the whole clip: Frame 0-{last}"}
    item["BBOX"] = {"Frame 0": _BOX, "Frame 1": _BOX}
    box_rules = (
        _BOX_RULES
        + f" The BBOX of an anomaly must cover every clip frame, Frame 0 to Frame {last}, and must not omit any frame."
    )
    return (
        f"{_ROLE}\n{_video_line(video_prompt)}{_hint_block(hint)}"
        f"This input is a short clip cut from the video at the time window you flagged{source} and sampled densely at "
        f"{_rate(fps)} frames per second; its {num_frames} frames are re-numbered Frame 0 to Frame {last}. Inspect it "
        'closely to confirm or reject the anomaly: if after careful inspection the clip is normal, answer "normal". '
        f"The sampled video frames are as follows:\n{VIDEO_BLOCK}\n"
        f"{_types_block()}\n{_steps(0, last, 'the clip')}\n{_format_block(item, box_rules)}"
    )


def single_turn_prompt(
    video_prompt: str | None, num_frames: int, fps: float = 4.0, hint: str | None = None, style: str = "full"
) -> str:
    """The single-turn prompt of the paper's ablation (Tab. S5, "w/o Inference Strategy"): one answer over the whole
    video at ``fps`` with both the time window and per-frame boxes (BBOX keys are frames of this sequence)."""
    _check(num_frames, fps, style)
    if style == "compact":
        return _compact(
            video_prompt, hint, f"Video at {_rate(fps)} fps, Frame 0 to Frame {num_frames - 1}", _COMPACT_SINGLE
        )
    item = {
        **_ITEM_BASE,
        "BBOX": {"Frame 4": _BOX, "Frame 5": _BOX},
    }
    box_rules = _BOX_RULES + " The BBOX of an anomaly must cover every frame of its Attributed Time Region."
    return (
        f"{_ROLE}\n{_video_line(video_prompt)}{_hint_block(hint)}"
        f"The video is sampled at {_rate(fps)} frames per second; its {num_frames} frames are numbered Frame 0 to "
        f"Frame {num_frames - 1}. The sampled video frames are as follows:\n{VIDEO_BLOCK}\n"
        f"{_types_block()}\n{_steps(0, num_frames - 1, 'the video')}\n{_format_block(item, box_rules)}"
    )


def _rate(fps: float) -> str:
    return f"{fps:g}"


_COMPACT_TURN1 = "JSON: COT, status (normal or abnormal), anomalies (time region, label, reason, region)."
_COMPACT_TURN2 = (
    "JSON: COT, status (normal or abnormal), anomalies (time region, label, reason, region, BBOX per frame)."
)
_COMPACT_SINGLE = _COMPACT_TURN2


def _compact(video_prompt: str | None, hint: str | None, frames: str, answer: str) -> str:
    """A compact prompt: the video's text prompt, a hint if any, what the frames are, the frames, the answer keys."""
    return f"{_video_line(video_prompt)}{_hint_block(hint)}{frames}:\n{VIDEO_BLOCK}\n{answer}"


def _check(num_frames: int, fps: float, style: str = "full") -> None:
    if style not in PROMPT_STYLES:
        raise ValueError(f"prompt style must be one of {list(PROMPT_STYLES)}, got {style!r}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
