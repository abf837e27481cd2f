"""cac-align: the CaC two-turn anomaly reward for generated videos, its training, and Wan-2.1 alignment with it.

Paper: "Concentrate and Concentrate" (CaC). Videos at every public boundary are float ``[B, F, C, H, W]`` in [0, 1].
"""

__version__ = "0.1.0"

__all__ = ["CaCReward", "__version__"]


def __getattr__(name: str):
    """``cac_align.CaCReward`` is imported on first use (torch and transformers stay unloaded until then)."""
    if name == "CaCReward":
        from cac_align.reward.cac import CaCReward

        return CaCReward
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
