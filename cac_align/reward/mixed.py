"""Mixing several rewards into one: per-component normalisation, then a weighted average (paper Sec. 4.3, App. C.3).

The paper aligns Wan-2.1 with "the average of the normalized scores of UR and CaC" (Sec. 4.3): CaC alone would
reward anomaly-free but dull videos, so a general preference reward (UnifiedReward, scores 1-5) is averaged with
CaC's P(normal) in [0, 1]. Averaging raw scores would let the 1-5 scale dominate, so every component is normalised
first, with one of four rules (per component, :class:`Component` ``norm``):

* ``"none"``  - the raw score.
* ``"range"`` - the component's declared score range ``(lo, hi)`` mapped affinely onto [0, 1]: ``(x - lo) / (hi - lo)``.
  Not clamped: a score outside the declared range stays outside [0, 1] (the range is a declaration, not a filter).
* ``"batch"`` - z-score over the call's batch: ``(x - mean) / std``.
* ``"group"`` - z-score within each prompt's group (Best-of-N candidates, a GRPO rollout group). Groups are the
  samples with equal prompts, or equal entries of an explicit ``group_ids=`` argument (which wins when given).

Statistics use the population std (ddof = 0). A group or batch whose std is below ``eps`` (all scores equal, or a
single scored sample) normalises to 0 for every member: the component carries no preference there (a zero
advantage), rather than an amplified rounding error.

**Abstentions (None).** A component may return None for a sample (an unparsable judge answer, say). Nothing turns
that None into a number:

* the None is left out of that component's batch/group mean and std, and its normalised value is None too;
* the sample's total is the weighted average over the components that did score it, with the weights renormalised
  over those components: ``total = sum_k w_k n_k / sum_k w_k`` over non-None ``n_k``;
* the total is None only when every component abstained;
* the count of Nones per component and in the total is reported by :meth:`MixedOutput.log`.

The mix is itself a reward (``mixed(videos, prompts=None, **kw) -> list[float | None]``), so it can be nested or
passed wherever a reward callable is expected; :meth:`MixedReward.score` returns the full :class:`MixedOutput`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

RewardFn = Callable[..., list[float | None]]
"""A reward callable: ``fn(videos, prompts=None, **kw) -> list[float | None]``, one entry per video."""

Norm = Literal["none", "range", "batch", "group"]
NORMS: tuple[str, ...] = ("none", "range", "batch", "group")


@dataclass
class Component:
    """One reward in a mix: the callable, its weight in the average and how its scores are normalised.

    Args:
        fn: the reward, ``fn(videos, prompts=None, **kw) -> list[float | None]``.
        weight: its positive weight in the weighted average.
        norm: ``"none"``, ``"range"``, ``"batch"`` or ``"group"`` (see the module docstring).
        range: the declared score range ``(lo, hi)``; required by ``norm="range"``.
    """

    fn: RewardFn
    weight: float = 1.0
    norm: Norm = "none"
    range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise TypeError(f"Component.fn: expected a reward callable, got {type(self.fn).__name__}")
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)):
            raise TypeError(f"Component.weight: expected a number, got {self.weight!r}")
        if not (math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(f"Component.weight: expected a finite positive number, got {self.weight!r}")
        if self.norm not in NORMS:
            raise ValueError(f"Component.norm: expected one of {list(NORMS)}, got {self.norm!r}")
        if self.range is not None:
            if len(self.range) != 2:
                raise ValueError(f"Component.range: expected (lo, hi), got {self.range!r}")
            lo, hi = (float(v) for v in self.range)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"Component.range: expected finite lo < hi, got {self.range!r}")
            self.range = (lo, hi)
        if self.norm == "range" and self.range is None:
            raise ValueError("Component.range: norm='range' needs the declared score range (lo, hi)")


@dataclass
class MixedOutput:
    """What one call of a :class:`MixedReward` computed.

    Attributes:
        total: the mixed reward per video (None only where every component abstained).
        components: per component name, ``{"raw": [...], "normalized": [...]}`` with one entry per video.
        weights: the components' weights, as configured.
    """

    total: list[float | None]
    components: dict[str, dict[str, list[float | None]]] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)

    def log(self, prefix: str = "reward") -> dict[str, float]:
        """Scalars for a logger: mean, std (population) and None count of the total and of each component.

        Keys are ``{prefix}/total_mean``, ``{prefix}/total_std``, ``{prefix}/total_none`` and, per component,
        ``{prefix}/{name}/raw_mean``, ``raw_std``, ``norm_mean``, ``norm_std`` and ``none``. Means and stds of a
        list with no scores are NaN (the key is always present so that logged curves keep their names).
        """
        out: dict[str, float] = {}
        mean, std = _mean_std(self.total)
        out[f"{prefix}/total_mean"], out[f"{prefix}/total_std"] = mean, std
        out[f"{prefix}/total_none"] = float(sum(v is None for v in self.total))
        for name, parts in self.components.items():
            mean, std = _mean_std(parts["raw"])
            out[f"{prefix}/{name}/raw_mean"], out[f"{prefix}/{name}/raw_std"] = mean, std
            mean, std = _mean_std(parts["normalized"])
            out[f"{prefix}/{name}/norm_mean"], out[f"{prefix}/{name}/norm_std"] = mean, std
            out[f"{prefix}/{name}/none"] = float(sum(v is None for v in parts["raw"]))
        return out


def _mean_std(values: Sequence[float | None]) -> tuple[float, float]:
    xs = [v for v in values if v is not None]
    if not xs:
        return math.nan, math.nan
    mean = sum(xs) / len(xs)
    return mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs))


def _zscore(values: list[float | None], eps: float) -> list[float | None]:
    """z-score of the non-None values (population std); all zeros when std < eps; None stays None."""
    mean, std = _mean_std(values)
    if math.isnan(mean):
        return list(values)
    if std < eps:
        return [None if v is None else 0.0 for v in values]
    return [None if v is None else (v - mean) / std for v in values]


def normalize_scores(
    values: Sequence[float | None],
    norm: Norm,
    score_range: tuple[float, float] | None = None,
    groups: Sequence[Hashable] | None = None,
    eps: float = 1e-6,
) -> list[float | None]:
    """Normalise one component's scores (the rules of the module docstring); None entries stay None.

    Args:
        values: one score or None per video.
        norm: ``"none"``, ``"range"``, ``"batch"`` or ``"group"``.
        score_range: ``(lo, hi)``, required by ``"range"``.
        groups: one hashable group key per video, required by ``"group"``.
        eps: std below which a batch/group normalises to 0.
    """
    vals = list(values)
    if norm == "none":
        return vals
    if norm == "range":
        if score_range is None:
            raise ValueError("normalize_scores: norm='range' needs score_range=(lo, hi)")
        lo, hi = score_range
        return [None if v is None else (v - lo) / (hi - lo) for v in vals]
    if norm == "batch":
        return _zscore(vals, eps)
    if norm == "group":
        if groups is None:
            raise ValueError("normalize_scores: norm='group' needs one group key per video")
        if len(groups) != len(vals):
            raise ValueError(f"normalize_scores: got {len(groups)} group keys for {len(vals)} scores")
        members: dict[Hashable, list[int]] = {}
        for i, g in enumerate(groups):
            members.setdefault(g, []).append(i)
        out: list[float | None] = [None] * len(vals)
        for idx in members.values():
            for i, z in zip(idx, _zscore([vals[i] for i in idx], eps), strict=True):
                out[i] = z
        return out
    raise ValueError(f"normalize_scores: expected norm in {list(NORMS)}, got {norm!r}")


def _check_scores(name: str, scores: Any, n: int) -> list[float | None]:
    """A component's output as a list of n floats/None; anything else (wrong length, NaN, text) is an error."""
    try:
        scores = list(scores)
    except TypeError:
        raise TypeError(f"reward '{name}': expected a list of scores, got {type(scores).__name__}") from None
    if len(scores) != n:
        raise ValueError(f"reward '{name}': returned {len(scores)} scores for {n} videos")
    out: list[float | None] = []
    for i, v in enumerate(scores):
        if v is None:
            out.append(None)
            continue
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise TypeError(f"reward '{name}': score {i} is {v!r}, expected a number or None") from None
        if not math.isfinite(x):
            raise ValueError(f"reward '{name}': score {i} is {x}, expected a finite number or None (to abstain)")
        out.append(x)
    return out


class MixedReward:
    """A weighted average of normalised rewards; itself a reward callable.

    Example (the paper's Sec. 4.3 reward, group-normalised for GRPO)::

        mixed = MixedReward({
            "unified": Component(unified_reward, weight=1.0, norm="group"),
            "cac": Component(cac_reward, weight=1.0, norm="group"),
        })
        rewards = mixed(videos, prompts)           # list[float | None]
        out = mixed.score(videos, prompts)         # MixedOutput: total, raw and normalised components
        logger.log(out.log("reward"))

    Keyword arguments of a call (``fps=``, ``group_ids=``, ...) are passed on to every component, which by the
    reward convention accept ``**kw``. ``group_ids=`` (one hashable per video) also defines the groups of
    ``norm="group"``; without it, groups are the videos with equal prompts.

    Attributes:
        components: the named components, in call order.
        eps: std below which a batch/group normalises to 0.
        last_output: the :class:`MixedOutput` of the latest call (for logging after a plain call).
    """

    def __init__(self, components: dict[str, Component], eps: float = 1e-6) -> None:
        if not components:
            raise ValueError("MixedReward: expected at least one component")
        for name, comp in components.items():
            if not isinstance(name, str) or not name or "/" in name:
                raise ValueError(f"MixedReward: component names must be non-empty strings without '/', got {name!r}")
            if not isinstance(comp, Component):
                raise TypeError(
                    f"MixedReward: component '{name}' must be a Component(fn, weight=, norm=, range=), "
                    f"got {type(comp).__name__}"
                )
        self.components = dict(components)
        self.eps = eps
        self.last_output: MixedOutput | None = None

    def __call__(self, videos: Any, prompts: Sequence[str] | None = None, **kw: Any) -> list[float | None]:
        """The mixed reward per video (see :meth:`score` for the arguments)."""
        return self.score(videos, prompts, **kw).total

    def score(self, videos: Any, prompts: Sequence[str] | None = None, **kw: Any) -> MixedOutput:
        """Score a batch with every component, normalise each and average them.

        Args:
            videos: what the components take: ``[B, F, C, H, W]`` float in [0, 1], a list of ``[F, C, H, W]``
                tensors, or a list of file paths; the batch size is ``len(videos)``.
            prompts: one prompt per video (also the default groups of ``norm="group"``).
            **kw: passed to every component; ``group_ids`` (one hashable per video) sets the groups.

        Returns:
            A :class:`MixedOutput` (also kept in ``self.last_output``).
        """
        n = len(videos)
        if prompts is not None and len(prompts) != n:
            raise ValueError(f"MixedReward: got {len(prompts)} prompts for {n} videos")
        group_ids = kw.get("group_ids")
        if group_ids is not None and len(group_ids) != n:
            raise ValueError(f"MixedReward: got {len(group_ids)} group_ids for {n} videos")
        groups = list(group_ids) if group_ids is not None else (list(prompts) if prompts is not None else None)

        for name, comp in self.components.items():
            if comp.norm == "group" and groups is None:
                raise ValueError(
                    f"MixedReward: component '{name}' uses norm='group' but neither prompts nor group_ids were given"
                )
        raw = {name: _check_scores(name, comp.fn(videos, prompts, **kw), n) for name, comp in self.components.items()}
        return self.combine(raw, groups)

    def combine(self, raw: dict[str, Sequence[float | None]], groups: Sequence[Hashable] | None = None) -> MixedOutput:
        """Normalise and average raw component scores computed elsewhere (e.g. gathered from several processes).

        :meth:`score` is ``combine({name: comp.fn(videos, ...)}, groups)``; a distributed trainer scores its own
        videos with each ``components[name].fn``, gathers the raw lists and calls this on the whole batch, so
        batch and group statistics span every process.

        Args:
            raw: per component name (all of :attr:`components`), one score or None per video.
            groups: one hashable group key per video; required when a component uses ``norm="group"``.

        Returns:
            A :class:`MixedOutput` (also kept in ``self.last_output``).
        """
        if set(raw) != set(self.components):
            raise ValueError(f"MixedReward.combine: expected scores of {list(self.components)}, got {list(raw)}")
        n = len(next(iter(raw.values())))
        parts: dict[str, dict[str, list[float | None]]] = {}
        for name, comp in self.components.items():
            if comp.norm == "group" and groups is None:
                raise ValueError(f"MixedReward: component '{name}' uses norm='group' but no groups were given")
            scores = _check_scores(name, raw[name], n)
            parts[name] = {
                "raw": scores,
                "normalized": normalize_scores(scores, comp.norm, comp.range, groups, self.eps),
            }

        total: list[float | None] = []
        for i in range(n):
            num = den = 0.0
            for name, comp in self.components.items():
                v = parts[name]["normalized"][i]
                if v is not None:
                    num += comp.weight * v
                    den += comp.weight
            total.append(num / den if den > 0 else None)
        out = MixedOutput(total, parts, {name: float(c.weight) for name, c in self.components.items()})
        self.last_output = out
        return out


def cac_with_unified(
    cac: RewardFn, unified: RewardFn, norm: Norm = "range", cac_weight: float = 1.0, unified_weight: float = 1.0
) -> MixedReward:
    """The paper's alignment reward (Sec. 4.3, App. C.3): the average of normalised CaC and UnifiedReward scores.

    The paper says only "average the normalized scores". ``norm="range"`` (the default) is the literal reading:
    CaC's P(normal) is already in [0, 1] and UnifiedReward's 1-5 is mapped to [0, 1], then the two are averaged
    (Flow-GRPO then z-scores the total within each prompt group). ``norm="group"`` z-scores each component within its
    prompt group first (Pref-GRPO / GDPO style), so a component with a small spread is not drowned out by the other.
    """
    return MixedReward(
        {
            "cac": Component(cac, weight=cac_weight, norm=norm, range=(0.0, 1.0)),
            "unified": Component(unified, weight=unified_weight, norm=norm, range=(1.0, 5.0)),
        }
    )
