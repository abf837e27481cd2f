"""Stage 3/3 of the CaC reward model: two-turn GRPO (paper Sec. 3.2 "Stage 3", Sec. 3.3, App. C.1-C.2).

Each step takes ``videos_per_step`` videos of the stage-3 split (1:1 normal / anomalous) and, for each, samples a
group of ``G`` two-turn rollouts (:func:`cac_align.algos.rollout.two_turn_rollouts`): turn 1 scans the whole video
at 4 fps; a rollout whose turn 1 is valid, abnormal and names a window crops **its own** clip at that window, 8 fps,
for turn 2; any other rollout ends after turn 1 (App. C.1). Each rollout is scored by the rule rewards of Sec. 3.3
(:func:`cac_align.rewards.rollout_reward`, Eq. 2-6), rewards become group-normalised advantages (Eq. 8), and the
policy is updated with the token-level clipped surrogate over both turns' generated tokens only (Eq. 9-10; the
inserted turn-2 prompt and clip tokens carry no loss) plus ``beta`` times the k3 KL to the reference (Eq. 11-12).

Why not TRL: TRL 1.16's ``GRPOTrainer`` has no video inputs. Its loss forward
(``_get_per_token_logps_and_entropies``) takes no ``pixel_values_videos`` / ``video_grid_thw``, so a two-turn
rollout would be scored with its video tokens but without their pixels; making it work means overriding private
methods (``_generate_and_score_completions``, ``_compute_loss``) pinned to one TRL release. This is our own loop on
accelerate instead, whose log-prob forward sees both videos (:func:`cac_align.algos.rollout.rollout_logprobs`).

Launch (the paper: 16 H200, 250 steps, about 42 h; lr 1e-6, G = 8, 64 videos per step, gradient accumulation 32,
i.e. 512 rollouts per step and one rollout per micro-batch on each GPU)::

    cac-align data splits data/cot/manifest.jsonl -o data/splits
    accelerate launch --config_file reward/configs/accelerate/zero2.yaml --num_machines 2 --num_processes 16 \\
        --machine_rank $NODE_RANK --main_process_ip $MASTER_ADDR --main_process_port 29500 \\
        reward/stage3_grpo.py --config reward/configs/stage3.yaml \\
        data.manifest=data/splits/stage3.jsonl init_from=runs/stage2/final output_dir=runs/stage3

Tiny CPU run on the synthetic world (under 3 minutes on 2 cores)::

    cac-align synth runs/tiny/data --num-videos 24 --size 64x64 --seconds 2
    cac-align data splits runs/tiny/data/manifest.jsonl -o runs/tiny/splits
    python reward/stage3_grpo.py --config reward/configs/tiny/stage3.yaml

Outputs in ``output_dir``: ``final/`` (a Qwen3-VL checkpoint folder with ``cac_reward.json`` that
``CaCReward.from_pretrained`` loads; a LoRA is merged into the weights, and saved alone in ``adapter/``),
``checkpoints/step_*`` (weights or LoRA, optimizer, LR scheduler, RNG; ``resume=true`` continues from the newest and
gives the same run as an uninterrupted one), ``config.yaml``, ``metrics.jsonl`` + ``tensorboard/`` (every reward term,
status accuracy, temporal / spatial IoU, turn-2 rate, clip fraction, KL, the gap between sampling-time and recomputed
log-probs, time per block) and ``rollouts.jsonl`` (rank 0's first group of each logged step, texts and rewards).

Memory. The reference policy of Eq. 11 is the LoRA-disabled model when training LoRA (``with disable_adapter()``: no
extra weights, one extra forward pass per rollout). Full fine-tuning (the paper's setting) keeps a frozen copy of the
initial weights on every GPU: for Qwen3-VL-8B 16 GB in bf16, next to the trained model (32 GB of fp32 weights under
bf16 autocast) and AdamW's 64 GB of moments, which is why the paper preset uses DeepSpeed ZeRO-2 (optimizer state and
gradients sharded over the 16 GPUs). ZeRO-3 is refused: generation needs whole weights on each GPU. With
``grpo.beta = 0`` no reference is built or run.

Where the paper is silent or this departs from it:

- ``beta`` (KL), ``clip_eps``, the sampling temperature and the token budgets are not given in the paper; the presets
  use 0.04, 0.2, 1.0 and 2048 tokens per turn (DeepSeekMath's GRPO values and CaCReward's budget).
- The policy ``pi_theta`` is the sampling distribution, ``softmax(z / T)`` without the suppressed vision tokens.
- ``grpo.num_iterations = 1`` (default) makes each rollout batch one optimizer step, fully on-policy: the ratio of
  Eq. 10 is exactly 1 and clipping never acts (then ``pi_theta_old`` is the detached current policy, as in TRL).
  More iterations reuse the batch for further optimizer steps, where clipping acts.
- Turn 1 samples at the annotation's rate (``Annotation.fps``, 4) whatever the video's length, so predicted and GT
  windows index the same frames; inference (``CaCReward``) lowers the rate of videos longer than ``max_frames``.
- A turn-1 answer that fails the format check ends the rollout even if a window could be read from it (Eq. 2 already
  scores it invalid); ``CaCReward`` reads such answers leniently.
- The learning rate has a linear warmup (``train.warmup_steps`` optimizer steps, 0 in the paper preset) and is then
  constant; the paper gives no schedule.
- ``grpo.status_weight`` (default 1: Eq. 10 as written) weighs the status token that many times in each rollout's
  surrogate mean (:func:`cac_align.reward.sft.status_weights`), as ``train.status_weight`` does in the SFT stages.
- The status reward fails an invalid turn whatever status it holds (``grpo.status_check = "valid"``, our reading of
  Sec. 3.3: "correct across both turns"). So an anomaly seen in both turns whose turn-2 box list breaks its JSON
  scores below answering ``normal``, which pushes a policy with fragile turn-2 answers towards ``normal``.
  ``grpo.status_check = "read"`` reads each turn's status as ``CaCReward`` does at inference, also from an invalid
  answer, and leaves invalidity to the format reward (measured in ``experiments/RESULTS.md``: it keeps the
  anomalous recall the default loses there but does not raise the status accuracy, and GRPO may then stop writing
  valid box lists, which now cost only the format term).
- ``grpo.normal_check`` (default ``"turn1"``): Sec. 3.3 lets a normal video "directly pass the status check in the
  first turn" and penalizes a false prediction, without saying whether a false alarm that turn 2 rejects is one. The
  default fails it whatever turn 2 says; ``"final"`` judges it on the final answer, as ``CaCReward`` decides at
  inference, so turn 2 earns its rejection.
- ``grpo.length_norm`` (default null: Eq. 10's ``1/|y_i|``) divides each rollout's token sum by a constant number of
  tokens instead (Dr. GRPO's normaliser). Under ``1/|y_i|`` the status token of a short ``normal`` answer (about 20
  tokens here) weighs several times that of an ``abnormal`` answer with its turn 2 (100 to 180), so the groups'
  positive advantages on short ``normal`` answers move the turn-1 status most.
- ``grpo.adv_scale`` (default ``"group"``: Eq. 8 as written) set to ``"none"`` only centres each group's rewards, Dr.
  GRPO's other change. Eq. 8's std makes a nearly uniform group's rare rollout weigh most: the one false alarm in a
  normal video's group of 8 gets an advantage of about -2.6, an anomalous video's group split 4:4 gets +-1.
- The synthetic experiment uses ``length_norm=640``, ``adv_scale=none`` and ``normal_check=final``: against stage 2
  on its validation videos stage 3 went from -0.064 (none of them) to -0.009 and -0.024 (without ``adv_scale``) and
  to +0.019, +0.006 and +0.018 (all three; ``experiments/RESULTS.md``). With ``normal_check=final`` the logged
  rollout status accuracy counts a rejected false alarm as correct, as the reward does.
"""

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from accelerate import Accelerator, DistributedType
from accelerate.utils import set_seed

from cac_align.algos.grpo import group_advantages, grpo_loss
from cac_align.algos.rollout import RolloutInput, rollout_logprobs, two_turn_rollouts
from cac_align.config import config_to_dict, load_config, save_config
from cac_align.data.stages import StepSampler, load_stage_manifest, video_kwargs_for
from cac_align.reward.cac import read_settings
from cac_align.reward.chat import collate
from cac_align.reward.qwen import load_qwen3vl, vision_token_ids
from cac_align.reward.sft import LORA_TARGETS, lora_config, status_ids, status_weights
from cac_align.reward.training import DTYPES, resolve_init, resume_state, save_final, save_state
from cac_align.rewards import rollout_reward
from cac_align.schema import Annotation
from cac_align.train.checkpoint import latest_checkpoint
from cac_align.train.logging import MetricLogger, Timer, progress
from cac_align.utils import append_jsonl


# ----------------------------------------------------------------------------------------------------------- config
@dataclass
class DataConfig:
    # The stage-3 manifest: `cac-align data splits MANIFEST -o DIR` writes DIR/stage3.jsonl (1:1 normal/anomalous).
    manifest: Path | None = None
    # Keep as many normal as anomalous videos (a seeded subset of the larger side) when the manifest is not 1:1.
    balance: bool = True
    # Per-frame pixel cap of the processor (null: the checkpoint's own, 768*32*32 for Qwen3-VL); saved as the final
    # checkpoint's inference setting too.
    max_pixels: int | None = None


@dataclass
class TrainConfig:
    # Steps; each samples one batch of rollouts (the paper: 250).
    max_steps: int = 250
    # Learning rate (the paper: 1e-6).
    lr: float = 1e-6
    # Videos per step over all processes; each gets grpo.group_size rollouts (the paper: 64).
    videos_per_step: int = 64
    # Micro-batches per optimizer step on each process; a micro-batch holds
    # videos_per_step * group_size / (processes * grad_accum) rollouts (the paper: 32, i.e. 1 rollout on 16 GPUs).
    grad_accum: int = 32
    # Optimizer steps of linear learning-rate warmup.
    warmup_steps: int = 0
    # AdamW weight decay.
    weight_decay: float = 0.0
    # Gradient-norm clipping (null: off).
    max_grad_norm: float | None = 1.0
    # Save a full training checkpoint every this many steps (and at the end).
    save_every: int = 25
    # Keep only the newest this many checkpoints (null: keep all).
    keep_last: int | None = 2
    # "auto": bf16 autocast on CUDA, fp32 on CPU.
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"
    # Recompute activations in the backward pass (less memory, about 30 % slower).
    gradient_checkpointing: bool = False
    # End the run after this step with a checkpoint and no final save (a cluster time slot; resume=true goes on).
    stop_at_step: int | None = None


@dataclass
class GRPOSection:
    # Rollouts per video, G of Eq. 8-9 (the paper: 8).
    group_size: int = 8
    # KL coefficient beta of Eq. 12 (0: no reference model, no KL).
    beta: float = 0.04
    # Clip range epsilon of Eq. 9.
    clip_eps: float = 0.2
    # Sampling temperature of both turns (the policy is softmax(logits / temperature)).
    temperature: float = 1.0
    # Token budget of the turn-1 answer.
    max_new_tokens_turn1: int = 2048
    # Token budget of the turn-2 answer.
    max_new_tokens_turn2: int = 2048
    # Optimizer steps per rollout batch (1: on-policy, ratio 1; more: PPO-style reuse where clipping acts).
    num_iterations: int = 1
    # Weight of the status token in each rollout's surrogate mean (1: Eq. 10 as written; see status_weights in
    # cac_align.reward.sft; the KL is not weighted).
    status_weight: float = 1.0
    # Which status the status reward reads (cac_align.rewards.rollout_reward): "valid" (an invalid turn fails the
    # check) or "read" (the status as CaCReward reads it at inference, also from an invalid answer; invalidity is
    # then left to the format reward).
    status_check: Literal["valid", "read"] = "valid"
    # Token normaliser of each rollout's loss: null (Eq. 10's 1/|y_i|) or a constant number of tokens L (Dr. GRPO:
    # each rollout's token sum / L, so a short answer's tokens weigh no more than a long one's).
    length_norm: int | None = None
    # Which turn a GT-normal video is judged on (cac_align.rewards.rollout_reward): "turn1" (turn 1 must say normal)
    # or "final" (the final answer, as CaCReward decides: a false alarm that turn 2 rejects also passes).
    normal_check: Literal["turn1", "final"] = "turn1"
    # Advantage scale of Eq. 8: "group" divides by each group's reward std (the paper); "none" only subtracts the
    # group mean (Dr. GRPO: a nearly uniform group, e.g. a normal video with one false alarm, then does not turn its
    # rare rollout into an advantage of several units).
    adv_scale: Literal["group", "none"] = "group"
    # epsilon_A of Eq. 8.
    adv_eps: float = 1e-6
    # Most sequences per generate call on each process (null: all rollouts of a turn at once).
    generation_batch: int | None = None


@dataclass
class LoraSection:
    # Train LoRA adapters; false trains every parameter (the paper: full pipeline in every stage).
    enabled: bool = False
    # LoRA rank.
    rank: int = 32
    # LoRA alpha (scale alpha / rank).
    alpha: float = 64.0
    # Dropout on the LoRA input (0 keeps generation and the loss forward on the same policy).
    dropout: float = 0.0
    # PEFT target_modules regex: the LLM's projections, the ViT blocks and the mergers.
    targets: str = LORA_TARGETS


@dataclass
class WeightsConfig:
    # w1..w5 of Eq. 6 (the paper: 1, 2, 2, 2, 5).
    format: float = 1.0
    status: float = 2.0
    type: float = 2.0
    temporal: float = 2.0
    spatial: float = 5.0


@dataclass
class LogConfig:
    # Where metrics go: tensorboard (and metrics.jsonl), wandb, or none.
    report_to: Literal["tensorboard", "wandb", "none"] = "tensorboard"
    # Log every this many steps.
    every: int = 1
    # W&B project.
    project: str = "cac-align"
    # Append rank 0's first group of each logged step (answers, windows, rewards) to rollouts.jsonl.
    rollouts: bool = True


@dataclass
class Stage3Config:
    """Stage 3/3 of the CaC reward: two-turn GRPO (paper Sec. 3.2, App. C.1)."""

    # Run folder (checkpoints, final model, logs).
    output_dir: Path
    # The stage-2 output (a local Qwen3-VL checkpoint folder), or "tiny" (a tiny random CaC checkpoint, CPU smoke runs).
    init_from: str
    # Continue from the newest checkpoint in output_dir/checkpoints (a fresh start when there is none).
    resume: bool = False
    # Seeds the data order, the LoRA init, sampling and the tiny checkpoint.
    seed: int = 0
    # Prompts trained with: "full" (the paper's) or "compact" (cac_align.reward.prompts); None keeps init_from's
    # (its cac_reward.json), else "full". The final checkpoint records it, so CaCReward prompts the same way.
    prompt_style: Literal["full", "compact"] | None = None
    # Weights dtype while training; float32 under bf16 autocast keeps lr 1e-6 updates from rounding away.
    dtype: Literal["float32", "bfloat16"] = "float32"
    # Weights dtype of the final checkpoint.
    save_dtype: Literal["float32", "bfloat16"] = "float32"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    grpo: GRPOSection = field(default_factory=GRPOSection)
    lora: LoraSection = field(default_factory=LoraSection)
    weights: WeightsConfig = field(default_factory=WeightsConfig)
    log: LogConfig = field(default_factory=LogConfig)


# Metrics averaged over every rollout of a step on all processes (a key without values this step is left out).
ROLLOUT_KEYS = (
    "reward/total",
    "reward/format",
    "reward/status",
    "reward/status_acc",
    "reward/status_acc_normal",
    "reward/status_acc_abnormal",
    "reward/type_iou",
    "reward/temporal_iou",
    "reward/spatial_iou",
    "rollout/turn1_valid",
    "rollout/turn2_rate",
    "rollout/turn2_valid",
    "rollout/turn1_tokens",
    "rollout/turn2_tokens",
    "rollout/truncated",
    "grpo/reward_std",
    "grpo/zero_adv_groups",
)
# Metrics averaged over micro-batches (all iterations) on all processes.
LOSS_KEYS = (
    "loss",
    "policy_loss",
    "kl",
    "clip_frac",
    "clip_frac_low",
    "clip_frac_high",
    "ratio_mean",
    "ratio_min",
    "ratio_max",
    "logp_gap",
)


def balanced(annotations: list[Annotation], seed: int) -> list[Annotation]:
    """As many normal as anomalous videos (App. C.2: 1:1 in every stage): a seeded subset of the larger side."""
    abnormal = [a for a in annotations if a.is_abnormal]
    normal = [a for a in annotations if not a.is_abnormal]
    m = min(len(abnormal), len(normal))
    rng = random.Random(seed)
    keep = {id(a) for a in rng.sample(abnormal, m) + rng.sample(normal, m)}
    return [a for a in annotations if id(a) in keep]


def lr_lambda(step: int, warmup: int) -> float:
    """Learning-rate factor after ``step`` optimizer steps: linear warmup, then constant."""
    return (step + 1) / warmup if step < warmup else 1.0


def global_means(accelerator: Accelerator, values: dict[str, list[float]], keys: tuple[str, ...]) -> dict[str, float]:
    """Mean of each key's values over all processes (every process must call this with the same ``keys``)."""
    sums = torch.tensor(
        [[math.fsum(values.get(k, [])), len(values.get(k, []))] for k in keys],
        dtype=torch.float64,
        device=accelerator.device,
    )
    sums = accelerator.reduce(sums, "sum")
    return {k: s / n for k, (s, n) in zip(keys, sums.tolist(), strict=True) if n > 0}


# ------------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> Path | None:
    """Run stage 3; returns the final checkpoint folder (None when ``train.stop_at_step`` ended the run early)."""
    cfg = load_config(Stage3Config, argv, prog="reward/stage3_grpo.py")
    if cfg.data.manifest is None:
        raise SystemExit("stage3: data.manifest is required (cac-align data splits writes DIR/stage3.jsonl)")
    t, g = cfg.train, cfg.grpo
    for name, value in {
        "train.max_steps": t.max_steps,
        "train.videos_per_step": t.videos_per_step,
        "train.grad_accum": t.grad_accum,
        "train.save_every": t.save_every,
        "grpo.group_size": g.group_size,
        "grpo.num_iterations": g.num_iterations,
        "grpo.max_new_tokens_turn1": g.max_new_tokens_turn1,
        "grpo.max_new_tokens_turn2": g.max_new_tokens_turn2,
        "log.every": cfg.log.every,
    }.items():
        if value < 1:
            raise SystemExit(f"stage3: {name} must be >= 1, got {value}")
    if not g.status_weight > 0:
        raise SystemExit(f"stage3: grpo.status_weight must be > 0, got {g.status_weight}")
    if g.length_norm is not None and g.length_norm < 1:
        raise SystemExit(f"stage3: grpo.length_norm must be a number of tokens >= 1 or null, got {g.length_norm}")
    if g.group_size < 2:
        print("stage3: warning: grpo.group_size=1 gives every rollout advantage 0 (nothing to learn)")

    # ------------------------------------------------------------------------------------------------------ build
    cuda = torch.cuda.is_available()
    precision = ("bf16" if cuda else "no") if t.mixed_precision == "auto" else t.mixed_precision
    accelerator = Accelerator(gradient_accumulation_steps=t.grad_accum, mixed_precision=precision)
    world = accelerator.num_processes
    if t.videos_per_step % world:
        raise SystemExit(f"stage3: train.videos_per_step={t.videos_per_step} must be a multiple of {world} processes")
    local_videos = t.videos_per_step // world
    local_rollouts = local_videos * g.group_size
    if local_rollouts % t.grad_accum:
        raise SystemExit(
            f"stage3: {local_rollouts} rollouts per process (videos_per_step / processes * group_size) do not split "
            f"into train.grad_accum={t.grad_accum} equal micro-batches"
        )
    micro = local_rollouts // t.grad_accum
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    if deepspeed:  # we do not prepare a DataLoader, so DeepSpeed cannot infer the micro-batch size
        ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
        ds_config["train_micro_batch_size_per_gpu"] = micro
        if ds_config.get("zero_optimization", {}).get("stage") == 3:
            raise SystemExit("stage3: generation needs whole weights on every GPU; use zero2.yaml or DDP, not ZeRO-3")
    set_seed(cfg.seed)
    out = Path(cfg.output_dir)
    ckpt_dir = out / "checkpoints"
    if not cfg.resume and latest_checkpoint(ckpt_dir) is not None:
        raise SystemExit(f"stage3: {ckpt_dir} already has checkpoints; pass resume=true or another output_dir")

    init = resolve_init(cfg.init_from, out, cfg.seed, accelerator)
    model, processor = load_qwen3vl(init, dtype=DTYPES[cfg.dtype])
    prompt_style = cfg.prompt_style or read_settings(init).get("prompt_style", "full")
    if t.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()  # LoRA: the frozen embeddings' outputs must carry gradients
    if cfg.lora.enabled:
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.targets))
    reference = None
    if g.beta > 0 and not cfg.lora.enabled:  # full fine-tuning: a frozen copy of the initial weights
        reference, _ = load_qwen3vl(init, device=accelerator.device, dtype=torch.bfloat16 if cuda else None)
        reference.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]

    instances = load_stage_manifest(cfg.data.manifest)
    if cfg.data.balance:
        instances = balanced(instances, cfg.seed)
    if not instances:
        raise SystemExit(f"stage3: {cfg.data.manifest} has no usable video (balance=true needs both kinds)")
    n_abnormal = sum(a.is_abnormal for a in instances)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    accelerator.print(
        f"stage3: {len(instances)} videos ({n_abnormal} anomalous); {local_rollouts} rollouts per process per step in "
        f"{t.grad_accum} micro-batches of {micro}; {sum(p.numel() for p in params):,} trainable parameters"
    )

    optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(s, t.warmup_steps))
    model, optimizer = accelerator.prepare(model, optimizer)
    if deepspeed:
        accelerator.register_for_checkpointing(scheduler)
    set_seed(cfg.seed + accelerator.process_index)  # weights are built alike on every rank; sampling differs

    step, resume_from = 0, None
    if cfg.resume:  # the newest complete checkpoint, if any
        step, resume_from = resume_state(
            accelerator, ckpt_dir, model=model, optimizer=optimizer, scheduler=scheduler, deepspeed=deepspeed
        )
    if resume_from is not None:
        accelerator.print(f"stage3: resumed from {resume_from} at step {step}")

    # Step s of process r takes positions (s W + r) V .. + V of a seeded endless order of the videos.
    order = iter(StepSampler(len(instances), local_videos, world, accelerator.process_index, cfg.seed, step))
    tok = processor.tokenizer
    pad = tok.pad_token_id
    suppress = vision_token_ids(tok)
    judgment_ids = status_ids(tok)
    video_kwargs = video_kwargs_for(processor, cfg.data.max_pixels)
    w = cfg.weights
    weights = (w.format, w.status, w.type, w.temporal, w.spatial)

    # ------------------------------------------------------------------------------------------------------- loop
    logger = MetricLogger(out, cfg.log.report_to, project=cfg.log.project, config=config_to_dict(cfg))
    timer = Timer()
    bar = progress(total=t.max_steps, initial=step, desc="stage3", unit="step")
    stopped = False
    while step < t.max_steps:
        start = time.perf_counter()
        anns = [instances[next(order)] for _ in range(local_videos)]
        policy = accelerator.unwrap_model(model)

        # 1. rollouts: G two-turn rollouts per video, each turn 2 on its own crop (App. C.1)
        with timer("rollout"), torch.no_grad(), accelerator.autocast():
            policy.eval()
            rollouts = two_turn_rollouts(
                policy,
                processor,
                [RolloutInput(Path(a.video), None, a.prompt, a.fps) for a in anns],
                g.group_size,
                g.max_new_tokens_turn1,
                g.max_new_tokens_turn2,
                temperature=g.temperature,
                max_batch=g.generation_batch,
                video_kwargs=video_kwargs,
                prompt_style=prompt_style,
            )

        # 2. rewards (Eq. 2-6) and group-normalised advantages (Eq. 8); a group is one video on this process
        with timer("reward"):
            scores = [
                rollout_reward(
                    r.judgment1,
                    r.judgment2,
                    anns[r.group],
                    weights,
                    status_check=g.status_check,
                    normal_check=g.normal_check,
                )
                for r in rollouts
            ]
            rewards = torch.tensor([s.total for s in scores], dtype=torch.float64)
            advantages = group_advantages(rewards, g.group_size, eps=g.adv_eps, scale=g.adv_scale)
        values: dict[str, list[float]] = {k: [] for k in ROLLOUT_KEYS}
        for r, s in zip(rollouts, scores, strict=True):
            abnormal = anns[r.group].is_abnormal
            values["reward/total"].append(s.total)
            values["reward/format"].append(s.format)
            values["reward/status"].append(s.status)
            values["reward/status_acc"].append(float(s.status_correct))
            values[f"reward/status_acc_{'abnormal' if abnormal else 'normal'}"].append(float(s.status_correct))
            if abnormal:
                values["reward/type_iou"].append(s.type)
                values["reward/temporal_iou"].append(s.temporal)
                values["reward/spatial_iou"].append(s.spatial)
            values["rollout/turn1_valid"].append(float(r.judgment1.valid))
            values["rollout/turn2_rate"].append(float(r.turn2 is not None))
            values["rollout/turn1_tokens"].append(len(r.turn1.ids))
            values["rollout/truncated"].append(float(r.turn1.truncated or (r.turn2 is not None and r.turn2.truncated)))
            if r.turn2 is not None and r.judgment2 is not None:
                values["rollout/turn2_valid"].append(float(r.judgment2.valid))
                values["rollout/turn2_tokens"].append(len(r.turn2.ids))
        for k in range(local_videos):
            group = rewards[k * g.group_size : (k + 1) * g.group_size]
            values["grpo/reward_std"].append(float(group.std(unbiased=False)))
            values["grpo/zero_adv_groups"].append(float(bool((group == group[0]).all())))
        batches = [
            collate([r.sequence for r in rollouts[i : i + micro]], pad) for i in range(0, local_rollouts, micro)
        ]

        # 3. reference log-probs (Eq. 11): the LoRA-disabled policy, or the frozen initial weights
        ref_logps: list[torch.Tensor | None] = [None] * len(batches)
        if g.beta > 0:
            with timer("reference"), torch.no_grad(), accelerator.autocast():
                for k, batch in enumerate(batches):
                    if reference is not None:
                        ref_logps[k] = rollout_logprobs(reference, batch, g.temperature, suppress)
                    else:
                        with policy.disable_adapter():
                            ref_logps[k] = rollout_logprobs(policy, batch, g.temperature, suppress)

        # 4. policy update: clipped surrogate over both turns' generated tokens + beta * KL (Eq. 9-12)
        losses: dict[str, list[float]] = {k: [] for k in LOSS_KEYS}
        old_logps: list[torch.Tensor | None] = [None] * len(batches)
        grad_norms = []
        lr = scheduler.get_last_lr()[0]
        model.train()
        with timer("train"):
            for _ in range(g.num_iterations):
                for k, batch in enumerate(batches):
                    with accelerator.accumulate(model):
                        logp = rollout_logprobs(model, batch, g.temperature, suppress)
                        mask = batch["assistant_mask"].to(logp.device)
                        token_weights = None
                        if g.status_weight != 1.0:
                            token_weights = status_weights(
                                batch["input_ids"].to(logp.device), mask, judgment_ids, g.status_weight
                            )
                        if old_logps[k] is None:  # the first pass runs the weights that sampled: pi_theta_old
                            old_logps[k] = logp.detach()
                            sampled = torch.cat([r.sampled_logp for r in rollouts[k * micro : (k + 1) * micro]])
                            gap = (logp.detach()[mask.bool()].cpu() - sampled).abs().mean()
                            losses["logp_gap"].append(float(gap))
                        loss, stats = grpo_loss(
                            logp,
                            old_logps[k],
                            advantages[k * micro : (k + 1) * micro].to(logp.device),
                            mask,
                            ref_logp=ref_logps[k],
                            beta=g.beta,
                            clip_eps=g.clip_eps,
                            weights=token_weights,
                            length_norm=g.length_norm,
                        )
                        accelerator.backward(loss)
                        if accelerator.sync_gradients and t.max_grad_norm is not None:
                            norm = accelerator.clip_grad_norm_(params, t.max_grad_norm)  # None under DeepSpeed
                            if norm is not None:
                                grad_norms.append(float(norm))
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                    for name, v in stats.items():
                        losses[name].append(float(v))
                scheduler.step()
        step += 1
        bar.update(1)

        # ---------------------------------------------------------------------------------------------------- log
        if step % cfg.log.every == 0 or step == t.max_steps:
            metrics = {
                **global_means(accelerator, values, ROLLOUT_KEYS),
                **{f"grpo/{k}": v for k, v in global_means(accelerator, losses, LOSS_KEYS).items()},
                "train/lr": lr,
                "train/grad_norm": sum(grad_norms) / len(grad_norms) if grad_norms else None,
                "time/step": time.perf_counter() - start,
                **timer.pop(),
            }
            logger.log(metrics, step)
            bar.set_postfix(reward=f"{metrics['reward/total']:.3f}", acc=f"{metrics['reward/status_acc']:.2f}")
            if cfg.log.rollouts and accelerator.is_main_process:
                append_jsonl(
                    out / "rollouts.jsonl",
                    {
                        "step": step,
                        "video": anns[0].video,
                        "status": anns[0].status,
                        "rollouts": [
                            {
                                "reward": s.log(""),
                                "advantage": float(a),
                                "window": r.window,
                                "turn1": r.turn1_text,
                                "turn2": r.turn2_text,
                            }
                            for r, s, a in zip(rollouts, scores, advantages, strict=True)
                            if r.group == 0
                        ],
                    },
                )

        # --------------------------------------------------------------------------------------------------- save
        if step % t.save_every == 0 or step == t.max_steps or step == t.stop_at_step:
            save_state(
                accelerator,
                ckpt_dir,
                step,
                model=model,
                optimizer=optimizer,
                scheduler=scheduler,
                data_state={"step": step},
                trainable_only=cfg.lora.enabled,
                keep_last=t.keep_last,
                deepspeed=deepspeed,
            )
        if t.stop_at_step is not None and step >= t.stop_at_step and step < t.max_steps:
            stopped = True
            break
    bar.close()
    logger.close()
    if stopped:
        accelerator.print(f"stage3: stopped at step {step} (train.stop_at_step); resume=true continues")
        accelerator.end_training()
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
    )
    accelerator.print(f"stage3: wrote {final}")
    accelerator.end_training()
    return final


if __name__ == "__main__":
    main()
