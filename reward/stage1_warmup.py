"""Stage 1/3 of the CaC reward model: single-frame warmup with LoRA (paper Sec. 3.2 "Stage 1", Sec. 4, App. C.2).

Each sample is one frame (anomalous frames of single-frame anomalies, and as many normal frames), the video's prompt
and a chain of thought whose JSON answer carries the judgment, the reason and the frame's boxes
(:func:`cac_align.data.stages.stage1_samples`). The model learns the answer format and the mapping from visual cues
to attribution and boxes; LoRA (rank 32, lr 1e-4) covers the ViT, the mergers and the LLM.

Launch (the paper: 8 H200, 9,330 steps, about 11.5 h)::

    cac-align data splits data/cot/manifest.jsonl -o data/splits
    accelerate launch --config_file reward/configs/accelerate/8gpu_ddp.yaml reward/stage1_warmup.py \\
        --config reward/configs/stage1.yaml data.manifest=data/splits/stage1.jsonl \\
        init_from=checkpoints/Qwen3-VL-8B-Instruct output_dir=runs/stage1

Tiny CPU run on the synthetic world (a minute or two on 2 cores)::

    cac-align synth runs/tiny/data --num-videos 24 --size 64x64 --seconds 2
    cac-align data splits runs/tiny/data/manifest.jsonl -o runs/tiny/splits
    python reward/stage1_warmup.py --config reward/configs/tiny/stage1.yaml

Outputs in ``output_dir``: ``final/`` (the LoRA merged into the weights: a Qwen3-VL checkpoint folder that
``CaCReward.from_pretrained`` and stage 2's ``init_from`` load), ``adapter/`` (the LoRA adapter alone, PEFT format),
``checkpoints/step_*`` (full training state; ``resume=true`` continues from the newest), ``config.yaml``,
``samples.jsonl`` and ``data_stats.json`` (the exact samples), ``metrics.jsonl`` and ``tensorboard/``.

``init_from`` is a local Qwen3-VL checkpoint folder, or ``tiny``: a tiny random CaC checkpoint (real Qwen3-VL
architecture, small BPE vocabulary trained on CaC's prompts, :func:`cac_align.testing.build_tiny_cac`) is written to
``output_dir/init`` and trained; for CPU smoke runs only.

Departures from the paper: the frame is shown as a one-frame video with the single-turn prompt (one chat format for
all stages, see :mod:`cac_align.data.stages`); stage-1 CoT comes from the manifest only under ``cot["frame"]``, else
it is templated; the loss is the token mean per micro-batch; the learning-rate schedule (cosine with warmup) and
batch sizes are our choices (the paper gives neither). Resuming is exact: the data order is a function of the step
(:class:`~cac_align.data.stages.StepSampler`) and the checkpoints hold weights, optimizer, scheduler and RNG states.
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
    stage1_samples,
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
    # The stage-1 manifest: `cac-align data splits MANIFEST -o DIR` writes DIR/stage1.jsonl.
    manifest: Path | None = None
    # Most anomalous frames taken from one video (the paper: about 10K anomalous frames from 5K videos).
    frames_per_video: int = 2
    # Per-frame pixel cap of the processor (null: the checkpoint's own, 768*32*32 for Qwen3-VL); saved as the final
    # checkpoint's inference setting too.
    max_pixels: int | None = None
    # DataLoader worker processes that decode videos (0: decode in the training process).
    num_workers: int = 0
    # Keep every encoded sample in memory after its first epoch (small datasets trained for many epochs; CPU runs).
    cache: bool = False


@dataclass
class TrainConfig:
    # Optimizer steps (the paper: 9,330).
    max_steps: int = 9330
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
    # Train LoRA adapters (the paper's warmup); false trains every parameter.
    enabled: bool = True
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
class Stage1Config:
    """Stage 1/3 of the CaC reward: single-frame warmup with LoRA (paper Sec. 3.2)."""

    # Run folder (checkpoints, final model, logs).
    output_dir: Path
    # A local Qwen3-VL checkpoint folder, or "tiny" (a tiny random CaC checkpoint, for CPU smoke runs).
    init_from: str
    # Continue from the newest checkpoint in output_dir/checkpoints (a fresh start when there is none).
    resume: bool = False
    # Seeds the frame choice, the data order, the LoRA init and the tiny checkpoint.
    seed: int = 0
    # Prompts trained with: "full" (the paper's) or "compact" (cac_align.reward.prompts); None keeps init_from's
    # (its cac_reward.json), else "full". The final checkpoint records it, so CaCReward prompts the same way.
    prompt_style: Literal["full", "compact"] | None = None
    # Weights dtype while training (LoRA adapters stay fp32); bfloat16 halves the frozen base's memory.
    dtype: Literal["float32", "bfloat16"] = "float32"
    # Weights dtype of the final checkpoint.
    save_dtype: Literal["float32", "bfloat16"] = "float32"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraSection = field(default_factory=LoraSection)
    log: LogConfig = field(default_factory=LogConfig)


# ------------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> Path | None:
    """Run stage 1; returns the final checkpoint folder (None when ``train.stop_at_step`` ended the run early)."""
    cfg = load_config(Stage1Config, argv, prog="reward/stage1_warmup.py")
    if cfg.data.manifest is None:
        raise SystemExit("stage1: data.manifest is required (cac-align data splits writes DIR/stage1.jsonl)")
    t = cfg.train
    if t.max_steps < 1 or t.batch_size < 1 or t.grad_accum < 1 or t.save_every < 1 or cfg.log.every < 1:
        raise SystemExit("stage1: train.max_steps, batch_size, grad_accum, save_every and log.every must be >= 1")
    if not t.status_weight > 0:
        raise SystemExit(f"stage1: train.status_weight must be > 0, got {t.status_weight}")

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
            raise SystemExit("stage1: LoRA merging needs whole weights; use 8gpu_ddp.yaml or zero2.yaml, not ZeRO-3")
    set_seed(cfg.seed)
    out = Path(cfg.output_dir)
    ckpt_dir = out / "checkpoints"
    if not cfg.resume and latest_checkpoint(ckpt_dir) is not None:
        raise SystemExit(f"stage1: {ckpt_dir} already has checkpoints; pass resume=true or another output_dir")

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

    samples, stats = stage1_samples(
        load_stage_manifest(cfg.data.manifest),
        frames_per_video=cfg.data.frames_per_video,
        seed=cfg.seed,
        prompt_style=prompt_style,
    )
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        write_samples(out / "samples.jsonl", samples)
        atomic_write_json(out / "data_stats.json", {"samples": stats.samples, "skipped": stats.skipped})
    dataset = SFTDataset(samples, processor, max_pixels=cfg.data.max_pixels, cache=cfg.data.cache)
    accelerator.print(
        f"stage1: {len(samples)} samples {stats.samples}, skipped {stats.skipped}; "
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
        accelerator.print(f"stage1: resumed from {resume_from} at step {step}")

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
        desc="stage1",
        status_weight=t.status_weight,
        status_ids=status_ids(processor.tokenizer),
    )
    logger.close()
    if step < t.max_steps:
        accelerator.print(f"stage1: stopped at step {step} (train.stop_at_step); resume=true continues")
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
    accelerator.print(f"stage1: wrote {final}")
    return final


if __name__ == "__main__":
    main()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
