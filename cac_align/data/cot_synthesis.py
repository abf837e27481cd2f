"""CoT synthesis with generate-verify (paper Sec. 3.1, App. B.2): annotated videos -> manifest with ``cot``.

For every video of a manifest:

1. **Generate.** Turn 1 sends the whole video sampled at the annotation's rate (4 fps) with the long-video prompt and
   its hint branch (:mod:`cac_align.data.cot_prompts`); turn 2 sends the clip of the annotated window (the span of
   all anomaly windows, resampled at 8 fps by :func:`cac_align.video.crop_clip`) with the clipped-snippet prompt, its
   bbox hints and branch. A normal video's turn 2 uses a window of ``normal_clip_frames`` frames (1 s at 4 fps, the
   stage-2 clip length of App. C.2) in the middle of the video.
2. **Verify.** Each answer is parsed (:func:`cac_align.schema.parse_judgment`) and checked by the B.2 rules: a valid
   answer with the annotation's status; for an anomalous video the exact set of annotated labels, turn 1's temporal
   IoU (Eq. 4) with the annotated frames above ``iou_threshold`` (0.5) and turn 2's box IoU (Eq. 5, on the clip
   frames matched to annotated boxes) above it. An anomalous video's answer that passes the rules then goes with the
   annotation to the Fig. S6 consistency check (``verifier``, by default the same model), which must answer
   "consistent".
3. **Repeat** for up to ``rounds`` (5) rounds; a round asks again only the turns that have not passed yet (each
   request carries the round in its cache key and ``seed``, so a resumed run replays the same rounds from the cache).
   The video's round is the one in which its last turn passed: within ``salient_rounds`` (3) its anomalies are
   **salient**, in rounds 4-5 **non-salient** (the saliency of Eq. 6); a video that fails all rounds is **discarded**
   and written to ``rejects.jsonl`` with every reason.

Outputs in ``out_dir``: ``results.jsonl`` (one line per passed video, with its annotation), ``rejects.jsonl``
(discarded videos; and videos that could not be processed - unreadable file, server gave up - with ``"outcome":
"error"``, which a resumed run retries), ``manifest.jsonl`` (the input annotations that passed, in input order,
with ``cot = {"turn1": ..., "turn2": ...}``, the saliency on every span and ``meta["cot_synthesis"]`` holding the
round, the verified answers and the turn-2 window) and ``summary.json``. Results are appended line by line (fsync'd)
as videos finish, so an interrupted run resumes where it stopped: finished videos are skipped and the requests of
an unfinished one come from the client's cache. Authentication and quota errors stop the run at once.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from cac_align.data.cot_prompts import (
    parse_verdict,
    synthesis_prompt_turn1,
    synthesis_prompt_turn2,
    verification_prompt,
)
from cac_align.data.importer import absolute_videos, save_manifest
from cac_align.data.vlm_client import AuthError, QuotaError, VLMClient, VLMError, video_message
from cac_align.rewards import spatial_iou, temporal_iou
from cac_align.schema import Annotation, Box, Judgment, parse_judgment, read_manifest
from cac_align.utils import append_jsonl, atomic_write_json, read_jsonl
from cac_align.video import TURN2_FPS, VideoReadError, crop_clip, load_video

ROUNDS = 5
SALIENT_ROUNDS = 3
IOU_THRESHOLD = 0.5
PASSED = ("salient", "non-salient", "normal")


@dataclass
class SynthesisSummary:
    """Counts of one run (including videos finished by earlier runs of the same ``out_dir``)."""

    counts: dict[str, int] = field(default_factory=dict)
    manifest: Path | None = None
    results: Path | None = None
    rejects: Path | None = None
    requests: int = 0
    cache_hits: int = 0
    retries: int = 0

    def line(self) -> str:
        c = self.counts
        return (
            f"passed {sum(c.get(k, 0) for k in PASSED)} (salient {c.get('salient', 0)}, non-salient "
            f"{c.get('non-salient', 0)}, normal {c.get('normal', 0)}), discarded {c.get('discarded', 0)}, "
            f"errors {c.get('error', 0)}; {self.requests} requests, {self.cache_hits} cache hits, "
            f"{self.retries} retries"
        )


def annotation_key(annotation: Annotation) -> str:
    """A stable id of an annotation (SHA-256 of its canonical JSON, 16 hex digits): the resume key."""
    canon = json.dumps(annotation.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()[:16]


def turn2_window(annotation: Annotation, num_frames: int, normal_clip_frames: int = 4) -> tuple[int, int]:
    """The window of the annotation's sequence that turn 2 sees: the span of all anomaly windows (anomalous video) or
    ``normal_clip_frames`` frames in the middle (normal video). Raises ValueError if it lies outside the video."""
    if annotation.is_abnormal:
        s = min(a.frames[0] for a in annotation.anomalies)
        e = max(a.frames[1] for a in annotation.anomalies)
        if e >= num_frames:
            raise ValueError(f"annotated window [{s}, {e}] runs past the video's {num_frames} frames")
        return (s, e)
    length = max(1, min(normal_clip_frames, num_frames))
    s = (num_frames - length) // 2
    return (s, s + length - 1)


def _merged_boxes(annotation: Annotation) -> dict[int, list[Box]]:
    out: dict[int, list[Box]] = {}
    for a in annotation.anomalies:
        for j, boxes in a.bboxes.items():
            out.setdefault(j, []).extend(boxes)
    return out


def check_turn(
    turn: int,
    judgment: Judgment,
    annotation: Annotation,
    window: tuple[int, int],
    clip_fps: float = TURN2_FPS,
    iou_threshold: float = IOU_THRESHOLD,
) -> list[str]:
    """The B.2 rule check of one answer; returns the reasons it fails (empty: it passes).

    A valid answer (Eq. 2's format) with the annotated status; for an anomalous video also exactly the annotated
    label set, and in turn 1 a temporal IoU (Eq. 4) above ``iou_threshold``, in turn 2 a box IoU above it: the mean
    over annotated boxes of the best IoU with a predicted box on the matching clip frame (Eq. 5 with the clip cut at
    ``window``). The box check is skipped when the annotation has no boxes.
    """
    if not judgment.valid:
        return [f"invalid answer: {'; '.join(judgment.errors[:3])}"]
    if judgment.status != annotation.status:
        return [f"status {judgment.status!r}, annotated {annotation.status!r}"]
    if not annotation.is_abnormal:
        return []
    reasons = []
    if judgment.labels != annotation.labels:
        reasons.append(f"labels {sorted(judgment.labels)} != annotated {sorted(annotation.labels)}")
    if turn == 1:
        iou = temporal_iou(judgment.frame_set, annotation.frame_set)
        if not iou > iou_threshold:
            reasons.append(f"temporal IoU {iou:.2f} <= {iou_threshold}")
    else:
        gt = _merged_boxes(annotation)
        if gt:
            pred: dict[int, list[Box]] = {}
            for a in judgment.anomalies:
                for k, boxes in a.bboxes.items():
                    pred.setdefault(k, []).extend(boxes)
            frames = range(window[0], window[1] + 1)
            iou = spatial_iou(frames, pred, gt, fps=annotation.fps, clip_fps=clip_fps)
            if not iou > iou_threshold:
                reasons.append(f"box IoU {iou:.2f} <= {iou_threshold}")
    return reasons


def synthesize_cot(
    manifest: str | Path,
    out_dir: str | Path,
    client: VLMClient,
    *,
    verifier: VLMClient | None = None,
    llm_check: bool = True,
    rounds: int = ROUNDS,
    salient_rounds: int = SALIENT_ROUNDS,
    clip_fps: float = TURN2_FPS,
    normal_clip_frames: int = 4,
    iou_threshold: float = IOU_THRESHOLD,
    temperature: float = 1.0,
    max_tokens: int = 8192,
    verify_max_tokens: int = 1024,
    seed: int | None = 0,
    workers: int | None = None,
    progress: bool = True,
) -> SynthesisSummary:
    """Run generate-verify CoT synthesis over a manifest (module doc); resumable in ``out_dir``.

    Args:
        manifest: the annotated videos (JSONL manifest; relative video paths are taken from its folder).
        out_dir: where results, rejects, the output manifest and the summary go.
        client: the generating VLM (Gemini-2.5-Pro in the paper).
        verifier: the model of the Fig. S6 consistency check; defaults to ``client``.
        llm_check: False skips the Fig. S6 check (rules only).
        rounds, salient_rounds: up to ``rounds`` rounds; passing within ``salient_rounds`` is salient.
        clip_fps: turn 2's sampling rate.
        normal_clip_frames: turn-2 window length of normal videos, in frames of the annotation's sequence.
        iou_threshold: temporal and box IoU must exceed it.
        temperature, max_tokens: generation settings of the synthesis requests.
        verify_max_tokens: ``max_tokens`` of the consistency check (thinking models count their thoughts).
        seed: sent as ``seed + round - 1``; None sends no seed (for servers that reject it).
        workers: videos processed at once (default: the client's concurrency).
        progress: show a progress bar with passed / non-salient / discarded counts.

    Returns:
        A :class:`SynthesisSummary`. Raises :class:`~cac_align.data.vlm_client.AuthError` or
        :class:`~cac_align.data.vlm_client.QuotaError` (after recording what finished) when the server refuses.
    """
    if not 1 <= salient_rounds <= rounds:
        raise ValueError(f"expected 1 <= salient_rounds <= rounds, got {salient_rounds} and {rounds}")
    manifest = Path(manifest)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results_path, rejects_path = out / "results.jsonl", out / "rejects.jsonl"
    lines = read_manifest(manifest)
    keys = [annotation_key(a) for a in lines]  # keys of the lines as written (stable when the folder moves)
    annotations = absolute_videos(lines, manifest)

    done: dict[str, dict[str, Any]] = {}
    for rec in read_jsonl(results_path) + read_jsonl(rejects_path):
        if rec.get("outcome") != "error":
            done[rec["key"]] = rec
    todo = [(k, a) for k, a in zip(keys, annotations, strict=True) if k not in done]
    todo = list({k: (k, a) for k, a in todo}.values())  # a line repeated in the manifest is synthesised once

    job = _Job(
        client=client,
        verifier=verifier or client,
        llm_check=llm_check,
        rounds=rounds,
        salient_rounds=salient_rounds,
        clip_fps=clip_fps,
        normal_clip_frames=normal_clip_frames,
        iou_threshold=iou_threshold,
        params={"temperature": temperature, "max_tokens": max_tokens},
        verify_params={"temperature": 0.0, "max_tokens": verify_max_tokens},
        seed=seed,
    )
    counts = Counter(rec["outcome"] for rec in done.values())
    lock = threading.Lock()
    bar = tqdm(total=len(todo), desc="CoT synthesis", unit="video", disable=not progress)

    def run(key: str, ann: Annotation) -> None:
        rec = job.one(key, ann)
        with lock:
            append_jsonl(results_path if rec["outcome"] in PASSED else rejects_path, rec)
            counts[rec["outcome"]] += 1
            if rec["outcome"] != "error":
                done[key] = rec
            bar.update(1)
            bar.set_postfix(
                passed=sum(counts[k] for k in PASSED),
                non_salient=counts["non-salient"],
                discarded=counts["discarded"],
                errors=counts["error"],
            )

    fatal: BaseException | None = None
    with ThreadPoolExecutor(max_workers=workers or client.concurrency) as pool:
        futures: list[Future] = [pool.submit(run, k, a) for k, a in todo]
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
            errors = [f.exception() for f in finished if f.exception() is not None]
            if errors:
                fatal = errors[0]
                for f in pending:
                    f.cancel()
                wait(pending)
                break
    bar.close()

    summary = SynthesisSummary(
        counts=dict(counts),
        results=results_path,
        rejects=rejects_path,
        requests=client.stats.requests + (verifier.stats.requests if verifier not in (None, client) else 0),
        cache_hits=client.stats.cache_hits + (verifier.stats.cache_hits if verifier not in (None, client) else 0),
        retries=client.stats.retries + (verifier.stats.retries if verifier not in (None, client) else 0),
    )
    passed = []
    for k, a in zip(keys, annotations, strict=True):
        rec = done.get(k)
        if rec is not None and rec["outcome"] in PASSED:
            passed.append(replace(Annotation.from_dict(rec["annotation"], f"{results_path} ({k})"), video=a.video))
    summary.manifest = save_manifest(out / "manifest.jsonl", passed)
    atomic_write_json(
        out / "summary.json",
        {
            "source": str(manifest),
            "counts": summary.counts,
            "model": client.model,
            "verifier": (verifier or client).model if llm_check else None,
            "rounds": rounds,
            "salient_rounds": salient_rounds,
            "iou_threshold": iou_threshold,
            "clip_fps": clip_fps,
            "requests": summary.requests,
            "cache_hits": summary.cache_hits,
            "retries": summary.retries,
        },
    )
    if fatal is not None:
        raise fatal
    return summary


@dataclass
class _Job:
    client: VLMClient
    verifier: VLMClient
    llm_check: bool
    rounds: int
    salient_rounds: int
    clip_fps: float
    normal_clip_frames: int
    iou_threshold: float
    params: dict[str, Any]
    verify_params: dict[str, Any]
    seed: int | None

    def one(self, key: str, ann: Annotation) -> dict[str, Any]:
        """Synthesise one video; returns its results/rejects record. Auth and quota errors propagate."""
        base = {"key": key, "video": ann.video}
        try:
            seq = load_video(ann.video, ann.fps)
            n = seq.frames.shape[0]
            window = turn2_window(ann, n, self.normal_clip_frames)
            clip = crop_clip(ann.video, None, window[0], window[1], fps=ann.fps, clip_fps=self.clip_fps)
        except (VideoReadError, ValueError) as e:
            return {**base, "outcome": "error", "reasons": [f"{type(e).__name__}: {e}"]}
        n2 = clip.frames.shape[0]
        messages = {
            1: [video_message(synthesis_prompt_turn1(ann, n), seq.frames)],
            2: [video_message(synthesis_prompt_turn2(ann, window[0], n2, self.clip_fps), clip.frames)],
        }
        passed: dict[int, tuple[int, str, Judgment]] = {}
        attempts: list[dict[str, Any]] = []
        try:
            for r in range(1, self.rounds + 1):
                for turn in (1, 2):
                    if turn in passed:
                        continue
                    text, judgment, reasons = self._attempt(r, turn, ann, messages[turn], window, n2)
                    attempts.append({"round": r, "turn": turn, "reasons": reasons, "answer": text[:300]})
                    if not reasons:
                        passed[turn] = (r, text, judgment)
                if len(passed) == 2:
                    break
        except (AuthError, QuotaError):
            raise
        except VLMError as e:
            return {**base, "outcome": "error", "reasons": [str(e)], "attempts": attempts}
        if len(passed) < 2:
            reasons = [
                f"round {a['round']} turn {a['turn']}: {'; '.join(a['reasons'])}" for a in attempts if a["reasons"]
            ]
            return {**base, "outcome": "discarded", "rounds": self.rounds, "reasons": reasons, "attempts": attempts}

        r = max(passed[1][0], passed[2][0])
        if ann.is_abnormal:
            outcome = "salient" if r <= self.salient_rounds else "non-salient"
            spans = [replace(a, saliency=outcome) for a in ann.anomalies]
        else:
            outcome, spans = "normal", []
        meta = dict(ann.meta)
        meta["cot_synthesis"] = {
            "round": r,
            "turn_rounds": [passed[1][0], passed[2][0]],
            "model": self.client.model,
            "turn1_answer": passed[1][1],
            "turn2_answer": passed[2][1],
            "turn2_window": list(window),
            "clip_fps": self.clip_fps,
        }
        out = replace(ann, anomalies=spans, cot={"turn1": passed[1][2].cot, "turn2": passed[2][2].cot}, meta=meta)
        return {**base, "outcome": outcome, "round": r, "annotation": out.to_dict()}

    def _attempt(
        self, r: int, turn: int, ann: Annotation, messages: list[dict[str, Any]], window: tuple[int, int], n2: int
    ) -> tuple[str, Judgment, list[str]]:
        params = dict(self.params)
        if self.seed is not None:
            params["seed"] = self.seed + r - 1
        text = self.client.chat(messages, cache_salt=f"round {r}", **params)
        judgment = parse_judgment(text, turn)
        reasons = check_turn(turn, judgment, ann, window, self.clip_fps, self.iou_threshold)
        if reasons or not ann.is_abnormal or not self.llm_check:
            return text, judgment, reasons
        clip = (window[0], n2, self.clip_fps) if turn == 2 else None
        prompt = verification_prompt(turn, ann, text, Path(ann.video).name, clip)
        verdict_text = self.verifier.chat(
            [{"role": "user", "content": prompt}], cache_salt=f"round {r}", **self.verify_params
        )
        verdict = parse_verdict(verdict_text)
        if verdict is None:
            return text, judgment, [f"consistency check answered {verdict_text[:80]!r}, not consistent/inconsistent"]
        if not verdict:
            return text, judgment, ["consistency check: inconsistent with the annotation"]
        return text, judgment, []
