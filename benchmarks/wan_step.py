"""Seconds per video: our Wan-2.1 SDE sampler next to diffusers' WanPipeline, same weights, same run; and one
Flow-GRPO training step (generators/flow_grpo.py's own rollout / score / update) with its time split and peak memory.

Paper setting (Sec. 4.2, App. C.4): Wan-2.1-T2V-1.3B architecture (random weights: 30 blocks, 12 heads x 128,
ffn 8960, text dim 4096), 480x832, 81 frames, 50 steps, CFG 5.0, noise level 0.3, bf16 transformer, fp32 VAE.
Target: our sampler (SDE on every step but the last, log-probs and the trajectory recorded) at most 5% slower than
the pipeline's denoising loop.

    python benchmarks/wan_step.py                       # GPU, paper setting
    python benchmarks/wan_step.py --offload --repeats 3 # trajectory kept on CPU
    python benchmarks/wan_step.py --tiny                # CPU smoke run (default without CUDA)

The text encoder (umT5-XXL, 5.7B) is not part of the timed loop: both samplers get the same random prompt
embeddings. The pipeline uses ``output_type="latent"``; VAE decoding is timed once on its own, as it is the same
call for both. Results are printed and, with ``--out``, written as JSON.

Flow-GRPO step (skip with ``--no-train-step``): after the sampler timings, a rank-32 LoRA is added and one training
step of the recipe runs on ``--batch`` videos of one group (the paper's per-GPU batch is 2): ``rollout`` (SDE
sampling + VAE decoding), ``score`` (the reward mix) and ``update`` (log-prob recomputation of every SDE step with
gradients, KL to the LoRA-disabled reference, one AdamW step). Reported: seconds of each part, the step's peak
memory, and the reward's share of the step (target: under 15% at the paper setting). The reward is
``--reward-model PATH`` (a CaC checkpoint folder, e.g. the released 8B judge, loaded in bf16 on the same GPU) or,
without it, a tiny random CaC built in code (its timing says nothing about an 8B judge); ``--tiny`` defaults to the
brightness reward.

    python benchmarks/wan_step.py --reward-model /ckpt/CaC-8B --batch 2     # GPU, paper setting, with CaC
"""

from __future__ import annotations

import argparse
import runpy
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

from cac_align.generators.sampler import sample
from cac_align.generators.tiny import build_tiny_wan
from cac_align.generators.wan import MAX_SEQUENCE_LENGTH, add_lora, decode_latents, encode_prompts, load_wan
from cac_align.reward.build import RewardSpec, build_mixed_reward
from cac_align.utils import atomic_write_json

RECIPE = Path(__file__).resolve().parents[1] / "generators" / "flow_grpo.py"

PAPER = {"num_frames": 81, "height": 480, "width": 832, "steps": 50}
TINY = {"num_frames": 9, "height": 32, "width": 32, "steps": 4}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny random Wan on CPU (default when CUDA is unavailable)")
    p.add_argument("--steps", type=int, help="denoising steps (default 50, tiny 4)")
    p.add_argument("--num-frames", type=int, help="frames, 4k + 1 (default 81, tiny 9)")
    p.add_argument("--height", type=int, help="multiple of 16 (default 480, tiny 32)")
    p.add_argument("--width", type=int, help="multiple of 16 (default 832, tiny 32)")
    p.add_argument("--batch", type=int, default=1, help="videos per sampling call (default 1)")
    p.add_argument("--guidance", type=float, default=5.0, help="CFG scale (default 5.0; <= 1 disables CFG)")
    p.add_argument("--noise-level", type=float, default=0.3, help="SDE noise level (default 0.3, App. C.4)")
    p.add_argument("--sde-window", type=int, help="only this many SDE steps from step 0 (default: all but last)")
    p.add_argument("--offload", action="store_true", help="keep the recorded trajectory on CPU")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs of each sampler first (default 1)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs of each sampler (default 2)")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--no-train-step", dest="train_step", action="store_false", help="skip the Flow-GRPO step")
    p.add_argument("--reward", choices=["cac", "brightness"], help="reward of the step (default cac, tiny brightness)")
    p.add_argument("--reward-model", help="CaC checkpoint folder for --reward cac (default: a tiny random one)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        args.tiny = True
    preset = TINY if args.tiny else PAPER
    args.steps = args.steps or preset["steps"]
    args.num_frames = args.num_frames or preset["num_frames"]
    args.height = args.height or preset["height"]
    args.width = args.width or preset["width"]
    args.reward = args.reward or ("brightness" if args.tiny else "cac")
    return args


def build_paper_wan(device: torch.device) -> tuple[WanTransformer3DModel, AutoencoderKLWan]:
    """Wan-2.1-T2V-1.3B's transformer (bf16) and VAE (fp32) architectures with random weights."""
    with torch.device(device):
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=12,
            attention_head_dim=128,
            in_channels=16,
            out_channels=16,
            text_dim=4096,
            freq_dim=256,
            ffn_dim=8960,
            num_layers=30,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            eps=1e-6,
            rope_max_seq_len=1024,
        )
        vae = AutoencoderKLWan()  # the defaults are Wan-2.1's VAE
    # what from_pretrained(torch_dtype=torch.bfloat16) gives: bf16, except the modules Wan keeps in fp32
    keep = WanTransformer3DModel._keep_in_fp32_modules
    for name, param in transformer.named_parameters():
        fp32 = any(k in name.split(".") for k in keep)
        param.data = param.data.to(torch.float32 if fp32 else torch.bfloat16)
    return transformer.eval(), vae.eval()


def measure(fn: Callable[[], object], device: torch.device) -> tuple[float, float | None]:
    """Wall seconds of one call of ``fn`` (synchronising CUDA) and its peak CUDA memory in GiB (None on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    fn()
    if device.type != "cuda":
        return time.perf_counter() - t0, None
    torch.cuda.synchronize(device)
    return time.perf_counter() - t0, torch.cuda.max_memory_allocated(device) / 2**30


def grpo_step(
    args: argparse.Namespace,
    transformer: WanTransformer3DModel,
    vae: AutoencoderKLWan,
    scheduler: UniPCMultistepScheduler,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    device: torch.device,
    work_dir: Path,
) -> dict:
    """Time one Flow-GRPO step of generators/flow_grpo.py (its rollout, score and update) on ``args.batch`` videos."""
    from accelerate import Accelerator

    recipe = runpy.run_path(str(RECIPE), run_name="flow_grpo")
    sde_steps = None if args.sde_window is None else list(range(args.sde_window))
    spec = RewardSpec(norm="group")
    if args.reward == "cac":
        spec = RewardSpec(norm="group", path=args.reward_model or "tiny", dtype=None if args.tiny else "bfloat16")
    reward = build_mixed_reward({args.reward: spec}, device=device, tiny_dir=work_dir)
    dtype = transformer.dtype  # the blocks' dtype (bf16 at the paper setting), before fp32 LoRA weights exist
    add_lora(transformer, rank=32, alpha=64.0)
    params = [p for p in transformer.parameters() if p.requires_grad]
    num_sde = args.steps - 1 if sde_steps is None else len(sde_steps)
    acc = Accelerator(cpu=device.type == "cpu", gradient_accumulation_steps=num_sde)  # one backward per SDE step
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4)
    model, optimizer = acc.prepare(transformer, optimizer)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda u: 1.0)
    policy = acc.unwrap_model(model)

    def reference_mean(sub, k):
        policy.disable_adapters()
        try:
            return recipe["step_logprob"](policy, sub, k, dtype=dtype).mean
        finally:
            policy.enable_adapters()

    n = args.batch
    prompts, group_ids = ["a cat jumps"] * n, [0] * n
    times: dict[str, float] = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for name in ("warmup", "timed"):
        t0 = time.perf_counter()
        traj, videos = recipe["rollout"](
            policy,
            vae,
            scheduler,
            cond[:n],
            uncond[:n] if args.guidance > 1 else None,
            list(range(n)),
            sde_steps=sde_steps,
            batch_size=n,
            num_frames=args.num_frames,
            height=args.height,
            width=args.width,
            num_steps=args.steps,
            guidance_scale=args.guidance,
            noise_level=args.noise_level,
            offload_to_cpu=args.offload,
        )
        t1 = time.perf_counter()
        mixed = recipe["score"](reward, videos, prompts, group_ids, 16.0)
        t2 = time.perf_counter()
        advantages = torch.tensor([0.0 if v is None else v for v in mixed.total])
        recipe["update"](
            model,
            traj,
            advantages,
            list(range(len(traj.sde_steps))),
            acc=acc,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            params=params,
            reference_mean=reference_mean,
            dtype=dtype,
            batch_size=n,
            num_minibatches=1,
            clip_range=1e-3,
            beta=0.004,
            max_grad_norm=1.0,
        )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t3 = time.perf_counter()
        if name == "timed" or args.warmup == 0:
            times = {"sampling": t1 - t0, "reward": t2 - t1, "training": t3 - t2}
            break
    total = sum(times.values())
    return {
        "train_step_s": total,
        "train_step_split_s": times,
        "reward_share": times["reward"] / total,
        "reward": args.reward if args.reward == "brightness" else (args.reward_model or "tiny random CaC"),
        "videos_per_step": n,
        "peak_cuda_gib_train_step": (
            torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        ),
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device("cpu" if args.tiny else "cuda")
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    if args.tiny:
        with tempfile.TemporaryDirectory() as tmp:
            wan = load_wan(build_tiny_wan(Path(tmp) / "tiny"))
        transformer, vae = wan.transformer, wan.vae
        seq = 32
        cond = encode_prompts(wan.tokenizer, wan.text_encoder, ["a cat jumps"] * args.batch, max_sequence_length=seq)
        uncond = encode_prompts(wan.tokenizer, wan.text_encoder, [""] * args.batch, max_sequence_length=seq)
    else:
        transformer, vae = build_paper_wan(device)
        gen = torch.Generator(device).manual_seed(0)
        shape = (args.batch, MAX_SEQUENCE_LENGTH, 4096)
        cond = torch.randn(shape, generator=gen, device=device, dtype=torch.bfloat16)
        uncond = torch.randn(shape, generator=gen, device=device, dtype=torch.bfloat16)
    size = {"num_frames": args.num_frames, "height": args.height, "width": args.width}
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    sde_steps = None if args.sde_window is None else list(range(args.sde_window))

    def run_pipeline() -> torch.Tensor:
        return pipe(
            prompt_embeds=cond,
            negative_prompt_embeds=uncond if args.guidance > 1 else None,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            generator=torch.Generator(device).manual_seed(0),
            output_type="latent",
            **size,
        ).frames

    def run_ours():
        return sample(
            transformer,
            scheduler,
            cond,
            uncond,
            num_steps=args.steps,
            guidance_scale=args.guidance,
            noise_level=args.noise_level,
            sde_steps=sde_steps,
            generator=torch.Generator(device).manual_seed(0),
            offload_to_cpu=args.offload,
            **size,
        )

    runs: dict[str, list[tuple[float, float | None]]] = {"pipeline": [], "sde_sampler": []}
    with torch.no_grad():
        for r in range(args.warmup + args.repeats):  # interleaved, so drifting clocks or load hit both alike
            for name, fn in (("pipeline", run_pipeline), ("sde_sampler", run_ours)):
                result = measure(fn, device)
                if r >= args.warmup:
                    runs[name].append(result)
        latents = run_ours().final_latents
        t_decode, _ = measure(lambda: decode_latents(vae, latents), device)

    per_video = {f"{name}_denoise_s": statistics.median(t for t, _ in rs) / args.batch for name, rs in runs.items()}
    per_video["vae_decode_s"] = t_decode / args.batch
    peak_gib = {name: None if rs[0][1] is None else max(m for _, m in rs) for name, rs in runs.items()}
    slowdown = per_video["sde_sampler_denoise_s"] / per_video["pipeline_denoise_s"] - 1
    results = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "tiny": args.tiny,
        "settings": {
            **size,
            "steps": args.steps,
            "batch": args.batch,
            "guidance": args.guidance,
            "noise_level": args.noise_level,
            "sde_steps": "all but last" if sde_steps is None else sde_steps,
            "offload_to_cpu": args.offload,
        },
        "seconds_per_video": per_video,
        "sde_sampler_slowdown": slowdown,
        "peak_cuda_gib": peak_gib,
    }
    if args.train_step:
        with tempfile.TemporaryDirectory() as tmp:
            results.update(grpo_step(args, transformer, vae, scheduler, cond, uncond, device, Path(tmp)))
    print(f"device: {results['device']}  settings: {results['settings']}")
    for name, value in per_video.items():
        print(f"  {name:<24} {value:9.3f} s/video")
    verdict = "" if args.tiny else ("  (target <= 5%: met)" if slowdown <= 0.05 else "  (target <= 5%: NOT met)")
    print(f"  sde sampler vs pipeline  {100 * slowdown:+8.1f} %{verdict}")
    for name, gib in peak_gib.items():
        if gib is not None:
            print(f"  {name + ' peak memory':<24} {gib:9.2f} GiB")
    if args.train_step:
        split = "  ".join(f"{k} {v:.3f} s" for k, v in results["train_step_split_s"].items())
        print(f"  flow-grpo step ({results['videos_per_step']} videos) {results['train_step_s']:9.3f} s  ({split})")
        target = (
            ""
            if args.tiny
            else ("  (target < 15%: met)" if results["reward_share"] < 0.15 else "  (target < 15%: NOT met)")
        )
        print(f"  reward share of the step {100 * results['reward_share']:8.1f} %  [{results['reward']}]{target}")
        if results["peak_cuda_gib_train_step"] is not None:
            print(f"  {'flow-grpo step peak':<24} {results['peak_cuda_gib_train_step']:9.2f} GiB")
    if args.out is not None:
        atomic_write_json(args.out, results)
    return results


if __name__ == "__main__":
    main()
