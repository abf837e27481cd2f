"""Flow-GRPO for a flow-matching video model as functions (paper Sec. 4.2, App. C.4; Flow-GRPO's SDE policy).

The paper aligns Wan-2.1 with Flow-GRPO: every stochastic denoising step ``x_{i+1} ~ N(mean_theta(x_i), std_i^2 I)``
(:mod:`cac_align.generators.sampler`) is a policy action, a group of ``G`` videos of the same prompt shares one
group-normalised advantage per video, and the loss is GRPO's (App. C.1, Eq. 8-12) applied per SDE step:

    r_i,k   = exp(log p_theta(x_{k+1} | x_k) - log p_old(x_{k+1} | x_k))                 (Eq. 10, per step k)
    L_clip  = -1/B sum_i 1/|K| sum_k min(r_i,k A_i, clip(r_i,k, 1 - eps, 1 + eps) A_i)   (Eq. 9)
    KL_i,k  = ||mean_theta - mean_ref||^2 / (2 std_k^2), averaged over latent elements       (Eq. 11, Gaussian KL)
    L       = L_clip + beta * 1/B sum_i 1/|K| sum_k KL_i,k                                  (Eq. 12)

Between two Gaussians of equal std the KL is exactly the scaled squared distance of their means, so the KL term
needs only the reference's predicted mean (the LoRA-disabled transformer), not a sampled estimate.

Shapes: ``B`` videos, ``S`` recorded SDE steps; ``log_prob`` ``[B]``; ``mean`` ``[B, C, F', H', W']``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from typing import Any, Literal

import torch

from cac_align.algos.grpo import clipped_surrogate, group_advantages

__all__ = [
    "EMA",
    "PromptSampler",
    "advantages_with_abstentions",
    "gaussian_mean_kl",
    "sde_window",
    "step_policy_loss",
    "train_step_subset",
]


def advantages_with_abstentions(
    totals: Sequence[float | None],
    group_ids: Sequence[Hashable],
    *,
    scale: Literal["group", "none"] = "group",
    clip: float | None = None,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-relative advantages (Eq. 8) of mixed rewards where some videos may have no reward at all (None).

    A None total (every reward component abstained) is left out of its group's mean and std and gets advantage 0,
    so it neither pushes nor pulls the policy; nothing is imputed.

    Args:
        totals: ``[B]`` mixed rewards, None for abstentions.
        group_ids: ``[B]`` the group (prompt) of each video.
        scale: ``"group"`` divides by the group std (Eq. 8), ``"none"`` only centres.
        clip: clamp advantages to ``[-clip, clip]`` (Flow-GRPO's ``adv_clip_max``); None keeps them.
        eps: ``epsilon_A`` of Eq. 8.

    Returns:
        ``(advantages [B] float32, scored [B] bool)``.
    """
    if len(group_ids) != len(totals):
        raise ValueError(f"group_ids: expected {len(totals)} ids, got {len(group_ids)}")
    if clip is not None and clip <= 0:
        raise ValueError(f"clip must be positive or None, got {clip}")
    scored = torch.tensor([t is not None for t in totals], dtype=torch.bool)
    adv = torch.zeros(len(totals), dtype=torch.float32)
    idx = scored.nonzero().flatten().tolist()
    if idx:
        sub = group_advantages([totals[i] for i in idx], [group_ids[i] for i in idx], eps=eps, scale=scale)
        adv[idx] = sub
    if clip is not None:
        adv = adv.clamp(-clip, clip)
    return adv, scored


def gaussian_mean_kl(mean: torch.Tensor, ref_mean: torch.Tensor, std: float) -> torch.Tensor:
    """``KL(N(mean, std^2) || N(ref_mean, std^2))`` per video, averaged over the latent elements: ``[B]``."""
    if mean.shape != ref_mean.shape:
        raise ValueError(f"ref_mean: expected shape {tuple(mean.shape)}, got {tuple(ref_mean.shape)}")
    return (mean.float() - ref_mean.float().detach()).square().flatten(1).mean(1) / (2 * std**2)


def step_policy_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_range: float,
    beta: float = 0.0,
    mean: torch.Tensor | None = None,
    ref_mean: torch.Tensor | None = None,
    std: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Flow-GRPO loss of one SDE step for ``B`` videos: the clipped surrogate plus ``beta`` times the mean KL.

    Summing this over the ``K`` trained steps and dividing by ``K`` gives ``L`` of the module docstring.

    Args:
        log_prob: ``[B]`` log-probs of the recorded transitions under the current weights (with grad).
        old_log_prob: ``[B]`` the same under the sampling weights (``Trajectory.log_probs[:, k]``).
        advantages: ``[B]`` from :func:`advantages_with_abstentions`.
        clip_range: ``epsilon`` of Eq. 9 (Flow-GRPO uses ~1e-3 or 1e-4: per-step ratios stay close to 1).
        beta: KL coefficient; when > 0, ``mean``, ``ref_mean`` and ``std`` are required.
        mean, ref_mean, std: the step's Gaussian mean under the current and the reference weights, and its std.

    Returns:
        ``(loss, stats)``: stats are detached scalars ``policy_loss``, ``kl`` (when the means are given), ``loss``,
        ``clip_frac``, ``ratio_mean``, ``ratio_min``, ``ratio_max``.
    """
    if log_prob.ndim != 1:
        raise ValueError(f"log_prob: expected shape [B], got {tuple(log_prob.shape)}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if beta > 0 and (mean is None or ref_mean is None or std is None):
        raise ValueError(f"beta={beta} > 0 needs mean, ref_mean and std of the step")
    mask = torch.ones_like(log_prob, dtype=torch.bool)[:, None]
    policy, stats = clipped_surrogate(
        log_prob[:, None], old_log_prob.to(log_prob)[:, None], advantages.to(log_prob), mask, clip_range
    )
    loss = policy
    out = {k: stats[k] for k in ("clip_frac", "ratio_mean", "ratio_min", "ratio_max")}
    out["policy_loss"] = policy.detach()
    if mean is not None and ref_mean is not None and std is not None:
        kl = gaussian_mean_kl(mean, ref_mean, std).mean()
        out["kl"] = kl.detach()
        if beta > 0:
            loss = loss + beta * kl
    out["loss"] = loss.detach()
    return loss, out


def sde_window(
    num_steps: int, size: int | None, start_range: tuple[int, int] | None, generator: torch.Generator
) -> list[int] | None:
    """The stochastic steps of one rollout: all but the last (``size=None``), or a window of ``size`` steps.

    Flow-GRPO-Fast and MixGRPO make only a few consecutive steps stochastic and train on those; the window starts at
    a step drawn uniformly from ``start_range`` (inclusive; default ``[0, num_steps - 1 - size]``), the same for the
    whole group so its videos are comparable.

    Returns:
        ``sde_steps`` for :func:`cac_align.generators.sampler.sample` (None = every step but the last).
    """
    if size is None:
        return None
    last = num_steps - 1 - size  # the last step (to sigma 0) is always deterministic
    if size < 1 or last < 0:
        raise ValueError(f"sde window size must be in [1, {num_steps - 1}] for {num_steps} steps, got {size}")
    lo, hi = (0, last) if start_range is None else start_range
    if not 0 <= lo <= hi <= last:
        raise ValueError(f"sde window start range must lie in [0, {last}] for size {size}, got {[lo, hi]}")
    start = lo + int(torch.randint(hi - lo + 1, (1,), generator=generator))
    return list(range(start, start + size))


def train_step_subset(num_sde_steps: int, fraction: float, generator: torch.Generator) -> list[int]:
    """Positions (into ``Trajectory.sde_steps``) of the SDE steps to train on: ``ceil(fraction * S)`` at random.

    Flow-GRPO's ``timestep_fraction``: training on a random part of the steps costs proportionally less and still
    gives an unbiased estimate of the full-trajectory gradient. Returned in ascending order.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"train fraction of SDE steps must be in (0, 1], got {fraction}")
    if num_sde_steps < 1:
        raise ValueError("the trajectory has no SDE step to train on")
    k = max(1, min(num_sde_steps, math.ceil(fraction * num_sde_steps - 1e-9)))
    return sorted(torch.randperm(num_sde_steps, generator=generator)[:k].tolist())


class PromptSampler:
    """Endless shuffled passes over ``num_prompts`` prompts; its position is part of a checkpoint.

    Pass ``e`` visits the prompts in ``randperm(num_prompts)`` drawn from ``seed + e``, so a resumed run continues
    the same order from its saved ``(epoch, index)``.
    """

    def __init__(self, num_prompts: int, seed: int = 0) -> None:
        if num_prompts < 1:
            raise ValueError("PromptSampler: no prompts")
        self.num_prompts = num_prompts
        self.seed = seed
        self.epoch = 0
        self.index = 0

    def _order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.num_prompts, generator=g).tolist()

    def take(self, k: int) -> list[int]:
        """The next ``k`` prompt indices (crossing into the next pass when this one ends)."""
        out: list[int] = []
        order = self._order()
        while len(out) < k:
            if self.index == self.num_prompts:
                self.epoch, self.index = self.epoch + 1, 0
                order = self._order()
            out.append(order[self.index])
            self.index += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index, "num_prompts": self.num_prompts, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["num_prompts"] != self.num_prompts or state["seed"] != self.seed:
            raise ValueError(
                f"prompt sampler state is for {state['num_prompts']} prompts with seed {state['seed']}, "
                f"this run has {self.num_prompts} prompts and seed {self.seed} (prompts file or seed changed?)"
            )
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


class EMA:
    """Exponential moving average of parameters: ``shadow <- decay * shadow + (1 - decay) * param`` after each step.

    Flow-GRPO keeps an EMA of the trained (LoRA) weights and evaluates/saves it; the shadow copy is fp32.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], decay: float) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow = [p.detach().float().clone() for p in params]

    @torch.no_grad()
    def update(self, params: Iterable[torch.nn.Parameter]) -> None:
        params = list(params)
        if len(params) != len(self.shadow):
            raise ValueError(f"EMA: expected {len(self.shadow)} parameters, got {len(params)}")
        for s, p in zip(self.shadow, params, strict=True):
            s.lerp_(p.detach().float(), 1 - self.decay)

    @torch.no_grad()
    def copy_to(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Write the averaged values into ``params`` (e.g. before saving the final weights)."""
        for s, p in zip(self.shadow, list(params), strict=True):
            p.copy_(s.to(p.dtype))

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "shadow": [s.clone() for s in self.shadow]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError(f"EMA state has {len(state['shadow'])} tensors, expected {len(self.shadow)}")
        self.decay = float(state["decay"])
        self.shadow = [
            s.to(device=old.device, dtype=torch.float32).clone()
            for s, old in zip(state["shadow"], self.shadow, strict=True)
        ]
