"""Seconds per video of two-turn CaC scoring (CaCReward) at batch sizes 1, 8 and 32.

Paper setting (Sec. 3.4, 4.2, App. C.4): the Qwen3-VL-8B architecture (random weights, config built below from the
published sizes), 5 s 480x832 videos at 16 fps; turn 1 sees them at 4 fps (20 frames), turn 2 a 1 s window
(Frame 8-11) at 8 fps (8 frames). Random weights would stop or ramble at random, so generation lengths are fixed to
realistic CoT lengths (512 new tokens in turn 1, 384 in turn 2, via min_new_tokens = max_new_tokens) and turn 2 is
forced onto the window; otherwise it is exactly CaCReward's code path (``prepare`` -> ``run_turn1`` ->
``run_turn2``, including the Eq. 7 read).

Reference points: the paper's Table S2 (one A800, 21 frames per video): two-turn CaC 33.2 s per video, UnifiedReward
single pass 3.79 s. Target of this implementation: <= 3.3 s per video amortised at batch 32 on one H100.

    python benchmarks/reward_latency.py                        # GPU, paper setting, batches 1 8 32
    python benchmarks/reward_latency.py --batch-sizes 32 --chunk 16 --attn flash_attention_2
    python benchmarks/reward_latency.py --tiny                 # CPU smoke run (default without CUDA)

Results are printed and, with ``--out``, written as JSON.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from cac_align.reward.cac import CaCReward
from cac_align.reward.qwen import (
    build_processor,
)
from cac_align.testing import qwen3_tokenizer, qwen3_vl_8b_config, tiny_qwen3vl_config
from cac_align.utils import atomic_write_json

PAPER = {"height": 480, "width": 832, "turn1_tokens": 512, "turn2_tokens": 384, "batch_sizes": [1, 8, 32]}
TINY = {"height": 64, "width": 64, "turn1_tokens": 16, "turn2_tokens": 12, "batch_sizes": [1, 2, 4]}
PAPER_SECONDS = {"CaC two-turn (paper, A800)": 33.2, "UnifiedReward single pass (paper, A800)": 3.79}
TARGET_SECONDS = 3.3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--tiny", action="store_true", help="tiny random Qwen3-VL on CPU (default when CUDA is unavailable)"
    )
    p.add_argument("--batch-sizes", type=int, nargs="+", help="videos per call (default 1 8 32; tiny 1 2 4)")
    p.add_argument("--chunk", type=int, help="most videos per forward pass (CaCReward batch_size; default: all)")
    p.add_argument("--seconds", type=float, default=5.0, help="video length (default 5)")
    p.add_argument("--src-fps", type=float, default=16.0, help="frame rate of the videos (default 16, as Wan writes)")
    p.add_argument("--height", type=int, help="frame height (default 480, tiny 64)")
    p.add_argument("--width", type=int, help="frame width (default 832, tiny 64)")
    p.add_argument("--window", type=int, nargs=2, default=[8, 11], help="turn-2 window on the 4 fps frames (8 11)")
    p.add_argument("--turn1-tokens", type=int, help="new tokens generated in turn 1 (default 512, tiny 16)")
    p.add_argument("--turn2-tokens", type=int, help="new tokens generated in turn 2 (default 384, tiny 12)")
    p.add_argument("--attn", default="sdpa", help="attention implementation (sdpa, flash_attention_2, eager)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs at the first batch size (default 1)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per batch size (default 1)")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        args.tiny = True
    preset = TINY if args.tiny else PAPER
    for key in ("height", "width", "turn1_tokens", "turn2_tokens", "batch_sizes"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    return args


def build_reward(args: argparse.Namespace) -> CaCReward:
    from transformers import Qwen3VLForConditionalGeneration

    tokenizer = qwen3_tokenizer("auto")
    if args.tiny:
        torch.manual_seed(0)
        model = Qwen3VLForConditionalGeneration(tiny_qwen3vl_config(tokenizer))
    else:
        config = qwen3_vl_8b_config(tokenizer)
        config._attn_implementation = args.attn
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = Qwen3VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    model.eval()
    return CaCReward(model, build_processor(tokenizer), max_new_tokens=args.turn1_tokens, batch_size=args.chunk)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def score_once(reward: CaCReward, args: argparse.Namespace, batch: int) -> dict[str, Any]:
    """One timed two-turn scoring of ``batch`` random videos (turn 2 forced onto ``args.window``)."""
    frames = round(args.seconds * args.src_fps)
    g = torch.Generator().manual_seed(batch)
    videos = torch.rand(batch, frames, 3, args.height, args.width, generator=g)
    prompts = ["a red ball bounces across a wooden floor"] * batch
    window = (args.window[0], args.window[1])
    chunk = args.chunk or batch
    sync()
    t0 = time.perf_counter()
    turn1, turn2 = [], []
    with torch.inference_mode():
        sources = reward.prepare(videos, prompts, fps=args.src_fps)
        for i in range(0, batch, chunk):
            part = sources[i : i + chunk]
            t1 = reward.run_turn1(part, max_new_tokens=args.turn1_tokens, min_new_tokens=args.turn1_tokens)
            sync()
            turn1.append(time.perf_counter())
            t2 = reward.run_turn2(
                part, t1, [window] * len(part), max_new_tokens=args.turn2_tokens, min_new_tokens=args.turn2_tokens
            )
            sync()
            turn2.append(time.perf_counter())
    total = time.perf_counter() - t0
    if not all(0.0 <= r.reward <= 1.0 for r in t2):
        raise RuntimeError("a reward outside [0, 1]")
    return {
        "batch": batch,
        "seconds_total": total,
        "seconds_per_video": total / batch,
        "turn1_context_tokens": len(t1[0].context) if t1[0].context is not None else None,
        "turn2_context_tokens": len(t2[0].context) if t2[0].context is not None else None,
        "turn1_new_tokens": len(t1[0].answer_ids),
        "turn2_new_tokens": len(t2[0].answer_ids),
        "turn1_frames": len(t1[0].frame_indices),
        "turn2_frames": len(t2[0].frame_indices),
        "reads": sorted({r.read for r in t1 + t2}),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = "cpu (tiny config)" if args.tiny else torch.cuda.get_device_name()
    print(f"building {'tiny' if args.tiny else 'Qwen3-VL-8B'} random model on {device} ...", flush=True)
    reward = build_reward(args)
    for _ in range(args.warmup):
        score_once(reward, args, args.batch_sizes[0])
    rows = []
    for batch in args.batch_sizes:
        runs = []
        for _ in range(args.repeats):
            try:
                runs.append(score_once(reward, args, batch))
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                print(f"batch {batch}: out of GPU memory (try --chunk)", flush=True)
                break
        if runs:
            best = min(runs, key=lambda r: r["seconds_total"])
            rows.append(best)
            print(
                f"batch {batch:3d}: {best['seconds_per_video']:.3f} s/video ({best['seconds_total']:.2f} s total; "
                f"turn 1 {best['turn1_frames']} frames, {best['turn1_context_tokens']} + {best['turn1_new_tokens']} "
                f"tokens; turn 2 {best['turn2_frames']} frames, {best['turn2_context_tokens']} + "
                f"{best['turn2_new_tokens']} tokens)",
                flush=True,
            )
    print("reference points (seconds per video):")
    for name, sec in PAPER_SECONDS.items():
        print(f"  {name}: {sec}")
    print(f"  target: <= {TARGET_SECONDS} s/video amortised at batch 32 on one H100")
    at32 = next((r for r in rows if r["batch"] == 32), None)
    if at32 is not None and not args.tiny:
        verdict = "meets" if at32["seconds_per_video"] <= TARGET_SECONDS else "misses"
        print(f"  this run at batch 32: {at32['seconds_per_video']:.3f} s/video ({verdict} the target)")
    result = {
        "device": device,
        "tiny": args.tiny,
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "rows": rows,
        "paper_seconds_per_video": PAPER_SECONDS,
        "target_seconds_per_video": TARGET_SECONDS,
    }
    if args.out is not None:
        atomic_write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
