"""Reward models of cac-align, each a plain keyword callable ``fn(videos, prompts=None, **kw) -> list[float | None]``.

- ``CaCReward``: the two-turn CaC judge (:mod:`cac_align.reward.cac`, paper Sec. 3.4, Eq. 7).
- ``UnifiedReward``: UnifiedReward-2.0 pointwise video scoring (:mod:`cac_align.reward.unified`).
- ``MixedReward`` / ``Component``: per-component normalisation, then a weighted average (:mod:`cac_align.reward.mixed`).
- ``RemoteReward``: any reward served by ``cac-align serve-reward`` (:mod:`cac_align.reward.remote`).

Names are imported on first use, so that ``import cac_align.reward`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "CaCReward": "cac_align.reward.cac",
    "Evidence": "cac_align.reward.cac",
    "UnifiedReward": "cac_align.reward.unified",
    "MixedReward": "cac_align.reward.mixed",
    "Component": "cac_align.reward.mixed",
    "MixedOutput": "cac_align.reward.mixed",
    "RemoteReward": "cac_align.reward.remote",
}

__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
