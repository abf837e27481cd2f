"""UnifiedReward on a tiny random Qwen3-VL: local scoring, the OpenAI-compatible server path, and the reward server.

The servers are real ``http.server`` instances on 127.0.0.1 with an ephemeral port, run in a daemon thread and
stopped by their fixture.
"""

import json
import logging
import math
import urllib.request

import numpy as np
import pytest
import torch

from cac_align.reward.remote import RemoteReward
from cac_align.reward.unified import (
    DIMENSIONS,
    SCORE_RANGE,
    UnifiedReward,
    parse_scores,
    score_prefix,
    uniform_indices,
)
from cac_align.serve import ChatEndpoint, HTTPService, RewardEndpoint, build_reward_service, post_json
from cac_align.testing import build_tiny_qwen3vl
from cac_align.video import load_video, save_video

SETTINGS = {"num_frames": 2, "max_new_tokens": 12}
PROMPTS = ["a red ball rolls across a table", "a dog jumps over a fence"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return build_tiny_qwen3vl(tmp_path_factory.mktemp("unified") / "tiny", seed=3, vocab="bytes")


@pytest.fixture(scope="module")
def hard(ckpt):
    return UnifiedReward.from_pretrained(ckpt, **SETTINGS)


@pytest.fixture(scope="module")
def soft(hard):
    return UnifiedReward(hard.model, hard.processor, soft=True, **SETTINGS)


@pytest.fixture(scope="module")
def service(hard, soft):
    """Chat completions over the tiny model and /reward over the soft reward, on one loopback port."""
    routes = {**ChatEndpoint(hard.model, hard.processor, "tiny-ur").routes(), **RewardEndpoint(soft).routes()}
    with HTTPService(routes, port=0) as svc:
        yield svc


@pytest.fixture(scope="module")
def videos():
    g = torch.Generator().manual_seed(0)
    return torch.rand(2, 9, 3, 32, 48, generator=g)


@pytest.fixture(scope="module")
def reference(soft, videos):
    """Soft scores of ``videos`` (computed once) and their per-dimension parts."""
    scores = soft(videos, PROMPTS)
    return scores, list(soft.last_scores)


# ------------------------------------------------------------------------------------------------------- parsing
def test_parse_scores_good_and_bad_answers():
    good = "Alignment Score (1-5): 4\nPhysics Score (1-5): 3.5\nStyle Score (1-5): 2.25"
    assert parse_scores(good) == {"alignment": 4.0, "physics": 3.5, "style": 2.25}
    markdown = "**Alignment Score (1-5)**: 5\n**physics score (1-5):** 1\nSTYLE SCORE (1 - 5): 3"
    assert parse_scores(markdown) == {"alignment": 5.0, "physics": 1.0, "style": 3.0}
    assert parse_scores("Alignment Score (1-5): 7\nPhysics Score (1-5): 0.5") == {}  # outside [1, 5]
    assert parse_scores("Alignment Score (1-5): 6\nAlignment Score (1-5): 3") == {}  # the first occurrence decides
    assert parse_scores("Alignment Score (1-5): 2\nAlignment Score (1-5): 3") == {"alignment": 2.0}
    assert parse_scores("Alignment: 4, Physics: 3") == {}
    assert parse_scores("Alignment Score (1-5): X") == {}
    assert parse_scores("") == {}


def test_uniform_indices():
    assert uniform_indices(81, 16).tolist() == np.round(np.linspace(0, 80, 16)).astype(int).tolist()
    assert uniform_indices(81, 16)[[0, -1]].tolist() == [0, 80]
    assert uniform_indices(9, 16).tolist() == list(range(9))
    with pytest.raises(ValueError):
        uniform_indices(0)


def test_prefix_and_arguments():
    assert score_prefix("physics") == "Physics Score (1-5): "
    assert UnifiedReward.score_range == SCORE_RANGE == (1.0, 5.0)
    with pytest.raises(ValueError, match="dimensions"):
        UnifiedReward(server=None, model=object(), processor=object(), dimensions=("motion",))
    with pytest.raises(ValueError, match="either a model"):
        UnifiedReward()


# ---------------------------------------------------------------------------------------------------- local model
def test_round_trip_gives_identical_scores(soft, videos, reference, tmp_path):
    again = tmp_path / "copy"
    soft.model.save_pretrained(again)
    soft.processor.save_pretrained(again)
    reloaded = UnifiedReward.from_pretrained(again, soft=True, **SETTINGS)
    assert reloaded(videos[:1], PROMPTS[:1]) == reference[0][:1]


def test_hard_scores_are_none_and_counted_for_unparsable_answers(hard, videos, caplog):
    before = hard.num_unparsable
    with caplog.at_level(logging.WARNING, logger="cac_align.reward.unified"):
        scores = hard(videos, PROMPTS)
    # a random model never writes the answer format: None per video, never 0
    assert scores == [None, None]
    assert hard.num_unparsable - before == 2
    assert len(hard.last_answers) == 2 and all(isinstance(a, str) for a in hard.last_answers)
    assert sum("reward None" in r.getMessage() for r in caplog.records) == 2
    log = hard.log("ur")
    assert log["ur/none"] == 2.0 and log["ur/unparsable_total"] == float(hard.num_unparsable)


def test_soft_score_is_digit_expectation_per_video(soft, videos, reference):
    scores, last_scores = reference
    assert len(scores) == 2 and all(SCORE_RANGE[0] <= s <= SCORE_RANGE[1] for s in scores)
    assert scores[0] != scores[1]  # the score depends on the video and prompt
    for s, per_dim in zip(scores, last_scores, strict=True):
        assert set(per_dim) == set(DIMENSIONS)
        assert s == pytest.approx(sum(per_dim.values()) / 3)

    # by hand: the first dimension is the expectation over digits 1-5 after "Alignment Score (1-5): "
    frames = soft.frames(videos[0])
    inputs = soft._inputs(frames, soft.question(PROMPTS[0]), score_prefix("alignment"))
    with torch.no_grad():
        logits = soft.model(**inputs).logits[0, -1]
    digit_ids = [soft.processor.tokenizer.convert_tokens_to_ids(str(d)) for d in range(1, 6)]
    p = torch.softmax(logits[digit_ids], -1)
    assert last_scores[0]["alignment"] == pytest.approx(float((p * torch.arange(1, 6)).sum()), abs=1e-5)


def test_selected_dimensions_are_averaged(hard, videos, reference):
    full, per_dim = reference
    style = UnifiedReward(hard.model, hard.processor, soft=True, dimensions=("style",), **SETTINGS)
    style_scores = style(videos, PROMPTS)
    assert style_scores == pytest.approx([d["style"] for d in per_dim])
    assert style_scores != full
    two = UnifiedReward(hard.model, hard.processor, soft=True, dimensions=("alignment", "physics"), **SETTINGS)
    assert two(list(videos), PROMPTS) == pytest.approx([(d["alignment"] + d["physics"]) / 2 for d in per_dim])


def test_inputs_as_list_of_different_lengths_and_as_files(soft, videos, reference, tmp_path):
    short = videos[1, :5]
    scores = soft([videos[0], short], PROMPTS)
    assert scores[0] == reference[0][0]  # a video's score does not depend on its batch
    path = save_video(videos[0], tmp_path / "v.mp4", fps=16, crf=0)
    from_file = soft([path], PROMPTS[:1])[0]
    assert SCORE_RANGE[0] <= from_file <= SCORE_RANGE[1]
    assert from_file == soft([load_video(path, None).frames], PROMPTS[:1])[0]
    with pytest.raises(ValueError, match="prompts are required"):
        soft(videos)
    with pytest.raises(ValueError, match="1 prompts for 2 videos"):
        soft(videos, PROMPTS[:1])


# -------------------------------------------------------------------------------------------- OpenAI-compatible
def test_server_answers_match_local_model(service, hard, soft, videos, reference):
    remote = UnifiedReward.from_server(service.url, "tiny-ur", max_concurrency=2, **SETTINGS)
    assert remote(videos, PROMPTS) == [None, None]
    local = hard(videos, PROMPTS)
    assert local == [None, None] and remote.last_answers == hard.last_answers  # same greedy text, PNG is lossless
    assert remote.num_unparsable == 2

    # soft scores through logprobs + continue_final_message; top_logprobs covers the byte vocabulary's digits
    vocab = len(soft.processor.tokenizer)
    remote_soft = UnifiedReward.from_server(service.url + "/v1", "tiny-ur", soft=True, top_logprobs=vocab, **SETTINGS)
    assert remote_soft(videos, PROMPTS) == pytest.approx(reference[0], abs=1e-6)


def test_chat_endpoint_speaks_the_openai_format(service):
    with urllib.request.urlopen(service.url + "/v1/models", timeout=30) as r:
        assert json.loads(r.read())["data"][0]["id"] == "tiny-ur"
    body = {"model": "tiny-ur", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0}
    body.update(logprobs=True, top_logprobs=2)
    answer = post_json(service.url + "/v1/chat/completions", body)
    choice = answer["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
    lps = choice["logprobs"]["content"]
    assert answer["usage"]["completion_tokens"] >= len(lps) >= 1
    assert all(len(e["top_logprobs"]) == 2 and e["logprob"] <= 0 for e in lps)
    # greedy: each chosen token is the most likely one
    assert all(math.isclose(e["logprob"], e["top_logprobs"][0]["logprob"], abs_tol=1e-6) for e in lps)
    sampled = {**body, "temperature": 0.8, "top_p": 0.9, "seed": 7, "logprobs": False, "top_logprobs": 0}
    first = post_json(service.url + "/v1/chat/completions", sampled)["choices"][0]["message"]
    assert post_json(service.url + "/v1/chat/completions", sampled)["choices"][0]["message"] == first
    with pytest.raises(RuntimeError, match="HTTP 404"):
        post_json(service.url + "/v1/chat/completions", {**body, "model": "other"})
    with pytest.raises(RuntimeError, match="HTTP 400.*image_url"):
        bad = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]
        post_json(service.url + "/v1/chat/completions", {**body, "messages": bad})


def test_server_answer_texts_are_parsed_and_failures_counted(caplog):
    """The client against vLLM-shaped answers (an HTTP route that replies with fixed texts)."""
    texts = {
        PROMPTS[0]: "Alignment Score (1-5): 4.5\nPhysics Score (1-5): 3\nStyle Score (1-5): 2.5",
        PROMPTS[1]: "I cannot rate this video.",
    }

    def reply(body):
        question = body["messages"][0]["content"][-1]["text"]
        (text,) = [t for p, t in texts.items() if p in question]
        assert sum(part["type"] == "image_url" for part in body["messages"][0]["content"]) == 16
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}

    with HTTPService({("POST", "/v1/chat/completions"): reply}) as svc:
        reward = UnifiedReward.from_server(svc.url, "m", image_format="jpeg")  # 16 frames by default
        with caplog.at_level(logging.WARNING, logger="cac_align.reward.unified"):
            scores = reward(torch.rand(2, 20, 3, 16, 16), PROMPTS)
        assert scores == [pytest.approx((4.5 + 3 + 2.5) / 3), None]
        assert reward.num_unparsable == 1 and reward.num_videos == 2
        assert any("I cannot rate" in r.getMessage() for r in caplog.records)
        physics = UnifiedReward.from_server(svc.url, "m", dimensions=("physics",))
        assert physics(torch.rand(2, 20, 3, 16, 16), PROMPTS) == [3.0, None]
        assert physics.log()["unified_reward/physics_mean"] == 3.0


def test_http_service_errors_and_health():
    with HTTPService({("POST", "/echo"): lambda body: body}, max_body_bytes=64) as svc:
        assert post_json(svc.url + "/echo", {"a": 1}) == {"a": 1}
        with urllib.request.urlopen(svc.url + "/health", timeout=30) as r:
            assert json.loads(r.read()) == {"status": "ok"}
        with pytest.raises(RuntimeError, match="HTTP 413"):
            post_json(svc.url + "/echo", {"a": "x" * 100})
        with pytest.raises(RuntimeError, match="HTTP 404: no route POST /nothing"):
            post_json(svc.url + "/nothing", {})


# ------------------------------------------------------------------------------------------------- reward server
def test_remote_reward_matches_local(service, soft, videos, reference, tmp_path):
    local = reference[0]
    assert RemoteReward(service.url, dtype="float32")(videos, PROMPTS, fps=16) == local
    # uint8 transport: round(255 x) is what the judge's frames are made of anyway, so the scores are identical
    assert RemoteReward(service.url)(list(videos), PROMPTS) == local
    path = save_video(videos[1], tmp_path / "v.mp4", fps=16, crf=0)  # sent as the file's bytes
    assert RemoteReward(service.url)([path], PROMPTS[1:]) == soft([path], PROMPTS[1:])
    with pytest.raises(RuntimeError, match="HTTP 400.*1 prompts for 2 videos"):
        RemoteReward(service.url)(videos, PROMPTS[:1])
    with pytest.raises(RuntimeError, match="HTTP 500.*prompts are required"):
        RemoteReward(service.url)(videos)


def test_serve_reward_service_from_checkpoint(ckpt, videos, reference):
    svc = build_reward_service(ckpt, "unified", port=0, model_name="ur", soft=True, **SETTINGS)
    with svc:
        assert RemoteReward(svc.url)(videos[:1], PROMPTS[:1]) == reference[0][:1]
        remote = UnifiedReward.from_server(svc.url, "ur", **SETTINGS)
        assert remote(videos[:1], PROMPTS[:1]) == [None]
    with pytest.raises(ValueError, match="'cac' or 'unified'"):
        build_reward_service(ckpt, "pickscore")


def test_cli_serve_reward_parses():
    from cac_align.cli import build_parser

    args = build_parser().parse_args(["serve-reward", "--model", "m", "--reward", "unified", "--port", "0", "--soft"])
    assert (args.model, args.reward, args.port, args.soft, args.host) == ("m", "unified", 0, True, "127.0.0.1")
