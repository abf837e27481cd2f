"""Build the recipes' reward mix from its config: named components, each local, tiny or remote (paper Sec. 4.2).

The alignment recipes (``generators/best_of_n.py``, ``generators/flow_grpo.py``) name their reward components in
their config, ``reward.components.<name>`` with a :class:`RewardSpec` each, and get one
:class:`~cac_align.reward.mixed.MixedReward`. The paper's reward (App. C.4) is the average of normalised
UnifiedReward and CaC scores::

    reward:
      components:
        unified: {weight: 1.0, norm: group, path: /ckpt/UnifiedReward-2.0-qwen3vl-8b}
        cac:     {weight: 1.0, norm: group, url: http://reward-host:8100}   # served by `cac-align serve-reward`

Names are the reward kinds themselves (one component per kind): ``unified``
(:class:`~cac_align.reward.unified.UnifiedReward`), ``cac`` (:class:`~cac_align.reward.cac.CaCReward`),
``brightness``, ``color`` and ``reference`` (:mod:`cac_align.reward.simple`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cac_align.reward.mixed import Component, MixedReward, Norm, RewardFn
from cac_align.reward.remote import RemoteReward
from cac_align.reward.simple import Brightness, ColorTarget, ReferenceVideo
from cac_align.train.dist import barrier, is_main_process

REWARD_KINDS: tuple[str, ...] = ("unified", "cac", "brightness", "color", "reference")
SCORE_RANGES: dict[str, tuple[float, float]] = {
    "unified": (1.0, 5.0),
    "cac": (0.0, 1.0),
    "brightness": Brightness.score_range,
    "color": ColorTarget.score_range,
    "reference": ReferenceVideo.score_range,
}
"""Declared score range of each kind (used by ``norm: range``), also for a remote component."""

TINY = "tiny"


@dataclass
class RewardSpec:
    """One component of a recipe's reward mix (config key ``reward.components.<name>``)."""

    # Weight of this component in the weighted average of normalised scores.
    weight: float = 1.0
    # Normalisation before mixing: none | range | batch | group (see cac_align.reward.mixed).
    norm: Norm = "group"
    # Checkpoint folder of a model reward (unified, cac); "tiny" builds a tiny random one in code (smoke runs).
    path: str | None = None
    # Score on a reward server instead of locally, e.g. http://reward-host:8100 (cac-align serve-reward).
    url: str | None = None
    # Device of a local model reward; null = the generator's device.
    device: str | None = None
    # Weights dtype of a local model reward: bfloat16 | float16 | float32; null = the checkpoint's.
    dtype: str | None = None
    # Keyword settings of the reward class, e.g. {soft: true} (unified), {max_new_tokens: 1024} (cac), {rgb: [1, 0, 0]}
    # (color), {path: ref.mp4} (reference); with url, those of the client (RemoteReward: dtype, timeout, api_key).
    settings: dict[str, Any] = field(default_factory=dict)


def _tiny_checkpoint(kind: str, folder: Path) -> Path:
    """A tiny random checkpoint for ``kind`` in ``folder`` (built once by rank 0, atomically; others wait)."""
    from cac_align.testing import build_tiny_cac, build_tiny_qwen3vl

    if is_main_process() and not folder.is_dir():
        tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        if kind == "cac":
            build_tiny_cac(tmp, vocab="bytes", max_new_tokens=24)
        else:
            build_tiny_qwen3vl(tmp, vocab="bytes")
        os.replace(tmp, folder)
    barrier()
    return folder


def build_reward(
    name: str, spec: RewardSpec, *, device: str | torch.device = "cpu", tiny_dir: str | Path | None = None
) -> RewardFn:
    """The reward callable of one component.

    Args:
        name: the kind, one of :data:`REWARD_KINDS`.
        spec: where and how to run it.
        device: default device of a local model reward (``spec.device`` wins).
        tiny_dir: where ``path: tiny`` checkpoints are built (required for them).
    """
    if name not in REWARD_KINDS:
        raise ValueError(f"reward.components.{name}: unknown reward; expected one of {list(REWARD_KINDS)}")
    if spec.url is not None:
        if spec.path is not None:
            raise ValueError(f"reward.components.{name}: set path (local) or url (remote), not both")
        return RemoteReward(spec.url, **spec.settings)
    if name == "brightness":
        return Brightness(**spec.settings)
    if name == "color":
        return ColorTarget(**spec.settings)
    if name == "reference":
        return ReferenceVideo(**spec.settings)
    if spec.path is None:
        raise ValueError(f"reward.components.{name}: needs path (a checkpoint folder, or 'tiny') or url")
    path = Path(spec.path)
    if spec.path == TINY:
        if tiny_dir is None:
            raise ValueError(f"reward.components.{name}: path 'tiny' needs a folder to build it in")
        path = _tiny_checkpoint(name, Path(tiny_dir) / f"tiny_{name}")
    kwargs = {"device": spec.device or device, "dtype": spec.dtype, **spec.settings}
    if name == "cac":
        from cac_align.reward.cac import CaCReward

        return CaCReward.from_pretrained(path, **kwargs)
    from cac_align.reward.unified import UnifiedReward

    return UnifiedReward.from_pretrained(path, **kwargs)


def build_mixed_reward(
    specs: Mapping[str, RewardSpec], *, device: str | torch.device = "cpu", tiny_dir: str | Path | None = None
) -> MixedReward:
    """The :class:`~cac_align.reward.mixed.MixedReward` of ``specs`` (components in the given order).

    Args:
        specs: ``{name: RewardSpec}``, names from :data:`REWARD_KINDS`.
        device, tiny_dir: as :func:`build_reward`.
    """
    if not specs:
        raise ValueError("reward.components: expected at least one component, e.g. {brightness: {norm: group}}")
    components = {}
    for name, spec in specs.items():
        fn = build_reward(name, spec, device=device, tiny_dir=tiny_dir)
        components[name] = Component(fn, weight=spec.weight, norm=spec.norm, range=SCORE_RANGES.get(name))
    return MixedReward(components)
