"""The OpenAI-compatible VLM client against scripted loopback servers: retries, fatal errors, cache, concurrency."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from cac_align.data.vlm_client import AuthError, QuotaError, VLMClient, VLMError, request_key, video_message
from cac_align.reward.qwen import VIDEO_BLOCK

Reply = tuple[int, dict, dict]


class Server:
    """A loopback chat server whose answer to the n-th request (0-based) is ``script(n, body)``."""

    def __init__(self, script: Callable[[int, dict], Reply], delay_s: float = 0.0) -> None:
        self.script = script
        self.delay_s = delay_s
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    n = len(outer.bodies)
                    outer.bodies.append(body)
                    outer.headers.append(dict(self.headers))
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                time.sleep(outer.delay_s)
                status, answer, extra = outer.script(n, body)
                with lock:
                    outer.in_flight -= 1
                data = json.dumps(answer).encode()
                self.send_response(status)
                for k, v in extra.items():
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

    def __enter__(self) -> Server:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


def ok(text: str = "fine") -> Reply:
    return 200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}, {}


def err(status: int, message: str, code: str = "", headers: dict | None = None) -> Reply:
    return status, {"error": {"message": message, "code": code}}, headers or {}


def client(server: Server, **kw) -> VLMClient:
    return VLMClient(server.url, "m", api_key="secret", backoff_s=0.01, max_backoff_s=0.05, **kw)


MSG = [{"role": "user", "content": "hello"}]


def test_answer_headers_and_body():
    with Server(lambda n, b: ok("hi there")) as s:
        assert client(s).chat(MSG, temperature=0.5, max_tokens=7) == "hi there"
    assert s.bodies[0] == {"model": "m", "messages": MSG, "temperature": 0.5, "max_tokens": 7}
    assert s.headers[0]["Authorization"] == "Bearer secret"


def test_transient_errors_are_retried_with_backoff():
    script = [err(503, "overloaded"), err(429, "rate limit per minute", headers={"Retry-After": "0"}), ok("done")]
    with Server(lambda n, b: script[n]) as s:
        c = client(s)
        assert c.chat(MSG) == "done"
    assert len(s.bodies) == 3 and c.stats.retries == 2 and c.stats.requests == 3


def test_gives_up_after_max_retries():
    with Server(lambda n, b: err(500, "boom")) as s:
        c = client(s, max_retries=2)
        with pytest.raises(VLMError, match="gave up after 2 retries: HTTP 500: boom"):
            c.chat(MSG)
    assert len(s.bodies) == 3 and c.stats.failures == 1


@pytest.mark.parametrize(
    ("reply", "error", "match"),
    [
        (err(401, "Incorrect API key provided", "invalid_api_key"), AuthError, "HTTP 401.*check the API key"),
        (err(403, "permission denied"), AuthError, "HTTP 403"),
        (err(429, "You exceeded your current quota", "insufficient_quota"), QuotaError, "quota or billing"),
        (err(402, "payment required"), QuotaError, "HTTP 402"),
        (err(400, "bad image"), VLMError, "HTTP 400: bad image"),
    ],
)
def test_fatal_errors_are_not_retried(reply, error, match):
    with Server(lambda n, b: reply) as s:
        with pytest.raises(error, match=match):
            client(s).chat(MSG)
    assert len(s.bodies) == 1


def test_gemini_daily_quota_is_fatal():
    gemini = 429, [{"error": {"message": "Quota exceeded ... PerDay", "status": "RESOURCE_EXHAUSTED"}}], {}
    with Server(lambda n, b: gemini) as s:
        with pytest.raises(QuotaError, match="RESOURCE_EXHAUSTED"):
            client(s).chat(MSG)
    assert len(s.bodies) == 1


def test_unreachable_server_is_retried_then_reported():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    c = VLMClient(f"http://127.0.0.1:{port}/v1", "m", max_retries=2, backoff_s=0.01)
    with pytest.raises(VLMError, match="connection failed"):
        c.chat(MSG)
    assert c.stats.requests == 3


def test_cache_serves_repeats_and_salt_asks_again(tmp_path):
    with Server(lambda n, b: ok(f"answer {n}")) as s:
        c = client(s, cache_dir=tmp_path / "cache")
        assert c.chat(MSG, seed=1) == "answer 0"
        assert c.chat(MSG, seed=1) == "answer 0"  # cached
        assert c.chat(MSG, seed=2) == "answer 1"  # another request
        assert c.chat(MSG, seed=1, cache_salt="round 2") == "answer 2"  # same request, another round
        fresh = client(s, cache_dir=tmp_path / "cache")  # a new process reads the same cache
        assert fresh.chat(MSG, seed=1, cache_salt="round 2") == "answer 2"
    assert len(s.bodies) == 3 and c.stats.cache_hits == 1 and fresh.stats.cache_hits == 1
    assert "cache_salt" not in s.bodies[2]
    files = list((tmp_path / "cache").rglob("*.json"))
    assert len(files) == 3 and all("secret" not in f.read_text() for f in files)
    key = request_key({"model": "m", "messages": MSG, "seed": 2})
    assert (tmp_path / "cache" / key[:2] / f"{key}.json").is_file()


def test_failed_requests_are_not_cached(tmp_path):
    script = [err(400, "nope"), ok("later")]
    with Server(lambda n, b: script[n]) as s:
        c = client(s, cache_dir=tmp_path / "cache")
        with pytest.raises(VLMError):
            c.chat(MSG)
        assert c.chat(MSG) == "later"


def test_concurrency_limit_holds_across_threads():
    with Server(lambda n, b: ok(str(n)), delay_s=0.1) as s:
        c = client(s, concurrency=2)
        threads = [threading.Thread(target=c.chat, args=(MSG,), kwargs={"seed": i}) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(s.bodies) == 6 and s.max_in_flight == 2


def test_video_message_interleaves_labelled_frames():
    frames = torch.rand(3, 3, 8, 8)
    msg = video_message(f"look:\n{VIDEO_BLOCK}\nanswer", frames)
    kinds = [p["type"] for p in msg["content"]]
    assert kinds == ["text"] + ["text", "image_url"] * 3 + ["text"]
    assert [p["text"] for p in msg["content"][1::2][:3]] == ["Frame 0:", "Frame 1:", "Frame 2:"]
    assert msg["content"][2]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    with pytest.raises(ValueError, match="exactly once"):
        video_message("no block", frames)
