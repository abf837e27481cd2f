"""The Wan-2.1 SDE sampler with log-probs, against diffusers' WanPipeline and hand-computed densities (tiny Wan)."""

from __future__ import annotations

import json
import math
import runpy
from pathlib import Path

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler, WanPipeline
from safetensors.torch import load_file

from cac_align.generators.sampler import Trajectory, sample, step_logprob
from cac_align.generators.tiny import build_tiny_wan
from cac_align.generators.wan import LORA_WEIGHT_NAME, add_lora, decode_latents, encode_prompts, load_wan, save_lora

PROMPTS = ["a red  cat jumps &amp; lands", "two dogs run on a beach"]
SIZE = {"num_frames": 9, "height": 32, "width": 32}
STEPS = 4
SEQ = 32


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return build_tiny_wan(tmp_path_factory.mktemp("wan") / "tiny", seed=0)


@pytest.fixture(scope="module")
def wan(tiny_path):
    """Shared, never-modified components (tests that add LoRA load their own)."""
    return load_wan(tiny_path)


def euler() -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(shift=3.0)


def gens(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def embeds(c, prompts=PROMPTS):
    cond = encode_prompts(c.tokenizer, c.text_encoder, prompts, max_sequence_length=SEQ)
    uncond = encode_prompts(c.tokenizer, c.text_encoder, [""] * len(prompts), max_sequence_length=SEQ)
    return cond, uncond


def run(c, guidance_scale=5.0, seeds=(0, 1), prompts=PROMPTS, **kw) -> Trajectory:
    cond, uncond = embeds(c, prompts)
    args = {**SIZE, "num_steps": STEPS, "guidance_scale": guidance_scale, "generator": gens(*seeds), **kw}
    return sample(c.transformer, euler(), cond, uncond, **args)


def pipeline_output(path, guidance_scale, output_type, lora_dir=None):
    pipe = WanPipeline.from_pretrained(path, scheduler=euler())
    if lora_dir is not None:
        pipe.load_lora_weights(lora_dir)
    out = pipe(
        prompt=PROMPTS,
        num_inference_steps=STEPS,
        guidance_scale=guidance_scale,
        max_sequence_length=SEQ,
        generator=gens(0, 1),
        output_type=output_type,
        **SIZE,
    )
    return out.frames


def test_encode_prompts_matches_pipeline(tiny_path, wan):
    pipe = WanPipeline.from_pretrained(tiny_path)
    with torch.no_grad():  # the pipeline runs under no_grad too; autograd picks other CPU kernels
        ref, ref_neg = pipe.encode_prompt(PROMPTS, max_sequence_length=SEQ, device="cpu")
    cond, uncond = embeds(wan)
    assert cond.shape == (2, SEQ, 32)
    assert torch.equal(cond, ref) and torch.equal(uncond, ref_neg)
    with pytest.raises(ValueError, match="single string"):
        encode_prompts(wan.tokenizer, wan.text_encoder, "a cat")


@pytest.mark.parametrize("guidance_scale", [5.0, 1.0])
def test_ode_reproduces_wan_pipeline(tiny_path, wan, guidance_scale):
    traj = run(wan, guidance_scale, sde_steps=[])
    assert traj.log_probs.shape == (2, 0) and traj.sde_steps == []
    assert (traj.negative_prompt_embeds is None) == (guidance_scale <= 1)
    ref_latents = pipeline_output(tiny_path, guidance_scale, "latent")
    torch.testing.assert_close(traj.final_latents, ref_latents, atol=1e-5, rtol=0)
    video = decode_latents(wan.vae, traj.final_latents)
    ref_video = pipeline_output(tiny_path, guidance_scale, "pt")
    assert video.shape == ref_video.shape == (2, 9, 3, 32, 32)
    assert video.dtype == torch.float32 and 0 <= video.min() and video.max() <= 1
    assert (video - ref_video).abs().max() < 1e-5


@pytest.mark.parametrize("sde_steps", [None, [1, 2]], ids=["all-steps", "window"])
@pytest.mark.parametrize("with_lora", [False, True], ids=["base", "fresh-lora"])
def test_recomputed_logprob_ratio_is_one(tiny_path, sde_steps, with_lora):
    c = load_wan(tiny_path)
    base = run(c, sde_steps=sde_steps)
    if with_lora:
        add_lora(c.transformer, rank=4, alpha=8)
    traj = run(c, sde_steps=sde_steps)
    expected = list(range(STEPS - 1)) if sde_steps is None else sde_steps
    assert traj.sde_steps == expected
    assert traj.latents.shape == traj.next_latents.shape == (2, len(expected), 16, 3, 4, 4)
    # a fresh LoRA (lora_B = 0) leaves the sampled trajectory unchanged
    torch.testing.assert_close(traj.final_latents, base.final_latents, atol=1e-6, rtol=0)
    for k in range(len(expected) - 1):  # consecutive recorded steps chain up
        if expected[k + 1] == expected[k] + 1:
            assert torch.equal(traj.next_latents[:, k], traj.latents[:, k + 1])
    with torch.no_grad():
        for k in range(len(expected)):
            new = step_logprob(c.transformer, traj, k).log_prob
            ratio = torch.exp(new - traj.log_probs[:, k])
            assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-6, rtol=0), (k, ratio)


def test_logprob_matches_hand_gaussian(wan):
    """Steps 0 (sigma = 1, special-cased) and 1 against the SDE drift/diffusion written out in float64."""
    eta, g = 0.7, 3.0
    traj = run(wan, guidance_scale=g, seeds=(5, 6), sde_steps=[0, 1], noise_level=eta)
    sch = euler()
    sch.set_timesteps(STEPS)
    timesteps, sigmas = sch.timesteps, sch.sigmas.double()
    assert sigmas[0] == 1
    # the same generators: first the initial noise, then one draw per SDE step
    draws = {}
    for b, seed in enumerate((5, 6)):
        gen = torch.Generator().manual_seed(seed)
        draws[b] = [torch.randn((1, 16, 3, 4, 4), generator=gen) for _ in range(3)]
    noise = [torch.cat([draws[0][j], draws[1][j]]).double() for j in range(3)]
    torch.testing.assert_close(traj.latents[:, 0].double(), noise[0])
    cond, uncond = traj.prompt_embeds, traj.negative_prompt_embeds
    for k, i in enumerate((0, 1)):
        x = traj.latents[:, k]
        with torch.no_grad():
            tt = timesteps[i].expand(2)
            vc = wan.transformer(hidden_states=x, timestep=tt, encoder_hidden_states=cond, return_dict=False)[0]
            vu = wan.transformer(hidden_states=x, timestep=tt, encoder_hidden_states=uncond, return_dict=False)[0]
        v = (vu + g * (vc - vu)).double()
        x = x.double()
        s, s_next = sigmas[i], sigmas[i + 1]
        dt = s_next - s
        sigma_t = eta * torch.sqrt(s / (1 - (sigmas[1] if i == 0 else s)))
        drift = v + sigma_t**2 / (2 * s) * (x + (1 - s) * v)
        mean = x + drift * dt
        scale = sigma_t * torch.sqrt(-dt)
        x_next = mean + scale * noise[k + 1]
        torch.testing.assert_close(traj.next_latents[:, k].double(), x_next, atol=1e-5, rtol=1e-5)
        density = torch.distributions.Normal(mean, scale).log_prob(traj.next_latents[:, k].double())
        torch.testing.assert_close(traj.log_probs[:, k].double(), density.flatten(1).mean(1), atol=1e-5, rtol=0)
        expected_lp = -0.5 * (noise[k + 1] ** 2).flatten(1).mean(1) - torch.log(scale) - 0.5 * math.log(2 * math.pi)
        torch.testing.assert_close(traj.log_probs[:, k].double(), expected_lp, atol=1e-5, rtol=0)


def test_first_step_noise_is_bounded_on_the_unipc_grid(wan):
    """Wan ships UniPC, whose grid starts at 1 - 1e-6, not 1: step 0 must still use sigmas[1] in the denominator."""
    eta = 0.3
    cond, uncond = embeds(wan)
    traj = sample(
        wan.transformer, wan.scheduler, cond, uncond, num_steps=STEPS, sde_steps=[0], generator=gens(0, 1), **SIZE
    )
    s0, s1 = traj.sigmas[0].double(), traj.sigmas[1].double()
    assert 0.999 < s0 < 1
    with torch.no_grad():
        std = step_logprob(wan.transformer, traj, 0).std
    assert std == pytest.approx(float(eta * torch.sqrt(s0 / (1 - s1)) * torch.sqrt(s0 - s1)), rel=1e-6)
    assert std < 1 and traj.final_latents.abs().max() < 10


def test_gradients_reach_lora_through_step_logprob(tiny_path):
    c = load_wan(tiny_path)
    add_lora(c.transformer, rank=4, alpha=8)
    lora = {n: p for n, p in c.transformer.named_parameters() if "lora_" in n}
    assert lora and all(p.requires_grad and p.dtype == torch.float32 for p in lora.values())
    assert not any(p.requires_grad for n, p in c.transformer.named_parameters() if n not in lora)
    traj = run(c, sde_steps=[1], offload_to_cpu=True)
    out = step_logprob(c.transformer, traj, 0)
    assert out.log_prob.shape == (2,) and out.mean.shape == (2, 16, 3, 4, 4) and out.std > 0
    out.log_prob.sum().backward()
    grads_b = [p.grad for n, p in lora.items() if "lora_B" in n]
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads_b)
    assert sum(gr.abs().sum() for gr in grads_b) > 0


def test_per_sample_generators_make_samples_independent_of_batch(wan):
    pair = run(wan, seeds=(0, 1))
    alone = run(wan, seeds=(1,), prompts=PROMPTS[1:])
    torch.testing.assert_close(pair.final_latents[1:], alone.final_latents, atol=1e-5, rtol=0)
    torch.testing.assert_close(pair.log_probs[1:], alone.log_probs, atol=1e-5, rtol=0)
    assert not torch.allclose(pair.final_latents[0], pair.final_latents[1], atol=1e-2)


def test_offload_to_cpu_and_batch_helpers(wan):
    kept = run(wan)
    offloaded = run(wan, offload_to_cpu=True)
    for name in ("latents", "next_latents", "log_probs", "final_latents", "prompt_embeds", "negative_prompt_embeds"):
        t = getattr(offloaded, name)
        assert t.device.type == "cpu", name
        assert torch.equal(t, getattr(kept, name)), name
    joined = Trajectory.cat([kept.select([1]), kept.select(slice(0, 1))])
    assert torch.equal(joined.log_probs, kept.log_probs.flip(0))
    assert torch.equal(joined.latents[0], kept.latents[1])
    with pytest.raises(ValueError, match="differ"):
        Trajectory.cat([kept, run(wan, sde_steps=[1])])


@pytest.mark.gpu
def test_bf16_on_gpu_offloads_and_keeps_fp32_logprobs(tiny_path):
    c = load_wan(tiny_path, device="cuda", dtype=torch.bfloat16)
    cond, uncond = embeds(c)
    traj = sample(
        c.transformer, euler(), cond, uncond, num_steps=STEPS, generator=gens(0, 1), offload_to_cpu=True, **SIZE
    )
    assert traj.latents.device.type == "cpu" and traj.log_probs.dtype == torch.float32
    assert traj.final_latents.dtype == torch.float32
    with torch.no_grad():
        new = step_logprob(c.transformer, traj, 1).log_prob
    assert new.device.type == "cuda"
    assert torch.allclose(torch.exp(new.cpu() - traj.log_probs[:, 1]), torch.ones(2), atol=1e-6, rtol=0)


def test_lora_round_trip_through_wan_pipeline(tiny_path, tmp_path):
    c = load_wan(tiny_path)
    add_lora(c.transformer, rank=4, alpha=8)  # scaling alpha / rank = 2 must survive the round trip
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in c.transformer.named_parameters():
            if "lora_B" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    ours = decode_latents(c.vae, run(c, sde_steps=[]).final_latents)
    written = save_lora(c.transformer, tmp_path / "lora")
    assert written == tmp_path / "lora" / LORA_WEIGHT_NAME
    assert [p.name for p in (tmp_path / "lora").iterdir()] == [LORA_WEIGHT_NAME]
    assert all(k.startswith("transformer.") for k in load_file(written))
    without = pipeline_output(tiny_path, 5.0, "pt")
    with_lora = pipeline_output(tiny_path, 5.0, "pt", lora_dir=tmp_path / "lora")
    assert (ours - without).abs().max() > 1e-3  # the LoRA matters...
    assert (ours - with_lora).abs().max() < 1e-5  # ...and the pipeline restores it exactly
    with pytest.raises(ValueError, match="no LoRA"):
        save_lora(load_wan(tiny_path).transformer, tmp_path / "none")


def test_tiny_components_round_trip(tiny_path, wan, tmp_path):
    again = load_wan(build_tiny_wan(tmp_path / "same", seed=0))
    other = load_wan(build_tiny_wan(tmp_path / "other", seed=1))
    pipe = WanPipeline.from_pretrained(tiny_path)
    assert isinstance(wan.scheduler, UniPCMultistepScheduler) and wan.scheduler.config.flow_shift == 3.0
    for name in ("transformer", "vae", "text_encoder"):
        ours = getattr(wan, name).state_dict()
        for ref in (getattr(again, name).state_dict(), getattr(pipe, name).state_dict()):
            assert ours.keys() == ref.keys()
            assert all(torch.equal(ours[k], ref[k]) for k in ours), name
        assert not all(torch.equal(v, getattr(other, name).state_dict()[k]) for k, v in ours.items()), name
    text = "a red cat"
    assert wan.tokenizer(text).input_ids == pipe.tokenizer(text).input_ids
    assert wan.tokenizer(text).input_ids[-1] == wan.tokenizer.eos_token_id
    half = load_wan(tiny_path, dtype=torch.bfloat16)
    assert half.transformer.dtype == torch.bfloat16 and half.vae.dtype == torch.float32
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_wan(tmp_path / "missing")


def test_invalid_arguments_raise(wan):
    with pytest.raises(ValueError, match="last step"):
        run(wan, sde_steps=[STEPS - 1])
    with pytest.raises(ValueError, match="repeated"):
        run(wan, sde_steps=[1, 1])
    with pytest.raises(ValueError, match="noise_level"):
        run(wan, noise_level=0.0)
    with pytest.raises(ValueError, match="4k \\+ 1"):
        run(wan, num_frames=8)
    with pytest.raises(ValueError, match="2 generators"):
        run(wan, seeds=(0,))
    cond, _ = embeds(wan)
    with pytest.raises(ValueError, match="negative_prompt_embeds"):
        sample(wan.transformer, euler(), cond, None, num_steps=STEPS, guidance_scale=5.0, **SIZE)
    traj = run(wan, sde_steps=[1])
    with pytest.raises(IndexError, match="step_idx"):
        step_logprob(wan.transformer, traj, 1)


def test_benchmark_runs_tiny(tmp_path):
    """benchmarks/wan_step.py --tiny must keep working (it is the only runnable copy of the GPU benchmark)."""
    bench = runpy.run_path(str(Path(__file__).resolve().parents[1] / "benchmarks" / "wan_step.py"))
    out = tmp_path / "bench.json"
    results = bench["main"](["--tiny", "--steps", "3", "--warmup", "0", "--repeats", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    assert results["tiny"] and results["settings"]["steps"] == 3
    assert all(v > 0 for v in results["seconds_per_video"].values())
