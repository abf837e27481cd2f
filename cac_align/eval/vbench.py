"""The three VBench dimensions of the paper's Table 2 (App. C.4.1), computed as VBench defines them, on our stack.

    cac-align vbench runs/videos --weights ~/.cache/vbench --out runs/vbench                 # this implementation
    cac-align vbench runs/videos --out runs/vbench-off --backend official --vbench-python ~/venvs/vbench/bin/python

Weights are read from VBench's own cache layout (``VBENCH_CACHE_DIR``, default ``~/.cache/vbench``; files and
layouts in :mod:`cac_align.eval.vbench_nets`), so a machine with a VBench cache needs nothing else. Videos are
video files (every frame, decoded by :func:`cac_align.video.load_video`) or float tensors ``[B, F, C, H, W]`` in
[0, 1] with their frame rate. Frames go through the networks in batches (on the GPU when one is given); VBench itself
runs one frame (pair) at a time, which changes results only at float rounding level.

* **subject_consistency** (VBench Sec. 3.2): each frame is resized (bilinear, no antialiasing) so its shorter side is
  224, divided by 255, ImageNet-normalised, and embedded by DINO ViT-B/16 (CLS feature, L2-normalised). For frames
  ``i >= 1``: ``c_i = (max(0, cos(f_{i-1}, f_i)) + max(0, cos(f_0, f_i))) / 2``. A video scores ``mean_i c_i``; the
  overall score is ``sum of all c_i / number of all c_i`` (every frame transition of every video weighs the same,
  as VBench's ``sim / cnt``).
* **imaging_quality**: frames whose longer side exceeds 512 are resized (bilinear, no antialiasing) to
  ``int(s H) x int(s W)`` with ``s = 512 / max(H, W)`` (VBench's default "longer" mode); MUSIQ trained on SPAQ
  scores each frame. A video scores its mean frame score / 100; the overall score is the mean over videos.
* **dynamic_degree**: keep every ``max(1, round(fps / 8))``-th frame (Python rounding, halves to even), run RAFT
  (20 updates, test mode) on each consecutive pair padded by edge replication to multiples of 8 (split evenly, the
  odd pixel after), and take the mean of the largest 5 % flow magnitudes of the padded field (``int(0.05 H' W')``
  values). With ``thres = max(1, 8 / fps) * 6 * min(H, W) / 256`` and ``count_num = round(4 n / 16)`` (``n``: kept
  frames), a video is dynamic when it has at least one pair and at least ``count_num`` pairs score above ``thres``
  (VBench's early-exit loop). The overall score is the fraction of dynamic videos. RAFT here is torchvision's, which
  needs padded frames of at least 128 pixels a side (smaller inputs make the original RAFT's coarsest correlation
  level degenerate).

Outputs of :func:`write_vbench_outputs`: ``OUT/vbench.json`` (per video and overall, per dimension) and
``OUT/vbench.md`` (the same as a Markdown table). Imaging quality is reported on VBench's 0-1 scale for videos and
overall alike (VBench's own per-video records are 0-100; :func:`parse_official_results` rescales them).

The ``official`` backend runs VBench itself (``custom_input`` mode, ``local=True``) with another interpreter, where
the ``vbench`` package and its pins (transformers 4.33, numpy < 2) live apart from Qwen3-VL; see
:func:`evaluate_vbench_official` and ``benchmarks/vbench_parity.py`` for a comparison of the two backends.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cac_align.eval.vbench_nets import (
    DINO_FILE,
    MUSIQ_FILE,
    RAFT_FILE,
    DinoViT,
    Musiq,
    load_dino,
    load_musiq,
    load_raft,
)
from cac_align.utils import atomic_write_json, atomic_write_text
from cac_align.video import as_video_list, load_video

DIMENSIONS = ("subject_consistency", "imaging_quality", "dynamic_degree")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RAFT_ITERS = 20
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
OFFICIAL_RUNNER = Path(__file__).with_name("vbench_official_runner.py")


def default_weights_dir() -> Path:
    """VBench's cache folder: ``$VBENCH_CACHE_DIR``, else ``~/.cache/vbench`` (VBench's own default)."""
    env = os.environ.get("VBENCH_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "vbench"


def check_dimensions(dimensions: Sequence[str]) -> list[str]:
    """The requested dimensions in VBench's order; a ValueError names any unknown one."""
    unknown = [d for d in dimensions if d not in DIMENSIONS]
    if unknown or not dimensions:
        raise ValueError(
            f"unknown VBench dimension(s) {unknown or '(none given)'}; expected some of {', '.join(DIMENSIONS)}"
        )
    return [d for d in DIMENSIONS if d in dimensions]


# ------------------------------------------------------------------------------------------ subject consistency
def dino_input_size(height: int, width: int, shorter: int = 224) -> tuple[int, int]:
    """``torchvision.transforms.Resize(224)`` output size: shorter side 224, longer ``int(224 * long / short)``."""
    if height <= width:
        return shorter, int(shorter * width / height)
    return int(shorter * height / width), shorter


def dino_preprocess(frames: torch.Tensor) -> torch.Tensor:
    """``[F, 3, H, W]`` in [0, 1] -> DINO input: VBench's ``dino_transform(224)`` (resize on 0-255 values, /255,
    ImageNet normalisation)."""
    size = dino_input_size(*frames.shape[-2:])
    x = frames.float() * 255.0
    if size != tuple(x.shape[-2:]):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
    mean = x.new_tensor(IMAGENET_MEAN)[:, None, None]
    std = x.new_tensor(IMAGENET_STD)[:, None, None]
    return (x / 255.0 - mean) / std


def consistency_terms(features: torch.Tensor) -> list[float]:
    """VBench's per-transition subject consistency ``c_i`` (``i = 1 .. F-1``) of frame features ``[F, D]``.

    Features are L2-normalised first; ``c_i = (max(0, cos(f_{i-1}, f_i)) + max(0, cos(f_0, f_i))) / 2``.
    """
    f = F.normalize(features.float(), dim=-1, p=2)
    prev = F.cosine_similarity(f[:-1], f[1:], dim=-1).tolist()
    first = F.cosine_similarity(f[:1].expand_as(f[1:]), f[1:], dim=-1).tolist()
    return [(max(0.0, a) + max(0.0, b)) / 2 for a, b in zip(prev, first, strict=True)]


@torch.inference_mode()
def dino_features(frames: torch.Tensor, model: DinoViT, batch_size: int = 16) -> torch.Tensor:
    """DINO CLS features ``[F, D]`` of frames ``[F, 3, H, W]`` in [0, 1] (computed on the model's device)."""
    device = next(model.parameters()).device
    out = [model(dino_preprocess(chunk.to(device))) for chunk in frames.split(batch_size)]
    return torch.cat(out).cpu()


# --------------------------------------------------------------------------------------------- imaging quality
def musiq_input_size(height: int, width: int, longer: int = 512) -> tuple[int, int]:
    """VBench's "longer" preprocessing size: unchanged unless ``max(H, W) > 512``, else ``int(s H) x int(s W)`` with
    ``s = 512 / max(H, W)``."""
    if max(height, width) <= longer:
        return height, width
    scale = longer / max(height, width)
    return int(scale * height), int(scale * width)


@torch.inference_mode()
def musiq_frame_scores(frames: torch.Tensor, model: Musiq, batch_size: int = 16) -> list[float]:
    """MUSIQ scores (SPAQ: 0-100) of frames ``[F, 3, H, W]`` in [0, 1] after VBench's "longer" resize."""
    device = next(model.parameters()).device
    size = musiq_input_size(*frames.shape[-2:])
    scores: list[float] = []
    for chunk in frames.split(batch_size):
        x = chunk.to(device).float() * 255.0
        if size != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
        scores += model(x / 255.0).tolist()
    return scores


# ---------------------------------------------------------------------------------------------- dynamic degree
def frame_interval(fps: float) -> int:
    """Keep every ``max(1, round(fps / 8))``-th frame (VBench samples about 8 fps; Python's round-half-to-even)."""
    return max(1, round(fps / 8))


def dynamic_params(num_frames: int, height: int, width: int, fps: float) -> tuple[float, int]:
    """``(thres, count_num)`` of VBench's motion rule for ``num_frames`` kept frames of ``height x width`` at ``fps``:
    ``thres = max(1, 8 / fps) * 6 * min(H, W) / 256``, ``count_num = round(4 * num_frames / 16)``."""
    factor = max(1.0, 8.0 / fps)
    return factor * 6.0 * (min(height, width) / 256.0), round(4 * (num_frames / 16.0))


def is_dynamic(pair_scores: Sequence[float], thres: float, count_num: int) -> bool:
    """Whether a video moves: at least one pair, and at least ``count_num`` pair scores strictly above ``thres``."""
    return len(pair_scores) > 0 and sum(s > thres for s in pair_scores) >= count_num


def top5_flow_magnitude(flow: torch.Tensor) -> torch.Tensor:
    """Mean of the largest ``int(0.05 H W)`` flow magnitudes, per field of ``flow [N, 2, H, W]`` -> ``[N]``."""
    mag = flow.float().square().sum(dim=1).sqrt().flatten(1)
    k = int(mag.shape[1] * 0.05)
    return mag.topk(k, dim=1).values.mean(dim=1)


def pad_to_multiple_of_8(x: torch.Tensor) -> torch.Tensor:
    """Edge-replicate ``[N, C, H, W]`` to sides divisible by 8, split evenly with the odd pixel after (RAFT's
    ``InputPadder``, "sintel" mode)."""
    pad_h, pad_w = -x.shape[-2] % 8, -x.shape[-1] % 8
    return F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2], mode="replicate")


@torch.inference_mode()
def flow_scores(frames: torch.Tensor, model: nn.Module, batch_size: int = 16) -> list[float]:
    """Top-5 % RAFT flow magnitude of each consecutive pair of frames ``[F, 3, H, W]`` in [0, 1]: ``F - 1`` values."""
    if frames.shape[0] < 2:
        return []
    device = next(model.parameters()).device
    padded = pad_to_multiple_of_8(frames)
    if min(padded.shape[-2:]) < 128:
        raise ValueError(f"dynamic_degree needs frames of at least 128 pixels a side, got {tuple(frames.shape[-2:])}")
    scores: list[float] = []
    for start in range(0, frames.shape[0] - 1, batch_size):
        chunk = padded[start : start + batch_size + 1].to(device).float() * 2.0 - 1.0
        flow = model(chunk[:-1], chunk[1:], num_flow_updates=RAFT_ITERS)[-1]
        scores += top5_flow_magnitude(flow).tolist()
    return scores


def dynamic_degree_video(
    frames: torch.Tensor, fps: float, model: nn.Module, batch_size: int = 16
) -> tuple[bool, list[float]]:
    """VBench's dynamic degree of one video ``[F, 3, H, W]`` at ``fps``: ``(is dynamic, pair scores)``."""
    kept = frames[:: frame_interval(fps)]
    scores = flow_scores(kept, model, batch_size)
    thres, count_num = dynamic_params(kept.shape[0], *frames.shape[-2:], fps)
    return is_dynamic(scores, thres, count_num), scores


# ---------------------------------------------------------------------------------------------------- the runs
@dataclass
class VBenchModels:
    """The networks of the requested dimensions (``None`` for the others)."""

    dino: DinoViT | None = None
    musiq: Musiq | None = None
    raft: nn.Module | None = None


def load_vbench_models(
    weights_dir: str | Path | None = None, dimensions: Sequence[str] = DIMENSIONS, device: str | torch.device = "cpu"
) -> VBenchModels:
    """Load the networks of ``dimensions`` from a VBench cache folder (default :func:`default_weights_dir`).

    Raises:
        WeightsError: a missing or foreign checkpoint (the message names the file).
    """
    root = Path(weights_dir) if weights_dir is not None else default_weights_dir()
    dims = check_dimensions(dimensions)
    models = VBenchModels()
    if "subject_consistency" in dims:
        models.dino = load_dino(root / DINO_FILE).to(device)
    if "imaging_quality" in dims:
        models.musiq = load_musiq(root / MUSIQ_FILE).to(device)
    if "dynamic_degree" in dims:
        models.raft = load_raft(root / RAFT_FILE).to(device)
    return models


def _video_source(
    videos: Sequence[str | Path] | torch.Tensor | Sequence[torch.Tensor], fps: float | Sequence[float] | None
) -> tuple[list[str], list[tuple[str | Path | torch.Tensor, float | None]]]:
    """Names and ``(path or frames, fps)`` per video; file frames are decoded later, one video at a time."""
    if len(videos) == 0:
        raise ValueError("no videos to score")
    if isinstance(videos, torch.Tensor) or isinstance(videos[0], torch.Tensor):
        frames = as_video_list(videos)
        rates = list(fps) if isinstance(fps, Sequence) else [fps] * len(frames)
        if len(rates) != len(frames):
            raise ValueError(f"got {len(rates)} frame rates for {len(frames)} videos")
        return [f"video_{i}" for i in range(len(frames))], list(zip(frames, rates, strict=True))
    if fps is not None:
        raise ValueError("fps applies to tensors only; a video file's own frame rate is used")
    return [str(v) for v in videos], [(Path(v), None) for v in videos]


def evaluate_vbench(
    videos: Sequence[str | Path] | torch.Tensor | Sequence[torch.Tensor],
    models: VBenchModels,
    *,
    dimensions: Sequence[str] = DIMENSIONS,
    fps: float | Sequence[float] | None = None,
    names: Sequence[str] | None = None,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Score videos on VBench dimensions (App. C.4.1; the rules in the module docstring).

    Args:
        videos: video files (all frames are used), or float frames ``[B, F, C, H, W]`` / a list of ``[F, C, H, W]``
            in [0, 1].
        models: from :func:`load_vbench_models` (with the networks of ``dimensions``).
        dimensions: any of :data:`DIMENSIONS`.
        fps: frame rate(s) of tensor videos (needed by dynamic_degree); not allowed for files.
        names: how videos are named in the result (default: the paths, or ``video_{i}``).
        batch_size: frames (or frame pairs) per network call.

    Returns:
        ``{"backend": "native", "dimensions": [...], "per_video": [{"video": name, <dim>: score, ...}],
        "overall": {<dim>: score}}``; dynamic_degree per video is a bool.
    """
    dims = check_dimensions(dimensions)
    default_names, sources = _video_source(videos, fps)
    names = list(names) if names is not None else default_names
    if len(names) != len(sources):
        raise ValueError(f"got {len(names)} names for {len(sources)} videos")
    needed = {"subject_consistency": models.dino, "imaging_quality": models.musiq, "dynamic_degree": models.raft}
    if missing := [d for d in dims if needed[d] is None]:
        raise ValueError(f"no network loaded for {missing}; load_vbench_models(..., dimensions={dims})")
    per_video: list[dict[str, Any]] = []
    sc_sum, sc_count = 0.0, 0
    for name, (source, rate) in zip(names, sources, strict=True):
        if isinstance(source, Path):
            sampled = load_video(source, fps=None)
            frames, rate = sampled.frames, sampled.src_fps
        else:
            frames = source
        row: dict[str, Any] = {"video": name}
        if "subject_consistency" in dims:
            if frames.shape[0] < 2:
                raise ValueError(f"{name}: subject_consistency needs at least 2 frames, got {frames.shape[0]}")
            terms = consistency_terms(dino_features(frames, models.dino, batch_size))
            row["subject_consistency"] = sum(terms) / len(terms)
            sc_sum, sc_count = sc_sum + sum(terms), sc_count + len(terms)
        if "imaging_quality" in dims:
            scores = musiq_frame_scores(frames, models.musiq, batch_size)
            row["imaging_quality"] = sum(scores) / len(scores) / 100.0
        if "dynamic_degree" in dims:
            if rate is None:
                raise ValueError(f"{name}: dynamic_degree needs the frame rate of tensor videos (fps=...)")
            row["dynamic_degree"] = dynamic_degree_video(frames, rate, models.raft, batch_size)[0]
        per_video.append(row)
    overall: dict[str, float] = {}
    if "subject_consistency" in dims:
        overall["subject_consistency"] = sc_sum / sc_count
    for d in ("imaging_quality", "dynamic_degree"):
        if d in dims:
            overall[d] = sum(float(r[d]) for r in per_video) / len(per_video)
    return {"backend": "native", "dimensions": dims, "per_video": per_video, "overall": overall}


def find_videos(paths: Sequence[str | Path]) -> list[Path]:
    """Video files named directly, or found (sorted, one level) in named folders; a ValueError names a bad path."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in VIDEO_SUFFIXES and q.is_file())
            if not found:
                raise ValueError(f"{p}: folder holds no video file ({', '.join(VIDEO_SUFFIXES)})")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise ValueError(f"{p}: no such video file or folder")
    return out


# ----------------------------------------------------------------------------------------------------- outputs
def vbench_markdown(result: dict[str, Any]) -> str:
    """The result of :func:`evaluate_vbench` (or the official backend) as a Markdown table: one row per video, then
    the overall row."""
    dims = result["dimensions"]

    def cell(v: Any) -> str:
        return ("yes" if v else "no") if isinstance(v, bool) else f"{v:.4f}"

    lines = [
        f"VBench dimensions (backend: {result['backend']}; App. C.4.1). Imaging quality on VBench's 0-1 scale.",
        "",
        "| video | " + " | ".join(dims) + " |",
        "|---" * (len(dims) + 1) + "|",
    ]
    lines += ["| " + " | ".join([str(r["video"])] + [cell(r[d]) for d in dims]) + " |" for r in result["per_video"]]
    lines.append("| **overall** | " + " | ".join(f"**{result['overall'][d]:.4f}**" for d in dims) + " |")
    return "\n".join(lines) + "\n"


def write_vbench_outputs(result: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``OUT/vbench.json`` and ``OUT/vbench.md`` atomically; returns their paths."""
    out = Path(out_dir)
    json_path, md_path = out / "vbench.json", out / "vbench.md"
    atomic_write_json(json_path, result)
    atomic_write_text(md_path, vbench_markdown(result))
    return json_path, md_path


# ---------------------------------------------------------------------------------------------- official backend
def parse_official_results(
    results: dict[str, Any], names_by_file: dict[str, str], dimensions: Sequence[str]
) -> dict[str, Any]:
    """VBench's ``<name>_eval_results.json`` (``{dim: [overall, [{"video_path", "video_results"}, ...]]}``) in the
    format of :func:`evaluate_vbench`. ``names_by_file`` maps the file names VBench saw to our video names; imaging
    quality per video is divided by 100 (VBench keeps MUSIQ's 0-100 there and rescales only the overall)."""
    dims = check_dimensions(dimensions)
    rows = {name: {"video": name} for name in names_by_file.values()}
    overall: dict[str, float] = {}
    for d in dims:
        if d not in results:
            raise ValueError(f"VBench results have no {d!r} entry (have {sorted(results)})")
        overall[d] = float(results[d][0])
        for rec in results[d][1]:
            name = names_by_file[Path(rec["video_path"]).name]
            value = rec["video_results"]
            rows[name][d] = (
                bool(value) if d == "dynamic_degree" else float(value) / (100.0 if d == "imaging_quality" else 1.0)
            )
    per_video = list(rows.values())
    if incomplete := [r["video"] for r in per_video if any(d not in r for d in dims)]:
        raise ValueError(f"VBench results lack some dimensions for {incomplete}")
    return {"backend": "official", "dimensions": dims, "per_video": per_video, "overall": overall}


def evaluate_vbench_official(
    videos: Sequence[str | Path],
    *,
    vbench_python: str | Path,
    weights_dir: str | Path | None = None,
    dimensions: Sequence[str] = DIMENSIONS,
    device: str = "cuda",
    timeout: float | None = None,
) -> dict[str, Any]:
    """Run VBench's own code (``custom_input`` mode, ``local=True``) on video files, in another Python environment.

    ``vbench_python`` is the interpreter of a virtual environment where ``pip install vbench`` succeeded (it pins
    transformers 4.33 and numpy < 2, so it cannot share ours). The videos are linked as ``00000.mp4, ...`` into a
    temporary folder, ``VBENCH_CACHE_DIR`` points at ``weights_dir``, and ``vbench_official_runner.py`` (next to this
    module; it imports only ``vbench``) calls ``VBench.evaluate``. Subject consistency there also needs DINO's code
    as ``dino_model/facebookresearch_dino_main/`` in the cache (VBench loads it with ``torch.hub``; the runner hands
    DINO's hubconf the cache's ``dino_vitbase16_pretrain.pth`` instead of a download).

    Returns:
        The format of :func:`evaluate_vbench`, ``"backend": "official"``.

    Raises:
        FileNotFoundError: no such interpreter, video, or required cache file.
        RuntimeError: VBench failed (the message ends with its output).
    """
    dims = check_dimensions(dimensions)
    python = Path(vbench_python)
    if not python.is_file():
        raise FileNotFoundError(f"{python}: no such Python interpreter (--vbench-python)")
    root = Path(weights_dir) if weights_dir is not None else default_weights_dir()
    needed = {"subject_consistency": [DINO_FILE, "dino_model/facebookresearch_dino_main/hubconf.py"]}
    needed |= {"imaging_quality": [MUSIQ_FILE], "dynamic_degree": [RAFT_FILE]}
    for rel in (r for d in dims for r in needed[d]):
        if not (root / rel).is_file():
            raise FileNotFoundError(f"{root / rel}: missing from the VBench cache (VBench would try to download it)")
    with tempfile.TemporaryDirectory(prefix="cac_vbench_") as tmp:
        video_dir, out_dir = Path(tmp) / "videos", Path(tmp) / "results"
        video_dir.mkdir()
        names_by_file = {}
        for i, v in enumerate(videos):
            v = Path(v)
            if not v.is_file():
                raise FileNotFoundError(f"{v}: no such video file")
            link = video_dir / f"{i:05d}.mp4"  # VBench's dynamic degree only reads names ending in .mp4
            link.symlink_to(v.resolve())
            names_by_file[link.name] = str(v)
        cmd = [str(python), str(OFFICIAL_RUNNER), "--videos", str(video_dir), "--out", str(out_dir)]
        cmd += ["--dimensions", ",".join(dims), "--device", device]
        env = dict(os.environ, VBENCH_CACHE_DIR=str(root.resolve()))
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr)[-3000:]
            raise RuntimeError(f"VBench ({python}) failed with exit code {proc.returncode}:\n{tail}")
        results = json.loads((out_dir / "cac_align_eval_results.json").read_text(encoding="utf-8"))
    return parse_official_results(results, names_by_file, dims)


def main_vbench(
    videos: Sequence[str | Path],
    out: str | Path,
    *,
    dimensions: Sequence[str] = DIMENSIONS,
    weights_dir: str | Path | None = None,
    backend: str = "native",
    vbench_python: str | Path | None = None,
    device: str | None = None,
    batch_size: int = 16,
) -> dict[str, Any]:
    """What ``cac-align vbench`` does: find the videos, score them with a backend, write ``OUT/vbench.{json,md}``."""
    dimensions = check_dimensions(dimensions)
    files = find_videos(videos)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if backend == "official":
        if vbench_python is None:
            raise ValueError("--backend official needs --vbench-python PATH (the interpreter of VBench's environment)")
        result = evaluate_vbench_official(
            files, vbench_python=vbench_python, weights_dir=weights_dir, dimensions=dimensions, device=device
        )
    elif backend == "native":
        models = load_vbench_models(weights_dir, dimensions, device)
        result = evaluate_vbench(files, models, dimensions=dimensions, batch_size=batch_size)
    else:
        raise ValueError(f"unknown backend {backend!r}; expected 'native' or 'official'")
    write_vbench_outputs(result, out)
    print(vbench_markdown(result), end="", file=sys.stdout)
    return result
