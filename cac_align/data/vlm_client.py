"""A client for OpenAI-compatible chat servers (Gemini, vLLM, sglang, ``cac-align``'s own), used by CoT synthesis.

One request is ``POST {base_url}/chat/completions`` with ``{"model", "messages", ...}``; frames travel as base64
``image_url`` parts (:func:`video_message`). The client adds what a long synthesis run needs:

* **Concurrency limit**: at most ``concurrency`` requests in flight, however many threads call it.
* **Retries with exponential backoff** on transient failures - HTTP 408/409/425/429/500/502/503/504, refused or
  dropped connections, timeouts - waiting ``backoff_s * 2**attempt`` (jittered, capped at ``max_backoff_s``, at least
  a server's ``Retry-After``), up to ``max_retries`` retries; then :class:`VLMError`.
* **Clear fatal errors**: HTTP 401/403 raise :class:`AuthError` and exhausted quota or billing (HTTP 402, or a 429
  whose message says the quota is used up: ``insufficient_quota``, billing, per-day limits) raises
  :class:`QuotaError` at once, without retrying; other 4xx raise :class:`VLMError`.
* **On-disk cache**: successful answers are stored under ``cache_dir`` keyed by the SHA-256 of the canonical request
  JSON (model, messages, sampling parameters; not the URL or the key), written atomically, so an interrupted run
  resumes without paying twice. Vary ``seed`` to ask the same question again.

:func:`start_local_vlm` serves a local Qwen3-VL checkpoint on loopback with :mod:`cac_align.serve`, so the same client
(and CoT synthesis) runs against a model on this machine.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cac_align.reward.qwen import VIDEO_BLOCK
from cac_align.utils import atomic_write_json

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
_QUOTA_WORDS = ("insufficient_quota", "billing", "per day", "perday", "credit balance")
"""Words of a 429 message that mean the quota is used up for good (OpenAI ``insufficient_quota``, Gemini daily
limits), as opposed to a per-minute rate limit that a retry outlives."""


class VLMError(RuntimeError):
    """A request that failed for good (after retries, or a client error the server will not forgive)."""


class AuthError(VLMError):
    """The server refused the credentials (HTTP 401/403): check the API key and its permissions."""


class QuotaError(VLMError):
    """The account's quota or credit is used up (HTTP 402, or a 429 that says so): retrying will not help."""


@dataclass
class ClientStats:
    """Counters of one client (thread-safe updates under the client's lock)."""

    requests: int = 0
    cache_hits: int = 0
    retries: int = 0
    failures: int = 0


def video_message(prompt: str, frames: torch.Tensor, image_format: str = "jpeg", quality: int = 90) -> dict[str, Any]:
    """A user message whose frames replace the prompt's video block, each as ``"Frame k:"`` plus a base64 image.

    Args:
        prompt: text containing :data:`~cac_align.reward.qwen.VIDEO_BLOCK` exactly once (the prompt builders'
            placeholder for the video).
        frames: ``[F, C, H, W]`` float in [0, 1]; frame ``k`` is labelled ``Frame k`` (the numbering the prompts use).
        image_format: ``"jpeg"`` (small, what API servers prefer) or ``"png"`` (lossless).
        quality: JPEG quality.
    """
    from cac_align.serve import encode_image_url

    if prompt.count(VIDEO_BLOCK) != 1:
        raise ValueError(f"video_message: the prompt must contain the video block {VIDEO_BLOCK!r} exactly once")
    if frames.ndim != 4:
        raise ValueError(f"video_message: expected frames [F, C, H, W], got shape {tuple(frames.shape)}")
    before, after = prompt.split(VIDEO_BLOCK)
    parts: list[dict[str, Any]] = [{"type": "text", "text": before}] if before else []
    for k, frame in enumerate(frames):
        parts.append({"type": "text", "text": f"Frame {k}:"})
        url = encode_image_url(frame, image_format=image_format, quality=quality)
        parts.append({"type": "image_url", "image_url": {"url": url}})
    if after:
        parts.append({"type": "text", "text": after})
    return {"role": "user", "content": parts}


def request_key(body: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a request body (sorted keys, no spaces): the cache key."""
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


class VLMClient:
    """Chat completions against an OpenAI-compatible server (module doc).

    Args:
        base_url: the API root, e.g. ``https://generativelanguage.googleapis.com/v1beta/openai`` (Gemini),
            ``http://127.0.0.1:8000/v1`` (vLLM, sglang, ``cac-align serve-reward``); ``/chat/completions`` is appended.
        model: the served model name.
        api_key: sent as ``Authorization: Bearer ...`` when given (never written to the cache).
        concurrency: the most requests in flight at once.
        max_retries: retries of a transient failure before giving up.
        backoff_s, max_backoff_s: the first retry waits about ``backoff_s``, doubling up to ``max_backoff_s``.
        timeout_s: per-request socket timeout.
        cache_dir: folder of cached answers; None disables the cache.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        concurrency: int = 4,
        max_retries: int = 5,
        backoff_s: float = 2.0,
        max_backoff_s: float = 60.0,
        timeout_s: float = 600.0,
        cache_dir: str | Path | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.timeout_s = timeout_s
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.stats = ClientStats()
        self._slots = threading.BoundedSemaphore(concurrency)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"VLMClient({self.url!r}, model={self.model!r}, concurrency={self.concurrency})"

    # ---------------------------------------------------------------------------------------------------------------

    def chat(self, messages: Sequence[dict[str, Any]], *, cache_salt: str | None = None, **params: Any) -> str:
        """The text of the first choice for ``messages`` (``params``: temperature, max_tokens, seed, ...).

        ``cache_salt`` is added to the cache key only (not sent): the same request with another salt is asked
        again, e.g. one salt per generate-verify round. A null content (e.g. a refusal) gives ``""``. Raises
        :class:`AuthError`, :class:`QuotaError` or :class:`VLMError` as described in the module doc.
        """
        response = self.complete(messages, cache_salt=cache_salt, **params)
        try:
            content = response["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise VLMError(f"{self.url}: answer without choices[0].message.content: {str(response)[:300]}") from None
        if content is None:
            return ""
        if isinstance(content, list):  # some servers answer with content parts
            return "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return str(content)

    def complete(
        self, messages: Sequence[dict[str, Any]], *, cache_salt: str | None = None, **params: Any
    ) -> dict[str, Any]:
        """The full JSON answer for ``messages``, from the cache when the same request (and salt) was answered."""
        body = {"model": self.model, "messages": list(messages), **params}
        key = request_key(body if cache_salt is None else {"request": body, "cache_salt": cache_salt})
        cached = self._cache_get(key)
        if cached is not None:
            with self._lock:
                self.stats.cache_hits += 1
            return cached
        with self._slots:
            response = self._post_with_retries(body)
        self._cache_put(key, response)
        return response

    # ---------------------------------------------------------------------------------------------------------------

    def _cache_path(self, key: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / key[:2] / f"{key}.json"

    def _cache_get(self, key: str) -> dict[str, Any] | None:
        p = self._cache_path(key)
        if p is None or not p.is_file():
            return None
        try:
            entry = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # unreadable entry: ask again and overwrite it
        return entry.get("response") if isinstance(entry, dict) else None

    def _cache_put(self, key: str, response: dict[str, Any]) -> None:
        p = self._cache_path(key)
        if p is not None:
            atomic_write_json(p, {"key": key, "model": self.model, "response": response})

    def _post_with_retries(self, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(self.max_retries + 1):
            with self._lock:
                self.stats.requests += 1
            retry_after = 0.0
            try:
                req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    raw = resp.read()
                try:
                    answer = json.loads(raw)
                except ValueError:
                    last = f"answer is not JSON: {raw[:200]!r}"
                else:
                    if isinstance(answer, dict):
                        return answer
                    last = f"answer is not a JSON object: {str(answer)[:200]}"
            except urllib.error.HTTPError as e:
                detail = _error_detail(e)
                status = e.code
                if status in (401, 403):
                    raise AuthError(f"{self.url}: HTTP {status}: {detail} (check the API key)") from None
                if status == 402 or (status == 429 and _is_quota(detail)):
                    raise QuotaError(f"{self.url}: HTTP {status}: {detail} (quota or billing exhausted)") from None
                if status not in RETRY_STATUS:
                    raise VLMError(f"{self.url}: HTTP {status}: {detail}") from None
                last = f"HTTP {status}: {detail}"
                retry_after = _retry_after(e)
            except urllib.error.URLError as e:  # refused, unreachable, or a timeout while connecting
                last = f"connection failed: {e.reason}"
            except (http.client.HTTPException, ConnectionError, TimeoutError) as e:  # dropped or timed out mid-answer
                last = f"{type(e).__name__}: {e}"
            if attempt == self.max_retries:
                break
            with self._lock:
                self.stats.retries += 1
            delay = min(self.max_backoff_s, self.backoff_s * 2**attempt) * (0.5 + 0.5 * random.random())
            time.sleep(min(self.max_backoff_s, max(delay, retry_after)))
        with self._lock:
            self.stats.failures += 1
        if last.startswith("HTTP 429") and "quota" in last.lower():
            raise QuotaError(f"{self.url}: {last} (still rate limited after {self.max_retries} retries)")
        raise VLMError(f"{self.url}: gave up after {self.max_retries} retries: {last}")


def _error_detail(e: urllib.error.HTTPError) -> str:
    try:
        text = e.read().decode("utf-8", errors="replace")
    except OSError:
        return str(e.reason)
    try:
        err = json.loads(text)
        if isinstance(err, list) and err:  # Gemini wraps errors in a list
            err = err[0]
        msg = err["error"]
        if isinstance(msg, dict):
            code = msg.get("code") or msg.get("status") or ""
            return f"{msg.get('message', '')} [{code}]" if code else str(msg.get("message", ""))
        return str(msg)
    except (ValueError, KeyError, TypeError):
        return text[:500] or str(e.reason)


def _is_quota(detail: str) -> bool:
    d = detail.lower()
    return any(w in d for w in _QUOTA_WORDS)


def _retry_after(e: urllib.error.HTTPError) -> float:
    value = e.headers.get("Retry-After") if e.headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else 0.0
    except ValueError:
        return 0.0


def start_local_vlm(
    model_path: str | Path,
    model_name: str | None = None,
    device: str | None = None,
    dtype: torch.dtype | str | None = None,
    max_tokens: int = 8192,
):
    """Serve a local Qwen3-VL checkpoint at ``http://127.0.0.1:<free port>/v1/chat/completions`` in a background
    thread and return the started :class:`cac_align.serve.HTTPService` (``.url``; ``.stop()`` when done).

    Point a client at it with ``VLMClient(service.url + "/v1", model_name)``; ``model_name`` defaults to the folder's
    name. Requests are answered one at a time.
    """
    from cac_align.reward.qwen import load_qwen3vl
    from cac_align.serve import ChatEndpoint, HTTPService

    model, processor = load_qwen3vl(model_path, device=device, dtype=dtype)
    name = model_name or Path(model_path).name
    endpoint = ChatEndpoint(model, processor, name, max_tokens=max_tokens)
    return HTTPService(endpoint.routes(), host="127.0.0.1", port=0).start()
