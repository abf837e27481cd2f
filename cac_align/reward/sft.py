"""Supervised fine-tuning pieces shared by the stage-1 and stage-2 recipes (paper Sec. 3.2, App. C.2).

* :func:`sft_loss` - the next-token cross-entropy on the assistant tokens of a :func:`cac_align.reward.chat.collate`
  batch (the answers and their closing ``<|im_end|>``; prompts, video tokens and padding carry no loss), optionally
  weighing the status token (:func:`status_ids`, :func:`status_weights`) more.
* :data:`LORA_TARGETS` / :func:`lora_config` - LoRA on every linear layer of the three parts the paper unfreezes
  ("All training stages unfreeze the full pipeline, including the ViT encoder, the adapter, and the LLM", Sec. 4):
  the language model's attention and MLP projections, the vision blocks' ``attn.qkv``/``attn.proj``/``mlp.linear_fc1/2``
  and the patch mergers (``visual.merger`` and the DeepStack ``deepstack_merger_list``).
* :func:`lr_factor` - the learning-rate schedule of both stages: linear warmup, then cosine decay or constant.
* :func:`sft_loop` - the training loop both recipes run (micro-batches of :func:`sft_loss`, one optimizer step per
  ``grad_accum`` of them, rank-0 logging and full-state checkpoints); everything around it stays in the recipes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from cac_align.reward.chat import IGNORE_INDEX, model_inputs
from cac_align.train.logging import Timer, progress

if TYPE_CHECKING:
    from accelerate import Accelerator

    from cac_align.train.logging import MetricLogger

LORA_TARGETS = (
    r".*\.(language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
    r"|visual\.(blocks\.\d+\.(attn\.(qkv|proj)|mlp\.linear_fc[12])"
    r"|merger\.linear_fc[12]|deepstack_merger_list\.\d+\.linear_fc[12]))"
)
"""A PEFT ``target_modules`` regex (full match on module names) for Qwen3-VL: the LLM, the ViT and the mergers."""


def lora_config(rank: int, alpha: float, dropout: float, targets: str = LORA_TARGETS):
    """A ``peft.LoraConfig`` over ``targets`` (default :data:`LORA_TARGETS`); the paper's warmup uses rank 32."""
    from peft import LoraConfig

    if rank < 1:
        raise ValueError(f"lora rank must be >= 1, got {rank}")
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")


def sft_loss(
    model, batch: Mapping[str, torch.Tensor], status_weight: float = 1.0, status_ids: tuple[int, ...] = ()
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token cross-entropy over the labelled tokens of a batch; returns ``(loss, number of tokens)``.

    ``batch`` is a :func:`~cac_align.reward.chat.collate` batch plus ``labels`` ``[B, L]`` (``input_ids`` on
    assistant tokens, -100 elsewhere). Only the positions from the first one that predicts a label to the end go
    through the lm_head (``logits_to_keep``): with left padding the answers sit at the end of every row, so the
    logits of the long prompts and videos are never materialised. The loss is the mean over this batch's labelled
    tokens (per micro-batch; gradient accumulation averages the micro-batch means).

    ``status_weight`` (default 1: the paper's plain SFT) weighs every labelled token whose id is in ``status_ids``
    (the two tokens where "normal" and "abnormal" part, :func:`cac_align.reward.cac.status_tokens`) that many times
    in a weighted mean: the judgment is one token of an answer of 50-200, so a model that must still learn to see
    (``experiments/synthetic_three_stage.py``) gets almost none of its gradient from it. A chain of thought that
    uses the two words is weighed there too.

    Raises:
        ValueError: a batch without any labelled token.
    """
    labels = batch["labels"]
    has_target = (labels[:, 1:] != IGNORE_INDEX).any(dim=0)  # position t predicts token t + 1
    if not bool(has_target.any()):
        raise ValueError("sft_loss: the batch has no assistant token to learn (all labels are -100)")
    first = int(has_target.nonzero()[0])
    keep = labels.shape[1] - first
    device = batch["input_ids"].device
    out = model(**model_inputs(batch, device), logits_to_keep=keep, use_cache=False)
    logits = out.logits[:, :-1]  # [B, keep - 1, V]: positions first .. L - 2
    targets = labels[:, first + 1 :].to(logits.device)
    labelled = targets != IGNORE_INDEX
    n = labelled.sum()
    per_token = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    ).view_as(targets)
    if status_weight == 1.0 or not status_ids:
        return per_token.sum() / n, n
    weight = status_weights(targets, labelled, status_ids, status_weight)
    return (per_token * weight).sum() / (weight * labelled).sum(), n


def status_ids(tokenizer) -> tuple[int, int]:
    """The token ids where an answer's status reads "normal" or "abnormal" (:func:`sft_loss`'s ``status_ids``)."""
    from cac_align.reward.cac import status_tokens

    st = status_tokens(tokenizer)
    return st.normal, st.abnormal


def status_weights(ids: torch.Tensor, mask: torch.Tensor, status_ids: Iterable[int], weight: float) -> torch.Tensor:
    """Token weights: ``weight`` where ``mask`` is set and the id is in ``status_ids`` (:func:`status_ids`), 1 elsewhere.

    The weighted means of :func:`sft_loss` (stages 1-2, ``train.status_weight``) and of the stage-3 surrogate
    (:func:`cac_align.algos.grpo.clipped_surrogate`, ``grpo.status_weight``) use it. A departure from the paper's
    plain means (Eq. 10 in stage 3), off at ``weight = 1``: the judgment that decides an answer is one token of
    40-200, so under a plain mean a model that must still learn to see gets almost none of the gradient from it.
    """
    if not weight > 0:
        raise ValueError(f"status weight must be > 0, got {weight}")
    hit = torch.isin(ids, torch.tensor(list(status_ids), device=ids.device, dtype=ids.dtype))
    return 1.0 + (weight - 1.0) * (hit & mask.bool().to(ids.device)).float()


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Learning-rate factor after ``step`` optimizer steps: linear warmup over ``warmup`` steps, then cosine decay to
    0 at ``total`` (``schedule="cosine"``) or constant (``"constant"``); the paper gives no schedule."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def sft_loop(
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batches: Iterable[dict[str, torch.Tensor]],
    *,
    step: int,
    max_steps: int,
    grad_accum: int,
    max_grad_norm: float | None,
    log_every: int,
    save_every: int,
    stop_at_step: int | None,
    logger: MetricLogger,
    checkpoint: Callable[[int], None],
    desc: str,
    status_weight: float = 1.0,
    status_ids: tuple[int, ...] = (),
) -> int:
    """Train from optimizer step ``step`` to ``max_steps`` (or to ``stop_at_step``); returns the step it ended at.

    Each step runs ``grad_accum`` micro-batches from ``batches`` (an endless iterator, positioned at ``step``) through
    :func:`sft_loss` under ``accelerator.accumulate``, so that DDP and DeepSpeed synchronise and step once, then
    steps ``scheduler`` by hand (accelerate's prepared scheduler would step once per process). Every ``log_every``
    steps and at the end, the process-mean loss, learning rate, gradient norm, tokens per second and the step's
    summed answer tokens go to ``logger`` (rank 0 writes). ``checkpoint(step)`` is called on every rank every
    ``save_every`` steps, at ``max_steps`` and at ``stop_at_step``. ``status_weight`` and ``status_ids`` go to
    :func:`sft_loss`.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    timer = Timer()
    batches = iter(batches)
    bar = progress(total=max_steps, initial=step, desc=desc, unit="step")
    while step < max_steps:
        start = time.perf_counter()
        losses = []
        tokens = torch.zeros((), dtype=torch.long, device=accelerator.device)  # all tokens of the step
        targets = torch.zeros((), dtype=torch.long, device=accelerator.device)  # tokens with loss
        grad_norm = None
        lr = scheduler.get_last_lr()[0]
        for _ in range(grad_accum):
            with timer("data"):
                batch = {k: v.to(accelerator.device) for k, v in next(batches).items()}
            with timer("train"), accelerator.accumulate(model):
                loss, n = sft_loss(model, batch, status_weight, status_ids)
                accelerator.backward(loss)
                if accelerator.sync_gradients and max_grad_norm is not None:
                    grad_norm = accelerator.clip_grad_norm_(params, max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
            tokens += batch["attention_mask"].sum()
            targets += n
        scheduler.step()
        step += 1
        bar.update(1)

        if step % log_every == 0 or step == max_steps:
            mean_loss = accelerator.reduce(torch.stack(losses).mean(), "mean")
            all_tokens, all_targets = accelerator.reduce(torch.stack([tokens, targets]), "sum").tolist()
            seconds = time.perf_counter() - start
            metrics = {
                "train/loss": mean_loss,
                "train/lr": lr,
                "train/grad_norm": grad_norm,
                "train/tokens_per_s": all_tokens / seconds,
                "train/answer_tokens": all_targets,
                **timer.pop(),
            }
            logger.log(metrics, step)
            bar.set_postfix(loss=f"{float(mean_loss):.4f}", lr=f"{lr:.2e}")

        if step % save_every == 0 or step == max_steps or step == stop_at_step:
            checkpoint(step)
        if stop_at_step is not None and stop_at_step <= step < max_steps:
            break
    bar.close()
    return step
