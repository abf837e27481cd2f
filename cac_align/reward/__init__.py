"""Reward models of cac-align. ``CaCReward`` (the two-turn CaC judge, :mod:`cac_align.reward.cac`) is imported on first
use, so that ``import cac_align.reward`` stays light."""

from __future__ import annotations

from typing import Any

__all__ = ["CaCReward"]


def __getattr__(name: str) -> Any:
    if name == "CaCReward":
        from cac_align.reward.cac import CaCReward

        return CaCReward
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
