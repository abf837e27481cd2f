"""MixedReward: per-component normalisation and the weighted average, checked by hand on plain Python rewards."""

import math

import pytest
import torch

from cac_align.reward.mixed import Component, MixedReward, cac_with_unified, normalize_scores


def table_reward(values):
    """A reward that returns fixed scores (indexed by the video's position) and records what it was called with."""

    def fn(videos, prompts=None, **kw):
        fn.calls.append((len(videos), prompts, kw))
        return list(values[: len(videos)])

    fn.calls = []
    return fn


def z(xs):
    m = sum(xs) / len(xs)
    s = math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))
    return [(x - m) / s for x in xs]


VIDEOS = torch.zeros(4, 2, 3, 8, 8)


def test_batch_zscore_of_two_components_then_weighted_average():
    a, b = [1.0, 2.0, 3.0, 6.0], [0.9, 0.1, 0.5, 0.3]
    mixed = MixedReward(
        {"a": Component(table_reward(a), weight=1.0, norm="batch"), "b": Component(table_reward(b), 3.0, "batch")}
    )
    out = mixed.score(VIDEOS, ["p"] * 4)
    za, zb = z(a), z(b)
    expected = [(1.0 * x + 3.0 * y) / 4.0 for x, y in zip(za, zb, strict=True)]
    assert out.total == pytest.approx(expected)
    assert out.components["a"]["raw"] == a and out.components["b"]["raw"] == b
    assert out.components["a"]["normalized"] == pytest.approx(za)
    assert mixed(VIDEOS, ["p"] * 4) == pytest.approx(expected)  # the plain callable gives the same total
    assert mixed.last_output.total == pytest.approx(expected)


def test_range_normalisation_maps_declared_range_to_unit_interval():
    ur, cac = [1.0, 5.0, 3.0, 2.0], [0.2, 0.4, 1.0, 0.0]
    mixed = cac_with_unified(table_reward(cac), table_reward(ur))  # paper default: average of range-normalised
    out = mixed.score(VIDEOS, ["a", "b", "c", "d"])
    assert out.components["unified"]["normalized"] == pytest.approx([0.0, 1.0, 0.5, 0.25])
    assert out.components["cac"]["normalized"] == pytest.approx(cac)
    assert out.total == pytest.approx([(c + (u - 1) / 4) / 2 for c, u in zip(cac, ur, strict=True)])
    # no clamping: the range is a declaration
    assert normalize_scores([6.0], "range", (1.0, 5.0)) == [1.25]


def test_group_normalisation_by_equal_prompts_and_by_group_ids():
    vals = [1.0, 3.0, 10.0, 30.0, 5.0, 7.0]
    prompts = ["cat", "dog", "cat", "dog", "cat", "dog"]
    fn = table_reward(vals)
    mixed = MixedReward({"r": Component(fn, norm="group")})
    out = mixed.score(torch.zeros(6, 1, 3, 4, 4), prompts)
    cat, dog = z([1.0, 10.0, 5.0]), z([3.0, 30.0, 7.0])
    assert out.total == pytest.approx([cat[0], dog[0], cat[1], dog[1], cat[2], dog[2]])
    # explicit group ids win over prompts, and are passed on to the component
    out = mixed.score(torch.zeros(6, 1, 3, 4, 4), prompts, group_ids=[0, 0, 0, 1, 1, 1])
    g0, g1 = z([1.0, 3.0, 10.0]), z([30.0, 5.0, 7.0])
    assert out.total == pytest.approx(g0 + g1)
    assert fn.calls[-1][2]["group_ids"] == [0, 0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="neither prompts nor group_ids"):
        mixed.score(torch.zeros(6, 1, 3, 4, 4))


def test_degenerate_group_has_zero_advantage():
    mixed = MixedReward({"r": Component(table_reward([2.0, 2.0, 2.0, 1.0, 4.0]), norm="group")})
    out = mixed.score([torch.zeros(1, 3, 4, 4)] * 5, ["a", "a", "a", "b", "c"])
    assert out.total[:3] == [0.0, 0.0, 0.0]  # std 0: no preference inside the group
    assert out.total[3:] == [0.0, 0.0]  # single-member groups too
    assert normalize_scores([3.0, 3.0], "batch") == [0.0, 0.0]


@pytest.mark.parametrize("norm", ["none", "range", "batch", "group"])
def test_none_is_excluded_from_stats_and_weights_are_renormalised(norm):
    a = [1.0, None, 3.0, 5.0]
    b = [2.0, 4.0, None, None]
    c = [None, None, None, 1.0]
    mixed = MixedReward(
        {
            "a": Component(table_reward(a), weight=1.0, norm=norm, range=(1.0, 5.0)),
            "b": Component(table_reward(b), weight=2.0, norm=norm, range=(0.0, 4.0)),
            "c": Component(table_reward(c), weight=1.0, norm="none"),
        }
    )
    out = mixed.score(VIDEOS, ["p"] * 4)
    na, nb = out.components["a"]["normalized"], out.components["b"]["normalized"]
    # the None stays None and the other values are normalised over the scored ones only
    assert na[1] is None and nb[2] is None and nb[3] is None
    if norm in ("batch", "group"):
        assert [v for v in na if v is not None] == pytest.approx(z([1.0, 3.0, 5.0]))
        assert [v for v in nb if v is not None] == pytest.approx(z([2.0, 4.0]))
    expected = [
        (1 * na[0] + 2 * nb[0]) / 3,  # c abstains
        nb[1],  # only b scored it
        na[2],  # only a
        (na[3] + 1.0) / 2,  # a and c
    ]
    assert out.total == pytest.approx(expected)
    log = out.log("rw")
    assert log["rw/a/none"] == 1 and log["rw/b/none"] == 2 and log["rw/c/none"] == 3 and log["rw/total_none"] == 0


def test_total_is_none_only_when_all_abstain_and_log_counts_it():
    mixed = MixedReward(
        {
            "a": Component(table_reward([None, 1.0]), norm="batch"),
            "b": Component(table_reward([None, 3.0]), norm="batch"),
        }
    )
    out = mixed.score(torch.zeros(2, 1, 3, 4, 4), ["x", "y"])
    assert out.total == [None, 0.0]  # one scored sample: std 0 -> 0, never a None turned into 0
    log = out.log()
    assert log["reward/total_none"] == 1.0 and log["reward/a/none"] == 1.0
    assert log["reward/total_mean"] == 0.0 and log["reward/a/raw_mean"] == 1.0
    all_none = MixedReward({"a": Component(table_reward([None, None]))}).score(torch.zeros(2, 1, 3, 4, 4))
    assert all_none.total == [None, None]
    assert math.isnan(all_none.log()["reward/total_mean"])


def test_log_reports_means_and_stds():
    mixed = MixedReward({"a": Component(table_reward([1.0, 2.0, 3.0, 6.0]), norm="range", range=(0, 10))})
    log = mixed.score(VIDEOS).log("r")
    assert log["r/a/raw_mean"] == pytest.approx(3.0)
    assert log["r/a/raw_std"] == pytest.approx(math.sqrt((4 + 1 + 0 + 9) / 4))
    assert log["r/a/norm_mean"] == pytest.approx(0.3)
    assert log["r/total_mean"] == pytest.approx(0.3)


def test_nesting_a_mix_inside_a_mix():
    inner = MixedReward({"a": Component(table_reward([0.0, 2.0, 4.0, 6.0]), norm="range", range=(0, 8))})
    outer = MixedReward({"inner": Component(inner, weight=1.0), "b": Component(table_reward([1.0] * 4), weight=3.0)})
    assert outer(VIDEOS, ["p"] * 4, fps=16) == pytest.approx([(x + 3.0) / 4 for x in [0.0, 0.25, 0.5, 0.75]])


def test_bad_outputs_and_specs_raise():
    with pytest.raises(ValueError, match="returned 3 scores for 4 videos"):
        MixedReward({"a": Component(table_reward([1.0, 2.0, 3.0]))})(VIDEOS)
    with pytest.raises(ValueError, match="score 1 is nan"):
        MixedReward({"a": Component(table_reward([1.0, math.nan, 3.0, 4.0]))})(VIDEOS)
    with pytest.raises(TypeError, match="score 0 is 'x'"):
        MixedReward({"a": Component(table_reward(["x", 1, 2, 3]))})(VIDEOS)
    with pytest.raises(ValueError, match="needs the declared score range"):
        Component(table_reward([]), norm="range")
    with pytest.raises(ValueError, match="positive"):
        Component(table_reward([]), weight=0.0)
    with pytest.raises(ValueError, match="norm"):
        Component(table_reward([]), norm="zscore")
    with pytest.raises(TypeError, match="must be a Component"):
        MixedReward({"a": table_reward([])})
    with pytest.raises(ValueError, match="2 prompts for 4 videos"):
        MixedReward({"a": Component(table_reward([1.0] * 4))})(VIDEOS, ["a", "b"])


def test_public_names_resolve_lazily():
    import cac_align.reward as r

    for name in r.__all__:
        assert getattr(r, name).__name__ == name
    with pytest.raises(AttributeError):
        r.NotAReward  # noqa: B018
