"""Reward stages 1 and 2: the sample builders, the label mask, the SFT loss, and the two recipes run end to end
(tiny checkpoint on the synthetic world): checkpoints CaCReward loads, exact resume, and two ranks."""

from __future__ import annotations

import itertools
import json
import runpy
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cac_align.data.splits import build_splits
from cac_align.data.stages import (
    SFTCollator,
    SFTDataset,
    StepSampler,
    clip_frames,
    load_stage_manifest,
    sequence_frames,
    stage1_samples,
    stage2_samples,
)
from cac_align.data.synthetic import generate
from cac_align.reward.chat import IGNORE_INDEX, model_inputs
from cac_align.reward.qwen import IM_END, VIDEO_BLOCK, load_qwen3vl
from cac_align.reward.sft import lora_config, sft_loss, status_ids
from cac_align.schema import SINGLE_FRAME_LABELS, Annotation, AnomalySpan, parse_judgment
from cac_align.testing import build_tiny_cac
from cac_align.testing_dist import run_distributed
from cac_align.video import VideoReadError, clip_frame_of, crop_window, load_video

REPO = Path(__file__).resolve().parents[1]
STAGE1 = REPO / "reward" / "stage1_warmup.py"
STAGE2 = REPO / "reward" / "stage2_sft.py"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """24 synthetic videos (64x64, 2 s, 16 fps: 8 frames at 4 fps) split into the three stages."""
    root = tmp_path_factory.mktemp("world")
    manifest = generate(root / "data", num_videos=24, seed=0, size=(64, 64), seconds=2.0, progress=False)
    build_splits(manifest, root / "splits", seed=0)
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_cac(tmp_path_factory.mktemp("tiny") / "cac", seed=0, vocab="bpe")


def _video(world: Path, normal: bool) -> str:
    anns = load_stage_manifest(world / "data" / "manifest.jsonl")
    return next(a.video for a in anns if a.is_abnormal != normal)


def _ann(video: str, anomalies: list[AnomalySpan], **kw) -> Annotation:
    return Annotation(video, "a red ball rolls", "abnormal" if anomalies else "normal", 4.0, anomalies, **kw)


# --------------------------------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------------------------------


def test_stage1_frames_are_balanced_and_carry_their_boxes(world):
    anns = load_stage_manifest(world / "splits" / "stage1.jsonl")
    by_video = {a.video: a for a in anns}
    samples, stats = stage1_samples(anns, frames_per_video=2, seed=0)
    abnormal = [s for s in samples if s.status == "abnormal"]
    normal = [s for s in samples if s.status == "normal"]
    assert len(abnormal) == len(normal) > 0
    assert stats.samples == {"frame/abnormal": len(abnormal), "frame/normal": len(normal)}
    for s in samples:
        ann = by_video[s.video]
        assert s.kind == "frame" and s.num_frames == [1] and s.status == ann.status
        j = s.frame
        assert 0 <= j < sequence_frames(s.video, 4.0)
        got = parse_judgment(s.answers[0], turn=2)
        assert got.valid, got.errors
        assert got.status == s.status
        if s.status == "normal":
            assert got.anomalies == []
            continue
        covering = [a for a in ann.anomalies if a.frames[0] <= j <= a.frames[1]]
        assert covering and all(a.label in SINGLE_FRAME_LABELS and j in a.bboxes for a in covering)
        assert sorted(a.label for a in got.anomalies) == sorted(a.label for a in covering)
        assert sorted(b for a in got.anomalies for b in a.bboxes[0]) == sorted(
            b for a in covering for b in a.bboxes[j]
        )
        assert all(a.frames == (0, 0) for a in got.anomalies)
    # at most frames_per_video frames per anomalous video, and the choice is seeded
    per_video = [s.video for s in abnormal]
    assert max(per_video.count(v) for v in per_video) <= 2
    again, _ = stage1_samples(anns, frames_per_video=2, seed=0)
    assert [s.to_dict() for s in again] == [s.to_dict() for s in samples]


def test_stage1_skips_frames_where_a_multi_frame_anomaly_also_shows(world):
    video = _video(world, normal=False)
    distortion = AnomalySpan(
        "Object Distortion", (1, 3), "bent", "the ball", bboxes={1: [(0, 0, 10, 10)], 2: [(1, 1, 9, 9)]}
    )
    motion = AnomalySpan("Motion Anomalies", (2, 5), "vanishes", "the ball", bboxes={2: [(5, 5, 20, 20)]})
    samples, _ = stage1_samples([_ann(video, [distortion, motion])], frames_per_video=5)
    assert samples == []  # no normal video to balance against
    from cac_align.data.stages import _frame_candidates

    assert _frame_candidates(_ann(video, [distortion, motion])) == [1]  # frame 2 also shows the motion anomaly


def test_stage2_videos_and_clips(world):
    anns = load_stage_manifest(world / "splits" / "stage2.jsonl")
    by_video = {a.video: a for a in anns}
    samples, stats = stage2_samples(anns, seed=0, clips_per_video=2)
    videos = [s for s in samples if s.kind == "video"]
    clips = [s for s in samples if s.kind == "clip"]
    for group in (videos, clips):
        assert sum(s.status == "abnormal" for s in group) == sum(s.status == "normal" for s in group) > 0
    for s in videos:
        ann = by_video[s.video]
        got = parse_judgment(s.answers[0], turn=1)
        assert got.valid, got.errors
        assert got.status == ann.status and s.loss_turns == [1]
        assert sorted((a.label, a.frames) for a in got.anomalies) == sorted((a.label, a.frames) for a in ann.anomalies)
        assert s.num_frames == [len(load_video(s.video, 4.0).frames)]
    for s in clips:
        _check_clip(s, by_video[s.video])


def _check_clip(s, ann: Annotation) -> None:
    start, end = s.window
    n_clip = s.num_frames[1]
    assert end - start + 1 <= 4 and n_clip <= len(crop_window(start, end)) <= 8
    assert (n_clip - 1) / 8 < 1.0  # the clip's frames span less than a second
    assert s.loss_turns == [2]
    first, second = parse_judgment(s.answers[0], turn=1), parse_judgment(s.answers[1], turn=2)
    assert first.valid and second.valid, first.errors + second.errors
    assert first.status == "abnormal" and first.window == (start, end)  # what inference would crop
    assert second.status == ann.status
    inside = [a for a in ann.anomalies if start <= a.frames[0] and a.frames[1] <= end]
    cut = [a for a in ann.anomalies if a not in inside and a.frames[0] <= end and start <= a.frames[1]]
    assert cut == []  # no anomaly is cropped partially
    if ann.is_abnormal:
        assert inside and sorted(a.label for a in second.anomalies) == sorted(a.label for a in inside)
        for gt, pred in zip(
            sorted(inside, key=lambda a: a.label), sorted(second.anomalies, key=lambda a: a.label), strict=True
        ):
            for j, boxes in gt.bboxes.items():  # annotated frame j -> clip frames 2(j - s) and 2(j - s) + 1
                for k in (clip_frame_of(j, start), clip_frame_of(j + 1, start) - 1):
                    if k < n_clip:
                        assert pred.bboxes[k] == boxes
            assert set(pred.bboxes) <= set(range(n_clip))
    else:
        assert second.anomalies == []


def test_clip_windows_cover_the_anomaly_and_cut_no_other(world):
    video = _video(world, normal=False)  # 8 frames at 4 fps
    short = AnomalySpan(
        "Object Distortion", (2, 3), "bent", "the ball", bboxes={2: [(0, 0, 10, 10)], 3: [(2, 2, 12, 12)]}
    )
    long = AnomalySpan("Motion Anomalies", (5, 7), "jitters", "the box", bboxes={5: [(5, 5, 20, 20)]})
    ann = _ann(video, [short, long])
    normals = [a for a in load_stage_manifest(world / "data" / "manifest.jsonl") if not a.is_abnormal]
    samples, _ = stage2_samples([ann, *normals], seed=3, videos=False, clips_per_video=50)
    clips = [s for s in samples if s.status == "abnormal"]
    windows = {s.window for s in clips}
    # every window of <= 4 frames that covers [2, 3] and/or [5, 7] fully and touches no other partially
    expected = {(s, e) for s in range(8) for e in range(s, min(8, s + 4))}
    expected = {
        w
        for w in expected
        if all(
            w[1] < a.frames[0] or a.frames[1] < w[0] or (w[0] <= a.frames[0] and a.frames[1] <= w[1])
            for a in (short, long)
        )
        and any(w[0] <= a.frames[0] and a.frames[1] <= w[1] for a in (short, long))
    }
    assert windows == expected
    for s in clips:
        _check_clip(s, ann)
    # the 8 fps clip of a window that reaches the last frame has exactly the frames crop_clip cuts
    assert all(s.num_frames[1] == clip_frames(video, s.window, 4.0, 8.0) for s in clips)


def test_a_false_alarm_looks_like_a_real_turn1_answer(world):
    # turn 2 must judge the clip, not read the answer off turn 1: a normal clip's turn-1 alarm names a real anomaly of
    # the split (label, reason, region) and has a window length that the anomalous clips' windows have
    video = _video(world, normal=False)  # 8 frames at 4 fps
    short = AnomalySpan("Object Distortion", (2, 3), "bent", "the ball", bboxes={2: [(0, 0, 10, 10)]})
    long = AnomalySpan("Motion Anomalies", (5, 7), "jitters", "the box", bboxes={5: [(5, 5, 20, 20)]})
    normals = [a for a in load_stage_manifest(world / "data" / "manifest.jsonl") if not a.is_abnormal]
    samples, _ = stage2_samples([_ann(video, [short, long]), *normals], seed=1, videos=False, clips_per_video=4)
    real = {(a.label, a.reason, a.region) for a in (short, long)}

    def turn1(s):
        (alarm,) = parse_judgment(s.answers[0], turn=1).anomalies
        return (alarm.label, alarm.reason, alarm.region), s.window[1] - s.window[0] + 1

    anomalous = [turn1(s) for s in samples if s.status == "abnormal"]
    normal = [turn1(s) for s in samples if s.status == "normal"]
    assert len(normal) == len(anomalous) > 0
    assert {item for item, _ in normal} <= real
    assert sorted(n for _, n in normal) == sorted(n for _, n in anomalous)  # the same window lengths
    assert len({n for _, n in normal}) > 1  # not one fixed length, which would tell the classes apart
    for s in samples:
        if s.status == "normal":
            assert parse_judgment(s.answers[1], turn=2).status == "normal"
    alone, _ = stage2_samples(normals[:2], seed=0, videos=False)  # nothing to balance normal clips against
    assert alone == []


def test_cot_comes_from_the_manifest_for_the_view_it_was_written_for(world):
    video = _video(world, normal=False)
    span = AnomalySpan(
        "Human Distortion", (2, 3), "an extra arm", "the person", bboxes={2: [(0, 0, 50, 50)], 3: [(0, 0, 50, 50)]}
    )
    cot = {"turn1": "COT OF THE VIDEO", "turn2": "COT OF THE CLIP", "frame": "COT OF A FRAME"}
    meta = {"cot_synthesis": {"turn2_window": [2, 3]}}
    ann = _ann(video, [span], cot=cot, meta=meta)
    normal = _ann(_video(world, normal=True), [])
    samples, stats = stage2_samples([ann, normal], seed=0, clips_per_video=3)
    video_sample = next(s for s in samples if s.kind == "video" and s.status == "abnormal")
    assert parse_judgment(video_sample.answers[0]).cot == "COT OF THE VIDEO"
    assert video_sample.cot_source == "manifest"
    clips = [s for s in samples if s.kind == "clip" and s.status == "abnormal"]
    assert (2, 3) in {s.window for s in clips}
    for s in clips:  # the synthesised turn-2 CoT describes the clip [2, 3] only
        want = "COT OF THE CLIP" if s.window == (2, 3) else None
        got = parse_judgment(s.answers[1], turn=2).cot
        assert (got == want) if want else ("Human Distortion" in got and "an extra arm" in got)
        assert s.cot_source == ("manifest" if want else "template")
    other_rate = replace(ann, meta={"cot_synthesis": {"turn2_window": [2, 3], "clip_fps": 16.0}})
    resampled, _ = stage2_samples([other_rate, normal], seed=0, videos=False, clips_per_video=3)
    assert all(s.cot_source == "template" for s in resampled if s.status == "abnormal")
    frames, _ = stage1_samples([ann, normal], frames_per_video=1)
    assert parse_judgment(frames[0].answers[0], turn=2).cot == "COT OF A FRAME"
    # without a manifest CoT: the template names the scene, the type and where it is
    plain, _ = stage2_samples([replace(ann, cot=None), normal], clips=False)
    text = parse_judgment(plain[0].answers[0]).cot
    assert "a red ball rolls" in text and "Frame 2-3: Human Distortion, an extra arm" in text
    assert plain[0].cot_source == "template"


def test_an_empty_manifest_cot_fits_every_clip_window(world):
    # "COT": "" names no frames: every clip of the video trains an answer without a chain of thought
    video = _video(world, normal=False)
    span = AnomalySpan("Human Distortion", (2, 3), "an extra arm", "the person", bboxes={2: [(0, 0, 50, 50)]})
    ann = _ann(video, [span], cot={"turn1": "", "turn2": "", "frame": ""})
    normal = _ann(_video(world, normal=True), [], cot={"turn1": "", "turn2": "", "frame": ""})
    samples, _ = stage2_samples([ann, normal], seed=0, videos=False, clips_per_video=5)
    assert len({s.window for s in samples if s.status == "abnormal"}) == 5
    assert all(parse_judgment(s.answers[1], turn=2).cot == "" for s in samples)
    assert all(s.cot_source == "manifest" for s in samples)
    # turn 1 is context written as the model writes its own turn 1: without a chain of thought, in both classes
    assert {s.status for s in samples} == {"abnormal", "normal"}
    assert all(parse_judgment(s.answers[0], turn=1).cot == "" for s in samples)
    with_cot, _ = stage2_samples([replace(ann, cot=None), replace(normal, cot=None)], seed=0, videos=False)
    assert all("may show human distortion" in parse_judgment(s.answers[0], turn=1).cot for s in with_cot)


def test_whether_an_alarm_has_a_cot_does_not_tell_the_classes_apart(world):
    # a false alarm takes its CoT-or-not from the anomalous video it copies, not from the normal video it is cut from
    video = _video(world, normal=False)
    span = AnomalySpan("Human Distortion", (2, 3), "an extra arm", "the person", bboxes={2: [(0, 0, 50, 50)]})
    normal = _ann(_video(world, normal=True), [])
    for anomalous_cot, normal_cot in (("", "the clip looks fine"), ("an extra arm at Frame 2-3", "")):
        ann = _ann(video, [span], cot={"turn1": anomalous_cot, "turn2": "", "frame": ""})
        other = replace(normal, cot={"turn1": normal_cot, "turn2": "", "frame": ""})
        samples, _ = stage2_samples([ann, other], seed=0, videos=False, clips_per_video=3)
        bare = {(s.status, parse_judgment(s.answers[0], turn=1).cot == "") for s in samples}
        assert bare == {("abnormal", anomalous_cot == ""), ("normal", anomalous_cot == "")}


def test_stage_samples_come_from_disjoint_videos(world):
    s1, _ = stage1_samples(load_stage_manifest(world / "splits" / "stage1.jsonl"))
    s2, _ = stage2_samples(load_stage_manifest(world / "splits" / "stage2.jsonl"))
    s3 = load_stage_manifest(world / "splits" / "stage3.jsonl")
    v1, v2, v3 = {s.video for s in s1}, {s.video for s in s2}, {a.video for a in s3}
    assert v1 and v2 and v3
    assert not (v1 & v2) and not (v1 & v3) and not (v2 & v3)


def test_step_sampler_is_resumable_and_splits_ranks():
    full = list(_take(StepSampler(7, batch_size=2, world_size=1, seed=5), 14))
    assert sorted(full[:7]) == list(range(7)) and sorted(full[7:14]) == list(range(7))  # epochs are permutations
    assert full[:7] != full[7:14]
    assert list(_take(StepSampler(7, 2, seed=5, start=3), 8)) == full[6:14]  # micro-batch 3 onwards
    r0 = list(_take(StepSampler(7, 2, world_size=2, rank=0, seed=5), 4))
    r1 = list(_take(StepSampler(7, 2, world_size=2, rank=1, seed=5), 4))
    assert r0 == full[0:2] + full[4:6] and r1 == full[2:4] + full[6:8]


def _take(it, n):
    return itertools.islice(it, n)


# --------------------------------------------------------------------------------------------------------------------
# Batches and loss
# --------------------------------------------------------------------------------------------------------------------


def test_labels_cover_exactly_the_trained_answers(world, tiny):
    _, processor = load_qwen3vl(tiny)
    samples, _ = stage2_samples(load_stage_manifest(world / "splits" / "stage2.jsonl"))
    pick = [next(s for s in samples if s.kind == "clip"), next(s for s in samples if s.kind == "video")]
    batch = SFTCollator(processor.tokenizer.pad_token_id)([SFTDataset(pick, processor)[i] for i in range(2)])
    tok = processor.tokenizer
    assert batch["input_ids"].shape[0] == 2 and (batch["attention_mask"] == 0).any()  # padded
    for row, s in enumerate(pick):
        labels, ids = batch["labels"][row], batch["input_ids"][row]
        trained = tok.decode(labels[labels != IGNORE_INDEX], skip_special_tokens=False)
        assert trained == s.answers[-1] + IM_END  # only the last answer (turn 2 of a clip) and its <|im_end|>
        assert (labels[batch["attention_mask"][row] == 0] == IGNORE_INDEX).all()
        text = tok.decode(ids[batch["attention_mask"][row] == 1], skip_special_tokens=False)
        assert text.count(s.answers[0]) == 1  # the turn-1 answer of a clip is in the context, without loss
        # left padding: the trained tokens end the row
        assert labels[-1] != IGNORE_INDEX


def test_sft_dataset_cache_decodes_each_sample_once(world, tiny, tmp_path):
    import shutil

    _, processor = load_qwen3vl(tiny)
    samples, _ = stage2_samples(load_stage_manifest(world / "splits" / "stage2.jsonl"), prompt_style="compact")
    sample = next(s for s in samples if s.kind == "clip")
    assert all("Analysis steps" not in p and p.count(VIDEO_BLOCK) == 1 for p in sample.prompts)
    moved = tmp_path / "video.mp4"
    shutil.copy(sample.video, moved)
    sample = replace(sample, video=str(moved))
    cached, plain = SFTDataset([sample], processor, cache=True), SFTDataset([sample], processor)
    first = cached[0]
    moved.unlink()  # a cached sample is never decoded again; an uncached one is
    assert cached[0] is first
    with pytest.raises(VideoReadError, match="no such video file"):
        plain[0]


def test_sft_loss_equals_full_logits_cross_entropy(world, tiny):
    model, processor = load_qwen3vl(tiny)
    samples, _ = stage1_samples(load_stage_manifest(world / "splits" / "stage1.jsonl"))
    ds = SFTDataset([samples[0], samples[-1]], processor)
    batch = SFTCollator(processor.tokenizer.pad_token_id)([ds[0], ds[1]])
    loss, n = sft_loss(model, batch)
    with torch.no_grad():
        logits = model(**model_inputs(batch)).logits[:, :-1].float()
        labels = batch["labels"][:, 1:]
        ref = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
    assert int(n) == int((labels != IGNORE_INDEX).sum())
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)


def test_sft_loss_weighs_the_status_token(world, tiny):
    model, processor = load_qwen3vl(tiny)
    samples, _ = stage1_samples(load_stage_manifest(world / "splits" / "stage1.jsonl"))
    ds = SFTDataset([samples[0], samples[-1]], processor)
    batch = SFTCollator(processor.tokenizer.pad_token_id)([ds[0], ds[1]])
    ids = status_ids(processor.tokenizer)
    labels = batch["labels"][:, 1:]
    status = torch.isin(labels, torch.tensor(ids))
    assert int(status.sum()) == 2  # one status token in each answer (no chain of thought mentions the words)
    with torch.no_grad():
        plain, n = sft_loss(model, batch)
        weighted, n5 = sft_loss(model, batch, status_weight=5.0, status_ids=ids)
        assert sft_loss(model, batch, status_weight=1.0, status_ids=ids)[0] == plain
        logits = model(**model_inputs(batch)).logits[:, :-1].float()
        ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
    keep = labels != IGNORE_INDEX
    w = 1.0 + 4.0 * status.float()
    assert int(n5) == int(n) == int(keep.sum())
    assert weighted.item() == pytest.approx(((ce * w)[keep].sum() / w[keep].sum()).item(), rel=1e-5)
    assert weighted.item() != plain.item()  # a random model: every token costs about ln(vocab), but not exactly


@pytest.mark.parametrize("stage", [1, 2])
def test_loss_falls_when_overfitting_a_few_samples(world, tiny, stage):
    torch.manual_seed(0)
    model, processor = load_qwen3vl(tiny)
    model.train()
    if stage == 1:  # LoRA, as the warmup trains
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(rank=8, alpha=16, dropout=0.0))
        samples, _ = stage1_samples(load_stage_manifest(world / "splits" / "stage1.jsonl"))
        lr, steps = 1e-2, 12
    else:  # full fine-tuning, as stage 2 trains
        samples, _ = stage2_samples(load_stage_manifest(world / "splits" / "stage2.jsonl"))
        samples = [next(s for s in samples if s.kind == "clip")] + [next(s for s in samples if s.kind == "video")]
        lr, steps = 3e-3, 8
    ds = SFTDataset(samples[:2], processor)
    batch = SFTCollator(processor.tokenizer.pad_token_id)([ds[0], ds[1]])
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    losses = []
    for _ in range(steps):
        loss, _ = sft_loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    # LoRA cannot rescale the random tiny model's final norm and lm_head, whose logits stay within about +-1.3: its
    # floor is near 5.8 nats (from ln 1264 = 7.14); full fine-tuning has no such floor.
    assert losses[-1] < losses[0] - (0.4 if stage == 1 else 1.5), losses
    assert losses[-1] < min(losses[:3]), losses


# --------------------------------------------------------------------------------------------------------------------
# Recipes
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "configs"),
    [
        (STAGE1, ["reward/configs/stage1.yaml", "reward/configs/tiny/stage1.yaml"]),
        (STAGE2, ["reward/configs/stage2.yaml", "reward/configs/tiny/stage2.yaml"]),
    ],
)
def test_presets_and_accelerate_configs_load(script, configs):
    from accelerate.commands.config.config_args import load_config_from_file

    from cac_align.config import load_config

    recipe = runpy.run_path(str(script), run_name="recipe")
    schema = recipe["Stage1Config" if script == STAGE1 else "Stage2Config"]
    paper, small = (load_config(schema, ["--config", str(REPO / c)]) for c in configs)
    assert (paper.train.lr, paper.lora.rank) == (1e-4, 32)
    assert paper.lora.enabled == (script == STAGE1)  # LoRA warmup, then full-parameter SFT
    assert paper.train.max_steps == (9330 if script == STAGE1 else 7000)
    assert small.init_from == "tiny" if script == STAGE1 else small.init_from.endswith("stage1/final")
    for c in configs:  # the first line is the launch command
        assert (REPO / c).read_text().splitlines()[0].startswith(("# accelerate launch", "# python reward/"))
    for name in ("1gpu", "8gpu_ddp", "zero2", "zero3"):
        cluster = load_config_from_file(str(REPO / "reward/configs/accelerate" / f"{name}.yaml"))
        assert cluster.num_processes == (1 if name == "1gpu" else 8)
        if name.startswith("zero"):
            ds = json.loads((REPO / cluster.deepspeed_config["deepspeed_config_file"]).read_text())
            assert ds["zero_optimization"]["stage"] == int(name[-1])


def _run(script: Path, config: str, *overrides: str):
    return runpy.run_path(str(script), run_name="recipe")["main"](["--config", str(REPO / config), *overrides])


def _score(final: Path, world: Path) -> float:
    from cac_align.reward.cac import CaCReward

    reward = CaCReward.from_pretrained(final, max_new_tokens=8)
    video = next(iter(sorted((world / "data" / "videos").glob("*.mp4"))))
    (score,) = reward([video], ["a scene"])
    return score


def test_recipes_stage1_then_stage2_write_checkpoints_cacreward_loads(world, tmp_path):
    out1 = tmp_path / "stage1"
    final1 = _run(
        STAGE1,
        "reward/configs/tiny/stage1.yaml",
        f"output_dir={out1}",
        f"data.manifest={world / 'splits' / 'stage1.jsonl'}",
        "train.max_steps=2",
        "train.save_every=1",
        "train.gradient_checkpointing=true",  # with LoRA: the frozen embeddings must pass gradients on
        "log.every=1",
    )
    assert final1 == out1 / "final"
    assert (out1 / "adapter" / "adapter_config.json").is_file()
    assert [p.name for p in sorted((out1 / "checkpoints").glob("step_*"))] == ["step_00000002"]  # keep_last 1
    metrics = [json.loads(line) for line in (out1 / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2] and all(m["train/loss"] > 0 for m in metrics)
    assert 0.0 <= _score(final1, world) <= 1.0
    # the LoRA is merged: the final weights differ from the init, and the keys are the plain model's
    init, final = load_file(out1 / "init" / "model.safetensors"), load_file(final1 / "model.safetensors")
    assert init.keys() == final.keys()
    assert not torch.equal(
        init["model.language_model.layers.0.self_attn.q_proj.weight"],
        final["model.language_model.layers.0.self_attn.q_proj.weight"],
    )

    out2 = tmp_path / "stage2"
    final2 = _run(
        STAGE2,
        "reward/configs/tiny/stage2.yaml",
        f"output_dir={out2}",
        f"init_from={final1}",
        f"data.manifest={world / 'splits' / 'stage2.jsonl'}",
        "train.max_steps=2",
        "save_dtype=bfloat16",
        "log.report_to=none",
    )
    assert 0.0 <= _score(final2, world) <= 1.0
    before, after = load_file(final1 / "model.safetensors"), load_file(final2 / "model.safetensors")
    assert {v.dtype for v in after.values()} == {torch.bfloat16}
    assert json.loads((final2 / "config.json").read_text())["dtype"] == "bfloat16"
    for k in ("lm_head.weight", "model.visual.patch_embed.proj.weight"):  # full fine-tuning reaches every part
        assert not torch.equal(before[k].to(torch.bfloat16), after[k])


@pytest.mark.parametrize("stage", [1, 2])
def test_resume_equals_uninterrupted_run(world, tiny, tmp_path, stage):
    script, config = (
        (STAGE1, "reward/configs/tiny/stage1.yaml") if stage == 1 else (STAGE2, "reward/configs/tiny/stage2.yaml")
    )
    common = [
        f"data.manifest={world / 'splits' / f'stage{stage}.jsonl'}",
        "train.max_steps=4",
        "train.grad_accum=2",
        "train.batch_size=1",
        "train.save_every=100",
        "log.report_to=none",
    ]
    if stage == 1:  # LoRA: only the adapters are in the checkpoints; dropout draws random numbers in every step
        common.append("lora.dropout=0.1")
    else:  # full fine-tuning from a checkpoint folder
        common.append(f"init_from={tiny}")
    whole = _run(script, config, f"output_dir={tmp_path / 'a'}", *common)
    parts = tmp_path / "b"
    assert _run(script, config, f"output_dir={parts}", *common, "train.stop_at_step=2") is None
    assert not (parts / "final").exists() and (parts / "checkpoints" / "step_00000002" / "COMPLETE").is_file()
    with pytest.raises(SystemExit, match="resume=true"):
        _run(script, config, f"output_dir={parts}", *common)
    resumed = _run(script, config, f"output_dir={parts}", *common, "resume=true")
    a, b = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    init = load_file((tmp_path / "a" / "init" if stage == 1 else tiny) / "model.safetensors")
    assert any(not torch.equal(a[k], init[k]) for k in a)  # it did train
    if stage == 1:
        ada, adb = (load_file(p / "adapter" / "adapter_model.safetensors") for p in (tmp_path / "a", parts))
        assert all(torch.equal(ada[k], adb[k]) for k in ada)


def _two_rank_stage2(rank: int, world_size: int, world: str, init: str, out: str) -> list[str]:
    torch.set_num_threads(1)
    final = runpy.run_path(str(STAGE2), run_name="recipe")["main"](
        [
            "--config",
            str(REPO / "reward/configs/tiny/stage2.yaml"),
            f"output_dir={out}",
            f"init_from={init}",
            f"data.manifest={world}",
            "train.max_steps=2",
            "train.batch_size=1",
            "log.report_to=none",
        ]
    )
    return sorted(p.name for p in (Path(out) / "checkpoints" / "step_00000002").iterdir()) + [str(final)]


@pytest.mark.slow
def test_two_process_run(world, tiny, tmp_path):
    out = tmp_path / "ddp"
    r0, r1 = run_distributed(
        _two_rank_stage2, world_size=2, args=(str(world / "splits" / "stage2.jsonl"), str(tiny), str(out)), timeout=600
    )
    assert r0 == r1
    assert "rng_rank0.pt" in r0 and "rng_rank1.pt" in r0
    assert 0.0 <= _score(out / "final", world) <= 1.0
