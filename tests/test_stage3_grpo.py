"""Reward stage 3 (two-turn GRPO): rollouts and their loss mask, sampling-time vs recomputed log-probs, the GRPO loss
on a hand-built group, and the recipe end to end on a tiny checkpoint (CaCReward loads its output, exact resume,
two gloo ranks)."""

from __future__ import annotations

import json
import math
import os
import runpy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cac_align.algos.grpo import group_advantages, grpo_loss
from cac_align.algos.rollout import (
    Answer,
    RolloutInput,
    answer_part,
    complete_rollouts,
    rollout_logprobs,
    sample_answers,
    turn1_context,
    two_turn_rollouts,
    usable_window,
)
from cac_align.config import ConfigError
from cac_align.data.synthetic import generate
from cac_align.reward.chat import collate, encode_user
from cac_align.reward.prompts import turn2_prompt
from cac_align.reward.qwen import IM_END, VIDEO_PAD, load_qwen3vl, vision_token_ids
from cac_align.rewards import rollout_reward
from cac_align.schema import PredAnomaly, format_judgment, parse_judgment, read_manifest
from cac_align.testing import build_tiny_cac, qwen3_tokenizer, qwen3_vl_8b_config
from cac_align.testing_dist import run_distributed
from cac_align.video import crop_clip

REPO = Path(__file__).resolve().parents[1]
STAGE3 = REPO / "reward" / "stage3_grpo.py"
NORMAL = format_judgment("normal")
# Valid in both turns: a window for turn 1 and a box for turn 2.
ABNORMAL = json.dumps(
    {
        "status": "abnormal",
        "anomalies": [
            {
                "Attributed Time Region": "Frame 2-3",
                "Attributed Label": "Object Distortion",
                "BBOX": {"Frame 0": [100, 100, 500, 500]},
            }
        ],
    }
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """4 synthetic videos (64x64, 2 s, 16 fps: 8 frames at 4 fps; 2 normal, 2 anomalous) and a tiny checkpoint."""
    root = tmp_path_factory.mktemp("stage3")
    manifest = generate(root / "data", num_videos=4, seed=0, size=(64, 64), seconds=2.0, progress=False)
    init = build_tiny_cac(root / "init", seed=0, vocab="bpe")
    return manifest, init


@pytest.fixture(scope="module")
def tiny(world):
    model, processor = load_qwen3vl(world[1])
    return model, processor


def _inputs(manifest: Path) -> list[RolloutInput]:
    return [RolloutInput(manifest.parent / a.video, None, a.prompt, a.fps) for a in read_manifest(manifest)]


def _given(tok, text: str, close: bool = True) -> Answer:
    """A turn-1 answer given as text (not sampled: its log-probs are placeholders)."""
    ids = tok(text, add_special_tokens=False)["input_ids"] + ([tok.convert_tokens_to_ids(IM_END)] if close else [])
    return Answer(ids, torch.zeros(len(ids)), truncated=not close)


def _complete(model, processor, inp: RolloutInput, texts: list[str], close: bool = True, max_new: int = 6):
    torch.manual_seed(0)
    first = turn1_context(processor, inp)
    answers = [_given(processor.tokenizer, t, close) for t in texts]
    return complete_rollouts(model, processor, [inp], [first], [0] * len(texts), answers, max_new)


# ------------------------------------------------------------------------------------------------- rollout structure
def test_usable_window_follows_app_c1():
    abnormal = parse_judgment(format_judgment("abnormal", [PredAnomaly("Object Distortion", (2, 9))]), turn=1)
    assert usable_window(abnormal, 8) == (2, 7)  # end clamped to the last frame
    assert usable_window(abnormal, 2) is None  # starts past the video
    assert usable_window(parse_judgment(NORMAL, turn=1), 8) is None
    invalid = parse_judgment('{"status": "abnormal", "anomalies": [{"Attributed Label": "Nope"}]}', turn=1)
    assert not invalid.valid and invalid.status == "abnormal"
    assert usable_window(invalid, 8) is None


def test_normal_or_invalid_turn1_ends_the_rollout(world, tiny):
    model, processor = tiny
    inp = _inputs(world[0])[0]
    rollouts = _complete(model, processor, inp, [NORMAL, "not json", ABNORMAL.replace("Frame 2-3", "Frame 9-12")])
    context1, _ = turn1_context(processor, inp)
    for r in rollouts:
        assert r.turn2 is None and r.window is None and r.judgment2 is None and len(r.num_frames) == 1
        assert len(r.sequence) == len(context1) + len(r.turn1.ids)  # nothing after turn 1's answer
        assert r.sequence.video_grid_thw.shape[0] == 1  # one video only
        assert int(r.sequence.assistant_mask.sum()) == len(r.turn1.ids)
    # the same rollouts' rewards: a normal video, so "normal" is right and the others are not
    ann = read_manifest(world[0])[0]
    assert ann.status == "normal"
    totals = [rollout_reward(r.judgment1, r.judgment2, ann).total for r in rollouts]
    assert totals == [0.0, -3.0, -0.5 - 2.0]  # a valid abnormal turn 1 without its turn 2: format -0.5


def test_loss_mask_covers_exactly_both_generated_answers(world, tiny):
    model, processor = tiny
    tok = processor.tokenizer
    inp = _inputs(world[0])[1]
    (r,) = _complete(model, processor, inp, [ABNORMAL])
    assert (
        r.window == (2, 3) and r.turn2 is not None and r.num_frames == (8, 4)
    )  # 2 frames at 4 fps -> 4 clip frames at 8 fps
    ids, mask = r.sequence.input_ids, r.sequence.assistant_mask.bool()
    assert ids[mask].tolist() == r.turn1.ids + r.turn2.ids  # both answers with their <|im_end|>, nothing else
    context1, _ = turn1_context(processor, inp)
    a1_end = len(context1) + len(r.turn1.ids)
    assert not mask[: len(context1)].any() and mask[len(context1) : a1_end].all()
    # between the answers: exactly the inserted turn-2 user segment (prompt + clip), all masked out
    clip = crop_clip(inp.video, None, 2, 3)
    user2 = encode_user(processor, turn2_prompt(inp.prompt, 4, window=(2, 3)), clip, first=False)
    a2_start = a1_end + len(user2)
    assert torch.equal(ids[a1_end:a2_start], user2.input_ids) and not mask[a1_end:a2_start].any()
    middle = tok.decode(ids[a1_end:a2_start])
    assert middle.startswith("\n<|im_start|>user\n") and middle.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert "This input is a short clip cut from the video" in middle
    pads = int((ids[a1_end:a2_start] == tok.convert_tokens_to_ids(VIDEO_PAD)).sum())
    assert pads == int(r.sequence.video_grid_thw[1].prod()) // 4 > 0
    assert not (ids[mask] == tok.convert_tokens_to_ids(VIDEO_PAD)).any()
    n2 = len(r.turn2.ids)
    assert mask[a2_start : a2_start + n2].all()
    # a truncated turn 2 is closed by an inserted <|im_end|> that carries no loss
    assert len(ids) == a2_start + n2 + int(r.turn2.truncated)
    if r.turn2.truncated:
        assert ids[-1] == tok.convert_tokens_to_ids(IM_END) and not mask[-1]
    assert torch.equal(r.sequence.mm_token_type_ids == 2, ids == tok.convert_tokens_to_ids(VIDEO_PAD))
    # the rollout's own clip: the second grid is the 8 fps crop of its window
    assert r.sequence.video_grid_thw[1].tolist() == user2.video_grid_thw[0].tolist()


def test_truncated_turn1_answer_is_closed_by_an_unmasked_im_end(world, tiny):
    model, processor = tiny
    tok = processor.tokenizer
    (r,) = _complete(model, processor, _inputs(world[0])[1], [ABNORMAL], close=False)
    assert r.turn1.truncated and r.turn2 is not None  # a valid answer that hit the budget still gets its turn 2
    context1, _ = turn1_context(processor, _inputs(world[0])[1])
    end = len(context1) + len(r.turn1.ids)
    assert r.sequence.input_ids[end] == tok.convert_tokens_to_ids(IM_END)
    assert r.sequence.assistant_mask[end] == 0  # inserted, not sampled
    assert answer_part(tok, r.turn1).assistant_mask.tolist() == [1] * len(r.turn1.ids) + [0]


# --------------------------------------------------------------------------------------------------------- log-probs
def test_recomputed_logprobs_equal_sampling_time_ones(world, tiny):
    model, processor = tiny
    suppress = vision_token_ids(processor.tokenizer)
    inputs = _inputs(world[0])[:2]
    torch.manual_seed(1)
    rollouts = two_turn_rollouts(model, processor, inputs, 2, 6, 6, temperature=0.7)
    assert [r.group for r in rollouts] == [0, 0, 1, 1]
    assert all(r.turn2 is None for r in rollouts)  # random weights: turn 1 never parses
    batch = collate([r.sequence for r in rollouts], processor.tokenizer.pad_token_id)
    with torch.no_grad():
        logp = rollout_logprobs(model, batch, 0.7, suppress)
    mask = batch["assistant_mask"].bool()
    for b, r in enumerate(rollouts):
        assert torch.allclose(logp[b][mask[b]], r.sampled_logp, atol=1e-4)  # ratio 1
    assert torch.equal(logp[~mask], torch.zeros(int((~mask).sum())))
    # another temperature is another policy: the check can fail
    with torch.no_grad():
        other = rollout_logprobs(model, batch, 1.0, suppress)
    assert not torch.allclose(other[mask], logp[mask], atol=1e-3)


def test_turn2_logprobs_see_both_videos(world, tiny):
    model, processor = tiny
    suppress = vision_token_ids(processor.tokenizer)
    (r,) = _complete(model, processor, _inputs(world[0])[3], [ABNORMAL], max_new=8)
    assert r.turn2 is not None and len(r.turn2.ids) > 0
    n2 = len(r.turn2.ids)
    batch = collate([r.sequence], processor.tokenizer.pad_token_id)
    with torch.no_grad():
        logp = rollout_logprobs(model, batch, 1.0, suppress)
    got = logp[0][batch["assistant_mask"][0].bool()][-n2:]
    assert torch.allclose(got, r.turn2.logp, atol=1e-4)  # sampled with the clip in context, recomputed the same
    # the forward really uses the clip's pixels: blanking them changes turn 2's log-probs
    rows = int(r.sequence.video_grid_thw[1].prod())
    blank = dict(batch, pixel_values_videos=batch["pixel_values_videos"].clone())
    blank["pixel_values_videos"][-rows:] = 0.0
    with torch.no_grad():
        changed = rollout_logprobs(model, blank, 1.0, suppress)[0][batch["assistant_mask"][0].bool()][-n2:]
    assert not torch.allclose(changed, got, atol=1e-4)


def test_sample_answers_stop_at_im_end_and_report_truncation(tiny, world):
    model, processor = tiny
    context, _ = turn1_context(processor, _inputs(world[0])[0])
    torch.manual_seed(0)
    answers = sample_answers(model, processor, [context] * 3, 5, temperature=1.0, max_batch=2)
    im_end = processor.tokenizer.convert_tokens_to_ids(IM_END)
    assert len(answers) == 3
    for a in answers:
        assert len(a.ids) == len(a.logp) <= 5 and (a.logp <= 0).all()
        assert a.truncated == (im_end not in a.ids)
        assert im_end not in a.ids[:-1]
        assert not set(a.ids) & set(vision_token_ids(processor.tokenizer))


# ------------------------------------------------------------------------------------------- GRPO on a hand-built group
def test_grpo_loss_on_a_hand_built_group(world, tiny):
    """Four rollouts of one normal video; rewards, advantages (Eq. 8), surrogate (Eq. 9-10) and KL (Eq. 11) by hand."""
    model, processor = tiny
    suppress = vision_token_ids(processor.tokenizer)
    ann = read_manifest(world[0])[0]
    inp = _inputs(world[0])[0]
    torch.manual_seed(0)
    first = turn1_context(processor, inp)
    texts = [NORMAL, ABNORMAL, "not json", ABNORMAL]
    answers = [_given(processor.tokenizer, t) for t in texts]
    rollouts = complete_rollouts(model, processor, [inp], [first], [0] * 4, answers, 4)
    rewards = [rollout_reward(r.judgment1, r.judgment2, ann).total for r in rollouts]
    # normal video: right (0); abnormal turn 1 (-2 status, and -0.5 format unless turn 2 is valid, which random
    # turn-2 tokens never are); not JSON (-1 format, -2 status)
    assert rewards == [0.0, -2.5, -3.0, -2.5]
    adv = group_advantages(rewards, 4)
    mean = -2.0
    std = math.sqrt((2.0**2 + 0.5**2 + 1.0**2 + 0.5**2) / 4)
    assert adv.tolist() == pytest.approx([(x - mean) / (std + 1e-6) for x in rewards], abs=1e-6)

    batch = collate([r.sequence for r in rollouts], processor.tokenizer.pad_token_id)
    mask = batch["assistant_mask"].bool()
    logp = rollout_logprobs(model, batch, 1.0, suppress)
    torch.manual_seed(3)
    old = (logp.detach() + 0.3 * torch.randn(logp.shape)).masked_fill(~mask, 0.0)  # some ratios leave [0.8, 1.2]
    ref = (logp.detach() + 0.2 * torch.randn(logp.shape)).masked_fill(~mask, 0.0)
    beta, eps = 0.05, 0.2
    loss, stats = grpo_loss(logp, old, adv, mask, ref_logp=ref, beta=beta, clip_eps=eps)

    j_clip = kl = 0.0
    clipped = 0
    for i in range(4):
        lp, lo, lr = logp[i][mask[i]].tolist(), old[i][mask[i]].tolist(), ref[i][mask[i]].tolist()
        a = float(adv[i])
        s_clip = s_kl = 0.0
        for x, o, q in zip(lp, lo, lr, strict=True):
            ratio = math.exp(x - o)
            s_clip += min(ratio * a, min(max(ratio, 1 - eps), 1 + eps) * a)
            clipped += (ratio > 1 + eps and a > 0) or (ratio < 1 - eps and a < 0)
            rho = math.exp(q - x)
            s_kl += rho - math.log(rho) - 1
        j_clip += s_clip / len(lp) / 4
        kl += s_kl / len(lp) / 4
    assert clipped > 0
    assert float(loss.detach()) == pytest.approx(-(j_clip - beta * kl), rel=1e-5)
    assert float(stats["kl"]) == pytest.approx(kl, rel=1e-5)
    assert float(stats["clip_frac"]) == pytest.approx(clipped / int(mask.sum()), rel=1e-6)
    loss.backward()  # the gradient reaches the weights through the two-video forward
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


# ------------------------------------------------------------------------------------------------------------ recipe
def _run(*overrides: str) -> Path | None:
    main = runpy.run_path(str(STAGE3), run_name="recipe")["main"]
    return main(["--config", str(REPO / "reward/configs/tiny/stage3.yaml"), *overrides])


def _tiny_args(manifest: Path, init: Path, out: Path, *extra: str) -> list[str]:
    # Random weights never write a parsable answer, so every group's rewards are equal and its advantages 0. Full
    # fine-tuning with weight decay moves the policy off the frozen reference in step 1; from step 2 on the KL term
    # (on the sampled tokens) gives data-dependent updates, so exact resumption has something to get right.
    return [
        f"data.manifest={manifest}",
        f"init_from={init}",
        f"output_dir={out}",
        "lora.enabled=false",
        "train.weight_decay=0.5",
        "train.lr=0.01",
        "train.videos_per_step=1",
        "train.grad_accum=1",
        "grpo.group_size=2",
        "grpo.max_new_tokens_turn1=4",
        "grpo.max_new_tokens_turn2=4",
        "grpo.num_iterations=2",
        "log.report_to=tensorboard",
        *extra,
    ]


def test_recipe_runs_resumes_exactly_and_cacreward_loads_it(world, tmp_path):
    from cac_align.reward.cac import CaCReward

    manifest, init = world
    full = _run(*_tiny_args(manifest, init, tmp_path / "full", "train.max_steps=3", "train.save_every=3"))
    assert full == tmp_path / "full" / "final"
    records = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    for key in ("reward/total", "reward/status_acc", "rollout/turn2_rate", "grpo/kl", "grpo/clip_frac"):
        assert all(math.isfinite(r[key]) for r in records), key
    # step 1 starts at the reference (its KL comes from iteration 2, after one tiny decay step); then it grows
    assert records[0]["grpo/kl"] < 1e-4 < records[1]["grpo/kl"]
    assert records[1]["grpo/ratio_max"] > 1.0  # iteration 2 reuses the batch: the ratio leaves 1
    assert all(r["grpo/logp_gap"] < 1e-4 for r in records)  # sampling-time == recomputed log-probs
    assert (tmp_path / "full" / "rollouts.jsonl").is_file() and (tmp_path / "full" / "config.yaml").is_file()

    trained = load_file(tmp_path / "full" / "checkpoints" / "step_00000003" / "model.safetensors")
    start = load_file(init / "model.safetensors")
    assert any(not torch.equal(trained[k], start[k]) for k in start)

    reward = CaCReward.from_pretrained(full, max_new_tokens=4)
    state = reward.model.state_dict()
    assert all(torch.equal(state[k], trained[k]) for k in trained)
    score = reward(torch.rand(1, 8, 3, 64, 64), ["a test"], fps=4.0)[0]
    assert 0.0 <= score <= 1.0

    # stop after step 2, then resume for step 3: the same weights, bit for bit
    part = tmp_path / "part"
    assert _run(*_tiny_args(manifest, init, part, "train.max_steps=3", "train.stop_at_step=2")) is None
    assert (part / "checkpoints" / "step_00000002" / "COMPLETE").is_file() and not (part / "final").exists()
    resumed = _run(*_tiny_args(manifest, init, part, "train.max_steps=3", "resume=true"))
    again = load_file(part / "checkpoints" / "step_00000003" / "model.safetensors")
    assert sorted(again) == sorted(trained) and all(torch.equal(again[k], trained[k]) for k in trained)
    assert load_file(resumed / "model.safetensors").keys() == load_file(full / "model.safetensors").keys()
    redo = [json.loads(line) for line in (part / "metrics.jsonl").read_text().splitlines()]
    assert redo[-1]["grpo/kl"] == pytest.approx(records[-1]["grpo/kl"], rel=1e-6)


def test_recipe_with_lora_uses_the_adapter_free_model_as_reference(world, tmp_path):
    from cac_align.reward.cac import CaCReward

    manifest, init = world
    out = tmp_path / "lora"
    final = _run(
        *_tiny_args(manifest, init, out, "train.max_steps=1"),
        "lora.enabled=true",
        "lora.rank=4",
        "train.weight_decay=0",
        "grpo.status_weight=3",  # the weighted surrogate's path (the status token weighs 3)
        "grpo.status_check=read",
        "grpo.normal_check=final",
        "grpo.length_norm=64",
        "grpo.adv_scale=none",
    )
    (record,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert record["grpo/kl"] < 1e-6  # B = 0 at the start: the LoRA-disabled model is the policy itself
    saved = load_file(out / "checkpoints" / "step_00000001" / "model.safetensors")
    assert saved and all("lora_" in k for k in saved)  # trainable-only checkpoint: the adapters
    assert (out / "adapter" / "adapter_config.json").is_file()
    reward = CaCReward.from_pretrained(final, max_new_tokens=2)
    assert not any("lora_" in k for k in reward.model.state_dict())  # merged into the weights


def test_recipe_passes_adv_scale_to_the_advantages(world, tmp_path, monkeypatch):
    import cac_align.algos.grpo as grpo

    manifest, init = world
    real, scales = grpo.group_advantages, []

    def spy(*args, **kwargs):
        scales.append(kwargs.get("scale"))
        return real(*args, **kwargs)

    monkeypatch.setattr(grpo, "group_advantages", spy)  # the recipe imports it when it runs
    _run(*_tiny_args(manifest, init, tmp_path / "default", "train.max_steps=1"))
    _run(*_tiny_args(manifest, init, tmp_path / "none", "train.max_steps=1", "grpo.adv_scale=none"))
    assert scales == ["group", "none"]


def test_recipe_refuses_uneven_micro_batches(world, tmp_path):
    manifest, init = world
    for error, message, override in [
        (SystemExit, "grad_accum", "train.grad_accum=3"),
        (SystemExit, "status_weight", "grpo.status_weight=0"),
        (ConfigError, "grpo.status_check: expected one of 'valid', 'read'", "grpo.status_check=lenient"),
        (SystemExit, "length_norm", "grpo.length_norm=0"),
        (ConfigError, "grpo.normal_check: expected one of 'turn1', 'final'", "grpo.normal_check=turn2"),
        (ConfigError, "grpo.adv_scale: expected one of 'group', 'none'", "grpo.adv_scale=batch"),
    ]:
        with pytest.raises(error, match=message):
            _run(*_tiny_args(manifest, init, tmp_path / "x", override))


def _two_ranks(rank: int, world_size: int, manifest: str, init: str, out: str) -> dict:
    os.environ["ACCELERATE_USE_CPU"] = "true"  # what `accelerate launch --cpu` sets: gloo ranks on CPU
    final = _run(*_tiny_args(Path(manifest), Path(init), Path(out), "train.max_steps=2", "train.videos_per_step=2"))
    return {"final": str(final)}


def test_two_process_run(world, tmp_path):
    manifest, init = world
    r0, r1 = run_distributed(_two_ranks, world_size=2, args=(str(manifest), str(init), str(tmp_path)), timeout=300)
    assert r0["final"] == r1["final"] == str(tmp_path / "final")
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]  # rank 0 logs once per step
    assert {"rng_rank0.pt", "rng_rank1.pt"} <= {p.name for p in (tmp_path / "checkpoints" / "step_00000002").iterdir()}
    ckpt = load_file(tmp_path / "checkpoints" / "step_00000002" / "model.safetensors")
    final = load_file(tmp_path / "final" / "model.safetensors")
    assert all(torch.equal(final[k], ckpt[k]) for k in final)


# --------------------------------------------------------------------------------------------------------- benchmark
def test_benchmark_runs_tiny_and_builds_the_8b_config(tmp_path):
    """benchmarks/stage3_step.py --tiny must keep working (the only runnable copy of the GPU benchmark)."""
    from transformers import Qwen3VLForConditionalGeneration

    bench = runpy.run_path(str(REPO / "benchmarks" / "stage3_step.py"))
    out = tmp_path / "bench.json"
    result = bench["main"](["--tiny", "--warmup", "0", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    step = result["step"]
    assert step["videos_per_rollout"] == 2 and step["seconds_step"] > 0
    assert step["generated_tokens_per_rollout"] == 8 + 6  # fixed lengths; the closing <|im_end|>s carry no loss
    # the GPU setting's architecture: Qwen3-VL-8B's published sizes, built on the meta device (no memory)
    config = qwen3_vl_8b_config(qwen3_tokenizer("bpe"))
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(config)
    n = sum(p.numel() for p in model.parameters())
    assert 8.5e9 < n < 9.0e9, n
    assert config.text_config.num_hidden_layers == 36 and config.vision_config.deepstack_visual_indexes == [8, 16, 24]
