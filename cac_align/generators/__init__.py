"""Wan-2.1 generator side of CaC alignment (paper Sec. 4.2): components, LoRA, and the SDE sampler with log-probs."""

from cac_align.generators.sampler import StepLogProb, Trajectory, sample, step_logprob
from cac_align.generators.wan import WanComponents, add_lora, decode_latents, encode_prompts, load_wan, save_lora

__all__ = [
    "StepLogProb",
    "Trajectory",
    "WanComponents",
    "add_lora",
    "decode_latents",
    "encode_prompts",
    "load_wan",
    "sample",
    "save_lora",
    "step_logprob",
]
