"""Seconds per video of the three VBench dimensions (App. C.4.1) with cac-align's implementation.

Paper setting (App. C.4): Wan-2.1 videos, 480x832, 81 frames at 16 fps (dynamic degree keeps every 2nd frame: 41
frames, 40 RAFT pairs). Networks: the full-size architectures (DINO ViT-B/16, MUSIQ, RAFT) with random weights from
``build_tiny_vbench_weights(tiny=False)``, or a real VBench cache with ``--weights``; the cost does not depend on the
weights or on the frames' content, so the frames are random.

    python benchmarks/vbench_speed.py                                  # GPU, paper setting
    python benchmarks/vbench_speed.py --weights ~/.cache/vbench --batch-size 32 --out runs/vbench_speed.json
    python benchmarks/vbench_speed.py --tiny                           # CPU smoke run (default without CUDA)

Each dimension is timed on its own through :func:`cac_align.eval.vbench.evaluate_vbench` (frames start on the CPU,
as after decoding; host-to-device copies are included, decoding is not). Results are printed and, with ``--out``,
written as JSON.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from cac_align.eval.vbench import DIMENSIONS, evaluate_vbench, load_vbench_models
from cac_align.eval.vbench_testing import build_tiny_vbench_weights
from cac_align.utils import atomic_write_json

PAPER = {"num_frames": 81, "height": 480, "width": 832, "fps": 16.0}
TINY = {"num_frames": 9, "height": 128, "width": 128, "fps": 16.0}  # RAFT needs 128 pixels a side


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="reduced networks and frames on CPU (default without CUDA)")
    p.add_argument("--weights", type=Path, help="a VBench cache folder (default: random weights in a temp folder)")
    p.add_argument("--num-frames", type=int, help="frames per video (default 81, tiny 9)")
    p.add_argument("--height", type=int, help="default 480, tiny 128")
    p.add_argument("--width", type=int, help="default 832, tiny 128")
    p.add_argument("--fps", type=float, help="frame rate (default 16)")
    p.add_argument("--videos", type=int, default=2, help="videos per timed call (default 2)")
    p.add_argument("--batch-size", type=int, default=16, help="frames (pairs) per network call (default 16)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per dimension first (default 1)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per dimension (default 3)")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        args.tiny = True
    preset = TINY if args.tiny else PAPER
    for key in ("num_frames", "height", "width", "fps"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    return args


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = "cpu" if args.tiny else "cuda"
    with tempfile.TemporaryDirectory(prefix="vbench_speed_") as tmp:
        weights = args.weights
        if weights is None:
            weights = Path(tmp)
            build_tiny_vbench_weights(weights, tiny=args.tiny)
        models = load_vbench_models(weights, DIMENSIONS, device)
    g = torch.Generator().manual_seed(0)
    videos = torch.rand(args.videos, args.num_frames, 3, args.height, args.width, generator=g)
    result = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "setting": {k: getattr(args, k) for k in ("num_frames", "height", "width", "fps", "videos", "batch_size")},
        "weights": "random (build_tiny_vbench_weights)" if args.weights is None else str(args.weights),
        "tiny": args.tiny,
        "seconds_per_video": {},
    }
    for dim in DIMENSIONS:
        times = []
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for i in range(args.warmup + args.repeats):
            _sync(device)
            t0 = time.perf_counter()
            evaluate_vbench(videos, models, dimensions=[dim], fps=args.fps, batch_size=args.batch_size)
            _sync(device)
            if i >= args.warmup:
                times.append((time.perf_counter() - t0) / args.videos)
        result["seconds_per_video"][dim] = {"median": statistics.median(times), "min": min(times)}
        if device == "cuda":
            result.setdefault("peak_gib", {})[dim] = torch.cuda.max_memory_allocated() / 2**30
        print(f"{dim:>20}: {statistics.median(times):.3f} s/video (min {min(times):.3f})", flush=True)
    total = sum(v["median"] for v in result["seconds_per_video"].values())
    result["seconds_per_video"]["all_three"] = total
    print(f"{'all three':>20}: {total:.3f} s/video on {result['device']}, setting {result['setting']}")
    if args.out:
        atomic_write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
