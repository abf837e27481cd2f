"""Time and peak GPU memory of one stage-3 step (two-turn GRPO, reward/stage3_grpo.py) at the Qwen3-VL-8B size.

Setting: the Qwen3-VL-8B architecture with random weights (:func:`cac_align.testing.qwen3_vl_8b_config`: text 36
layers, hidden 4096, 32 / 8 heads of 128, MLP 12288, vocab 151936; vision 27 blocks, hidden 1152, MLP 4304, 16 heads,
patch 16, DeepStack at 8/16/24, interleaved M-RoPE [24, 20, 20]) in bf16 with LoRA (rank 32 on the LLM, the ViT and
the mergers, the recipe's targets), one 5 s 480x832 video at 16 fps, G = 8 rollouts. One step is what the recipe runs:

    rollout    turn 1 at 4 fps (20 frames) for the 8 rollouts in one generate call, then turn 2 at 8 fps on each
               rollout's 1 s window (8 frames) in one call
    reference  log-probs of both turns' tokens with the LoRA disabled (Eq. 11)
    train      per micro-batch: recomputed log-probs with gradients (both videos in the forward), the GRPO loss
               (Eq. 9-12), backward; then one AdamW step

Random weights would stop or ramble at random, so the answer lengths are fixed (``min_new_tokens =
max_new_tokens``: 512 tokens in turn 1, 384 in turn 2, realistic CoT lengths) and every rollout's turn 2 is cut at
``--window`` (Frame 8-11 of 20: 1 s, 8 clip frames); advantages are random. Everything else is the recipe's code path
(:mod:`cac_align.algos.rollout`, :mod:`cac_align.algos.grpo`).

    python benchmarks/stage3_step.py                          # GPU: 8B, LoRA, G = 8, micro-batch 1
    python benchmarks/stage3_step.py --micro-batch 2 --no-checkpointing
    python benchmarks/stage3_step.py --tiny                   # CPU smoke run (default without CUDA)

Results are printed and, with ``--out``, written as JSON.
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from cac_align.algos.grpo import grpo_loss
from cac_align.algos.rollout import (
    RolloutInput,
    answer_part,
    rollout_logprobs,
    sample_answers,
    turn1_context,
    turn2_context,
)
from cac_align.reward.chat import collate
from cac_align.reward.qwen import build_processor, vision_token_ids
from cac_align.reward.sft import LORA_TARGETS, lora_config
from cac_align.testing import qwen3_tokenizer, qwen3_vl_8b_config, tiny_qwen3vl_config
from cac_align.utils import atomic_write_json

PAPER = {
    "height": 480,
    "width": 832,
    "seconds": 5.0,
    "window": [8, 11],
    "turn1_tokens": 512,
    "turn2_tokens": 384,
    "group_size": 8,
}
TINY = {
    "height": 64,
    "width": 64,
    "seconds": 2.0,
    "window": [2, 3],
    "turn1_tokens": 8,
    "turn2_tokens": 6,
    "group_size": 2,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--tiny", action="store_true", help="tiny random Qwen3-VL on CPU (default when CUDA is unavailable)"
    )
    p.add_argument("--group-size", type=int, help="rollouts per video, G (default 8, tiny 2)")
    p.add_argument("--micro-batch", type=int, default=1, help="rollouts per forward/backward (default 1, the paper's)")
    p.add_argument("--seconds", type=float, help="video length (default 5, tiny 2)")
    p.add_argument("--src-fps", type=float, default=16.0, help="frame rate of the video (default 16, as Wan writes)")
    p.add_argument("--height", type=int, help="frame height (default 480, tiny 64)")
    p.add_argument("--width", type=int, help="frame width (default 832, tiny 64)")
    p.add_argument("--window", type=int, nargs=2, help="turn-2 window on the 4 fps frames (default 8 11, tiny 2 3)")
    p.add_argument("--turn1-tokens", type=int, help="tokens generated in turn 1 (default 512, tiny 8)")
    p.add_argument("--turn2-tokens", type=int, help="tokens generated in turn 2 (default 384, tiny 6)")
    p.add_argument("--lora-rank", type=int, default=32, help="LoRA rank (default 32)")
    p.add_argument("--beta", type=float, default=0.04, help="KL coefficient (default 0.04; 0 skips the reference)")
    p.add_argument("--no-checkpointing", action="store_true", help="keep activations instead of recomputing them")
    p.add_argument("--attn", default="sdpa", help="attention implementation (sdpa, flash_attention_2, eager)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    p.add_argument("--repeats", type=int, default=1, help="timed steps (default 1)")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        args.tiny = True
    preset = TINY if args.tiny else PAPER
    for key in PAPER:
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    if args.group_size % args.micro_batch:
        p.error(f"--micro-batch {args.micro_batch} must divide --group-size {args.group_size}")
    return args


def build(args: argparse.Namespace):
    """The policy (LoRA over random weights), its processor and an AdamW over the adapters."""
    from peft import get_peft_model
    from transformers import Qwen3VLForConditionalGeneration

    tokenizer = qwen3_tokenizer("bpe" if args.tiny else "auto")
    torch.manual_seed(0)
    if args.tiny:
        model = Qwen3VLForConditionalGeneration(tiny_qwen3vl_config(tokenizer))
    else:
        config = qwen3_vl_8b_config(tokenizer)
        config._attn_implementation = args.attn
        with torch.device("cuda"):
            model = Qwen3VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    if not args.no_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = get_peft_model(model, lora_config(args.lora_rank, 2.0 * args.lora_rank, 0.0, LORA_TARGETS))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-6)
    return model, build_processor(tokenizer), optimizer, params


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def one_step(model, processor, optimizer, params, args: argparse.Namespace) -> dict[str, Any]:
    """One timed stage-3 step on one random video (module docstring)."""
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(round(args.seconds * args.src_fps), 3, args.height, args.width, generator=g)
    inp = RolloutInput(frames, args.src_fps, "a red ball bounces across a wooden floor")
    G = args.group_size
    suppress = vision_token_ids(processor.tokenizer)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if not args.tiny else nullcontext()
    times: dict[str, float] = {}

    def mark(name: str, t0: float) -> float:
        sync()
        now = time.perf_counter()
        times[name] = now - t0
        return now

    sync()
    start = t = time.perf_counter()
    model.eval()
    with torch.no_grad(), autocast:
        context1, _ = turn1_context(processor, inp)
        answers1 = sample_answers(
            model, processor, [context1] * G, args.turn1_tokens, min_new_tokens=args.turn1_tokens
        )
        t = mark("turn1", t)
        window = (args.window[0], args.window[1])
        seconds = [turn2_context(processor, inp, context1, a, window)[0] for a in answers1]
        answers2 = sample_answers(model, processor, seconds, args.turn2_tokens, min_new_tokens=args.turn2_tokens)
        t = mark("turn2", t)
    sequences = [ctx + answer_part(processor.tokenizer, a) for ctx, a in zip(seconds, answers2, strict=True)]
    mb = args.micro_batch
    batches = [collate(sequences[i : i + mb], processor.tokenizer.pad_token_id) for i in range(0, G, mb)]
    refs: list[torch.Tensor | None] = [None] * len(batches)
    if args.beta > 0:
        with torch.no_grad(), autocast, model.disable_adapter():
            refs = [rollout_logprobs(model, b, 1.0, suppress) for b in batches]
        t = mark("reference", t)
    advantages = torch.randn(G, generator=g)
    model.train()
    for k, batch in enumerate(batches):
        with autocast:
            logp = rollout_logprobs(model, batch, 1.0, suppress)
        mask = batch["assistant_mask"].to(logp.device)
        loss, _ = grpo_loss(
            logp,
            logp.detach(),
            advantages[k * mb : (k + 1) * mb].to(logp.device),
            mask,
            ref_logp=refs[k],
            beta=args.beta,
        )
        (loss / len(batches)).backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    mark("train", t)
    total = time.perf_counter() - start
    return {
        "seconds_step": total,
        "seconds": times,
        "turn1_context_tokens": len(context1),
        "sequence_tokens": len(sequences[0]),
        "generated_tokens_per_rollout": int(sequences[0].assistant_mask.sum()),
        "videos_per_rollout": int(sequences[0].video_grid_thw.shape[0]),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = "cpu (tiny config)" if args.tiny else torch.cuda.get_device_name()
    print(f"building {'tiny' if args.tiny else 'Qwen3-VL-8B'} random model with LoRA on {device} ...", flush=True)
    model, processor, optimizer, params = build(args)
    for _ in range(args.warmup):
        one_step(model, processor, optimizer, params, args)
    if torch.cuda.is_available() and not args.tiny:
        torch.cuda.reset_peak_memory_stats()
    runs = [one_step(model, processor, optimizer, params, args) for _ in range(args.repeats)]
    best = min(runs, key=lambda r: r["seconds_step"])
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() and not args.tiny else None
    split = ", ".join(f"{k} {v:.2f} s" for k, v in best["seconds"].items())
    print(
        f"one stage-3 step, G = {args.group_size}, micro-batch {args.micro_batch}: {best['seconds_step']:.2f} s "
        f"({split}); {best['sequence_tokens']} tokens per rollout ({best['turn1_context_tokens']} turn-1 context, "
        f"{best['generated_tokens_per_rollout']} generated), "
        + (f"peak GPU memory {peak:.1f} GiB" if peak is not None else "CPU run (no GPU memory)"),
        flush=True,
    )
    result = {
        "device": device,
        "tiny": args.tiny,
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "step": best,
        "peak_gpu_memory_gib": peak,
    }
    if args.out is not None:
        atomic_write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
