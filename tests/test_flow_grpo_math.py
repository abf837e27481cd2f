"""Flow-GRPO pieces as pure functions (cac_align.algos.flow_grpo), Best-of-N selection, and the simple rewards."""

from __future__ import annotations

import math

import pytest
import torch

from cac_align.algos.best_of_n import best_index
from cac_align.algos.flow_grpo import (
    EMA,
    PromptSampler,
    advantages_with_abstentions,
    gaussian_mean_kl,
    sde_window,
    step_policy_loss,
    train_step_subset,
)
from cac_align.reward.build import RewardSpec, build_mixed_reward, build_reward
from cac_align.reward.simple import Brightness, ColorTarget, ReferenceVideo


def test_best_index_is_the_argmax_skipping_abstentions_and_first_on_ties():
    assert best_index([0.1, 0.7, 0.3]) == 1
    assert best_index([None, -2.0, None, -1.0]) == 3
    assert best_index([0.5, 0.9, 0.9]) == 1
    assert best_index([None, None]) is None
    with pytest.raises(ValueError, match="NaN"):
        best_index([0.1, math.nan])


def test_advantages_leave_abstentions_out_of_the_group_statistics():
    totals = [1.0, 3.0, None, 10.0, 10.0, 4.0]
    adv, scored = advantages_with_abstentions(totals, [0, 0, 0, 1, 1, 1])
    assert scored.tolist() == [True, True, False, True, True, True]
    # group 0 is {1, 3}: population std 1 -> -1, +1; the None gets exactly 0
    assert adv[:3].tolist() == pytest.approx([-1.0, 1.0, 0.0], abs=1e-5)
    mean, std = 8.0, math.sqrt(((10 - 8) ** 2 * 2 + (4 - 8) ** 2) / 3)
    assert adv[3:].tolist() == pytest.approx([(10 - mean) / std, (10 - mean) / std, (4 - mean) / std], abs=1e-5)
    clipped, _ = advantages_with_abstentions(totals, [0, 0, 0, 1, 1, 1], clip=1.2)
    assert float(clipped.abs().max()) == pytest.approx(1.2)
    centred, _ = advantages_with_abstentions(totals, [0, 0, 0, 1, 1, 1], scale="none")
    assert centred[:2].tolist() == pytest.approx([-1.0, 1.0])


def test_gaussian_mean_kl_matches_the_closed_form():
    torch.manual_seed(0)
    mean, ref = torch.randn(3, 2, 4), torch.randn(3, 2, 4)
    std = 0.37
    # KL of two Gaussians with equal variance, per element, then averaged over the elements
    expected = ((mean - ref) ** 2 / (2 * std**2)).flatten(1).mean(1)
    assert torch.allclose(gaussian_mean_kl(mean, ref, std), expected)
    assert torch.equal(gaussian_mean_kl(mean, mean, std), torch.zeros(3))


def test_step_policy_loss_is_the_clipped_surrogate_per_step():
    old = torch.tensor([-1.0, -1.0, -1.0])
    adv = torch.tensor([1.0, -1.0, 2.0])
    # on-policy: ratio 1, loss = -mean(A), gradient = -A / B per log-prob
    logp = old.clone().requires_grad_(True)
    loss, stats = step_policy_loss(logp, old, adv, clip_range=0.1)
    assert float(loss.detach()) == pytest.approx(-float(adv.mean()))
    assert float(stats["ratio_mean"]) == 1.0 and float(stats["clip_frac"]) == 0.0
    loss.backward()
    assert logp.grad.tolist() == pytest.approx((-adv / 3).tolist())
    # ratio far above 1 + eps with A > 0: clipped, no gradient from that sample
    logp = torch.tensor([-1.0 + math.log(1.5), -1.0, -1.0], requires_grad=True)
    loss, stats = step_policy_loss(logp, old, adv, clip_range=0.1)
    loss.backward()
    assert logp.grad[0] == 0.0 and float(stats["clip_frac"]) == pytest.approx(1 / 3)
    assert float(loss.detach()) == pytest.approx(-(1.1 * 1.0 - 1.0 + 2.0) / 3)


def test_step_policy_loss_adds_beta_times_the_kl_of_the_means():
    old = torch.zeros(2)
    mean, ref = torch.ones(2, 3), torch.zeros(2, 3)
    loss, stats = step_policy_loss(
        old, old, torch.zeros(2), clip_range=0.1, beta=0.5, mean=mean, ref_mean=ref, std=2.0
    )
    assert float(stats["kl"]) == pytest.approx(1 / 8)
    assert float(loss) == pytest.approx(0.5 / 8)
    with pytest.raises(ValueError, match="needs mean"):
        step_policy_loss(old, old, torch.zeros(2), clip_range=0.1, beta=0.5)


def test_sde_window_and_trained_steps():
    g = torch.Generator().manual_seed(0)
    assert sde_window(10, None, None, g) is None
    for _ in range(20):
        w = sde_window(10, 3, (2, 4), g)
        assert len(w) == 3 and 2 <= w[0] <= 4 and w == list(range(w[0], w[0] + 3))
        assert w[-1] < 9  # the last step stays an ODE step
    with pytest.raises(ValueError, match="window size"):
        sde_window(4, 4, None, g)
    with pytest.raises(ValueError, match="start range"):
        sde_window(10, 3, (0, 7), g)
    steps = train_step_subset(10, 0.6, g)
    assert len(steps) == 6 and steps == sorted(set(steps)) and all(0 <= s < 10 for s in steps)
    assert train_step_subset(5, 1.0, g) == [0, 1, 2, 3, 4]
    assert len(train_step_subset(5, 0.01, g)) == 1


def test_prompt_sampler_visits_every_prompt_per_pass_and_resumes_its_order():
    a = PromptSampler(5, seed=3)
    first = a.take(5)
    assert sorted(first) == list(range(5))
    a.take(2)
    state = a.state_dict()
    rest = a.take(7)
    b = PromptSampler(5, seed=3)
    b.load_state_dict(state)
    assert b.take(7) == rest
    with pytest.raises(ValueError, match="prompts file or seed changed"):
        PromptSampler(6, seed=3).load_state_dict(state)


def test_ema_tracks_the_average_and_round_trips():
    p = torch.nn.Parameter(torch.zeros(3))
    ema = EMA([p], decay=0.5)
    with torch.no_grad():
        p.fill_(1.0)
    ema.update([p])
    with torch.no_grad():
        p.fill_(3.0)
    ema.update([p])
    assert ema.shadow[0].tolist() == pytest.approx([1.75] * 3)  # 0.5 * (0.5 * 0 + 0.5 * 1) + 0.5 * 3
    other = EMA([torch.nn.Parameter(torch.zeros(3))], decay=0.9)
    other.load_state_dict(ema.state_dict())
    q = torch.nn.Parameter(torch.zeros(3))
    other.copy_to([q])
    assert q.tolist() == pytest.approx([1.75] * 3) and other.decay == 0.5


def test_simple_rewards_have_known_optima():
    black, white = torch.zeros(1, 2, 3, 4, 4), torch.ones(1, 2, 3, 4, 4)
    assert Brightness()(torch.cat([black, white])) == [0.0, 1.0]
    red = torch.zeros(1, 2, 3, 4, 4)
    red[:, :, 0] = 1.0
    target = ColorTarget((1.0, 0.0, 0.0))
    scores = target(torch.cat([red, black, white]))
    assert scores[0] == pytest.approx(1.0)
    assert scores[1] == pytest.approx(1 - 1 / math.sqrt(3))  # distance 1 of max sqrt(3)
    assert 0.0 <= min(scores) and max(scores) <= 1.0
    ref = torch.rand(2, 3, 4, 4)
    reward = ReferenceVideo(frames=ref)
    noisy = (ref + 0.1).clamp(0, 1)
    s = reward(torch.stack([ref, noisy]))
    assert s[0] == pytest.approx(1.0) and s[1] == pytest.approx(1 - float((noisy - ref).abs().mean()))
    with pytest.raises(ValueError, match="shape"):
        reward(torch.rand(1, 3, 3, 4, 4))


def test_build_reward_by_name_and_its_errors():
    mixed = build_mixed_reward({"brightness": RewardSpec(norm="group"), "color": RewardSpec(weight=2.0, norm="range")})
    out = mixed.score(torch.rand(4, 2, 3, 4, 4), ["a", "a", "b", "b"])
    assert set(out.components) == {"brightness", "color"}
    assert mixed.components["color"].range == (0.0, 1.0)
    with pytest.raises(ValueError, match="unknown reward"):
        build_reward("aesthetic", RewardSpec())
    with pytest.raises(ValueError, match="not both"):
        build_reward("cac", RewardSpec(path="x", url="http://127.0.0.1:1"))
    with pytest.raises(ValueError, match="needs path"):
        build_reward("unified", RewardSpec())


def test_a_remote_component_scores_like_the_local_one():
    from cac_align.serve import HTTPService, RewardEndpoint

    videos = torch.rand(3, 2, 3, 8, 8)
    with HTTPService(RewardEndpoint(Brightness()).routes(), port=0) as service:
        remote = build_reward("brightness", RewardSpec(url=service.url, settings={"dtype": "float32"}))
        assert remote(videos, ["p"] * 3) == pytest.approx(Brightness()(videos), abs=1e-6)
