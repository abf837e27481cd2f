"""Parity of cac-align's VBench dimensions with VBench's own code, on the same videos and weights (App. C.4.1).

Needs what cannot be installed beside Qwen3-VL, so it has not run on the project's CI machines:

* a VBench cache with the released weights (``dino_model/dino_vitbase16_pretrain.pth`` and DINO's code as
  ``dino_model/facebookresearch_dino_main/``, ``pyiqa_model/musiq_spaq_ckpt-358bb6af.pth``,
  ``raft_model/models/raft-things.pth``; VBench's ``init_submodules(..., local=True)`` fetches them);
* a second virtual environment with the ``vbench`` package (it pins transformers 4.33 and numpy < 2; it also needs
  decord, opencv and pyiqa), e.g. ``python -m venv ~/venvs/vbench && ~/venvs/vbench/bin/pip install vbench``.

    python benchmarks/vbench_parity.py runs/videos --weights ~/.cache/vbench \\
        --vbench-python ~/venvs/vbench/bin/python --out runs/vbench_parity

Writes ``OUT/native/vbench.{json,md}``, ``OUT/official/vbench.{json,md}`` and ``OUT/parity.json``, and prints per
dimension both overall scores and the largest per-video difference (dynamic degree: the videos whose verdict
differs, with our pair scores next to the threshold). Exit code 1 when a difference exceeds its tolerance.

Differences to expect: both backends decode with FFmpeg, but through different libraries (VBench: decord for subject
consistency and imaging quality, OpenCV for dynamic degree; here PyAV), whose YUV-to-RGB conversions may differ by
one level on some pixels; batching changes float rounding. The default tolerances (absolute, per video, on the 0-1
scales: 2e-3 subject consistency, 5e-3 imaging quality) allow for that; a dynamic-degree verdict may flip only for
a video whose deciding pair score lies near the threshold.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from cac_align.eval.vbench import (
    DIMENSIONS,
    check_dimensions,
    dynamic_degree_video,
    dynamic_params,
    evaluate_vbench,
    evaluate_vbench_official,
    find_videos,
    frame_interval,
    load_vbench_models,
    write_vbench_outputs,
)
from cac_align.utils import atomic_write_json
from cac_align.video import load_video


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("videos", nargs="+", help="video files or folders of videos")
    p.add_argument("--weights", type=Path, required=True, help="the VBench cache folder both backends read")
    p.add_argument("--vbench-python", type=Path, required=True, help="python of the environment with vbench")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--dimensions", default=",".join(DIMENSIONS), help="comma-separated (default: all three)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--batch-size", type=int, default=16, help="native backend: frames per network call")
    p.add_argument("--tol-subject", type=float, default=2e-3, help="per-video tolerance, subject consistency")
    p.add_argument("--tol-imaging", type=float, default=5e-3, help="per-video tolerance, imaging quality (0-1)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dims = check_dimensions([d.strip() for d in args.dimensions.split(",") if d.strip()])
    files = find_videos(args.videos)
    models = load_vbench_models(args.weights, dims, args.device)
    ours = evaluate_vbench(files, models, dimensions=dims, batch_size=args.batch_size)
    theirs = evaluate_vbench_official(
        files, vbench_python=args.vbench_python, weights_dir=args.weights, dimensions=dims, device=args.device
    )
    write_vbench_outputs(ours, args.out / "native")
    write_vbench_outputs(theirs, args.out / "official")
    tolerance = {"subject_consistency": args.tol_subject, "imaging_quality": args.tol_imaging}
    report: dict = {"videos": len(files), "dimensions": {}}
    ok = True
    for d in dims:
        pairs = list(zip(ours["per_video"], theirs["per_video"], strict=True))
        entry = {"native": ours["overall"][d], "official": theirs["overall"][d]}
        if d == "dynamic_degree":
            flipped = [a["video"] for a, b in pairs if a[d] != b[d]]
            entry["verdicts_differ"] = flipped
            entry["near_threshold"] = {}
            for name in flipped:  # show how close our deciding scores were
                sampled = load_video(name, fps=None)
                _, scores = dynamic_degree_video(sampled.frames, sampled.src_fps, models.raft, args.batch_size)
                n_kept = len(range(0, sampled.frames.shape[0], frame_interval(sampled.src_fps)))
                thres, count_num = dynamic_params(n_kept, *sampled.frames.shape[-2:], sampled.src_fps)
                entry["near_threshold"][name] = {"thres": thres, "count_num": count_num, "pair_scores": scores}
        else:
            diffs = [abs(a[d] - b[d]) for a, b in pairs]
            entry["max_video_abs_diff"] = max(diffs)
            entry["within_tolerance"] = max(diffs) <= tolerance[d]
            ok &= entry["within_tolerance"]
        report["dimensions"][d] = entry
        extra = (
            f"{len(entry['verdicts_differ'])} verdicts differ"
            if d == "dynamic_degree"
            else (f"max per-video |diff| {entry['max_video_abs_diff']:.2e} (tol {tolerance[d]:.0e})")
        )
        print(f"{d:>20}: native {entry['native']:.4f}  official {entry['official']:.4f}  {extra}")
    atomic_write_json(args.out / "parity.json", report)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
