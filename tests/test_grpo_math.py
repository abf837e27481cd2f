"""GRPO math (paper App. C.1, Eq. 8-12) checked against values worked out by hand."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cac_align.algos.grpo import clipped_surrogate, group_advantages, grpo_loss, kl_k3
from cac_align.reward.sft import status_weights

EPS = 1e-6


# ---------------------------------------------------------------------------------------------- Eq. 8 advantages
def test_advantages_by_hand_population_std():
    # group 1: rewards 1, 2 -> mean 1.5, population std 0.5; group 2: 0, 0, 1, 3 -> mean 1, var (1+1+0+4)/4 = 1.5
    adv = group_advantages([1.0, 2.0], 2)
    assert adv.tolist() == pytest.approx([-0.5 / (0.5 + EPS), 0.5 / (0.5 + EPS)], abs=1e-7)
    adv = group_advantages(torch.tensor([0.0, 0.0, 1.0, 3.0]), 4)
    s = math.sqrt(1.5) + EPS
    assert adv.tolist() == pytest.approx([-1 / s, -1 / s, 0.0, 2 / s], abs=1e-6)
    assert adv.dtype == torch.float32


def test_advantages_groups_are_independent_and_ids_may_be_scattered():
    rewards = [0.2, 0.9, 5.0, 7.0, 0.4, 6.0]
    ids = ["p1", "p1", "p2", "p2", "p1", "p2"]
    adv = group_advantages(rewards, ids)
    contiguous = group_advantages([0.2, 0.9, 0.4, 5.0, 7.0, 6.0], 3)
    assert adv[[0, 1, 4, 2, 3, 5]].tolist() == pytest.approx(contiguous.tolist(), abs=1e-6)
    assert group_advantages(rewards, torch.tensor([3, 3, 8, 8, 3, 8])).tolist() == pytest.approx(adv.tolist())
    # each group sums to zero
    assert float(adv[[0, 1, 4]].sum()) == pytest.approx(0.0, abs=1e-6)


def test_equal_rewards_and_singletons_give_exactly_zero():
    adv = group_advantages([0.1, 0.1, 0.1, 0.7, 0.3], [0, 0, 0, 1, 2])
    assert adv.tolist() == [0.0, 0.0, 0.0, 0.0, 0.0]


def test_scale_none_only_centres():
    adv = group_advantages([1.0, 2.0, 6.0, 10.0], 2, scale="none")
    assert adv.tolist() == pytest.approx([-0.5, 0.5, -2.0, 2.0])


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.floats(-100, 100, allow_nan=False), min_size=4, max_size=4),
    st.floats(0.5, 20),
    st.floats(-50, 50),
)
def test_advantages_invariant_to_affine_reward_changes(rewards, a, b):
    base = group_advantages(rewards, 4, eps=0.0)
    moved = group_advantages([a * r + b for r in rewards], 4, eps=0.0)
    spread = max(rewards) - min(rewards)
    if spread < 1e-3:
        return
    assert moved.tolist() == pytest.approx(base.tolist(), abs=1e-4)


def test_advantage_input_errors():
    with pytest.raises(ValueError, match="indices \\[1\\] are None"):
        group_advantages([0.5, None], 2)
    with pytest.raises(ValueError, match="NaN"):
        group_advantages(torch.tensor([0.5, float("nan")]), 2)
    with pytest.raises(ValueError, match="group size 3"):
        group_advantages([1.0, 2.0], 3)
    with pytest.raises(ValueError, match="expected 2 ids"):
        group_advantages([1.0, 2.0], ["a"])


# --------------------------------------------------------------------------------- Eq. 9-10 clipped surrogate
def _two_rollouts(log_ratios: list[list[float]], mask: list[list[int]]):
    """logp = old_logp + log r on generated tokens; garbage (-inf / NaN) everywhere else."""
    torch.manual_seed(0)
    old = -torch.rand(2, 5, dtype=torch.float64) * 3
    lr = torch.tensor(log_ratios, dtype=torch.float64)
    m = torch.tensor(mask, dtype=torch.bool)
    logp = torch.where(m, old + lr, torch.tensor(-math.inf, dtype=torch.float64))
    old = torch.where(m, old, torch.tensor(math.nan, dtype=torch.float64))
    old[1, 4] = -math.inf
    return logp.requires_grad_(), old, m


def _ln(x):
    return math.log(x)


# Rollout 0 (A = +1): 4 generated tokens with ratios 1.5 (cut above), 0.5 (below, not cut), 1.1, 1.0.
# Rollout 1 (A = -1): 3 generated tokens with ratios 0.5 (cut below), 1.5 (above, not cut), 0.9.
RATIOS = [[0.0, _ln(1.5), _ln(0.5), _ln(1.1), _ln(1.0)], [0.0, _ln(0.5), _ln(1.5), _ln(0.9), 0.0]]
MASK = [[0, 1, 1, 1, 1], [0, 1, 1, 1, 0]]
ADV = torch.tensor([1.0, -1.0], dtype=torch.float64)


def test_clipped_surrogate_by_hand_both_sides():
    logp, old, mask = _two_rollouts(RATIOS, MASK)
    loss, stats = clipped_surrogate(logp, old, ADV, mask, clip_eps=0.2)
    row0 = (1.2 + 0.5 + 1.1 + 1.0) / 4  # min(r A, clip(r) A) with A = +1
    row1 = (-0.8 - 1.5 - 0.9) / 3  # with A = -1
    assert loss.item() == pytest.approx(-(row0 + row1) / 2, abs=1e-12)
    assert stats["clip_frac"].item() == pytest.approx(2 / 7)
    assert stats["clip_frac_low"].item() == pytest.approx(1 / 7)
    assert stats["clip_frac_high"].item() == pytest.approx(1 / 7)
    assert stats["ratio_mean"].item() == pytest.approx((1.5 + 0.5 + 1.1 + 1.0 + 0.5 + 1.5 + 0.9) / 7)
    assert stats["ratio_max"].item() == pytest.approx(1.5)
    assert stats["ratio_min"].item() == pytest.approx(0.5)

    loss.backward()
    g = logp.grad
    assert torch.isfinite(g).all()
    # d(-J)/d logp_it = -A_i r_it / (B |y_i|) where the unclipped branch is active, else 0; 0 off the mask.
    expected = torch.zeros(2, 5, dtype=torch.float64)
    expected[0, 2:] = torch.tensor([-0.5, -1.1, -1.0], dtype=torch.float64) / (2 * 4)
    expected[1, 2:4] = torch.tensor([1.5, 0.9], dtype=torch.float64) / (2 * 3)
    assert torch.allclose(g, expected, atol=1e-12)


def test_clip_higher_widens_only_the_upper_side():
    logp, old, mask = _two_rollouts(RATIOS, MASK)
    loss, stats = clipped_surrogate(logp, old, ADV, mask, clip_eps=0.2, clip_eps_high=0.6)
    row0 = (1.5 + 0.5 + 1.1 + 1.0) / 4
    row1 = (-0.8 - 1.5 - 0.9) / 3
    assert loss.item() == pytest.approx(-(row0 + row1) / 2, abs=1e-12)
    assert stats["clip_frac_high"].item() == 0.0
    assert stats["clip_frac_low"].item() == pytest.approx(1 / 7)


def test_on_policy_ratio_is_one_and_gradient_is_advantage_over_length():
    torch.manual_seed(1)
    logp = (-torch.rand(3, 6, dtype=torch.float64)).requires_grad_()
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 0, 0], [0, 1, 1, 1, 0, 0]], dtype=torch.bool)
    adv = torch.tensor([0.5, -2.0, 1.0], dtype=torch.float64)
    loss, stats = clipped_surrogate(logp, logp.detach(), adv, mask)
    assert loss.item() == pytest.approx(-adv.mean().item())
    assert stats["ratio_mean"].item() == 1.0 and stats["clip_frac"].item() == 0.0
    loss.backward()
    lengths = mask.sum(1, keepdim=True).double()
    assert torch.allclose(logp.grad, torch.where(mask, -adv[:, None] / (3 * lengths), 0.0))


def test_status_weights_turn_each_rollout_mean_into_a_weighted_mean():
    # tokens 7 and 9 are the two status ids; the prompt's 7 (off the mask) gets no weight
    ids = torch.tensor([[7, 5, 7, 3, 9], [1, 9, 4, 4, 2]])
    mask = torch.tensor([[0, 1, 1, 1, 1], [0, 1, 1, 1, 0]], dtype=torch.bool)
    w = status_weights(ids, mask, (7, 9), 5.0)
    assert w.tolist() == [[1, 1, 5, 1, 5], [1, 5, 1, 1, 1]]
    assert torch.equal(status_weights(ids, mask, (7, 9), 1.0), torch.ones(2, 5))
    logp, old, _ = _two_rollouts(RATIOS, MASK)
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    loss, _ = clipped_surrogate(logp, logp.detach(), adv, mask, weights=w)
    assert loss.item() == pytest.approx(-(1.0 - 1.0) / 2)  # on-policy: each weighted mean of r A is still A
    loss.backward()
    # d(-J)/d logp_it = -A_i w_it / (B sum_t w_it) on the mask
    expected = torch.zeros(2, 5, dtype=torch.float64)
    expected[0, 1:] = -torch.tensor([1.0, 5.0, 1.0, 5.0], dtype=torch.float64) / (2 * 12)
    expected[1, 1:4] = torch.tensor([5.0, 1.0, 1.0], dtype=torch.float64) / (2 * 7)
    assert torch.allclose(logp.grad, expected, atol=1e-12)
    with pytest.raises(ValueError, match="status weight"):
        status_weights(ids, mask, (7, 9), 0.0)
    with pytest.raises(ValueError, match="weights"):
        clipped_surrogate(logp, old, adv, mask, weights=torch.ones(2, 4))


def test_a_constant_length_norm_weighs_every_token_the_same():
    torch.manual_seed(1)
    logp = (-torch.rand(3, 6, dtype=torch.float64)).requires_grad_()
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 0, 0], [0, 1, 1, 1, 0, 0]], dtype=torch.bool)
    adv = torch.tensor([0.5, -2.0, 1.0], dtype=torch.float64)
    # on-policy each token's r A is A_i: rollout sums 6 * 0.5, 2 * -2, 3 * 1, each over L = 10, then over B = 3
    loss, _ = clipped_surrogate(logp, logp.detach(), adv, mask, length_norm=10)
    assert loss.item() == pytest.approx(-(3.0 - 4.0 + 3.0) / (10 * 3))
    loss.backward()
    # d(-J)/d logp_it = -A_i / (B L) on the mask, the same for a token of the 2-token rollout as of the 6-token one
    assert torch.allclose(logp.grad, torch.where(mask, -adv[:, None] / (3 * 10), 0.0))
    # the KL and the total take the same normaliser: a KL sum of row0 + row1 log-ratios over L = 8
    lp, _, m = _two_rollouts([[0.0] * 5, [0.0] * 5], MASK)
    ref = torch.where(m, lp.detach() + _ln(2), math.nan)  # rho = 2 on every generated token
    kl = kl_k3(lp, ref, m, length_norm=8)
    assert kl.item() == pytest.approx((4 + 3) * (2 - _ln(2) - 1) / (8 * 2), abs=1e-12)
    total, _ = grpo_loss(lp, lp.detach(), torch.tensor([1.0, -1.0]), m, ref_logp=ref, beta=0.5, length_norm=8)
    surrogate = -(4 * 1.0 + 3 * -1.0) / (8 * 2)
    assert total.item() == pytest.approx(surrogate + 0.5 * kl.item(), abs=1e-12)
    with pytest.raises(ValueError, match="length_norm"):
        clipped_surrogate(logp, logp.detach(), adv, mask, length_norm=0)


# --------------------------------------------------------------------------------------------- Eq. 11 k3 KL
def test_kl_k3_by_hand_and_gradient():
    # log rho = ref - logp on generated tokens: rollout 0: ln 2, 0, ln 0.5, 0; rollout 1: ln 3, 0, 0
    log_rho = [[0.0, _ln(2), 0.0, _ln(0.5), 0.0], [0.0, _ln(3), 0.0, 0.0, 0.0]]
    logp, _, mask = _two_rollouts([[0.0] * 5, [0.0] * 5], MASK)
    ref = torch.where(mask, logp.detach() + torch.tensor(log_rho, dtype=torch.float64), math.nan)
    kl = kl_k3(logp, ref, mask)
    row0 = ((2 - _ln(2) - 1) + 0 + (0.5 - _ln(0.5) - 1) + 0) / 4
    row1 = (3 - _ln(3) - 1) / 3
    assert kl.item() == pytest.approx((row0 + row1) / 2, abs=1e-12)
    kl.backward()
    rho = torch.exp(torch.tensor(log_rho, dtype=torch.float64))
    lengths = torch.tensor([[4.0], [3.0]], dtype=torch.float64)
    expected = torch.where(mask, (1 - rho) / (2 * lengths), 0.0)  # d(rho - log rho - 1)/d logp = 1 - rho
    assert torch.allclose(logp.grad, expected, atol=1e-12)


def test_kl_is_zero_at_the_reference_and_positive_elsewhere():
    torch.manual_seed(2)
    logp = -torch.rand(4, 7)
    mask = torch.rand(4, 7) > 0.3
    assert kl_k3(logp, logp.clone(), mask).item() == 0.0
    assert kl_k3(logp, logp + 0.3 * torch.randn(4, 7), mask).item() > 0.0


# ------------------------------------------------------------------------------------------------ Eq. 12 total
def test_grpo_loss_combines_surrogate_and_beta_kl():
    logp, old, mask = _two_rollouts(RATIOS, MASK)
    ref = torch.where(mask, old + 0.1, math.nan)
    surrogate, _ = clipped_surrogate(logp, old, ADV, mask)
    kl = kl_k3(logp, ref, mask)
    loss, stats = grpo_loss(logp, old, ADV, mask, ref_logp=ref, beta=0.04)
    assert loss.item() == pytest.approx(surrogate.item() + 0.04 * kl.item(), abs=1e-12)
    assert stats["kl"].item() == pytest.approx(kl.item())
    assert stats["policy_loss"].item() == pytest.approx(surrogate.item())
    no_kl, stats0 = grpo_loss(logp, old, ADV, mask, ref_logp=ref, beta=0.0)
    assert no_kl.item() == pytest.approx(surrogate.item()) and "kl" in stats0
    with pytest.raises(ValueError, match="needs ref_logp"):
        grpo_loss(logp, old, ADV, mask, beta=0.1)


def test_shape_errors_name_the_argument():
    logp = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="mask"):
        clipped_surrogate(logp, logp, torch.zeros(2), torch.ones(2, 4))
    with pytest.raises(ValueError, match="advantages"):
        clipped_surrogate(logp, logp, torch.zeros(3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="ref_logp"):
        kl_k3(logp, torch.zeros(2, 2), torch.ones(2, 3))
