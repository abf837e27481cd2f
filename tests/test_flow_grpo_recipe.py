"""generators/flow_grpo.py on a tiny Wan: logs, LoRA for WanPipeline, exact resume, on-policy ratio 1, 2 processes,
and that it learns a known reward (a shorter run of experiments/flow_grpo_brightness.py)."""

from __future__ import annotations

import os
import runpy
from pathlib import Path

import pytest
import torch
from diffusers import WanPipeline
from safetensors.torch import load_file

from cac_align.generators.tiny import build_tiny_wan
from cac_align.testing_dist import run_distributed
from cac_align.utils import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "generators" / "flow_grpo.py"
TINY = ROOT / "generators" / "configs" / "tiny" / "flow_grpo.yaml"
BON = ROOT / "generators" / "best_of_n.py"
TINY_BON = ROOT / "generators" / "configs" / "tiny" / "best_of_n.yaml"
PROMPTS = ROOT / "generators" / "configs" / "tiny" / "prompts.txt"
EXPERIMENT = ROOT / "experiments" / "flow_grpo_brightness.py"
# two pixel rewards (fast, deterministic) with different normalisations
REWARD = "reward.components={brightness: {weight: 1.0, norm: group}, color: {weight: 1.0, norm: batch}}"
LORA_FILE = "pytorch_lora_weights.safetensors"


def _main(argv: list[str]) -> Path:
    return runpy.run_path(str(RECIPE), run_name="flow_grpo")["main"](argv)


def _argv(out: Path, model: str | Path, *extra: str) -> list[str]:
    return ["--config", str(TINY), f"output_dir={out}", f"prompts={PROMPTS}", f"model.path={model}", REWARD, *extra]


@pytest.fixture(scope="module")
def tiny_wan(tmp_path_factory) -> Path:
    return build_tiny_wan(tmp_path_factory.mktemp("wan") / "tiny")


def test_tiny_run_logs_every_part_and_saves_a_lora_that_wan_pipeline_loads(tmp_path):
    out = tmp_path / "run"
    final = _main(_argv(out, "tiny", "log.video_every=2"))
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        for name in ("brightness", "color"):
            for key in ("raw_mean", "raw_std", "norm_mean", "norm_std", "none"):
                assert f"reward/{name}/{key}" in m
        for key in ("advantage/mean", "advantage/std", "train/clip_frac", "train/kl", "train/grad_norm", "train/lr"):
            assert key in m
        # fully on-policy (one update per sampling round): every recomputed step log-prob equals the sampled one
        for key in ("train/ratio_mean", "train/ratio_min", "train/ratio_max"):
            assert m[key] == pytest.approx(1.0, abs=1e-6)
        assert m["train/clip_frac"] == 0.0
        parts = m["time/sampling"] + m["time/reward"] + m["time/training"]
        assert 0 < parts <= m["time/step"] and m["time/reward_share"] == pytest.approx(
            m["time/reward"] / m["time/step"]
        )
    assert len(list((out / "videos").rglob("step_00000002.mp4"))) == 2
    assert (out / "tensorboard").is_dir() and (out / "config.yaml").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000001", "step_00000002"]

    # diffusers loads the final LoRA, and it changes the model's output
    assert final == out / "final" and (final / LORA_FILE).is_file()
    pipe = WanPipeline.from_pretrained(out / "tiny_wan")
    pipe.set_progress_bar_config(disable=True)
    kwargs = {"prompt": "a red fox", "num_frames": 5, "height": 32, "width": 32, "num_inference_steps": 3}
    kwargs.update({"max_sequence_length": 32, "output_type": "latent"})
    base = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).frames
    pipe.load_lora_weights(final)
    tuned = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).frames
    assert not torch.equal(base, tuned)


def test_resume_after_k_steps_finishes_with_the_weights_of_an_uninterrupted_run(tmp_path, tiny_wan):
    # every piece of state: EMA, LR warm-up, two optimizer updates per round (the second off-policy), a random
    # half of the SDE steps and a random SDE window per step
    extra = [
        "train.max_steps=3",
        "train.ema=true",
        "train.warmup_steps=2",
        "train.num_minibatches=2",
        "train.timestep_fraction=0.5",
        "sample.sde_window=2",
        "sample.num_steps=5",
        "log.video_every=0",
        "train.clip_range=0.05",
    ]
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    _main(_argv(straight, tiny_wan, *extra))
    _main(_argv(interrupted, tiny_wan, *extra, "train.max_steps=2"))
    with pytest.raises(FileExistsError, match="resume=true"):
        _main(_argv(interrupted, tiny_wan, *extra))
    _main(_argv(interrupted, tiny_wan, *extra, "resume=true"))

    for rel in ("final/" + LORA_FILE, "checkpoints/step_00000003/model.safetensors"):
        a, b = load_file(straight / rel), load_file(interrupted / rel)
        assert a.keys() == b.keys() and a
        assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5, rel
    assert max(float(v.abs().max()) for v in a.values()) > 0  # the LoRA did move
    got, want = read_jsonl(interrupted / "metrics.jsonl"), read_jsonl(straight / "metrics.jsonl")
    assert [m["step"] for m in got] == [1, 2, 3]
    assert got[2]["reward/total_mean"] == pytest.approx(want[2]["reward/total_mean"])
    assert got[2]["reward/brightness/raw_mean"] == pytest.approx(want[2]["reward/brightness/raw_mean"], abs=1e-7)
    # the second minibatch of each round is off-policy: its ratios leave 1
    assert any(m["train/ratio_min"] < 1 - 1e-7 or m["train/ratio_max"] > 1 + 1e-7 for m in want)


def _grpo_worker(rank: int, world_size: int, argv: list[str]) -> None:
    os.environ["ACCELERATE_USE_CPU"] = "true"  # what `accelerate launch --cpu` sets
    runpy.run_path(str(RECIPE), run_name="flow_grpo")["main"](argv)


def test_two_processes_train_like_one(tmp_path, tiny_wan):
    extra = ["train.max_steps=2", "log.video_every=0", "train.beta=0.01"]
    one, two = tmp_path / "one", tmp_path / "two"
    _main(_argv(one, tiny_wan, *extra))
    run_distributed(_grpo_worker, world_size=2, args=(_argv(two, tiny_wan, *extra),), timeout=300)
    # the same videos (seeded per video), rewards gathered before normalising, gradients averaged over the ranks
    m1, m2 = read_jsonl(one / "metrics.jsonl"), read_jsonl(two / "metrics.jsonl")
    for a, b in zip(m1, m2, strict=True):
        assert b["reward/brightness/raw_mean"] == pytest.approx(a["reward/brightness/raw_mean"], abs=1e-6)
        assert b["reward/color/norm_std"] == pytest.approx(a["reward/color/norm_std"], abs=1e-5)
    a, b = load_file(one / "final" / LORA_FILE), load_file(two / "final" / LORA_FILE)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4
    assert max(float(v.abs().max()) for v in a.values()) > 1e-3


def test_flow_grpo_raises_a_known_reward(tmp_path):
    experiment = runpy.run_path(str(EXPERIMENT), run_name="experiment")
    result = experiment["run"](tmp_path, steps=40)
    first, last = result["first_mean"], result["last_mean"]
    # the mean reward of the last steps is above the first steps' by several within-group standard deviations
    assert last - first > 3 * result["first_std"], result


@pytest.mark.slow
def test_tiny_presets_run_as_written(tmp_path):
    """The acceptance commands, with the presets' own tiny reward models (UnifiedReward + CaC, random weights)."""
    bon = runpy.run_path(str(BON), run_name="best_of_n")["main"]
    manifest = bon(["--config", str(TINY_BON), f"output_dir={tmp_path / 'bon'}", f"prompts={PROMPTS}"])
    records = read_jsonl(manifest)
    assert len(records) == 3 and all(set(c["components"]) == {"unified", "cac"} for c in records[0]["candidates"])
    final = _main(["--config", str(TINY), f"output_dir={tmp_path / 'grpo'}", f"prompts={PROMPTS}"])
    assert (final / LORA_FILE).is_file()
    assert "reward/cac/raw_mean" in read_jsonl(tmp_path / "grpo" / "metrics.jsonl")[-1]


def test_benchmark_times_a_flow_grpo_step(tmp_path):
    bench = runpy.run_path(str(ROOT / "benchmarks" / "wan_step.py"), run_name="wan_step")
    results = bench["main"](["--tiny", "--steps", "3", "--batch", "2", "--warmup", "0", "--repeats", "1"])
    split = results["train_step_split_s"]
    assert set(split) == {"sampling", "reward", "training"} and all(v > 0 for v in split.values())
    assert results["train_step_s"] == pytest.approx(sum(split.values()))
    assert results["reward_share"] == pytest.approx(split["reward"] / results["train_step_s"])
    assert results["reward"] == "brightness" and results["videos_per_step"] == 2
