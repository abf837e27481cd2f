"""cac-align: the CaC two-turn anomaly reward for generated videos, its training, and Wan-2.1 alignment with it.

Paper: "Concentrate and Concentrate" (CaC). Videos at every public boundary are float ``[B, F, C, H, W]`` in [0, 1].
"""

__version__ = "0.1.0"
