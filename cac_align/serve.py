"""Local HTTP services: an OpenAI-compatible chat server over a Qwen3-VL checkpoint, and a reward server.

Two endpoints, standard library only (``http.server``), each usable alone or together on one port:

* ``POST /v1/chat/completions`` (:class:`ChatEndpoint`) - the subset of the OpenAI chat-completions API that
  reward clients use, over a local Qwen3-VL model: text and ``image_url`` parts (``data:image/png;base64,...`` or
  JPEG), ``max_tokens``, ``temperature`` (0 = greedy), ``top_p``, ``seed``, ``stop`` is not supported, ``n`` must
  be 1, and ``logprobs`` / ``top_logprobs`` (raw model log-probabilities, before temperature). The vLLM extension
  ``continue_final_message`` is supported: with it, the final assistant message is a prefix the model continues,
  rendered as the generation prompt of the earlier messages followed by the prefix text (teacher forcing; this is
  how :meth:`cac_align.reward.unified.UnifiedReward.from_server` reads soft scores). ``GET /v1/models`` lists the
  served name. vLLM or sglang serving the same checkpoint answer the same requests.
* ``POST /reward`` (:class:`RewardEndpoint`) - any reward callable ``fn(videos, prompts=None, **kw)`` behind HTTP.
  Request ``{"videos": [...], "prompts": [...] | null, "kwargs": {...}}`` where every video is either
  ``{"tensor": {"dtype": "uint8" | "float32", "shape": [F, C, H, W], "data": base64}}`` (``uint8`` holds
  ``round(255 x)``) or ``{"file": base64, "suffix": ".mp4"}`` (an encoded video file). Answer ``{"scores":
  [float | null, ...]}``. :class:`cac_align.reward.remote.RemoteReward` is the client.

Requests are served one at a time (models are not thread-safe): concurrent clients queue on a lock. Errors are
JSON ``{"error": {"message": ...}}`` with status 400 (bad request), 404 (unknown route or model name), 413 (body
too large) or 500 (the model or reward raised).

Run a service in the foreground with :func:`serve_chat_model` (``cac-align serve-reward`` uses the same classes), or
in a background thread for tests and notebooks::

    with HTTPService({**ChatEndpoint(model, processor, "ur").routes()}, port=0) as svc:
        print(svc.url)   # http://127.0.0.1:<ephemeral port>
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cac_align.reward.qwen import vision_token_ids

logger = logging.getLogger(__name__)

Route = Callable[[dict[str, Any]], dict[str, Any]]
"""A handler: decoded JSON body (``{}`` for GET) -> JSON-serialisable answer."""

MAX_BODY_BYTES = 1 << 30


class RequestError(ValueError):
    """A client mistake; answered with ``status`` (400 by default) and the message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------------------------------------------------
# The HTTP service
# --------------------------------------------------------------------------------------------------------------------


class HTTPService:
    """A threaded HTTP server over a table of JSON routes ``{("POST", "/reward"): handler, ...}``.

    Handlers run one at a time under a lock. ``port=0`` picks a free ephemeral port (see :attr:`url`). Use
    :meth:`start` / :meth:`stop` (or ``with``) for a background thread, :meth:`serve_forever` for the foreground.

    Args:
        routes: ``(method, path) -> handler``; ``GET /health`` is always added.
        host: the interface to bind; the default loopback keeps the service private to this machine.
        port: the TCP port, 0 for any free one.
        max_body_bytes: larger request bodies are refused with 413.
    """

    def __init__(
        self,
        routes: dict[tuple[str, str], Route],
        host: str = "127.0.0.1",
        port: int = 0,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.routes = {("GET", "/health"): lambda _: {"status": "ok"}, **routes}
        self.max_body_bytes = max_body_bytes
        self.lock = threading.Lock()
        self._httpd = ThreadingHTTPServer((host, port), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HTTPService:
        """Serve in a daemon thread; returns self."""
        if self._thread is not None:
            raise RuntimeError("HTTPService.start: already started")
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="cac-align-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the socket and join the thread."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def serve_forever(self) -> None:
        """Serve in the foreground until interrupted (Ctrl-C)."""
        logger.info("serving %s on %s", sorted(p for _, p in self.routes), self.url)
        try:
            self._httpd.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            self._httpd.server_close()

    def __enter__(self) -> HTTPService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _make_handler(service: HTTPService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 600  # a stalled client cannot hold a thread forever

        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            self._dispatch("GET", {})

        def do_POST(self) -> None:  # noqa: N802
            size = int(self.headers.get("Content-Length") or 0)
            if size > service.max_body_bytes:
                self.close_connection = True
                self._send(413, _error(f"request body of {size} bytes exceeds {service.max_body_bytes}"))
                return
            raw = self.rfile.read(size)
            try:
                body = json.loads(raw or b"{}")
            except json.JSONDecodeError as e:
                self._send(400, _error(f"body is not valid JSON ({e})"))
                return
            if not isinstance(body, dict):
                self._send(400, _error("body must be a JSON object"))
                return
            self._dispatch("POST", body)

        def _dispatch(self, method: str, body: dict[str, Any]) -> None:
            path = self.path.split("?", 1)[0].rstrip("/") or "/"
            handler = service.routes.get((method, path))
            if handler is None:
                self._send(404, _error(f"no route {method} {path}"))
                return
            try:
                with service.lock:
                    answer = handler(body)
            except RequestError as e:
                self._send(e.status, _error(str(e)))
            except Exception as e:  # the model or reward failed: answer 500, keep serving
                logger.exception("%s %s failed", method, path)
                self._send(500, _error(f"{e.__class__.__name__}: {e}"))
            else:
                self._send(200, answer)

        def _send(self, status: int, obj: dict[str, Any]) -> None:
            data = json.dumps(obj, allow_nan=False).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # route access logs to logging, not stderr
            logger.debug("%s - %s", self.address_string(), format % args)

    return Handler


def _error(message: str) -> dict[str, Any]:
    return {"error": {"message": message}}


def post_json(url: str, body: dict[str, Any], timeout: float = 600.0, api_key: str | None = None) -> dict[str, Any]:
    """POST a JSON body and return the decoded JSON answer; a non-200 answer raises RuntimeError with its message."""
    import urllib.error
    import urllib.request

    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")
        try:
            detail = json.loads(detail)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            pass
        raise RuntimeError(f"POST {url}: HTTP {e.code}: {detail}") from None
    except urllib.error.URLError as e:
        raise RuntimeError(f"POST {url}: {e.reason}") from None


# --------------------------------------------------------------------------------------------------------------------
# POST /reward
# --------------------------------------------------------------------------------------------------------------------


def encode_videos(videos: Any, dtype: str = "uint8") -> list[dict[str, Any]]:
    """The wire form of a batch for ``POST /reward``.

    Args:
        videos: ``[B, F, C, H, W]`` float in [0, 1], a list of ``[F, C, H, W]`` tensors, or a list of file paths
            (sent as the file's bytes).
        dtype: ``"uint8"`` (``round(255 x)``, 4x smaller, what a VLM reward sees anyway) or ``"float32"`` (exact).
    """
    if dtype not in ("uint8", "float32"):
        raise ValueError(f"encode_videos: dtype must be 'uint8' or 'float32', got {dtype!r}")
    if isinstance(videos, torch.Tensor):
        if videos.ndim != 5:
            raise ValueError(f"encode_videos: expected videos [B, F, C, H, W], got shape {tuple(videos.shape)}")
        videos = list(videos)
    out = []
    for i, v in enumerate(videos):
        if isinstance(v, (str, Path)):
            p = Path(v)
            if not p.is_file():
                raise FileNotFoundError(f"encode_videos: video {i}: no such file {p}")
            out.append({"file": base64.b64encode(p.read_bytes()).decode("ascii"), "suffix": p.suffix or ".mp4"})
            continue
        if not isinstance(v, torch.Tensor) or v.ndim != 4:
            raise ValueError(f"encode_videos: video {i}: expected a [F, C, H, W] tensor or a path, got {type(v)}")
        x = v.detach().float().cpu()
        if dtype == "uint8":
            arr = x.clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
        else:
            arr = x.contiguous().numpy().astype("<f4")
        out.append(
            {"tensor": {"dtype": dtype, "shape": list(arr.shape), "data": base64.b64encode(arr.tobytes()).decode()}}
        )
    return out


def decode_videos(items: Any, folder: str | Path) -> list[torch.Tensor] | list[Path]:
    """Inverse of :func:`encode_videos`: tensors ``[F, C, H, W]`` float in [0, 1], or files written under ``folder``.

    A batch must use one kind (all tensors or all files). Raises RequestError naming the video and field.
    """
    if not isinstance(items, list) or not items:
        raise RequestError("field 'videos': expected a non-empty list")
    kinds = {"tensor" if isinstance(it, dict) and "tensor" in it else "file" for it in items}
    if len(kinds) > 1:
        raise RequestError("field 'videos': mix of tensors and files in one request")
    tensors: list[torch.Tensor] = []
    paths: list[Path] = []
    for i, it in enumerate(items):
        where = f"videos[{i}]"
        if not isinstance(it, dict):
            raise RequestError(f"field '{where}': expected an object with 'tensor' or 'file'")
        if "tensor" in it:
            t = it["tensor"]
            if not isinstance(t, dict) or t.get("dtype") not in ("uint8", "float32"):
                raise RequestError(f"field '{where}.tensor.dtype': expected 'uint8' or 'float32'")
            shape = t.get("shape")
            if not (isinstance(shape, list) and len(shape) == 4 and all(isinstance(s, int) and s > 0 for s in shape)):
                raise RequestError(f"field '{where}.tensor.shape': expected [F, C, H, W] positive integers")
            try:
                raw = base64.b64decode(t.get("data", ""), validate=True)
            except (ValueError, TypeError):
                raise RequestError(f"field '{where}.tensor.data': not base64") from None
            np_dtype = np.uint8 if t["dtype"] == "uint8" else np.dtype("<f4")
            if len(raw) != math.prod(shape) * np.dtype(np_dtype).itemsize:
                raise RequestError(f"field '{where}.tensor.data': {len(raw)} bytes do not match shape {shape}")
            arr = torch.from_numpy(np.frombuffer(raw, dtype=np_dtype).reshape(shape).copy())
            tensors.append(arr.float().div_(255.0) if t["dtype"] == "uint8" else arr.float())
        elif "file" in it:
            suffix = str(it.get("suffix", ".mp4"))
            if not (suffix.startswith(".") and suffix[1:].isalnum() and len(suffix) <= 8):
                raise RequestError(f"field '{where}.suffix': expected a file suffix such as '.mp4', got {suffix!r}")
            try:
                raw = base64.b64decode(it["file"], validate=True)
            except (ValueError, TypeError):
                raise RequestError(f"field '{where}.file': not base64") from None
            p = Path(folder) / f"video_{i:05d}{suffix}"
            p.write_bytes(raw)
            paths.append(p)
        else:
            raise RequestError(f"field '{where}': expected an object with 'tensor' or 'file'")
    return tensors if tensors else paths


class RewardEndpoint:
    """``POST /reward`` over a reward callable ``fn(videos, prompts=None, **kw) -> list[float | None]``.

    Tensors arrive as a list of ``[F, C, H, W]`` float tensors, files as paths in a temporary folder that lives for
    the duration of the call. ``kwargs`` of the request (JSON values, e.g. ``{"fps": 16}``) are passed to ``fn``.
    """

    def __init__(self, fn: Callable[..., list[float | None]]) -> None:
        self.fn = fn

    def routes(self) -> dict[tuple[str, str], Route]:
        return {("POST", "/reward"): self.handle}

    def handle(self, body: dict[str, Any]) -> dict[str, Any]:
        prompts = body.get("prompts")
        if prompts is not None and not (isinstance(prompts, list) and all(isinstance(p, str) for p in prompts)):
            raise RequestError("field 'prompts': expected a list of strings or null")
        kwargs = body.get("kwargs") or {}
        if not isinstance(kwargs, dict):
            raise RequestError("field 'kwargs': expected an object")
        with tempfile.TemporaryDirectory(prefix="cac-align-reward-") as folder:
            videos = decode_videos(body.get("videos"), folder)
            if prompts is not None and len(prompts) != len(videos):
                raise RequestError(f"field 'prompts': {len(prompts)} prompts for {len(videos)} videos")
            scores = list(self.fn(videos, prompts, **kwargs))
        if len(scores) != len(videos):
            raise RuntimeError(f"reward returned {len(scores)} scores for {len(videos)} videos")
        out: list[float | None] = []
        for i, s in enumerate(scores):
            if s is not None and not math.isfinite(float(s)):
                raise RuntimeError(f"reward returned a non-finite score {s} for video {i}")
            out.append(None if s is None else float(s))
        return {"scores": out}


# --------------------------------------------------------------------------------------------------------------------
# POST /v1/chat/completions
# --------------------------------------------------------------------------------------------------------------------


def decode_image_url(url: str, where: str = "image_url") -> Any:
    """A ``data:image/...;base64,...`` URL as an RGB PIL image (remote URLs are refused: nothing is fetched)."""
    from PIL import Image

    if not isinstance(url, str) or not url.startswith("data:image/") or ";base64," not in url:
        raise RequestError(f"field '{where}': expected a data:image/<png|jpeg>;base64,... URL")
    try:
        raw = base64.b64decode(url.split(";base64,", 1)[1], validate=True)
        img = Image.open(io.BytesIO(raw))
        img.load()
    except (ValueError, OSError) as e:
        raise RequestError(f"field '{where}': not a decodable image ({e})") from None
    return img.convert("RGB")


def encode_image_url(frame: torch.Tensor | np.ndarray, image_format: str = "png", quality: int = 95) -> str:
    """One frame (``[C, H, W]`` float in [0, 1] or uint8 ``[H, W, 3]``) as a base64 data URL (PNG is lossless)."""
    from PIL import Image

    if isinstance(frame, torch.Tensor):
        if frame.ndim != 3:
            raise ValueError(f"encode_image_url: expected a frame [C, H, W], got shape {tuple(frame.shape)}")
        x = frame.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()
        if x.shape[0] == 1:
            x = x.expand(3, -1, -1)
        frame = x.permute(1, 2, 0).contiguous().numpy()
    buf = io.BytesIO()
    fmt = image_format.lower()
    if fmt == "png":
        Image.fromarray(frame).save(buf, format="PNG")
    elif fmt in ("jpeg", "jpg"):
        Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
        fmt = "jpeg"
    else:
        raise ValueError(f"encode_image_url: image_format must be 'png' or 'jpeg', got {image_format!r}")
    return f"data:image/{fmt};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def _to_processor_messages(messages: Any) -> tuple[list[dict[str, Any]], list[Any]]:
    """OpenAI messages -> (processor chat messages with ``{"type": "image"}`` parts, the PIL images in order)."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("field 'messages': expected a non-empty list")
    conv: list[dict[str, Any]] = []
    images: list[Any] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise RequestError(f"field '{where}.role': expected 'system', 'user' or 'assistant'")
        content = m.get("content")
        if isinstance(content, str):
            parts = [{"type": "text", "text": content}]
        elif isinstance(content, list):
            parts = []
            for j, part in enumerate(content):
                pw = f"{where}.content[{j}]"
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text" and isinstance(part.get("text"), str):
                    parts.append({"type": "text", "text": part["text"]})
                elif kind == "image_url":
                    ref = part.get("image_url")
                    url = ref.get("url") if isinstance(ref, dict) else ref
                    images.append(decode_image_url(url, f"{pw}.image_url"))
                    parts.append({"type": "image"})
                else:
                    raise RequestError(f"field '{pw}': expected a 'text' or 'image_url' part")
        else:
            raise RequestError(f"field '{where}.content': expected a string or a list of parts")
        conv.append({"role": m["role"], "content": parts})
    return conv, images


def render_prompt(processor: Any, conv: list[dict[str, Any]], continue_final_message: bool = False) -> str:
    """The model's input text for a conversation: the chat template with the generation prompt.

    With ``continue_final_message`` the last (assistant) message is a prefix to continue: the text is the
    template of the earlier messages with the generation prompt, followed by the prefix verbatim.
    """
    if not continue_final_message:
        return processor.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    last = conv[-1]
    if last["role"] != "assistant" or any(p["type"] != "text" for p in last["content"]):
        raise RequestError("continue_final_message: the last message must be an assistant message of text")
    if len(conv) < 2:
        raise RequestError("continue_final_message: expected at least one message before the assistant prefix")
    prefix = "".join(p["text"] for p in last["content"])
    return processor.apply_chat_template(conv[:-1], tokenize=False, add_generation_prompt=True) + prefix


class ChatEndpoint:
    """``POST /v1/chat/completions`` and ``GET /v1/models`` over a local Qwen3-VL model and its processor.

    Args:
        model: a ``Qwen3VLForConditionalGeneration`` (in eval mode).
        processor: its processor (chat template, tokenizer, image processor).
        model_name: the served name; requests naming another model get 404 (as vLLM does).
        max_tokens: the default and the cap of ``max_tokens``.
        max_top_logprobs: the cap of ``top_logprobs`` (vLLM's default is 20; any value up to the vocabulary works
            here).
    """

    def __init__(
        self, model: Any, processor: Any, model_name: str, max_tokens: int = 1024, max_top_logprobs: int | None = None
    ) -> None:
        self.model = model
        self.processor = processor
        self.model_name = model_name
        self.max_tokens = max_tokens
        self.max_top_logprobs = max_top_logprobs
        self.suppress = vision_token_ids(processor.tokenizer)

    def routes(self) -> dict[tuple[str, str], Route]:
        return {("POST", "/v1/chat/completions"): self.complete, ("GET", "/v1/models"): self.models}

    def models(self, _: dict[str, Any]) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": self.model_name, "object": "model", "owned_by": "cac-align"}]}

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("model", self.model_name)
        if name != self.model_name:
            raise RequestError(f"field 'model': this server serves {self.model_name!r}, not {name!r}", status=404)
        if body.get("n", 1) != 1:
            raise RequestError("field 'n': only n=1 is supported")
        if body.get("stop"):
            raise RequestError("field 'stop': not supported")
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens", self.max_tokens))
        if not isinstance(max_tokens, int) or not 1 <= max_tokens <= self.max_tokens:
            raise RequestError(f"field 'max_tokens': expected an integer in [1, {self.max_tokens}]")
        temperature = float(body.get("temperature", 1.0))
        top_p = float(body.get("top_p", 1.0))
        if temperature < 0 or not 0 < top_p <= 1:
            raise RequestError("fields 'temperature'/'top_p': expected temperature >= 0 and 0 < top_p <= 1")
        want_logprobs = bool(body.get("logprobs", False))
        top_k = int(body.get("top_logprobs") or 0)
        vocab = self.model.get_output_embeddings().weight.shape[0]
        cap = min(self.max_top_logprobs or vocab, vocab)
        if top_k and not want_logprobs:
            raise RequestError("field 'top_logprobs': needs 'logprobs': true")
        if not 0 <= top_k <= cap:
            raise RequestError(f"field 'top_logprobs': expected an integer in [0, {cap}]")
        cont = bool(body.get("continue_final_message", False))
        if cont and body.get("add_generation_prompt", False):
            raise RequestError("continue_final_message and add_generation_prompt cannot both be true")

        conv, images = _to_processor_messages(body.get("messages"))
        text = render_prompt(self.processor, conv, continue_final_message=cont)
        inputs = self.processor(text=[text], images=images or None, return_tensors="pt")
        inputs = inputs.to(self.model.device)
        prompt_len = inputs["input_ids"].shape[1]
        gen_kwargs: dict[str, Any] = {"max_new_tokens": max_tokens, "suppress_tokens": self.suppress}
        if temperature == 0:
            gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            gen_kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=None)
        if body.get("seed") is not None:
            torch.manual_seed(int(body["seed"]))
        with torch.inference_mode():
            out = self.model.generate(
                **inputs, **gen_kwargs, return_dict_in_generate=True, output_logits=want_logprobs
            )
        new_ids = out.sequences[0, prompt_len:].tolist()
        tok = self.processor.tokenizer
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
        finish = "stop" if new_ids and new_ids[-1] in eos_ids else "length"
        content_ids = new_ids[:-1] if finish == "stop" else new_ids
        message = {"role": "assistant", "content": tok.decode(content_ids, skip_special_tokens=True)}
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
        if want_logprobs:
            entries = []
            for step, tid in enumerate(content_ids):
                lp = torch.log_softmax(out.logits[step][0].float(), dim=-1)
                entry = {"token": tok.decode([tid]), "logprob": float(lp[tid]), "top_logprobs": []}
                if top_k:
                    vals, ids = lp.topk(top_k)
                    entry["top_logprobs"] = [
                        {"token": tok.decode([i]), "logprob": float(v)}
                        for v, i in zip(vals.tolist(), ids.tolist(), strict=True)
                    ]
                entries.append(entry)
            choice["logprobs"] = {"content": entries}
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_name,
            "choices": [choice],
            "usage": {
                "prompt_tokens": prompt_len,
                "completion_tokens": len(new_ids),
                "total_tokens": prompt_len + len(new_ids),
            },
        }


def serve_chat_model(
    model_path: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    model_name: str | None = None,
    device: str | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Serve a local Qwen3-VL checkpoint at ``http://host:port/v1/chat/completions`` until interrupted.

    ``model_name`` defaults to the folder's name. Use :class:`ChatEndpoint` with :class:`HTTPService` to run it in
    a background thread instead.
    """
    from cac_align.reward.qwen import load_qwen3vl

    model, processor = load_qwen3vl(model_path, device=device, dtype=dtype)
    name = model_name or Path(model_path).name
    HTTPService(ChatEndpoint(model, processor, name).routes(), host=host, port=port).serve_forever()


def build_reward_service(
    model_path: str | Path,
    reward: str = "cac",
    host: str = "127.0.0.1",
    port: int = 8100,
    model_name: str | None = None,
    device: str | None = None,
    dtype: torch.dtype | str | None = None,
    **reward_kwargs: Any,
) -> HTTPService:
    """The service behind ``cac-align serve-reward``: one reward model, two endpoints on one port.

    ``POST /reward`` scores videos with the reward (``"cac"``: :class:`~cac_align.reward.cac.CaCReward`,
    ``"unified"``: :class:`~cac_align.reward.unified.UnifiedReward`); ``POST /v1/chat/completions`` exposes the
    same loaded weights as a chat model named ``model_name`` (default: the folder's name). Not started: call
    :meth:`HTTPService.start` or :meth:`HTTPService.serve_forever`.

    Args:
        model_path: the checkpoint folder.
        reward: ``"cac"`` or ``"unified"``.
        host, port: where to listen (loopback by default; another interface exposes the model to the network).
        model_name: the served chat model name.
        device, dtype: as :func:`cac_align.reward.qwen.load_qwen3vl`.
        **reward_kwargs: keyword settings of the reward class (e.g. ``soft=True`` for UnifiedReward).
    """
    if reward == "cac":
        from cac_align.reward.cac import CaCReward

        fn: Any = CaCReward.from_pretrained(model_path, device=device, dtype=dtype, **reward_kwargs)
    elif reward == "unified":
        from cac_align.reward.unified import UnifiedReward

        fn = UnifiedReward.from_pretrained(model_path, device=device, dtype=dtype, **reward_kwargs)
    else:
        raise ValueError(f"build_reward_service: reward must be 'cac' or 'unified', got {reward!r}")
    name = model_name or Path(model_path).name
    routes = {**RewardEndpoint(fn).routes(), **ChatEndpoint(fn.model, fn.processor, name).routes()}
    return HTTPService(routes, host=host, port=port)


def serve_reward_model(model_path: str | Path, reward: str = "cac", **kwargs: Any) -> None:
    """Run :func:`build_reward_service` in the foreground until interrupted (``cac-align serve-reward``)."""
    service = build_reward_service(model_path, reward, **kwargs)
    print(
        f"serving the {reward} reward of {model_path} at {service.url} (POST /reward, POST /v1/chat/completions)",
        flush=True,
    )
    service.serve_forever()
