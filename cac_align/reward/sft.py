"""Supervised fine-tuning pieces shared by the stage-1 and stage-2 recipes (paper Sec. 3.2, App. C.2).

* :func:`sft_loss` - the next-token cross-entropy on the assistant tokens of a :func:`cac_align.reward.chat.collate`
  batch (the answers and their closing ``<|im_end|>``; prompts, video tokens and padding carry no loss).
* :data:`LORA_TARGETS` / :func:`lora_config` - LoRA on every linear layer of the three parts the paper unfreezes
  ("All training stages unfreeze the full pipeline, including the ViT encoder, the adapter, and the LLM", Sec. 4):
  the language model's attention and MLP projections, the vision blocks' ``attn.qkv``/``attn.proj``/``mlp.linear_fc1/2``
  and the patch mergers (``visual.merger`` and the DeepStack ``deepstack_merger_list``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from cac_align.reward.chat import IGNORE_INDEX, model_inputs

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


def sft_loss(model, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token cross-entropy over the labelled tokens of a batch; returns ``(loss, number of tokens)``.

    ``batch`` is a :func:`~cac_align.reward.chat.collate` batch plus ``labels`` ``[B, L]`` (``input_ids`` on
    assistant tokens, -100 elsewhere). Only the positions from the first one that predicts a label to the end go
    through the lm_head (``logits_to_keep``): with left padding the answers sit at the end of every row, so the
    logits of the long prompts and videos are never materialised. The loss is the mean over this batch's labelled
    tokens (per micro-batch; gradient accumulation averages the micro-batch means).

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
    n = (targets != IGNORE_INDEX).sum()
    loss = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return loss / n, n
