"""Generate-verify CoT synthesis (Sec. 3.1, App. B.2) against real HTTP servers on loopback.

A scripted OpenAI-compatible server answers each synthesis request well or badly according to a per-video plan
(the round in which each turn starts to pass, rounds in which the Fig. S6 check says "inconsistent", transient
failures), so salient / non-salient / discarded / normal outcomes, retries, the cache and resume are all exercised
through the real client and the real HTTP stack. A second test runs the loop against ``cac-align``'s own chat server
over a tiny random Qwen3-VL checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from cac_align.data.cot_prompts import clip_boxes, parse_verdict
from cac_align.data.cot_synthesis import check_turn, synthesize_cot, turn2_window
from cac_align.data.vlm_client import AuthError, VLMClient
from cac_align.schema import TAXONOMY, Annotation, PredAnomaly, format_judgment, parse_judgment, read_manifest
from cac_align.utils import read_jsonl
from cac_align.video import save_video

SRC_FPS = 16
SECONDS = 3  # 12 frames at 4 fps: turn-1 requests carry 12 images, turn-2 clips 4 or 8


# --------------------------------------------------------------------------------------------------------------------
# A scripted chat server
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """How the server treats one video: turn t answers well from round ``t_pass[t]`` on (None: never)."""

    t1_pass: int | None = 1
    t2_pass: int | None = 1
    inconsistent: set[tuple[int, int]] = field(default_factory=set)  # (round, turn) the S6 check rejects
    flaky: int = 0  # the first request of this video fails with 503 this many times
    auth_fail: bool = False  # answer 401 to every request of this video


class ScriptedServer:
    """``POST /v1/chat/completions`` answering from per-video plans; counts every request body it serves."""

    def __init__(self, annotations: dict[str, Annotation], plans: dict[str, Plan]) -> None:
        self.annotations = annotations  # by prompt
        self.plans = plans
        self.lock = threading.Lock()
        self.served: dict[str, int] = {}  # sha256 of the body -> times answered with 200
        self.failed = 0
        self.flaky_left = {p: plan.flaky for p, plan in plans.items()}
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                status, body, headers = server.answer(json.loads(raw))
                if status == 200:
                    with server.lock:
                        h = hashlib.sha256(raw).hexdigest()
                        server.served[h] = server.served.get(h, 0) + 1
                data = json.dumps(body).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)

    def answer(self, req: dict) -> tuple[int, dict, dict]:
        content = req["messages"][0]["content"]
        if isinstance(content, str):
            return self.verify(content)
        text = "".join(p["text"] for p in content if p["type"] == "text")
        images = sum(p["type"] == "image_url" for p in content)
        prompt = re.search(r'generated from the text prompt: "([^"]+)"', text).group(1)
        ann, plan = self.annotations[prompt], self.plans[prompt]
        with self.lock:
            if plan.auth_fail:
                self.failed += 1
                return 401, {"error": {"message": "invalid api key", "code": "invalid_api_key"}}, {}
            if self.flaky_left[prompt] > 0:
                self.flaky_left[prompt] -= 1
                self.failed += 1
                return 503, {"error": {"message": "overloaded"}}, {"Retry-After": "0"}
        r = req["seed"] + 1
        turn = 1 if images == SECONDS * 4 else 2
        good_from = plan.t1_pass if turn == 1 else plan.t2_pass
        good = good_from is not None and r >= good_from
        return 200, _completion(_scripted_answer(ann, turn, images, good, r)), {}

    def verify(self, prompt: str) -> tuple[int, dict, dict]:
        video = re.search(r"Video ID: (\S+)", prompt).group(1)
        ann = next(a for a in self.annotations.values() if a.video.endswith(video))
        plan = self.plans[ann.prompt]
        r = int(re.search(r"answer of round (\d+)", prompt).group(1))
        turn = 1 if "Segment: whole video" in prompt else 2
        verdict = "inconsistent" if (r, turn) in plan.inconsistent else "consistent"
        return 200, _completion(verdict), {}


def _completion(text: str) -> dict:
    return {"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"content": text}}]}


def _scripted_answer(ann: Annotation, turn: int, n_images: int, good: bool, r: int) -> str:
    cot = f"Frame 0: a scene. answer of round {r}"
    if not ann.is_abnormal:
        if good:
            return format_judgment("normal", cot=cot, turn=turn)
        return format_judgment("abnormal", [PredAnomaly("Motion Anomalies", (0, 1), {0: [(1, 1, 9, 9)]})], cot, turn)
    window = turn2_window(ann, SECONDS * 4)
    items = []
    for a in ann.anomalies:
        label = a.label if good else TAXONOMY[(TAXONOMY.index(a.label) + 1) % len(TAXONOMY)]
        if turn == 1:
            items.append(PredAnomaly(label, a.frames, reason=a.reason, region=a.region))
        else:
            boxes = clip_boxes(a, window[0], n_images, ann.fps)
            items.append(PredAnomaly(label, (0, n_images - 1), boxes, a.reason, a.region))
    return format_judgment("abnormal", items, cot, turn)


# --------------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------------


def _abnormal(name: str, label: str, frames: tuple[int, int]) -> dict:
    boxes = {str(j): [[100 + 10 * j, 200, 400, 500]] for j in range(frames[0], frames[1] + 1)}
    anomaly = {"label": label, "frames": list(frames), "reason": "it bends", "region": "cup", "bboxes": boxes}
    return {"video": f"videos/{name}.mp4", "prompt": name, "status": "abnormal", "anomalies": [anomaly]}


def _write_world(tmp_path, specs: list[dict]) -> tuple[object, dict[str, Annotation]]:
    (tmp_path / "videos").mkdir()
    g = torch.Generator().manual_seed(0)
    for d in specs:
        save_video(torch.rand(SRC_FPS * SECONDS, 3, 24, 32, generator=g), tmp_path / d["video"], SRC_FPS)
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(d) + "\n" for d in specs))
    return manifest, {a.prompt: a for a in read_manifest(manifest)}


SPECS = [
    _abnormal("salient-r1", "Human Distortion", (4, 5)),
    _abnormal("salient-r3", "Object Distortion", (2, 3)),
    _abnormal("nonsalient-r4", "Physical Violations", (6, 7)),
    _abnormal("s6-r5", "Character Anomalies", (8, 9)),
    _abnormal("discarded", "Motion Anomalies", (3, 4)),
    {"video": "videos/normal-ok.mp4", "prompt": "normal-ok", "status": "normal", "anomalies": []},
    {"video": "videos/normal-bad.mp4", "prompt": "normal-bad", "status": "normal", "anomalies": []},
]

PLANS = {
    "salient-r1": Plan(flaky=2),
    "salient-r3": Plan(t1_pass=3, t2_pass=2),
    "nonsalient-r4": Plan(t1_pass=2, t2_pass=4),
    "s6-r5": Plan(inconsistent={(1, 1), (2, 1), (3, 1), (4, 1), (1, 2)}),  # rules pass at once, S6 until round 5
    "discarded": Plan(t1_pass=1, t2_pass=None),
    "normal-ok": Plan(flaky=1),
    "normal-bad": Plan(t1_pass=None),
}

EXPECTED = {
    "salient-r1": ("salient", 1),
    "salient-r3": ("salient", 3),
    "nonsalient-r4": ("non-salient", 4),
    "s6-r5": ("non-salient", 5),
    "discarded": ("discarded", None),
    "normal-ok": ("normal", 1),
    "normal-bad": ("discarded", None),
}


def _client(server: ScriptedServer, cache, concurrency: int = 3) -> VLMClient:
    return VLMClient(server.url, "scripted", api_key="k", concurrency=concurrency, backoff_s=0.01, cache_dir=cache)


def _check_outcomes(out, anns: dict[str, Annotation]) -> None:
    passed = {a.prompt: a for a in read_manifest(out / "manifest.jsonl")}
    rejects = {Path(r["video"]).stem: r for r in read_jsonl(out / "rejects.jsonl")}
    for prompt, (outcome, rnd) in EXPECTED.items():
        if outcome == "discarded":
            assert prompt not in passed
            rec = rejects[prompt]
            assert rec["outcome"] == "discarded"
            assert rec["rounds"] == 5 and any(s.startswith("round 5") for s in rec["reasons"])
            continue
        a = passed[prompt]
        syn = a.meta["cot_synthesis"]
        assert syn["round"] == rnd, prompt
        assert a.cot is not None and f"answer of round {syn['turn_rounds'][0]}" in a.cot["turn1"]
        assert f"answer of round {syn['turn_rounds'][1]}" in a.cot["turn2"]
        assert parse_judgment(syn["turn2_answer"], 2).valid
        if outcome == "normal":
            assert a.status == "normal" and not a.anomalies
        else:
            assert [s.saliency for s in a.anomalies] == [outcome]
            assert a.mean_discount == (1.0 if outcome == "salient" else 0.5)
            assert a.anomalies[0].frames == anns[prompt].anomalies[0].frames
            assert a.anomalies[0].bboxes == anns[prompt].anomalies[0].bboxes


def test_generate_verify_outcomes_retries_and_rejects(tmp_path):
    manifest, anns = _write_world(tmp_path, SPECS)
    with ScriptedServer(anns, PLANS) as server:
        client = _client(server, tmp_path / "cache")
        summary = synthesize_cot(manifest, tmp_path / "out", client, progress=False)
    assert summary.counts == {"salient": 2, "non-salient": 2, "normal": 1, "discarded": 2}
    _check_outcomes(tmp_path / "out", anns)
    # the reason of the discarded anomalous video names the failed rule, round by round
    rejects = read_jsonl(tmp_path / "out" / "rejects.jsonl")
    disc = next(r for r in rejects if r["video"].endswith("discarded.mp4"))
    assert all("labels" in s for s in disc["reasons"]) and len(disc["reasons"]) == 5  # turn 1 passed in round 1
    # a passed turn is not asked again; the S6 check only runs on rule-passing anomalous answers
    assert server.failed == 3 and summary.retries == 3  # the flaky 503s were retried
    per_video_generate = {
        "salient-r1": 2,
        "salient-r3": 5,
        "nonsalient-r4": 6,
        "s6-r5": 7,
        "discarded": 6,
        "normal-ok": 2,
        "normal-bad": 6,
    }
    verify = 2 + 2 + 2 + 7 + 1  # rule-passing anomalous answers
    assert sum(server.served.values()) == sum(per_video_generate.values()) + verify
    assert summary.requests == sum(server.served.values()) + server.failed
    # the output manifest points at the videos from its own folder and keeps input order
    out_manifest = read_manifest(tmp_path / "out" / "manifest.jsonl")
    assert [a.prompt for a in out_manifest] == ["salient-r1", "salient-r3", "nonsalient-r4", "s6-r5", "normal-ok"]
    assert all(a.video.startswith("../videos/") for a in out_manifest)


def test_interrupted_run_resumes_without_paying_twice(tmp_path):
    manifest, anns = _write_world(tmp_path, SPECS)
    plans = {k: Plan(**{**v.__dict__, "flaky": 0}) for k, v in PLANS.items()}
    plans["s6-r5"].auth_fail = True  # the key is revoked while this video is processed
    with ScriptedServer(anns, plans) as server:
        with pytest.raises(AuthError, match="401"):
            synthesize_cot(manifest, tmp_path / "out", _client(server, tmp_path / "cache", 1), progress=False)
        first = dict(server.served)
        finished = read_jsonl(tmp_path / "out" / "results.jsonl") + read_jsonl(tmp_path / "out" / "rejects.jsonl")
        assert 0 < len(finished) < len(SPECS)
        plans["s6-r5"].auth_fail = False  # a new key
        summary = synthesize_cot(manifest, tmp_path / "out", _client(server, tmp_path / "cache"), progress=False)
        assert summary.counts == {"salient": 2, "non-salient": 2, "normal": 1, "discarded": 2}
        assert max(server.served.values()) == 1  # no request was answered twice across the two runs
        assert set(first) < set(server.served)
        _check_outcomes(tmp_path / "out", anns)

        # resuming a finished run asks nothing; a fresh run over the same cache asks nothing either
        n = sum(server.served.values())
        again = synthesize_cot(manifest, tmp_path / "out", _client(server, tmp_path / "cache"), progress=False)
        assert again.counts == summary.counts and again.requests == 0
        fresh = synthesize_cot(manifest, tmp_path / "out2", _client(server, tmp_path / "cache"), progress=False)
        assert sum(server.served.values()) == n and fresh.requests == 0 and fresh.cache_hits > 0
        assert (tmp_path / "out2" / "manifest.jsonl").read_text() == (tmp_path / "out" / "manifest.jsonl").read_text()


def test_rules_of_b2():
    ann = Annotation.from_dict(_abnormal("x", "Human Distortion", (4, 7)))
    window = turn2_window(ann, 12)
    good1 = parse_judgment(format_judgment("abnormal", [PredAnomaly("Human Distortion", (4, 6))], turn=1), 1)
    assert check_turn(1, good1, ann, window) == []  # IoU 3/4
    short = parse_judgment(format_judgment("abnormal", [PredAnomaly("Human Distortion", (4, 5))], turn=1), 1)
    assert check_turn(1, short, ann, window) == ["temporal IoU 0.50 <= 0.5"]  # must exceed 0.5
    wrong = parse_judgment(format_judgment("abnormal", [PredAnomaly("Object Distortion", (4, 7))], turn=1), 1)
    assert "labels" in check_turn(1, wrong, ann, window)[0]
    normal = parse_judgment(format_judgment("normal", turn=1), 1)
    assert check_turn(1, normal, ann, window) == ["status 'normal', annotated 'abnormal'"]
    assert check_turn(1, parse_judgment("```json\n{}```", 1), ann, window)[0].startswith("invalid answer")
    # turn 2: boxes on clip frames; shifting them off the annotated region fails the box IoU
    boxes = clip_boxes(ann.anomalies[0], window[0], 8, ann.fps)
    ok2 = format_judgment("abnormal", [PredAnomaly("Human Distortion", (0, 7), boxes)], turn=2)
    assert check_turn(2, parse_judgment(ok2, 2), ann, window) == []
    moved = {k: [(b[0] + 200, b[1], b[2] + 200, b[3]) for b in v] for k, v in boxes.items()}
    bad2 = format_judgment("abnormal", [PredAnomaly("Human Distortion", (0, 7), moved)], turn=2)
    assert check_turn(2, parse_judgment(bad2, 2), ann, window)[0].startswith("box IoU")


def test_consistency_verdict_parsing():
    assert parse_verdict(" Consistent.") is True
    assert parse_verdict('"inconsistent"') is False
    assert parse_verdict("The analysis is consistent") is None
    assert parse_verdict("") is None


def test_synthesis_against_local_checkpoint_server(tmp_path):
    """The loop against the chat server cac-align starts over a (tiny, random) local Qwen3-VL checkpoint."""
    from cac_align.data.vlm_client import start_local_vlm
    from cac_align.testing import build_tiny_qwen3vl

    spec = _abnormal("local", "Human Distortion", (4, 5))
    manifest, _ = _write_world(tmp_path, [spec])
    ckpt = build_tiny_qwen3vl(tmp_path / "tiny-qwen")
    service = start_local_vlm(ckpt, max_tokens=16)
    try:
        client = VLMClient(service.url + "/v1", "tiny-qwen", cache_dir=tmp_path / "cache", backoff_s=0.01)
        summary = synthesize_cot(
            manifest, tmp_path / "out", client, rounds=2, salient_rounds=1, max_tokens=16, progress=False
        )
    finally:
        service.stop()
    # a random model cannot produce a valid answer: the video is discarded with the parser's reasons, 2 x 2 requests
    assert summary.counts == {"discarded": 1}
    assert client.stats.requests == 4 and client.stats.failures == 0
    rec = read_jsonl(tmp_path / "out" / "rejects.jsonl")[0]
    assert [(a["round"], a["turn"]) for a in rec["attempts"]] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert all(a["reasons"][0].startswith("invalid answer") for a in rec["attempts"])
    assert read_manifest(tmp_path / "out" / "manifest.jsonl") == []
