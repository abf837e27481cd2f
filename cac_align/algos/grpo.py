"""GRPO math as pure functions: group-relative advantages, the clipped token-level surrogate and the k3 KL penalty.

Paper App. C.1: Eq. 8 (advantages), Eq. 9-10 (clipped surrogate with per-token ratios), Eq. 11 (KL to the
reference policy), Eq. 12 / Eq. 1 (``J = J_clip - beta * D_KL``). The functions return *losses* to minimise, i.e.
the negated objectives.

Shapes (``B`` rollouts in the batch, made of groups of ``G`` rollouts of the same input; ``T`` token positions):

    rewards, advantages   [B]
    logp, old_logp, ref_logp, mask   [B, T]   log-probabilities of the sampled tokens; mask = 1 on tokens the
                                              policy generated (both turns' answers), 0 on everything else (the
                                              instruction, video tokens, the inserted turn-2 prompt, padding)

Masked positions may hold any value, even ``-inf`` or NaN: they never reach the loss or its gradient.
Log-probabilities should be float32 (compute them from fp32 logits when the model runs in bf16).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Literal

import torch

__all__ = ["clipped_surrogate", "group_advantages", "grpo_loss", "kl_k3"]


def _group_index(groups: int | Sequence[Hashable] | torch.Tensor, n: int) -> torch.Tensor:
    """``[n]`` long tensor of group numbers 0..K-1 from a group size or per-rollout group ids."""
    if isinstance(groups, int):
        if groups < 1 or n % groups:
            raise ValueError(f"group size {groups} does not divide the {n} rewards into whole groups")
        return torch.arange(n) // groups
    if isinstance(groups, torch.Tensor):
        if groups.shape != (n,):
            raise ValueError(f"group_ids: expected shape ({n},), got {tuple(groups.shape)}")
        return torch.unique(groups.cpu(), return_inverse=True)[1]
    if len(groups) != n:
        raise ValueError(f"group_ids: expected {n} ids, got {len(groups)}")
    numbers: dict[Hashable, int] = {}
    return torch.tensor([numbers.setdefault(g, len(numbers)) for g in groups], dtype=torch.long)


def group_advantages(
    rewards: torch.Tensor | Sequence[float],
    groups: int | Sequence[Hashable] | torch.Tensor,
    *,
    eps: float = 1e-6,
    scale: Literal["group", "none"] = "group",
) -> torch.Tensor:
    """Group-relative advantages, Eq. 8: ``A_i = (R_i - mean_g(R)) / (std_g(R) + eps)`` within each group ``g``.

    The std is the *population* std of the group (divide by ``G``), i.e. the spread of the ``G`` rewards
    themselves, as in Flow-GRPO (``np.std``); TRL's GRPOTrainer uses the sample std (divide by ``G - 1``), which
    gives advantages smaller by ``sqrt((G - 1) / G)``. A group whose rewards are all equal (including a group of
    one) gets advantage exactly 0: it carries no preference signal.

    Args:
        rewards: ``[B]`` scalar rewards. Abstentions (``None`` / NaN) must be imputed first: NaN is an error.
        groups: The group size ``G`` when the batch is ``B / G`` consecutive groups, or ``[B]`` group ids (ints,
            strings such as prompts, any hashable) when rollouts of a group are scattered.
        eps: ``epsilon_A`` of Eq. 8.
        scale: ``"group"`` divides by the group std (Eq. 8); ``"none"`` only subtracts the group mean
            (Dr. GRPO style).

    Returns:
        ``[B]`` float32 advantages (on the device of ``rewards`` when it is a tensor).
    """
    if not isinstance(rewards, torch.Tensor):
        missing = [i for i, v in enumerate(rewards) if v is None]
        if missing:
            raise ValueError(f"rewards at indices {missing[:8]} are None (abstained); impute them first")
    r = rewards if isinstance(rewards, torch.Tensor) else torch.as_tensor(rewards, dtype=torch.float64)
    if r.ndim != 1:
        raise ValueError(f"rewards: expected shape [B], got {tuple(r.shape)}")
    if scale not in ("group", "none"):
        raise ValueError(f"scale must be 'group' or 'none', got {scale!r}")
    nan = torch.isnan(r)
    if nan.any():
        raise ValueError(
            f"rewards at indices {nan.nonzero().flatten().tolist()[:8]} are NaN; impute abstentions first"
        )
    device = r.device
    x = r.detach().to("cpu", torch.float64)
    idx = _group_index(groups, x.numel())
    if x.numel() == 0:
        return torch.zeros(0, device=device)
    k = int(idx.max()) + 1
    count = torch.zeros(k, dtype=torch.float64).index_add_(0, idx, torch.ones_like(x))
    mean = torch.zeros(k, dtype=torch.float64).index_add_(0, idx, x) / count
    centered = x - mean[idx]
    if scale == "group":
        var = torch.zeros(k, dtype=torch.float64).index_add_(0, idx, centered**2) / count
        centered = centered / (var.sqrt()[idx] + eps)
    hi = torch.full((k,), -torch.inf, dtype=torch.float64).scatter_reduce_(0, idx, x, reduce="amax")
    lo = torch.full((k,), torch.inf, dtype=torch.float64).scatter_reduce_(0, idx, x, reduce="amin")
    adv = torch.where((hi == lo)[idx], torch.zeros_like(centered), centered)
    return adv.to(device=device, dtype=torch.float32)


def _check(logp: torch.Tensor, other: torch.Tensor, mask: torch.Tensor, name: str) -> torch.Tensor:
    if logp.ndim != 2:
        raise ValueError(f"logp: expected shape [B, T], got {tuple(logp.shape)}")
    if other.shape != logp.shape:
        raise ValueError(f"{name}: expected shape {tuple(logp.shape)} like logp, got {tuple(other.shape)}")
    if mask.shape != logp.shape:
        raise ValueError(f"mask: expected shape {tuple(logp.shape)} like logp, got {tuple(mask.shape)}")
    return mask.bool()


def _sequence_mean(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    weights: torch.Tensor | None = None,
    length_norm: float | None = None,
) -> torch.Tensor:
    """``1/B sum_i 1/|y_i| sum_t x_it`` over masked tokens (Eq. 9 and 11). A row with no token contributes 0.
    With ``weights``, each row's mean is weighted: ``sum_t w_it x_it / sum_t w_it``. With ``length_norm`` = L, each
    row's (weighted) sum is divided by the constant L instead of its own length."""
    w = mask.to(per_token.dtype) if weights is None else torch.where(mask, weights.to(per_token), 0.0)
    total = (w * torch.where(mask, per_token, 0.0)).sum(dim=1)
    if length_norm is not None:
        return (total / length_norm).mean()
    return (total / w.sum(dim=1).clamp_min(1e-12)).mean()  # a row without tokens has total 0 and gives 0


def clipped_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    weights: torch.Tensor | None = None,
    length_norm: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped surrogate loss ``-J_clip``, Eq. 9-10, token level with per-sequence length normalisation.

    ``r_it = exp(logp_it - old_logp_it)`` (Eq. 10); per token ``min(r A_i, clip(r, 1 - eps, 1 + eps_high) A_i)``;
    averaged over the generated tokens of each rollout (``1/|y_i|``) and then over the rollouts (``1/G``, here
    over the whole batch of equal-size groups).

    Args:
        logp: ``[B, T]`` log-probs of the sampled tokens under the current policy (with grad).
        old_logp: ``[B, T]`` the same under the policy that sampled them (no grad is taken through it).
        advantages: ``[B]`` from :func:`group_advantages`.
        mask: ``[B, T]`` 1/True on generated tokens.
        clip_eps: ``epsilon`` of Eq. 9 (lower side, and upper side unless ``clip_eps_high`` is given).
        clip_eps_high: Upper clip range (DAPO's clip-higher); ``None`` uses ``clip_eps``.
        weights: ``[B, T]`` positive token weights, or None (the paper: every generated token weighs 1). Each
            rollout's ``1/|y_i| sum_t`` becomes ``sum_t w_it (.) / sum_t w_it`` (a departure: see
            :func:`cac_align.reward.sft.status_weights`).
        length_norm: None (the paper: each rollout's ``1/|y_i|``), or a constant ``L`` that divides every rollout's
            token sum instead (Dr. GRPO's normaliser, a departure): each token then weighs the same whatever its
            rollout's length, where ``1/|y_i|`` weighs the tokens of a short answer more.

    Returns:
        ``(loss, stats)``; ``stats`` holds detached scalars over generated tokens: ``clip_frac`` (tokens whose
        gradient is cut by clipping), ``clip_frac_low``/``clip_frac_high``, ``ratio_mean``, ``ratio_min``,
        ``ratio_max``.
    """
    m = _check(logp, old_logp, mask, "old_logp")
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages: expected shape ({logp.shape[0]},), got {tuple(advantages.shape)}")
    high = clip_eps if clip_eps_high is None else clip_eps_high
    if clip_eps < 0 or high < 0:
        raise ValueError(f"clip ranges must be >= 0, got clip_eps={clip_eps}, clip_eps_high={clip_eps_high}")
    if weights is not None and (weights.shape != logp.shape or bool((weights[m] <= 0).any())):
        raise ValueError(f"weights: expected positive values of shape {tuple(logp.shape)}, got {tuple(weights.shape)}")
    if length_norm is not None and not length_norm > 0:
        raise ValueError(f"length_norm: expected a positive number of tokens or None, got {length_norm}")
    log_ratio = torch.where(m, logp - old_logp.detach(), 0.0)  # masked garbage never reaches exp()
    ratio = torch.exp(log_ratio)
    a = advantages.detach().to(ratio.dtype)[:, None]
    unclipped = ratio * a
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + high) * a
    loss = -_sequence_mean(torch.minimum(unclipped, clipped), m, weights, length_norm)

    with torch.no_grad():
        n = m.sum().clamp_min(1)
        low_cut = (ratio < 1.0 - clip_eps) & (a < 0) & m
        high_cut = (ratio > 1.0 + high) & (a > 0) & m
        r = ratio[m]
        stats = {
            "clip_frac": (low_cut | high_cut).sum() / n,
            "clip_frac_low": low_cut.sum() / n,
            "clip_frac_high": high_cut.sum() / n,
            "ratio_mean": r.mean() if r.numel() else ratio.new_tensor(1.0),
            "ratio_min": r.min() if r.numel() else ratio.new_tensor(1.0),
            "ratio_max": r.max() if r.numel() else ratio.new_tensor(1.0),
        }
    return loss, stats


def kl_k3(
    logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, length_norm: float | None = None
) -> torch.Tensor:
    """KL penalty ``D_KL(pi_theta || pi_ref)``, Eq. 11, with the k3 estimator per generated token.

    ``rho = pi_ref / pi_theta = exp(ref_logp - logp)``; per token ``rho - log(rho) - 1`` (>= 0, unbiased for the
    KL of tokens sampled from ``pi_theta``); averaged per rollout over its generated tokens, then over rollouts.

    Args:
        logp: ``[B, T]`` current-policy log-probs (with grad).
        ref_logp: ``[B, T]`` reference-policy log-probs (no grad is taken through it).
        mask: ``[B, T]`` 1/True on generated tokens.
        length_norm: As in :func:`clipped_surrogate`: None averages per rollout, ``L`` divides its sum by L.

    Returns:
        A scalar tensor.
    """
    m = _check(logp, ref_logp, mask, "ref_logp")
    log_rho = torch.where(m, ref_logp.detach() - logp, 0.0)
    return _sequence_mean(torch.exp(log_rho) - log_rho - 1.0, m, length_norm=length_norm)


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    weights: torch.Tensor | None = None,
    length_norm: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The GRPO loss ``-(J_clip - beta * D_KL)``, Eq. 12 (= Eq. 1), from Eq. 9-11.

    Args:
        logp, old_logp, advantages, mask, clip_eps, clip_eps_high, weights, length_norm: As in
            :func:`clipped_surrogate` (the weights act on the surrogate only; ``length_norm`` on both terms).
        ref_logp: ``[B, T]`` reference-policy log-probs; needed when ``beta > 0``, optional (KL logged) otherwise.
        beta: KL coefficient.

    Returns:
        ``(loss, stats)``: the surrogate's stats plus ``policy_loss``, ``kl`` (when ``ref_logp`` is given) and
        ``loss``, all detached.
    """
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if beta > 0 and ref_logp is None:
        raise ValueError(f"beta={beta} > 0 needs ref_logp (reference-policy log-probs)")
    policy_loss, stats = clipped_surrogate(
        logp, old_logp, advantages, mask, clip_eps, clip_eps_high, weights, length_norm
    )
    loss = policy_loss
    stats["policy_loss"] = policy_loss.detach()
    if ref_logp is not None:
        kl = kl_k3(logp, ref_logp, mask, length_norm)
        stats["kl"] = kl.detach()
        if beta > 0:
            loss = loss + beta * kl
    stats["loss"] = loss.detach()
    return loss, stats
