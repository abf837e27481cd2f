"""CaCReward on tiny random Qwen3-VL checkpoints (paper Sec. 3.4, Eq. 7).

The two-turn control flow is tested for real: a tiny model is briefly fitted (cross-entropy on the assistant tokens
of conversations built by cac_align.reward.chat) to answer an abnormal turn-1 JSON with the window "Frame 2-3" and a
normal turn-2 JSON, then CaCReward must crop exactly the 8 fps frames of [0.5, 1.0) s for turn 2 and end normal.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest
import torch

from cac_align.reward.cac import (
    CANONICAL_PREFIX,
    CaCReward,
    Evidence,
    TurnResult,
    final_status,
    status_context,
    status_tokens,
)
from cac_align.reward.chat import (
    Encoded,
    Turn,
    chat_messages,
    collate,
    encode_conversation,
    encode_user,
    model_inputs,
    render_conversation,
)
from cac_align.reward.prompts import single_turn_prompt, turn1_prompt, turn2_prompt
from cac_align.reward.qwen import VIDEO_BLOCK, chat_template, load_qwen3vl
from cac_align.schema import STATUS_PREFIX, TAXONOMY, PredAnomaly, format_judgment, parse_judgment
from cac_align.testing import build_tiny_cac, build_tiny_qwen3vl, qwen3_tokenizer, qwen_vocab_available
from cac_align.video import Sampled, crop_clip, load_video, sample_frames, save_video

FPS = 16.0


def _video(seed: int, frames: int = 32, h: int = 64, w: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(frames, 3, h, w, generator=g)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return build_tiny_cac(tmp_path_factory.mktemp("cac"), seed=0)


@pytest.fixture(scope="module")
def reward(tiny_path):
    return CaCReward.from_pretrained(tiny_path, max_new_tokens=6)


# ------------------------------------------------------------------------------------------------------------------
# Eq. 7 tokens and the status context
# ------------------------------------------------------------------------------------------------------------------


def test_status_tokens_are_the_first_tokens_after_the_prefix(reward):
    tok = reward.processor.tokenizer
    st = status_tokens(tok)
    assert st.shared == ()
    head = tok('{"COT": "x", ' + STATUS_PREFIX, add_special_tokens=False)["input_ids"]
    for word, tid in (("normal", st.normal), ("abnormal", st.abnormal)):
        answer = format_judgment(word, [PredAnomaly("Motion Anomalies", (0, 1))], cot="x")
        ids = tok(answer, add_special_tokens=False)["input_ids"]
        assert ids[: len(head)] == head and ids[len(head)] == tid  # the same token inside a whole answer
    if qwen_vocab_available():  # the real Qwen3 vocabulary: "normal" vs "ab" (api notes)
        assert tok.convert_ids_to_tokens([st.normal, st.abnormal]) == ["normal", "ab"]


def test_status_tokens_walk_past_a_shared_start():
    tok = qwen3_tokenizer("bytes")  # no merges: one token per byte
    st = status_tokens(tok, words=("normal", "nominal"))
    assert tok.decode(list(st.shared)) == "no"
    assert tok.decode([st.normal]) == "r" and tok.decode([st.abnormal]) == "m"
    with pytest.raises(ValueError, match="never differ"):
        status_tokens(tok, words=("ab", "abnormal"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"COT": "a", "status": "normal", "anomalies": []}', '{"COT": "a", "status": "'),
        ('{"COT": "a", "status": "unsure"}', '{"COT": "a", "status": "'),
        ('{"COT": "frame 0: a \\"cat\\"", "anomalies": []}', '{"COT": "frame 0: a \\"cat\\"", "status": "'),
        ('  {"COT": "cut short', '{"COT": "cut short", "status": "'),
        ('{"COT": "cut inside an escape \\', '{"COT": "cut inside an escape ", "status": "'),
        ('{"COT": "cut inside \\u00', '{"COT": "cut inside ", "status": "'),
        ('{"COT": "line 1\nline 2', '{"COT": "line 1\nline 2", "status": "'),
        ("garbage", CANONICAL_PREFIX),
        ("", CANONICAL_PREFIX),
    ],
)
def test_status_context(text, expected):
    out = status_context(text)
    assert out == expected
    assert out.endswith(STATUS_PREFIX)


@pytest.mark.parametrize("builder", [turn1_prompt, turn2_prompt, single_turn_prompt])
def test_prompts(builder):
    text = builder("a cat jumps", 6, hint="Pay attention to the cat's tail.")
    assert text.count(VIDEO_BLOCK) == 1
    assert '"a cat jumps"' in text and "Frame 0" in text and "Frame 5" in text
    assert text.index("Pay attention") < text.index(VIDEO_BLOCK)  # the hint hook sits before the frames
    for name in TAXONOMY:
        assert name in text
    assert ('"BBOX"' in text) == (builder is not turn1_prompt)
    assert "Pay attention" not in builder(None, 6) and "generated from" not in builder(None, 6)
    with pytest.raises(ValueError):
        builder(None, 0)


@pytest.mark.parametrize("builder", [turn1_prompt, turn2_prompt, single_turn_prompt])
def test_compact_prompts_keep_the_facts_and_drop_the_instructions(builder):
    full = builder("a cat jumps", 6)
    text = builder("a cat jumps", 6, hint="Look at the tail.", style="compact")
    assert text.count(VIDEO_BLOCK) == 1
    assert '"a cat jumps"' in text and "Frame 0 to Frame 5" in text
    assert text.index("Look at the tail.") < text.index(VIDEO_BLOCK)
    assert ("BBOX" in text) == (builder is not turn1_prompt)
    assert len(text) < len(full) / 8
    if builder is turn2_prompt:
        assert "Frames 2-4" in turn2_prompt(None, 6, window=(2, 4), style="compact")
    with pytest.raises(ValueError, match="prompt style must be one of"):
        builder(None, 6, style="short")


def test_prompt_style_is_a_saved_setting_and_shapes_the_turn1_context(reward, tmp_path):
    compact = CaCReward(reward.model, reward.processor, prompt_style="compact", max_new_tokens=4)
    compact.save_pretrained(tmp_path / "compact")
    assert json.loads((tmp_path / "compact" / "cac_reward.json").read_text())["prompt_style"] == "compact"
    again = CaCReward.from_pretrained(tmp_path / "compact")
    assert again.prompt_style == "compact"
    src = again.prepare([_video(8)], ["a cat"], fps=FPS)
    short = again.run_turn1(src, max_new_tokens=1)[0].context
    long = reward.run_turn1(reward.prepare([_video(8)], ["a cat"], fps=FPS), max_new_tokens=1)[0].context
    text = again.processor.tokenizer.decode(short.input_ids)
    assert "JSON: COT, status" in text and "Analysis steps" not in text
    assert len(short) * 5 < len(long)
    with pytest.raises(ValueError, match="prompt_style must be one of"):
        CaCReward(reward.model, reward.processor, prompt_style="brief")


def _turn(status: str | None, reward: float, turn: int = 1) -> TurnResult:
    text = format_judgment(status) if status is not None else "not json"
    return TurnResult(turn, text, parse_judgment(text, turn), [], 4.0, [], [], 0.0, 0.0, reward, "forced")


def test_final_status_rule():
    # turn 2 decides; an unconfirmed (normal or unparsable) turn 2 makes the video normal
    assert final_status(_turn("abnormal", 0.1), _turn("abnormal", 0.2, 2)) == "abnormal"
    assert final_status(_turn("abnormal", 0.1), _turn("normal", 0.2, 2)) == "normal"
    assert final_status(_turn("abnormal", 0.1), _turn(None, 0.2, 2)) == "normal"
    # without turn 2: turn 1's parsed status, else the status its reward favours
    assert final_status(_turn("normal", 0.1), None) == "normal"
    assert final_status(_turn(None, 0.3), None) == "abnormal"
    assert final_status(_turn(None, 0.7), None) == "normal"


# ------------------------------------------------------------------------------------------------------------------
# Chat format and left padding
# ------------------------------------------------------------------------------------------------------------------


def _turns(video: torch.Tensor) -> list[Turn]:
    s1 = sample_frames(video, FPS, 4.0)
    s2 = crop_clip(video, FPS, 2, 3)
    a1 = format_judgment("abnormal", [PredAnomaly("Motion Anomalies", (2, 3), reason="ball jumps")])
    a2 = format_judgment("normal", cot="Frame 0: fine")
    return [
        Turn(turn1_prompt("a ball", len(s1.frames)), s1, a1),
        Turn(turn2_prompt("a ball", len(s2.frames), window=(2, 3)), s2, a2),
    ]


def test_conversation_ids_equal_the_whole_text_processed_at_once(reward):
    proc = reward.processor
    turns = _turns(_video(1))
    enc = encode_conversation(proc, turns)
    text = render_conversation(turns)
    # the saved jinja template renders the same text (plus the newline after the last <|im_end|>)
    assert proc.apply_chat_template(chat_messages(turns), tokenize=False) == text + "\n"
    videos = [(t.video.frames * 255).round().to(torch.uint8) for t in turns]
    from transformers.video_utils import VideoMetadata

    meta = [VideoMetadata(total_num_frames=32, fps=FPS, frames_indices=t.video.indices.tolist()) for t in turns]
    whole = proc(text=[text], videos=videos, video_metadata=meta, do_sample_frames=False, return_tensors="pt")
    assert torch.equal(whole["input_ids"][0], enc.input_ids)
    assert torch.equal(whole["mm_token_type_ids"][0], enc.mm_token_type_ids)
    assert torch.equal(whole["pixel_values_videos"], enc.pixel_values_videos)
    assert torch.equal(whole["video_grid_thw"], enc.video_grid_thw)
    # loss only on the two answers and their closing <|im_end|>
    tok = proc.tokenizer
    answers = tok.decode(enc.input_ids[enc.assistant_mask.bool()])
    assert answers == turns[0].answer + "<|im_end|>" + turns[1].answer + "<|im_end|>"
    only2 = encode_conversation(proc, turns, loss_turns=[2])
    assert tok.decode(only2.input_ids[only2.assistant_mask.bool()]) == turns[1].answer + "<|im_end|>"
    assert (only2.labels == -100).sum() == len(only2) - only2.assistant_mask.sum()
    # absolute timestamps: turn 2's clip frames 8, 10 | 12, 14 of the 16 fps source
    stamps = re.findall(r"<([0-9.]+) seconds>", tok.decode(enc.input_ids))
    assert stamps[-2:] == ["0.6", "0.8"]
    with pytest.raises(ValueError, match="exactly once"):
        encode_user(proc, "no video here", turns[0].video)


def test_left_padding_keeps_mrope_positions_and_logits(reward):
    model, proc = reward.model, reward.processor
    long = encode_conversation(proc, _turns(_video(2)))
    short = encode_conversation(proc, _turns(_video(3))[:1])
    pad = proc.tokenizer.pad_token_id
    both, alone = collate([long, short], pad), collate([short], pad)
    rope = model.model.get_rope_index
    pos_both, _ = rope(
        both["input_ids"], both["mm_token_type_ids"], None, both["video_grid_thw"], both["attention_mask"]
    )
    pos_alone, _ = rope(
        alone["input_ids"], alone["mm_token_type_ids"], None, alone["video_grid_thw"], alone["attention_mask"]
    )
    n = len(short)
    assert torch.equal(pos_both[:, 1, -n:], pos_alone[:, 0])
    assert pos_both[:, 1, : len(long) - n].eq(0).all()  # padding
    with torch.no_grad():
        z_both = model(**model_inputs(both), logits_to_keep=1).logits[:, -1]
        z_alone = model(**model_inputs(alone), logits_to_keep=1).logits[:, -1]
    torch.testing.assert_close(z_both[1], z_alone[0], atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------------------------------------
# CaCReward on an unfitted random model (every answer is garbage: reads are teacher-forced)
# ------------------------------------------------------------------------------------------------------------------


def test_save_load_round_trip(reward, tmp_path):
    video = _video(4)
    reward.save_pretrained(tmp_path / "saved")
    again = CaCReward.from_pretrained(tmp_path / "saved")
    assert again.settings() == reward.settings()
    a, b = reward.model.state_dict(), again.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert again([video]) == pytest.approx(reward([video]), abs=1e-6)
    override = CaCReward.from_pretrained(tmp_path / "saved", mode="single-turn", max_new_tokens=3)
    assert (override.mode, override.max_new_tokens) == ("single-turn", 3)


def test_scores_are_probabilities_and_deterministic(reward):
    videos = torch.stack([_video(5), _video(6)])
    first = reward(videos, ["a cat", None])
    assert len(first) == 2
    assert all(0.0 <= s <= 1.0 and math.isfinite(s) for s in first)
    assert reward(videos, ["a cat", None]) == first


def test_forced_read_matches_a_hand_computed_distribution(reward):
    """An answer with no status: Eq. 7 is read after teacher-forcing the canonical prefix; recompute it by hand."""
    video = _video(7)
    ev = reward.judge(video, "a cat", fps=FPS)
    (t1,) = ev.turns
    assert t1.judgment.status is None and t1.read == "forced"
    target = status_context(t1.text)
    frames = sample_frames(video, FPS, 4.0)
    ctx = encode_user(reward.processor, turn1_prompt("a cat", len(frames.frames)), frames)
    ids = torch.tensor(reward.processor.tokenizer(target, add_special_tokens=False)["input_ids"])
    full = ctx + Encoded(ids, torch.zeros_like(ids), torch.ones_like(ids), torch.zeros(0), torch.zeros(0, 3))
    with torch.no_grad():
        z = reward.model(**model_inputs(collate([full], 0)), logits_to_keep=1).logits[0, -1].double()
    z[reward._suppress] = -math.inf
    p = torch.softmax(z, -1)
    p_n, p_a = p[reward.status.normal].item(), p[reward.status.abnormal].item()
    assert ev.p_normal == pytest.approx(p_n, rel=1e-4)
    assert ev.p_abnormal == pytest.approx(p_a, rel=1e-4)
    assert ev.reward == pytest.approx(p_n / (p_n + p_a), abs=1e-5)
    assert ev.status == ("normal" if ev.reward >= 0.5 else "abnormal")


def test_batch_invariance_and_input_forms(reward, tmp_path):
    a, b, c = _video(8), _video(9, frames=48), _video(10, frames=20)
    prompts = ["a cat", "a dog", None]
    alone = [reward([v], [p])[0] for v, p in zip((a, b, c), prompts, strict=True)]
    batched = reward([a, b, c], prompts)  # list of different lengths, one left-padded batch
    assert batched == pytest.approx(alone, abs=1e-4)
    stacked = reward(torch.stack([a, a]), [prompts[0]] * 2)  # [B, F, C, H, W]
    assert stacked == pytest.approx([alone[0]] * 2, abs=1e-4)
    chunked = CaCReward(reward.model, reward.processor, max_new_tokens=6, batch_size=2)
    assert chunked([a, b, c], prompts) == pytest.approx(alone, abs=1e-4)
    # file paths: the same scores as the decoded frames at the file's own rate
    paths = [save_video(v, tmp_path / f"v{i}.mp4", fps=FPS) for i, v in enumerate((a, b))]
    decoded = [load_video(p, None) for p in paths]
    from_files = reward(paths, prompts[:2])
    from_frames = reward([d.frames for d in decoded], prompts[:2], fps=[d.src_fps for d in decoded])
    assert from_files == pytest.approx(from_frames, abs=1e-4)


def test_bad_inputs_name_what_is_wrong(reward, tmp_path):
    v = _video(11)
    with pytest.raises(ValueError, match="uint8"):
        reward([(v * 255).to(torch.uint8)])
    with pytest.raises(ValueError, match="a mix"):
        reward([v, tmp_path / "x.mp4"])
    with pytest.raises(ValueError, match="prompts"):
        reward([v, v], ["only one"])
    with pytest.raises(ValueError, match="wrap"):
        reward(v)
    from cac_align.video import VideoReadError

    with pytest.raises(VideoReadError, match="missing.mp4"):
        reward([tmp_path / "missing.mp4"])


def test_max_frames_and_max_pixels(reward):
    long = _video(12, frames=160, h=32, w=32)  # 10 s: 40 frames at 4 fps
    capped = CaCReward(reward.model, reward.processor, max_new_tokens=1, max_frames=16)
    ev = capped.judge(long, fps=FPS)
    assert ev.fps == pytest.approx(1.6) and len(ev.turns[0].frame_indices) == 16
    # a 480x832 frame keeps its size under the released settings; max_pixels downsizes it
    big = Sampled(torch.rand(2, 3, 480, 832), torch.tensor([0.0, 0.25]), FPS)
    prompt = turn1_prompt(None, 2)
    native = encode_user(reward.processor, prompt, big, video_kwargs=reward._video_kwargs(2))
    assert native.video_grid_thw.tolist() == [[1, 30, 52]]
    small = CaCReward(reward.model, reward.processor, max_pixels=128 * 32 * 32)
    reduced = encode_user(reward.processor, prompt, big, video_kwargs=small._video_kwargs(2))
    t, h, w = reduced.video_grid_thw[0].tolist()
    assert h * w * 16 * 16 <= 128 * 32 * 32 and abs(w / h - 832 / 480) < 0.2


def test_single_turn_mode(reward):
    single = CaCReward(reward.model, reward.processor, mode="single-turn", max_new_tokens=4)
    ev = single.judge(_video(13), "a cat")
    assert len(ev.turns) == 1 and ev.window is None and 0.0 <= ev.reward <= 1.0


def test_sampling_is_configurable_and_seeded(reward):
    sampled = CaCReward(reward.model, reward.processor, max_new_tokens=4, do_sample=True, temperature=0.7, top_p=0.9)
    video = _video(14)
    torch.manual_seed(3)
    first = sampled.judge(video)
    torch.manual_seed(3)
    again = sampled.judge(video)
    assert first.turns[0].answer_ids == again.turns[0].answer_ids and first.reward == again.reward
    assert 0.0 <= first.reward <= 1.0


def test_load_qwen3vl_round_trip(tmp_path):
    path = build_tiny_qwen3vl(tmp_path / "q", seed=2, vocab="bytes")
    model, proc = load_qwen3vl(path)
    assert not model.training and proc.video_processor.cap_pixels_per_frame
    assert proc.chat_template == chat_template()
    again, _ = load_qwen3vl(path, dtype=torch.bfloat16)
    assert again.dtype == torch.bfloat16
    # a folder in the older layout (chat_template.json) keeps its own template
    text = (path / "chat_template.jinja").read_text()
    (path / "chat_template.jinja").unlink()
    (path / "chat_template.json").write_text(json.dumps({"chat_template": text + "{# own #}"}))
    assert load_qwen3vl(path)[1].chat_template.endswith("{# own #}")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_qwen3vl(tmp_path)


def test_import_cac_align_stays_light():
    code = "import sys, cac_align; assert 'transformers' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------------------------------------
# The two-turn control flow, for real: a briefly fitted tiny model
# ------------------------------------------------------------------------------------------------------------------

TURN1_ANSWER = format_judgment("abnormal", [PredAnomaly("Motion Anomalies", (2, 3))])
TURN2_ANSWER = format_judgment("normal")
PROMPT = "a red ball bounces"


@pytest.fixture(scope="module")
def fitted(tiny_path):
    """A tiny CaC fitted to answer TURN1_ANSWER in turn 1 and TURN2_ANSWER in turn 2 for one video.

    Cross-entropy on the assistant tokens only of the two-turn conversation built by cac_align.reward.chat (as
    stage-2 SFT builds it; causal attention makes the turn-1 answer's loss that of a turn-1 sample), until every
    answer token is the argmax by a margin, so that greedy decoding reproduces both answers.
    """
    torch.manual_seed(0)
    model, proc = load_qwen3vl(tiny_path)  # a fresh copy of the tiny checkpoint
    video = _video(20)
    s1 = sample_frames(video, FPS, 4.0)
    s2 = crop_clip(video, FPS, 2, 3)
    turns = [
        Turn(turn1_prompt(PROMPT, len(s1.frames), fps=4.0), s1, TURN1_ANSWER),
        Turn(turn2_prompt(PROMPT, len(s2.frames), fps=8.0, window=(2, 3)), s2, TURN2_ANSWER),
    ]
    enc = encode_conversation(proc, turns)
    inputs = model_inputs(collate([enc], proc.tokenizer.pad_token_id))
    keep = enc.assistant_mask[1:].bool()  # position i predicts token i + 1
    target = enc.input_ids[1:][keep]
    model.train()
    model.model.visual.requires_grad_(False)  # the answers do not depend on the video; this only saves time
    model.model.language_model.embed_tokens.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3, weight_decay=0.0)
    margin = -math.inf
    for _ in range(120):
        hidden = model.model(**inputs).last_hidden_state[0, :-1][keep]
        logits = model.lm_head(hidden).float()
        others = logits.detach().scatter(1, target[:, None], -math.inf)
        margin = (logits.detach().gather(1, target[:, None])[:, 0] - others.max(1).values).min().item()
        if margin > 0.2:
            break
        loss = torch.nn.functional.cross_entropy(logits, target)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    assert margin > 0.2, f"the tiny model did not fit the two answers (worst margin {margin:.3f})"
    return CaCReward(model, proc, max_new_tokens=64), video


def test_two_turn_control_flow(fitted, monkeypatch):
    reward, video = fitted
    calls: list[dict[str, torch.Tensor]] = []
    real_generate = reward.model.generate

    def spy(**kwargs):  # records what each turn feeds the real generate
        calls.append({k: v.clone() for k, v in kwargs.items() if isinstance(v, torch.Tensor)})
        return real_generate(**kwargs)

    monkeypatch.setattr(reward.model, "generate", spy)
    ev = reward.judge(video, PROMPT, fps=FPS)
    assert isinstance(ev, Evidence)
    t1, t2 = ev.turns
    assert t1.text == TURN1_ANSWER and t1.judgment.window == (2, 3)
    assert t1.frame_indices == list(range(0, 32, 4))  # 4 fps from 16 fps
    assert len(calls) == 2 and ev.window == (2, 3) and ev.clip_fps == 8.0
    # turn 2 shows the 8 fps frames of [2/4, 4/4) s: source frames 8, 10, 12, 14, at absolute times
    assert t2.frame_indices == [8, 10, 12, 14]
    assert ev.clip_timestamps == pytest.approx([0.5, 0.625, 0.75, 0.875])
    expected = encode_user(
        reward.processor,
        turn2_prompt(PROMPT, 4, fps=8.0, window=(2, 3)),
        Sampled(video[[8, 10, 12, 14]], torch.tensor([8, 10, 12, 14]) / FPS, FPS),
        first=False,
    )
    sent = calls[1]
    n = expected.pixel_values_videos.shape[0]
    torch.testing.assert_close(sent["pixel_values_videos"][-n:], expected.pixel_values_videos, atol=0, rtol=0)
    assert sent["video_grid_thw"][-1].tolist() == expected.video_grid_thw[0].tolist()
    assert torch.equal(sent["input_ids"][0, -len(expected) :], expected.input_ids)
    text2 = reward.processor.tokenizer.decode(sent["input_ids"][0])
    turn2_user = text2.split("<|im_start|>user")[2]
    assert re.findall(r"<([0-9.]+) seconds>", turn2_user) == ["0.6", "0.8"]
    assert TURN1_ANSWER + "<|im_end|>" in text2  # turn 2 continues the same conversation
    # turn 2 does not confirm: the video is normal, and the reward is read at turn 2's status
    assert t2.text == TURN2_ANSWER and t2.read == "generated"
    assert ev.status == "normal" and ev.reward == t2.reward > 0.5
    assert ev.anomalies == [] and ev.boxes == {}


def test_generated_read_matches_a_hand_computed_distribution(fitted):
    reward, video = fitted
    ev = reward.judge(video, PROMPT, fps=FPS)
    t1, t2 = ev.turns
    assert t1.read == "generated" and t1.reward < 0.5  # turn 1 said abnormal
    # rebuild turn 2's context and its answer up to the status value, and read the next-token distribution
    s1 = sample_frames(video, FPS, 4.0)
    clip = crop_clip(video, FPS, 2, 3)
    turns = [
        Turn(turn1_prompt(PROMPT, len(s1.frames)), s1, TURN1_ANSWER),
        Turn(turn2_prompt(PROMPT, len(clip.frames), window=(2, 3)), clip, None),
    ]
    ctx = encode_conversation(reward.processor, turns)
    prefix = TURN2_ANSWER[: TURN2_ANSWER.index(STATUS_PREFIX) + len(STATUS_PREFIX)]
    ids = torch.tensor(reward.processor.tokenizer(prefix, add_special_tokens=False)["input_ids"])
    assert ids.tolist() == t2.answer_ids[: len(ids)]
    full = ctx + Encoded(ids, torch.zeros_like(ids), torch.ones_like(ids), torch.zeros(0), torch.zeros(0, 3))
    with torch.no_grad():
        z = reward.model(**model_inputs(collate([full], 0)), logits_to_keep=1).logits[0, -1].double()
    z[reward._suppress] = -math.inf
    p = torch.softmax(z, -1)
    assert t2.p_normal == pytest.approx(p[reward.status.normal].item(), rel=1e-4)
    assert t2.p_abnormal == pytest.approx(p[reward.status.abnormal].item(), rel=1e-4)
    assert ev.reward == pytest.approx(t2.p_normal / (t2.p_normal + t2.p_abnormal), abs=1e-6)
    assert VIDEO_BLOCK not in t2.text


def test_fitted_batch_invariance(fitted):
    reward, video = fitted
    others = [_video(21, frames=48), _video(22, frames=24)]
    alone = [reward.judge(v, PROMPT) for v in [video, *others]]
    batched = reward.judge_batch([video, *others], [PROMPT] * 3)
    for x, y in zip(alone, batched, strict=True):
        assert [t.text for t in x.turns] == [t.text for t in y.turns]
        assert y.reward == pytest.approx(x.reward, abs=1e-4)
