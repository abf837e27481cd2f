"""Wan-2.1 denoising loop with Flow-GRPO SDE steps and their Gaussian log-probabilities (paper Sec. 4.2, App. C.4).

The paper fine-tunes Wan-2.1-1.3B with Flow-GRPO (noise level 0.3, 50 sampling steps, CFG). Flow-GRPO turns the
deterministic flow-matching ODE into an SDE with the same marginals, so every denoising step becomes a Gaussian
policy ``x_{i+1} ~ N(mean_i, std_i^2 I)`` whose log-probability the policy-gradient loss needs. With velocity
``v`` predicted at ``(x, sigma)``, next noise level ``sigma'``, ``dt = sigma' - sigma < 0`` and noise level ``eta``:

    s      = eta * sqrt(sigma / (1 - sigma))       (at step 0, sigma ~ 1, the denominator uses the grid's sigmas[1])
    mean   = x * (1 + s^2 dt / (2 sigma)) + v * (1 + s^2 (1 - sigma) / (2 sigma)) * dt
    std    = s * sqrt(-dt)
    x'     = mean + std * eps,  eps ~ N(0, I)
    logp   = mean over all non-batch dims of  -(x' - mean)^2 / (2 std^2) - log(std) - log(2 pi) / 2

Steps outside the SDE set are plain Euler ODE steps ``x' = x + v dt`` and carry no log-probability. As in
Flow-GRPO-Fast and MixGRPO, only some steps may be stochastic (``sde_steps``); the last step (to ``sigma' = 0``) is
always an ODE step so the output holds no injected noise.

This loop matches ``WanPipeline.__call__`` of diffusers 0.42.1 (same initial noise for the same generators, same
transformer inputs, same classifier-free guidance ``uncond + g (cond - uncond)`` with two forward passes, same
sigma grid from the scheduler): with ``sde_steps=[]`` and ``FlowMatchEulerDiscreteScheduler`` it reproduces the
pipeline's output (tested). It departs from the pipeline in these points:

- Stochastic steps: the SDE step above and its log-probabilities (the pipeline has neither).
- Step rule: always first-order Euler on the scheduler's grid. With ``UniPCMultistepScheduler`` (what Wan-2.1 ships)
  the pipeline runs UniPC's multistep predictor-corrector on that grid instead; Flow-GRPO's Wan code also takes
  Euler/SDE steps on the UniPC grid.
- Precision: latents stay fp32 between steps and the guidance combination and step math run in fp32; the model runs
  in its own dtype (bf16 on GPU). The pipeline casts latents back to the model dtype after every step.
- Inputs: prompt embeddings (from :func:`cac_align.generators.wan.encode_prompts`), not prompts; repeat them for
  several videos per prompt. Invalid ``num_frames``/sizes raise instead of being rounded with a warning.
- Not supported: Wan2.2's second transformer (``boundary_ratio``), ``expand_timesteps``, step callbacks,
  ``attention_kwargs`` and cache contexts.

Shapes: B videos, T steps, S recorded (SDE) steps, latents ``[B, 16, F', H', W']`` with ``F' = (F - 1) / 4 + 1``,
``H' = H / 8``, ``W' = W / 8``; prompt embeddings ``[B, L, D]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
from diffusers.models.modeling_utils import ModelMixin

from cac_align.generators.wan import (
    LATENT_CHANNELS,
    SIZE_MULTIPLE,
    VAE_SCALE_SPATIAL,
    VAE_SCALE_TEMPORAL,
    Scheduler,
)

Generators = torch.Generator | list[torch.Generator] | None


@dataclass
class Trajectory:
    """What a Flow-GRPO update needs from one sampling call (all tensors batch-first).

    Attributes:
        latents: ``[B, S, C, F', H', W']`` fp32, the latents entering each recorded SDE step.
        next_latents: ``[B, S, C, F', H', W']`` fp32, the sampled latents after each recorded step.
        log_probs: ``[B, S]`` fp32, ``log p(next_latents | latents)`` under the sampling weights.
        final_latents: ``[B, C, F', H', W']`` fp32, the clean latents (decode with ``decode_latents``).
        prompt_embeds: ``[B, L, D]`` conditional text embeddings.
        negative_prompt_embeds: ``[B, L, D]`` unconditional embeddings, or None when sampled without CFG.
        timesteps: ``[T]`` fp32 on CPU, the transformer's timestep input at each step.
        sigmas: ``[T + 1]`` fp32 on CPU, the noise levels (``sigmas[-1] == 0``).
        sde_steps: the S step indices (into ``timesteps``) that were stochastic, ascending.
        guidance_scale: the CFG scale used (``<= 1`` means no CFG).
        noise_level: the SDE noise level ``eta``.
    """

    latents: torch.Tensor
    next_latents: torch.Tensor
    log_probs: torch.Tensor
    final_latents: torch.Tensor
    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor | None
    timesteps: torch.Tensor
    sigmas: torch.Tensor
    sde_steps: list[int]
    guidance_scale: float
    noise_level: float

    @property
    def batch_size(self) -> int:
        return self.log_probs.shape[0]

    def select(self, index: torch.Tensor | list[int] | slice) -> Trajectory:
        """The sub-batch ``index`` (e.g. a training minibatch); the schedule fields are shared."""
        neg = self.negative_prompt_embeds
        return replace(
            self,
            latents=self.latents[index],
            next_latents=self.next_latents[index],
            log_probs=self.log_probs[index],
            final_latents=self.final_latents[index],
            prompt_embeds=self.prompt_embeds[index],
            negative_prompt_embeds=None if neg is None else neg[index],
        )

    def to(self, device: str | torch.device) -> Trajectory:
        """Move the batch tensors to ``device`` (the schedule stays on CPU)."""
        neg = self.negative_prompt_embeds
        return replace(
            self,
            latents=self.latents.to(device),
            next_latents=self.next_latents.to(device),
            log_probs=self.log_probs.to(device),
            final_latents=self.final_latents.to(device),
            prompt_embeds=self.prompt_embeds.to(device),
            negative_prompt_embeds=None if neg is None else neg.to(device),
        )

    @staticmethod
    def cat(trajectories: list[Trajectory]) -> Trajectory:
        """Concatenate trajectories sampled with the same schedule, SDE steps and guidance along the batch."""
        if not trajectories:
            raise ValueError("expected at least one trajectory")
        first = trajectories[0]
        for k, t in enumerate(trajectories[1:], start=1):
            same = (
                t.sde_steps == first.sde_steps
                and t.guidance_scale == first.guidance_scale
                and t.noise_level == first.noise_level
                and torch.equal(t.sigmas, first.sigmas)
                and torch.equal(t.timesteps, first.timesteps)
            )
            if not same:
                raise ValueError(f"trajectories[{k}]: schedule, sde_steps, guidance or noise level differ from [0]")
        negs = [t.negative_prompt_embeds for t in trajectories]
        if any(n is None for n in negs) and not all(n is None for n in negs):
            raise ValueError("trajectories mix CFG and no-CFG negative embeddings")
        return replace(
            first,
            latents=torch.cat([t.latents for t in trajectories]),
            next_latents=torch.cat([t.next_latents for t in trajectories]),
            log_probs=torch.cat([t.log_probs for t in trajectories]),
            final_latents=torch.cat([t.final_latents for t in trajectories]),
            prompt_embeds=torch.cat([t.prompt_embeds for t in trajectories]),
            negative_prompt_embeds=None if negs[0] is None else torch.cat(negs),
        )


class StepLogProb(NamedTuple):
    """The Gaussian of one SDE step under the current weights.

    ``log_prob`` ``[B]`` (mean over non-batch dims, fp32), ``mean`` ``[B, C, F', H', W']`` fp32 and the scalar
    ``std`` (``s * sqrt(-dt)``); a KL term on means is ``((mean - mean_ref) ** 2).mean(dims) / (2 * std ** 2)``.
    """

    log_prob: torch.Tensor
    mean: torch.Tensor
    std: float


def flow_schedule(scheduler: Scheduler, num_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The scheduler's grid for ``num_steps`` steps: timesteps ``[T]`` and sigmas ``[T + 1]``, fp32 on CPU.

    Calls ``scheduler.set_timesteps`` as the pipeline does and checks that the grid is a flow-matching one
    (decreasing sigmas ending at 0).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    scheduler.set_timesteps(num_steps, device="cpu")
    timesteps = scheduler.timesteps.to(torch.float32)
    sigmas = scheduler.sigmas.to(torch.float32)
    if timesteps.shape != (num_steps,) or sigmas.shape != (num_steps + 1,):
        raise ValueError(
            f"{type(scheduler).__name__}: expected {num_steps} timesteps and {num_steps + 1} sigmas, "
            f"got {tuple(timesteps.shape)} and {tuple(sigmas.shape)}"
        )
    if sigmas[-1] != 0 or not bool((sigmas[1:] < sigmas[:-1]).all()):
        raise ValueError(f"{type(scheduler).__name__}: expected sigmas decreasing to 0, got {sigmas.tolist()}")
    return timesteps, sigmas


def sde_mean_std(
    x: torch.Tensor, v: torch.Tensor, sigmas: torch.Tensor, i: int, noise_level: float
) -> tuple[torch.Tensor, float]:
    """Mean and std of the Flow-GRPO SDE step ``i`` (from ``sigmas[i]`` to ``sigmas[i + 1]``), see module docstring.

    Args:
        x: ``[B, ...]`` fp32 latents at ``sigmas[i]``.
        v: ``[B, ...]`` fp32 velocity predicted at ``x``.
        sigmas: ``[T + 1]`` the noise-level grid.
        i: the step index, ``0 <= i < T``; ``sigmas[i + 1]`` must be > 0 (the last step is an ODE step).
        noise_level: ``eta > 0``.

    Returns:
        ``(mean [B, ...] fp32, std)``.
    """
    sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
    if not 0 < sigma_next < sigma <= 1:
        raise ValueError(f"SDE step {i}: expected 0 < sigma_next < sigma <= 1, got {sigma_next} and {sigma}")
    dt = sigma_next - sigma
    # sqrt(sigma / (1 - sigma)) is infinite at sigma = 1; like Flow-GRPO, step 0 uses sigmas[1] in the denominator.
    # Taking min() rather than testing sigma == 1 also covers UniPC's grid, which starts at 1 - 1e-6: there an exact
    # test misses and the step-0 std grows to ~eta * 1000.
    s = noise_level * math.sqrt(sigma / (1 - min(sigma, float(sigmas[1]))))
    mean = x * (1 + s**2 * dt / (2 * sigma)) + v * ((1 + s**2 * (1 - sigma) / (2 * sigma)) * dt)
    return mean, s * math.sqrt(-dt)


def gaussian_log_prob(sample: torch.Tensor, mean: torch.Tensor, std: float) -> torch.Tensor:
    """``log N(sample; mean, std^2 I)`` per element, averaged over the non-batch dims (Flow-GRPO's convention): ``[B]``."""
    z = (sample.float() - mean.float()) / std
    per_elem = -0.5 * z**2 - math.log(std) - 0.5 * math.log(2 * math.pi)
    return per_elem.flatten(1).mean(1)


def _model_dtype(transformer: torch.nn.Module, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is not None:
        return dtype
    if isinstance(transformer, ModelMixin):
        return transformer.dtype  # skips the fp32-kept modules (time embedding, norms)
    raise ValueError(f"pass dtype= for a wrapped transformer ({type(transformer).__name__})")


def _velocity(
    transformer: torch.nn.Module,
    x: torch.Tensor,
    timestep: torch.Tensor,
    prompt_embeds: torch.Tensor,
    negative_prompt_embeds: torch.Tensor | None,
    guidance_scale: float,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The (guided) velocity at ``x``: the model runs in ``dtype``, the result is fp32."""
    inp = x.to(dtype)
    t = timestep.expand(x.shape[0])
    v = transformer(hidden_states=inp, timestep=t, encoder_hidden_states=prompt_embeds.to(dtype), return_dict=False)
    v = v[0].float()
    if guidance_scale > 1.0:
        if negative_prompt_embeds is None:
            raise ValueError(f"guidance_scale={guidance_scale} > 1 needs negative_prompt_embeds")
        u = transformer(
            hidden_states=inp, timestep=t, encoder_hidden_states=negative_prompt_embeds.to(dtype), return_dict=False
        )
        u = u[0].float()
        v = u + guidance_scale * (v - u)
    return v


def _randn(shape: tuple[int, ...], generator: Generators, device: torch.device) -> torch.Tensor:
    """Standard normal fp32 noise; a list of generators draws each sample from its own (as diffusers does)."""
    if generator is None:
        return torch.randn(shape, device=device)
    if isinstance(generator, list):
        parts = [torch.randn((1, *shape[1:]), generator=g, device=g.device) for g in generator]
        return torch.cat(parts).to(device)
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


def _check_sde_steps(sde_steps: list[int] | None, num_steps: int) -> list[int]:
    if sde_steps is None:
        return list(range(num_steps - 1))
    steps = sorted(set(sde_steps))
    if len(steps) != len(sde_steps):
        raise ValueError(f"sde_steps: repeated step in {sde_steps}")
    for i in steps:
        if not 0 <= i < num_steps - 1:
            raise ValueError(
                f"sde_steps: step {i} is outside [0, {num_steps - 2}] (the last step, to sigma 0, is always an ODE step)"
            )
    return steps


@torch.no_grad()
def sample(
    transformer: torch.nn.Module,
    scheduler: Scheduler,
    prompt_embeds: torch.Tensor,
    negative_prompt_embeds: torch.Tensor | None = None,
    *,
    num_frames: int = 81,
    height: int = 480,
    width: int = 832,
    num_steps: int = 50,
    guidance_scale: float = 5.0,
    noise_level: float = 0.3,
    sde_steps: list[int] | None = None,
    generator: Generators = None,
    latents: torch.Tensor | None = None,
    offload_to_cpu: bool = False,
    dtype: torch.dtype | None = None,
) -> Trajectory:
    """Sample B videos' latents with SDE steps where requested, recording what Flow-GRPO training needs.

    Args:
        transformer: the Wan transformer (with or without LoRA); it runs on its own device.
        scheduler: provides the sigma grid (``set_timesteps``); its ``step`` is not used.
        prompt_embeds: ``[B, L, D]`` from ``encode_prompts``.
        negative_prompt_embeds: ``[B, L, D]`` unconditional embeddings (Wan's default is ``encode_prompts([""])``
            repeated); required when ``guidance_scale > 1``, ignored otherwise.
        num_frames, height, width: video size; ``num_frames % 4 == 1`` and sizes multiples of 16.
        num_steps: denoising steps T.
        guidance_scale: CFG scale; ``<= 1`` runs one forward pass per step without guidance.
        noise_level: SDE noise level ``eta`` (0.3 in the paper, App. C.4).
        sde_steps: indices of the stochastic steps, e.g. ``list(range(s, s + k))`` for a window (Flow-GRPO-Fast,
            MixGRPO); ``None`` makes every step but the last stochastic; ``[]`` is the deterministic ODE sampler.
        generator: one generator for the batch, or one per sample (reproducible per sample whatever the batch);
            it draws the initial noise, then each SDE step's noise.
        latents: optional initial noise ``[B, 16, F', H', W']`` (then the generator only drives SDE noise).
        offload_to_cpu: keep the recorded trajectory on CPU to save accelerator memory.
        dtype: the dtype the transformer runs in; defaults to ``transformer.dtype`` (pass it for wrapped models).

    Returns:
        The :class:`Trajectory` (on CPU when ``offload_to_cpu``, else on the transformer's device).
    """
    if num_frames < 1 or num_frames % VAE_SCALE_TEMPORAL != 1:
        raise ValueError(f"num_frames must be 4k + 1, got {num_frames}")
    if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE or height <= 0 or width <= 0:
        raise ValueError(f"height and width must be positive multiples of {SIZE_MULTIPLE}, got {height}x{width}")
    if prompt_embeds.ndim != 3:
        raise ValueError(f"prompt_embeds: expected [B, L, D], got shape {tuple(prompt_embeds.shape)}")
    use_cfg = guidance_scale > 1.0
    if use_cfg and (negative_prompt_embeds is None or negative_prompt_embeds.shape != prompt_embeds.shape):
        got = None if negative_prompt_embeds is None else tuple(negative_prompt_embeds.shape)
        raise ValueError(
            f"negative_prompt_embeds: guidance_scale={guidance_scale} needs shape {tuple(prompt_embeds.shape)}, "
            f"got {got}"
        )
    steps = _check_sde_steps(sde_steps, num_steps)
    if steps and not noise_level > 0:
        raise ValueError(f"noise_level must be > 0 for SDE steps, got {noise_level}; use sde_steps=[] for the ODE")
    batch = prompt_embeds.shape[0]
    if isinstance(generator, list) and len(generator) != batch:
        raise ValueError(f"generator: expected {batch} generators (one per sample), got {len(generator)}")
    model_dtype = _model_dtype(transformer, dtype)
    device = next(transformer.parameters()).device
    timesteps, sigmas = flow_schedule(scheduler, num_steps)

    shape = (
        batch,
        LATENT_CHANNELS,
        (num_frames - 1) // VAE_SCALE_TEMPORAL + 1,
        height // VAE_SCALE_SPATIAL,
        width // VAE_SCALE_SPATIAL,
    )
    if latents is None:
        x = _randn(shape, generator, device)
    elif tuple(latents.shape) != shape:
        raise ValueError(f"latents: expected shape {shape}, got {tuple(latents.shape)}")
    else:
        x = latents.to(device=device, dtype=torch.float32)

    cond = prompt_embeds.to(device)
    uncond = negative_prompt_embeds.to(device) if use_cfg else None
    store = torch.device("cpu") if offload_to_cpu else device
    rec_in = torch.empty((batch, len(steps), *shape[1:]), dtype=torch.float32, device=store)
    rec_out = torch.empty_like(rec_in)
    log_probs = torch.empty((batch, len(steps)), dtype=torch.float32, device=store)
    slot = {i: k for k, i in enumerate(steps)}
    t_dev = timesteps.to(device)
    dts = (sigmas[1:] - sigmas[:-1]).to(device)  # the same fp32 differences the Euler scheduler takes

    for i in range(num_steps):
        v = _velocity(transformer, x, t_dev[i], cond, uncond, guidance_scale, model_dtype)
        if i in slot:
            mean, std = sde_mean_std(x, v, sigmas, i, noise_level)
            x_next = mean + std * _randn(shape, generator, device)
            k = slot[i]
            rec_in[:, k] = x
            rec_out[:, k] = x_next
            log_probs[:, k] = gaussian_log_prob(x_next, mean, std)
        else:
            x_next = x + dts[i] * v
        x = x_next

    return Trajectory(
        latents=rec_in,
        next_latents=rec_out,
        log_probs=log_probs,
        final_latents=x.to(store),
        prompt_embeds=cond.to(store),
        negative_prompt_embeds=None if uncond is None else uncond.to(store),
        timesteps=timesteps,
        sigmas=sigmas,
        sde_steps=steps,
        guidance_scale=float(guidance_scale),
        noise_level=float(noise_level),
    )


def step_logprob(
    transformer: torch.nn.Module,
    traj: Trajectory,
    step_idx: int,
    *,
    guidance_scale: float | None = None,
    dtype: torch.dtype | None = None,
) -> StepLogProb:
    """Re-evaluate the recorded transition ``step_idx`` under the transformer's current weights (with gradients).

    The Flow-GRPO update calls this for each recorded step: ``exp(log_prob - traj.log_probs[:, step_idx])`` is the
    importance ratio (exactly 1 with the sampling weights), and ``mean`` feeds a KL term against a reference model
    (e.g. the same call inside ``transformer.disable_adapters()``). Runs with whatever grad mode the caller has.

    Args:
        transformer: the policy (possibly wrapped, e.g. by DDP; then pass ``dtype``).
        traj: from :func:`sample`, on any device (the needed tensors are moved to the transformer's device).
        step_idx: position in ``traj.sde_steps`` (0 <= step_idx < S), not the global step index.
        guidance_scale: override the sampling CFG scale (``None`` reuses ``traj.guidance_scale``).
        dtype: the dtype the transformer runs in; defaults to ``transformer.dtype``.

    Returns:
        :class:`StepLogProb` with ``log_prob`` ``[B]``, ``mean`` and ``std``.
    """
    num = len(traj.sde_steps)
    if not 0 <= step_idx < num:
        raise IndexError(f"step_idx must be in [0, {num - 1}] (positions in traj.sde_steps), got {step_idx}")
    i = traj.sde_steps[step_idx]
    scale = traj.guidance_scale if guidance_scale is None else guidance_scale
    device = next(transformer.parameters()).device
    x = traj.latents[:, step_idx].to(device)
    neg = traj.negative_prompt_embeds
    v = _velocity(
        transformer,
        x,
        traj.timesteps[i].to(device),
        traj.prompt_embeds.to(device),
        None if neg is None else neg.to(device),
        scale,
        _model_dtype(transformer, dtype),
    )
    mean, std = sde_mean_std(x, v, traj.sigmas, i, traj.noise_level)
    return StepLogProb(gaussian_log_prob(traj.next_latents[:, step_idx].to(device), mean, std), mean, std)
