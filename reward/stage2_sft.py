"""Stage 2/3 of the CaC reward model: multi-frame SFT, full-parameter (paper Sec. 3.2 "Stage 2", Sec. 4, App. C.2).

The model is trained jointly on two kinds of video input (:func:`cac_align.data.stages.stage2_samples`), each 1:1
normal/anomalous: whole videos uniformly sampled at 4 fps with the turn-1 target (status, and per anomaly its window
``"Frame s-e"`` and label: global temporal localisation), and clips of at most 1 s densely sampled at 8 fps that fully
cover an annotated anomaly, as turn 2 of the two-turn conversation, with per-frame boxes on the clip frames (fine
spatial localisation after temporal focusing). It learns both answer formats that stage 3's two-turn GRPO and
inference use. Full-parameter tuning at lr 1e-4 as in the paper; ``lora.enabled=true`` trains LoRA instead.

Launch (the paper: 8 H200, 7K steps, about 30.5 h; ZeRO-2 fits full fine-tuning of the 8B model on 8 H200)::

    accelerate launch --config_file reward/configs/accelerate/zero2.yaml reward/stage2_sft.py \\
        --config reward/configs/stage2.yaml data.manifest=data/splits/stage2.jsonl \\
        init_from=runs/stage1/final output_dir=runs/stage2

Tiny CPU run (after the tiny stage 1, see reward/stage1_warmup.py; a minute or two on 2 cores)::

    python reward/stage2_sft.py --config reward/configs/tiny/stage2.yaml

Outputs in ``output_dir``: ``final/`` (a Qwen3-VL checkpoint folder that ``CaCReward.from_pretrained`` and stage 3's
``init_from`` load; with LoRA, merged into the weights, and ``adapter/`` holds the adapter alone),
``checkpoints/step_*`` (full training state; ``resume=true`` continues from the newest), ``config.yaml``,
``samples.jsonl`` and ``data_stats.json`` (the exact samples), ``metrics.jsonl`` and ``tensorboard/``.

``init_from`` is a local Qwen3-VL checkpoint folder (stage 1's ``final/``), or ``tiny``: a tiny random CaC checkpoint
written to ``output_dir/init`` (CPU smoke runs only).

Departures from the paper: a clip sample is the two-turn conversation of inference with a turn-1 answer whose window
is the clip's (a false alarm for normal clips) and loss on turn 2 only; clip windows span at most
``data.clip_max_frames`` frames of the 4 fps sequence (4: the 8 clip frames span 0.875 s); the paper's ~20K video
and ~15K clip samples become what the split yields under these rules; CoT is templated where the manifest has none
for that view; the loss is the token mean per micro-batch; the learning-rate schedule and batch sizes are our
choices. Resuming is exact (step-indexed data order; weights, optimizer, scheduler and RNG states in checkpoints).
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from accelerate import Accelerator, DistributedType
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from cac_align.config import config_to_dict, load_config, save_config
from cac_align.data.stages import (
    SFTCollator,
    SFTDataset,
    StepSampler,
    load_stage_manifest,
    stage2_samples,
    write_samples,
)
from cac_align.reward.cac import read_settings
from cac_align.reward.qwen import load_qwen3vl
from cac_align.reward.sft import LORA_TARGETS, lora_config, lr_factor, sft_loop, status_ids
from cac_align.reward.training import DTYPES, resolve_init, resume_state, save_final, save_state
from cac_align.train.checkpoint import latest_checkpoint
from cac_align.train.logging import MetricLogger
from cac_align.utils import atomic_write_json


# ----------------------------------------------------------------------------------------------------------- config
@dataclass
class DataConfig:
    # The stage-2 manifest: `cac-align data splits MANIFEST -o DIR` writes DIR/stage2.jsonl.
    manifest: Path | None = None
    # Train on whole videos (turn-1 target at the annotation's 4 fps).
    videos: bool = True
    # Train on clips (turn-2 target, two-turn conversation).
    clips: bool = True
    # Clip sampling rate (the paper: 8 fps).
    clip_fps: float = 8.0
    # Most frames of the 4 fps sequence a clip window spans (4 = 1 s).
    clip_max_frames: int = 4
    # Most clip windows cut from one video.
    clips_per_video: int = 1
    # Leave out videos with more frames than this on the 4 fps sequence (CaCReward shows at most 64).
    max_frames: int = 64
    # Per-frame pixel cap of the processor (null: the checkpoint's own, 768*32*32 for Qwen3-VL); saved as the final
    # checkpoint's inference setting too.
    max_pixels: int | None = None
    # DataLoader worker processes that decode videos (0: decode in the training process).
    num_workers: int = 0
    # Keep every encoded sample in memory after its first epoch (small datasets trained for many epochs; CPU runs).
    cache: bool = False


@dataclass
class TrainConfig:
    # Optimizer steps (the paper: 7,000).
    max_steps: int = 7000
    # Peak learning rate (the paper: 1e-4).
    lr: float = 1e-4
    # Samples per micro-batch on each process.
    batch_size: int = 1
    # Micro-batches per optimizer step (the global batch is batch_size * grad_accum * processes).
    grad_accum: int = 1
    # Steps of linear warmup.
    warmup_steps: int = 100
    # Learning-rate schedule after warmup: cosine decay to 0, or constant.
    schedule: Literal["cosine", "constant"] = "cosine"
    # AdamW weight decay.
    weight_decay: float = 0.0
    # Gradient-norm clipping (null: off).
    max_grad_norm: float | None = 1.0
    # Weight of the status token ("normal" vs "abnormal") in the answer loss (1: the paper's plain SFT; more makes
    # the judgment a larger share of the gradient, for a model that must still learn to see: sft.sft_loss).
    status_weight: float = 1.0
    # Save a full training checkpoint every this many steps (and at the end).
    save_every: int = 500
    # Keep only the newest this many checkpoints (null: keep all).
    keep_last: int | None = 2
    # "auto": bf16 autocast on CUDA, fp32 on CPU.
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"
    # Recompute activations in the backward pass (less memory, about 30 % slower).
    gradient_checkpointing: bool = False
    # End the run after this step with a checkpoint and no final save (a cluster time slot; resume=true goes on).
    stop_at_step: int | None = None


@dataclass
class LoraSection:
    # Train LoRA adapters instead of every parameter (the paper's stage 2 is full-parameter).
    enabled: bool = False
    # LoRA rank (the paper: 32).
    rank: int = 32
    # LoRA alpha (scale alpha / rank).
    alpha: float = 64.0
    # Dropout on the LoRA input.
    dropout: float = 0.05
    # PEFT target_modules regex: the LLM's projections, the ViT blocks and the mergers.
    targets: str = LORA_TARGETS


@dataclass
class LogConfig:
    # Where metrics go: tensorboard (and metrics.jsonl), wandb, or none.
    report_to: Literal["tensorboard", "wandb", "none"] = "tensorboard"
    # Log every this many steps.
    every: int = 10
    # W&B project.
    project: str = "cac-align"


@dataclass
class Stage2Config:
    """Stage 2/3 of the CaC reward: multi-frame SFT on 4 fps videos and 8 fps clips (paper Sec. 3.2)."""

    # Run folder (checkpoints, final model, logs).
    output_dir: Path
    # A local Qwen3-VL checkpoint folder (stage 1's final/), or "tiny" (a tiny random CaC checkpoint, CPU smoke runs).
    init_from: str
    # Continue from the newest checkpoint in output_dir/checkpoints (a fresh start when there is none).
    resume: bool = False
    # Seeds the clip windows, the data order, the LoRA init and the tiny checkpoint.
    seed: int = 0
    # Prompts trained with: "full" (the paper's) or "compact" (cac_align.reward.prompts); None keeps init_from's
    # (its cac_reward.json), else "full". The final checkpoint records it, so CaCReward prompts the same way.
    prompt_style: Literal["full", "compact"] | None = None
    # Weights dtype while training (fp32 master weights for full fine-tuning; bfloat16 suits a frozen LoRA base).
    dtype: Literal["float32", "bfloat16"] = "float32"
    # Weights dtype of the final checkpoint.
    save_dtype: Literal["float32", "bfloat16"] = "float32"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraSection = field(default_factory=LoraSection)
    log: LogConfig = field(default_factory=LogConfig)


# ------------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> Path | None:
    """Run stage 2; returns the final checkpoint folder (None when ``train.stop_at_step`` ended the run early)."""
    cfg = load_config(Stage2Config, argv, prog="reward/stage2_sft.py")
    if cfg.data.manifest is None:
        raise SystemExit("stage2: data.manifest is required (cac-align data splits writes DIR/stage2.jsonl)")
    t = cfg.train
    if t.max_steps < 1 or t.batch_size < 1 or t.grad_accum < 1 or t.save_every < 1 or cfg.log.every < 1:
        raise SystemExit("stage2: train.max_steps, batch_size, grad_accum, save_every and log.every must be >= 1")
    if not t.status_weight > 0:
        raise SystemExit(f"stage2: train.status_weight must be > 0, got {t.status_weight}")

    # ------------------------------------------------------------------------------------------------------ build
    cuda = torch.cuda.is_available()
    precision = ("bf16" if cuda else "no") if t.mixed_precision == "auto" else t.mixed_precision
    # cpu=True on a machine without CUDA: accelerate then joins a gloo group of several CPU processes
    accelerator = Accelerator(gradient_accumulation_steps=t.grad_accum, mixed_precision=precision, cpu=not cuda)
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    zero3 = False
    if deepspeed:  # we do not prepare a DataLoader, so DeepSpeed cannot infer the micro-batch size
        ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
        ds_config["train_micro_batch_size_per_gpu"] = t.batch_size
        zero3 = ds_config.get("zero_optimization", {}).get("stage") == 3
        if cfg.lora.enabled and zero3:
            raise SystemExit("stage2: LoRA merging needs whole weights; use 8gpu_ddp.yaml or zero2.yaml, not ZeRO-3")
    set_seed(cfg.seed)
    out = Path(cfg.output_dir)
    ckpt_dir = out / "checkpoints"
    if not cfg.resume and latest_checkpoint(ckpt_dir) is not None:
        raise SystemExit(f"stage2: {ckpt_dir} already has checkpoints; pass resume=true or another output_dir")

    init = resolve_init(cfg.init_from, out, cfg.seed, accelerator)
    model, processor = load_qwen3vl(init, dtype=DTYPES[cfg.dtype])
    prompt_style = cfg.prompt_style or read_settings(init).get("prompt_style", "full")
    model.train()
    if t.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.lora.enabled:
            model.enable_input_require_grads()  # the frozen embeddings' outputs must carry gradients
    if cfg.lora.enabled:
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.targets))
    params = [p for p in model.parameters() if p.requires_grad]

    d = cfg.data
    samples, stats = stage2_samples(
        load_stage_manifest(d.manifest),
        seed=cfg.seed,
        videos=d.videos,
        clips=d.clips,
        clip_fps=d.clip_fps,
        clip_max_frames=d.clip_max_frames,
        clips_per_video=d.clips_per_video,
        max_frames=d.max_frames,
        prompt_style=prompt_style,
    )
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        write_samples(out / "samples.jsonl", samples)
        atomic_write_json(out / "data_stats.json", {"samples": stats.samples, "skipped": stats.skipped})
    dataset = SFTDataset(samples, processor, max_pixels=cfg.data.max_pixels, cache=cfg.data.cache)
    accelerator.print(
        f"stage2: {len(samples)} samples {stats.samples}, skipped {stats.skipped}; "
        f"{sum(p.numel() for p in params):,} trainable parameters"
    )

    optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    # Stepped by hand once per optimizer step: accelerate's prepared scheduler steps once per process.
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, t.warmup_steps, t.max_steps, t.schedule)
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    if deepspeed:
        accelerator.register_for_checkpointing(scheduler)

    step, resume_from = 0, None
    if cfg.resume:  # the newest complete checkpoint, if any
        step, resume_from = resume_state(
            accelerator, ckpt_dir, model=model, optimizer=optimizer, scheduler=scheduler, deepspeed=deepspeed
        )
    if resume_from is not None:
        accelerator.print(f"stage2: resumed from {resume_from} at step {step}")

    sampler = StepSampler(
        len(dataset), t.batch_size, accelerator.num_processes, accelerator.process_index, cfg.seed, step * t.grad_accum
    )
    loader = DataLoader(
        dataset,
        batch_size=t.batch_size,
        sampler=sampler,
        collate_fn=SFTCollator(processor.tokenizer.pad_token_id),
        num_workers=cfg.data.num_workers,
        generator=torch.Generator().manual_seed(cfg.seed),  # its worker seeds must not draw from the global RNG,
    )  # which a resumed run has restored to the interrupted run's state

    def checkpoint(step: int) -> None:  # full training state, atomic (cac_align.reward.training)
        save_state(
            accelerator,
            ckpt_dir,
            step,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            data_state={"micro_batch": step * t.grad_accum},
            trainable_only=cfg.lora.enabled,
            keep_last=t.keep_last,
            deepspeed=deepspeed,
        )

    # ------------------------------------------------------------------------------------------------------- loop
    # answer-only cross-entropy (cac_align.reward.sft.sft_loss), one optimizer step per grad_accum micro-batches
    logger = MetricLogger(out, cfg.log.report_to, project=cfg.log.project, config=config_to_dict(cfg))
    step = sft_loop(
        accelerator,
        model,
        optimizer,
        scheduler,
        loader,
        step=step,
        max_steps=t.max_steps,
        grad_accum=t.grad_accum,
        max_grad_norm=t.max_grad_norm,
        log_every=cfg.log.every,
        save_every=t.save_every,
        stop_at_step=t.stop_at_step,
        logger=logger,
        checkpoint=checkpoint,
        desc="stage2",
        status_weight=t.status_weight,
        status_ids=status_ids(processor.tokenizer),
    )
    logger.close()
    if step < t.max_steps:
        accelerator.print(f"stage2: stopped at step {step} (train.stop_at_step); resume=true continues")
        return None

    # -------------------------------------------------------------------------------------------------- final save
    final = save_final(
        accelerator,
        model,
        processor,
        out,
        init=init,
        lora=cfg.lora.enabled,
        save_dtype=cfg.save_dtype,
        prompt_style=prompt_style,
        max_pixels=cfg.data.max_pixels,
        zero3=zero3,
    )
    accelerator.print(f"stage2: wrote {final}")
    return final


if __name__ == "__main__":
    main()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
