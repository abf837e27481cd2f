"""Flow-GRPO for Wan-2.1 with the CaC + UnifiedReward mix (paper Sec. 4.2, App. C.4).

Each step: take ``prompts_per_step`` prompts, sample a group of ``group_size`` videos per prompt with the Flow-GRPO
SDE sampler (log-probs recorded), score them with the reward mix (each component normalised within its group, then
averaged: CaC is a non-differentiable scalar), turn the mixed rewards into group-relative advantages, and update a
LoRA on the transformer with the clipped per-SDE-step ratio loss plus a KL to the reference (the same transformer
with its LoRA disabled: no second copy of the weights). Launch::

    accelerate launch --config_file generators/configs/accelerate/8gpu.yaml generators/flow_grpo.py \
        --config generators/configs/flow_grpo_wan2.1_1.3b.yaml prompts=train_prompts.txt output_dir=runs/grpo
    python generators/flow_grpo.py --config generators/configs/tiny/flow_grpo.yaml output_dir=runs/grpo_tiny  # CPU
    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 generators/flow_grpo.py --config generators/configs/tiny/flow_grpo.yaml \
        output_dir=runs/grpo_tiny_2proc                                # 2 CPU processes (accelerate launch --cpu runs 1)

The paper's run (App. C.4) took 32 H200s for 120 steps: 480x832, 81 frames, 50 steps, noise level 0.3, group 16,
batch 2 per GPU (4 prompts = 64 videos per step), LoRA rank 32. ``--help`` lists every setting.

Outputs in ``output_dir``: ``final/pytorch_lora_weights.safetensors`` (diffusers format:
``WanPipeline.load_lora_weights(output_dir/final)``; the full transformer in ``final/transformer`` when
``model.lora_rank=0``), ``checkpoints/step_*`` (full state: LoRA, optimizer, LR scheduler, EMA, RNG, prompt-sampler
position, step; ``resume=true`` continues from the newest), ``metrics.jsonl`` and TensorBoard events (every reward
component raw and normalised, advantages, ratio, clip fraction, KL, time split into sampling / reward / training),
``videos/`` (a few samples), ``config.yaml``.

Where the paper is silent or this departs from it:

- Rewards: the paper averages the normalised CaC and UnifiedReward scores; which normalisation is not said. Here
  each component is z-scored within its prompt group by default (``norm: group``), then the mix is z-scored again
  into advantages (Eq. 8). ``norm: range`` gives the literal "average of [0, 1]-scaled scores".
- CFG scale 5.0 (Wan-2.1's default) for sampling and training; KL coefficient 0.004, clip range 1e-3, learning
  rate 1e-4, LoRA alpha 64 follow Flow-GRPO's Wan-2.1 config. The policy loss is not rescaled by sigma/dt.
- The step rule is Euler/SDE on the scheduler's sigma grid (see :mod:`cac_align.generators.sampler`).
- A video on which every reward component abstains gets advantage 0 (it neither pushes nor pulls).
- With ``train.num_minibatches = 1`` (default) each sampling round is one optimizer step, fully on-policy: every
  logged ratio is exactly 1 and clipping never acts. More minibatches make the later ones off-policy (PPO-style).
"""

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from accelerate import Accelerator, DistributedType
from accelerate.utils import gather_object, set_seed

from cac_align.algos.flow_grpo import (
    EMA,
    PromptSampler,
    advantages_with_abstentions,
    sde_window,
    step_policy_loss,
    train_step_subset,
)
from cac_align.config import config_to_dict, load_config, save_config
from cac_align.generators.sampler import Trajectory, sample, step_logprob
from cac_align.generators.tiny import build_tiny_wan
from cac_align.generators.wan import add_lora, decode_latents, encode_prompts, load_wan, save_lora
from cac_align.reward.build import RewardSpec, build_mixed_reward
from cac_align.reward.mixed import MixedOutput, MixedReward
from cac_align.train.checkpoint import latest_checkpoint, resume_latest, save_checkpoint
from cac_align.train.dist import get_world_size
from cac_align.train.logging import MetricLogger, Timer, progress

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


# ------------------------------------------------------------------------------------------------------ config
@dataclass
class ModelConfig:
    # Wan-2.1 text-to-video in diffusers layout (a local folder, e.g. Wan2.1-T2V-1.3B-Diffusers); "tiny" builds a
    # tiny random Wan in code into output_dir/tiny_wan (CPU smoke runs).
    path: str = "Wan2.1-T2V-1.3B-Diffusers"
    # dtype of the transformer and text encoder (LoRA weights, log-probs and the VAE stay fp32).
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    # Text tokens per prompt.
    max_sequence_length: int = 512
    # LoRA rank on the transformer (32 in the paper); 0 fine-tunes the whole transformer instead.
    lora_rank: int = 32
    # LoRA alpha (the update is scaled by alpha / rank).
    lora_alpha: float = 64.0
    # Recompute activations in the backward pass (less memory, slower training).
    gradient_checkpointing: bool = False


@dataclass
class SampleConfig:
    # Frames per video (4k + 1; 81 = 5 s at 16 fps).
    num_frames: int = 81
    # Frame height, a multiple of 16.
    height: int = 480
    # Frame width, a multiple of 16.
    width: int = 832
    # Denoising steps.
    num_steps: int = 50
    # Classifier-free guidance scale (sampling and training); <= 1 disables CFG.
    guidance_scale: float = 5.0
    # Negative prompt of classifier-free guidance.
    negative_prompt: str = ""
    # SDE noise level eta (0.3 in the paper).
    noise_level: float = 0.3
    # Videos per prompt, the GRPO group size G (16 in the paper).
    group_size: int = 16
    # Prompts per training step over all processes; prompts_per_step * group_size must divide by the process count.
    prompts_per_step: int = 4
    # Videos per sampler call and per training forward (kept equal so recomputed log-probs match: ratio 1).
    batch_size: int = 2
    # Number of consecutive SDE steps (Flow-GRPO-Fast / MixGRPO window); null: every step but the last.
    sde_window: int | None = None
    # Inclusive range of the window's first step, drawn each training step; null: anywhere it fits.
    sde_window_range: tuple[int, int] | None = None
    # Keep recorded trajectories on CPU between sampling and training (saves accelerator memory).
    offload_to_cpu: bool = False
    # Frame rate of the videos handed to the rewards and logged.
    fps: float = 16.0


@dataclass
class TrainConfig:
    # Training steps (sampling rounds); 120 in the paper.
    max_steps: int = 120
    # AdamW learning rate.
    lr: float = 1e-4
    # Linear warm-up of the learning rate over this many optimizer updates, then constant.
    warmup_steps: int = 0
    # AdamW betas.
    adam_betas: tuple[float, float] = (0.9, 0.999)
    # AdamW weight decay.
    weight_decay: float = 1e-4
    # AdamW epsilon.
    adam_eps: float = 1e-8
    # Gradient-norm clipping.
    max_grad_norm: float = 1.0
    # PPO clip range epsilon of the per-step ratio (Eq. 9).
    clip_range: float = 1e-3
    # KL coefficient beta (Eq. 12); 0 skips the reference forward passes.
    beta: float = 0.004
    # Advantages are clamped to [-adv_clip_max, adv_clip_max].
    adv_clip_max: float = 5.0
    # Advantage scaling: group (divide by the group std, Eq. 8) or none (only centre).
    adv_scale: Literal["group", "none"] = "group"
    # Fraction of the SDE steps trained on per round, drawn at random (Flow-GRPO's timestep_fraction).
    timestep_fraction: float = 1.0
    # Optimizer updates per sampling round (the process's videos split into this many minibatches).
    num_minibatches: int = 1
    # Keep an exponential moving average of the trained weights and save it as the final weights.
    ema: bool = False
    # EMA decay per optimizer update.
    ema_decay: float = 0.9
    # Write a full-state checkpoint every this many steps (and at the last step).
    checkpoint_every: int = 10
    # Complete checkpoints kept (older ones are deleted).
    keep_last: int = 2


@dataclass
class RewardConfig:
    # The reward mix: {name: RewardSpec}, names from unified, cac, brightness, color, reference (cac_align.reward.build).
    components: dict[str, RewardSpec] = field(
        default_factory=lambda: {
            "unified": RewardSpec(weight=1.0, norm="group", path="UnifiedReward-2.0-qwen3vl-8b"),
            "cac": RewardSpec(weight=1.0, norm="group", path="CaC-8B"),
        }
    )


@dataclass
class LogConfig:
    # tensorboard | wandb | none (metrics.jsonl is written with either of the first two).
    backend: Literal["tensorboard", "wandb", "none"] = "tensorboard"
    # W&B project.
    project: str = "cac-align"
    # Log sample videos every this many steps (0: never).
    video_every: int = 10
    # Sample videos logged each time (the first videos of process 0).
    num_videos: int = 2


@dataclass
class FlowGRPOConfig:
    """Flow-GRPO for Wan-2.1 (paper Sec. 4.2, App. C.4) with a LoRA on the transformer and a mixed reward."""

    # Training prompts: .txt (one prompt per non-empty line) or .jsonl (objects with a "prompt" string).
    prompts: str
    # Output folder (final weights, checkpoints, logs, videos, config.yaml).
    output_dir: str
    # Continue from the newest checkpoint in output_dir/checkpoints (false refuses to overwrite existing ones).
    resume: bool = False
    # Seed of the prompt order, the sampling noise and the SDE-window / trained-step draws.
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    log: LogConfig = field(default_factory=LogConfig)


# ------------------------------------------------------------------------------------------------------ setup
def read_prompts(path: str | Path) -> list[str]:
    """Prompts of a ``.txt`` (one per non-empty line) or ``.jsonl`` (``{"prompt": ...}`` per line) file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: prompts file not found")
    lines = path.read_text(encoding="utf-8").splitlines()
    prompts = []
    if path.suffix == ".jsonl":
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) or not obj["prompt"].strip():
                raise ValueError(f"{path}:{n}: prompt: expected an object with a non-empty string 'prompt'")
            prompts.append(obj["prompt"].strip())
    elif path.suffix == ".txt":
        prompts = [line.strip() for line in lines if line.strip()]
    else:
        raise ValueError(f"{path}: expected a .txt or .jsonl prompts file")
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def model_folder(path: str, output_dir: Path, acc: Accelerator) -> Path:
    """``path`` itself, or for ``"tiny"`` a tiny random Wan built once (by rank 0, atomically) in output_dir."""
    if path != "tiny":
        return Path(path)
    folder = output_dir / "tiny_wan"
    if acc.is_main_process and not folder.is_dir():
        tmp = output_dir / f".tiny_wan.tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        os.replace(build_tiny_wan(tmp), folder)
    acc.wait_for_everyone()
    return folder


def check_config(cfg: FlowGRPOConfig, world_size: int) -> None:
    s, t = cfg.sample, cfg.train
    total = s.prompts_per_step * s.group_size
    if s.group_size < 2:
        raise ValueError(f"sample.group_size must be >= 2 (advantages are relative to the group), got {s.group_size}")
    if total % world_size:
        raise ValueError(
            f"sample.prompts_per_step * sample.group_size = {total} videos per step do not split over "
            f"{world_size} processes"
        )
    per_rank = total // world_size
    if per_rank % t.num_minibatches or (per_rank // t.num_minibatches) % s.batch_size:
        raise ValueError(
            f"each process has {per_rank} videos per step: train.num_minibatches ({t.num_minibatches}) must divide "
            f"them into minibatches that are multiples of sample.batch_size ({s.batch_size})"
        )
    if t.checkpoint_every < 1 or t.keep_last < 1:
        raise ValueError("train.checkpoint_every and train.keep_last must be >= 1")


# ------------------------------------------------------------------------------------------------------ roles
def rollout(
    transformer: torch.nn.Module,
    vae: torch.nn.Module,
    scheduler,
    prompt_embeds: torch.Tensor,
    negative_prompt_embeds: torch.Tensor | None,
    seeds: Sequence[int],
    *,
    sde_steps: list[int] | None,
    batch_size: int,
    num_frames: int,
    height: int,
    width: int,
    num_steps: int,
    guidance_scale: float,
    noise_level: float,
    offload_to_cpu: bool,
) -> tuple[Trajectory, torch.Tensor]:
    """Sample and decode ``n`` videos in chunks of ``batch_size``, one seeded generator per video.

    Returns the concatenated :class:`Trajectory` and the videos ``[n, F, C, H, W]`` float in [0, 1] on CPU.
    """
    device = next(transformer.parameters()).device
    trajectories, videos = [], []
    for start in range(0, len(seeds), batch_size):
        chunk = slice(start, start + batch_size)
        traj = sample(
            transformer,
            scheduler,
            prompt_embeds[chunk],
            None if negative_prompt_embeds is None else negative_prompt_embeds[chunk],
            num_frames=num_frames,
            height=height,
            width=width,
            num_steps=num_steps,
            guidance_scale=guidance_scale,
            noise_level=noise_level,
            sde_steps=sde_steps,
            generator=[torch.Generator(device).manual_seed(s) for s in seeds[chunk]],
            offload_to_cpu=offload_to_cpu,
        )
        trajectories.append(traj)
        videos.append(decode_latents(vae, traj.final_latents).cpu())
    return Trajectory.cat(trajectories), torch.cat(videos)


def score(
    reward: MixedReward, videos: torch.Tensor, prompts: list[str], group_ids: list[int], fps: float
) -> MixedOutput:
    """Raw scores of this process's videos by every component, gathered over processes, then normalised and mixed.

    Group and batch statistics therefore span the whole step, however its videos are spread over processes. The
    result lists every video of the step in global order (process 0's first).
    """
    raw = {
        name: gather_object(list(comp.fn(videos, prompts, fps=fps, group_ids=group_ids)))
        for name, comp in reward.components.items()
    }
    return reward.combine(raw, gather_object(list(group_ids)))


def backwards_per_update(videos_per_minibatch: int, batch_size: int, num_train_steps: int) -> int:
    """Backward passes per optimizer update: one per chunk of ``batch_size`` videos and trained SDE step."""
    return (videos_per_minibatch // batch_size) * num_train_steps


def update(
    model: torch.nn.Module,
    traj: Trajectory,
    advantages: torch.Tensor,
    train_steps: list[int],
    *,
    acc: Accelerator,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
    params: list[torch.nn.Parameter],
    reference_mean: Callable[[Trajectory, int], torch.Tensor] | None,
    dtype: torch.dtype,
    batch_size: int,
    num_minibatches: int,
    clip_range: float,
    beta: float,
    max_grad_norm: float,
    ema: EMA | None = None,
) -> dict[str, float]:
    """Optimizer updates on this process's videos: the Flow-GRPO loss over ``train_steps`` (positions in the SDE steps).

    The videos are split into ``num_minibatches`` minibatches, one optimizer update each. Within a minibatch the loss
    is accumulated over chunks of ``batch_size`` videos and the trained steps, one forward/backward each, inside
    ``acc.accumulate``: ``acc`` must be built with ``gradient_accumulation_steps`` equal to that count
    (:func:`backwards_per_update`), so accelerate averages the losses, skips the gradient all-reduce until the last
    backward (DDP) and steps the optimizer once (also under DeepSpeed). ``reference_mean(traj_chunk, k)`` gives the
    reference model's mean of step ``k`` (needed when ``beta > 0``).

    Returns:
        Scalars averaged over every forward (``ratio_min``/``ratio_max``: extremes), plus ``grad_norm`` and ``lr``.
    """
    n = traj.batch_size
    per_mb = n // num_minibatches
    backwards = backwards_per_update(per_mb, batch_size, len(train_steps))
    if acc.gradient_accumulation_steps != backwards:
        raise ValueError(
            f"the Accelerator accumulates {acc.gradient_accumulation_steps} backward passes per update, this update "
            f"makes {backwards} ({per_mb} videos / batch {batch_size} x {len(train_steps)} steps)"
        )
    sums: dict[str, float] = {}
    count = 0
    ratio_min, ratio_max, grad_norms = math.inf, -math.inf, []
    for mb in range(num_minibatches):
        for start in range(mb * per_mb, (mb + 1) * per_mb, batch_size):
            sub = traj.select(slice(start, start + batch_size))
            adv = advantages[start : start + batch_size]
            for k in train_steps:
                ref = None
                if beta > 0:
                    with torch.no_grad():
                        ref = reference_mean(sub, k)
                with acc.accumulate(model):
                    out = step_logprob(model, sub, k, dtype=dtype)
                    loss, stats = step_policy_loss(
                        out.log_prob,
                        sub.log_probs[:, k],
                        adv,
                        clip_range=clip_range,
                        beta=beta,
                        mean=out.mean if ref is not None else None,
                        ref_mean=ref,
                        std=out.std,
                    )
                    acc.backward(loss)  # divided by gradient_accumulation_steps: the mean over chunks and steps
                    if acc.sync_gradients:
                        norm = acc.clip_grad_norm_(params, max_grad_norm)  # None under DeepSpeed (it clips itself)
                        if norm is not None:
                            grad_norms.append(float(norm))
                        optimizer.step()
                        lr_scheduler.step()
                        optimizer.zero_grad(set_to_none=True)
                        if ema is not None:
                            ema.update(params)
                for key, value in stats.items():
                    if key not in ("ratio_min", "ratio_max"):
                        sums[key] = sums.get(key, 0.0) + float(value)
                ratio_min = min(ratio_min, float(stats["ratio_min"]))
                ratio_max = max(ratio_max, float(stats["ratio_max"]))
                count += 1
    out = {f"train/{k}": v / count for k, v in sums.items()}
    out.update({"train/ratio_min": ratio_min, "train/ratio_max": ratio_max})
    if grad_norms:
        out["train/grad_norm"] = sum(grad_norms) / len(grad_norms)
    out["train/lr"] = lr_scheduler.get_last_lr()[0]
    return out


# ------------------------------------------------------------------------------------------------------ recipe
def main(argv: list[str] | None = None) -> Path:
    cfg = load_config(FlowGRPOConfig, argv, prog="flow_grpo.py")
    s, t = cfg.sample, cfg.train
    check_config(cfg, get_world_size())
    num_sde = s.num_steps - 1 if s.sde_window is None else s.sde_window
    num_trained = len(train_step_subset(num_sde, t.timestep_fraction, torch.Generator()))  # the same every step
    per_rank = s.prompts_per_step * s.group_size // get_world_size()
    backwards = backwards_per_update(per_rank // t.num_minibatches, s.batch_size, num_trained)
    acc = Accelerator(gradient_accumulation_steps=backwards)
    if acc.num_processes != get_world_size():
        raise RuntimeError(f"accelerate sees {acc.num_processes} processes, the launcher {get_world_size()}")
    if acc.distributed_type == DistributedType.DEEPSPEED and cfg.resume:
        raise ValueError(
            "resume=true under DeepSpeed: ZeRO-2 shards the optimizer state over the ranks and the checkpoints keep "
            "rank 0's shard only, so a resume would not be exact; resume with DDP (generators/configs/accelerate/8gpu.yaml)"
        )
    out = Path(cfg.output_dir)
    ckpt_dir = out / "checkpoints"
    prompts = read_prompts(cfg.prompts)
    if not cfg.resume and latest_checkpoint(ckpt_dir) is not None:
        raise FileExistsError(f"{ckpt_dir}: holds checkpoints of an earlier run; pass resume=true to continue it")
    acc.wait_for_everyone()
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")

    # ---- build: Wan components, LoRA (or full fine-tuning), optimizer, reward mix
    set_seed(cfg.seed)  # the LoRA's initial A matrices come from the global RNG
    dtype = DTYPES[cfg.model.dtype]
    folder = model_folder(cfg.model.path, out, acc)
    wan = load_wan(folder, device=acc.device, dtype=dtype)
    transformer = wan.transformer
    full_finetune = cfg.model.lora_rank == 0
    reference = None
    if full_finetune:
        transformer.requires_grad_(True)
        if t.beta > 0:  # full fine-tuning has no adapter to switch off: keep a frozen copy
            reference = load_wan(folder, device=acc.device, dtype=dtype).transformer.requires_grad_(False)
    else:
        add_lora(transformer, rank=cfg.model.lora_rank, alpha=cfg.model.lora_alpha)
    if cfg.model.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    params = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=t.lr, betas=t.adam_betas, weight_decay=t.weight_decay, eps=t.adam_eps)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda u: min(1.0, (u + 1) / (t.warmup_steps + 1)))
    model, optimizer = acc.prepare(transformer, optimizer)
    policy = acc.unwrap_model(model)  # sampling and reference passes skip the DDP wrapper (no collectives)
    ema = EMA(params, t.ema_decay) if t.ema else None
    reward = build_mixed_reward(cfg.reward.components, device=acc.device, tiny_dir=out)
    use_cfg = s.guidance_scale > 1.0
    negative = None
    if use_cfg:
        negative = encode_prompts(
            wan.tokenizer, wan.text_encoder, [s.negative_prompt], max_sequence_length=cfg.model.max_sequence_length
        )

    def reference_mean(sub: Trajectory, k: int) -> torch.Tensor:
        if full_finetune:
            return step_logprob(reference, sub, k).mean
        policy.disable_adapters()
        try:
            return step_logprob(policy, sub, k).mean
        finally:
            policy.enable_adapters()

    # ---- resume
    sampler = PromptSampler(len(prompts), seed=cfg.seed)
    start_step = 0
    if cfg.resume:
        resumed = resume_latest(ckpt_dir, model=model, optimizer=optimizer, scheduler=lr_scheduler, accelerator=acc)
        if resumed is not None:
            start_step = resumed.step
            sampler.load_state_dict(resumed.data_state)
            if ema is not None:
                ema.load_state_dict(resumed.extra["ema"])
            print(f"[rank {acc.process_index}] resumed from step {start_step}", flush=True)

    logger = MetricLogger(out, cfg.log.backend, project=cfg.log.project, config=config_to_dict(cfg))
    timer = Timer()
    per_step = s.prompts_per_step * s.group_size
    mine = slice(acc.process_index * per_rank, (acc.process_index + 1) * per_rank)
    for step in progress(
        range(start_step + 1, t.max_steps + 1), desc="flow-grpo", initial=start_step, total=t.max_steps
    ):
        step_start = time.perf_counter()
        draws = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)  # same on every process
        chosen = sampler.take(s.prompts_per_step)
        group_ids = [j // s.group_size for j in range(per_step)][mine]
        local_prompts = [prompts[chosen[g]] for g in group_ids]
        seeds = [cfg.seed * 2**32 + step * per_step + j for j in range(per_step)][mine]
        sde_steps = sde_window(s.num_steps, s.sde_window, s.sde_window_range, draws)

        with timer("sampling"):
            embeds = encode_prompts(
                wan.tokenizer, wan.text_encoder, local_prompts, max_sequence_length=cfg.model.max_sequence_length
            )
            traj, videos = rollout(
                policy,
                wan.vae,
                wan.scheduler,
                embeds,
                None if negative is None else negative.expand(len(seeds), -1, -1),
                seeds,
                sde_steps=sde_steps,
                batch_size=s.batch_size,
                num_frames=s.num_frames,
                height=s.height,
                width=s.width,
                num_steps=s.num_steps,
                guidance_scale=s.guidance_scale,
                noise_level=s.noise_level,
                offload_to_cpu=s.offload_to_cpu,
            )
        with timer("reward"):
            mixed = score(reward, videos, local_prompts, group_ids, s.fps)
        advantages, scored = advantages_with_abstentions(
            mixed.total,
            [j // s.group_size for j in range(per_step)],
            scale=t.adv_scale,
            clip=t.adv_clip_max,
        )
        train_steps = train_step_subset(len(traj.sde_steps), t.timestep_fraction, draws)
        with timer("training"):
            stats = update(
                model,
                traj,
                advantages[mine],
                train_steps,
                acc=acc,
                optimizer=optimizer,
                lr_scheduler=lr_scheduler,
                params=params,
                reference_mean=reference_mean if t.beta > 0 else None,
                dtype=dtype,
                batch_size=s.batch_size,
                num_minibatches=t.num_minibatches,
                clip_range=t.clip_range,
                beta=t.beta,
                max_grad_norm=t.max_grad_norm,
                ema=ema,
            )
        stats = {k: float(acc.reduce(torch.tensor(v, device=acc.device), reduction="mean")) for k, v in stats.items()}

        times = timer.pop()
        times["time/step"] = time.perf_counter() - step_start
        times["time/reward_share"] = times["time/reward"] / times["time/step"]
        metrics = {**mixed.log("reward"), **stats, **times}
        metrics["reward/abstained"] = float((~scored).sum())
        metrics["advantage/mean"] = float(advantages.mean())
        metrics["advantage/std"] = float(advantages.std(unbiased=False))
        metrics["advantage/abs_max"] = float(advantages.abs().max())
        if torch.cuda.is_available() and acc.device.type == "cuda":
            metrics["memory/peak_gib"] = torch.cuda.max_memory_allocated(acc.device) / 2**30
        logger.log(metrics, step)
        if cfg.log.video_every and step % cfg.log.video_every == 0:
            for j in range(min(cfg.log.num_videos, len(videos))):
                logger.log_video(f"samples/{j}", videos[j], step, fps=s.fps)

        if step % t.checkpoint_every == 0 or step == t.max_steps:
            save_checkpoint(
                ckpt_dir,
                step,
                model=model,
                optimizer=optimizer,
                scheduler=lr_scheduler,
                data_state=sampler.state_dict(),
                extra=None if ema is None else {"ema": ema.state_dict()},
                trainable_only=not full_finetune,
                keep_last=t.keep_last,
                accelerator=acc,
            )
    logger.close()

    # ---- final weights (the EMA's when kept)
    acc.wait_for_everyone()
    if ema is not None:
        ema.copy_to(params)
    final = out / "final"
    if acc.is_main_process:
        if full_finetune:
            tmp = out / f".final_transformer.tmp-{os.getpid()}"
            policy.save_pretrained(tmp)
            if (final / "transformer").exists():
                shutil.rmtree(final / "transformer")
            final.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final / "transformer")
        else:
            save_lora(policy, final)
        print(f"saved the final weights to {final}", flush=True)
    acc.wait_for_everyone()
    return final


if __name__ == "__main__":
    main()
