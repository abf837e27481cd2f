"""Best-of-N sampling for Wan-2.1 with the CaC + UnifiedReward mix (paper Sec. 4.2, App. C.4).

For every prompt, sample N candidate videos (5 in the paper), score the N together with the configured reward mix
(one call per prompt group, so ``norm: group`` z-scores each component among the prompt's own candidates) and keep
the candidate with the highest mixed score. Launch (prompts are sharded over the processes)::

    accelerate launch --config_file generators/configs/accelerate/8gpu.yaml generators/best_of_n.py \
        --config generators/configs/best_of_n_wan2.1_1.3b.yaml prompts=prompts.txt output_dir=runs/bon
    python generators/best_of_n.py --config generators/configs/tiny/best_of_n.yaml output_dir=runs/bon_tiny  # CPU
    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 generators/best_of_n.py --config generators/configs/tiny/best_of_n.yaml \
        output_dir=runs/bon_tiny_2proc                                # 2 CPU processes (accelerate launch --cpu runs 1)

Tuned for: one 80 GB GPU per process at 480x832, 81 frames (Wan-2.1-1.3B in bf16, the reward models on the same GPU
or behind ``reward.components.<name>.url``). ``python generators/best_of_n.py --help`` lists every setting.

Outputs in ``output_dir``::

    candidates/<index>/<k>.mp4   every candidate (index = the prompt's line in the prompts file, from 0)
    best/<index>.mp4             the winning candidate
    records/<index>.json         one prompt's record, written last (atomically): the prompt is done
    manifest.jsonl               all records in prompt order, rebuilt at the end of every run
    config.yaml                  the resolved config

A record holds the prompt, each candidate's seed, mixed score and every component's raw and normalised score, and
the winner (``best``; null when every candidate's reward abstained). Resuming (``resume=true``) skips prompts whose
record and videos are all present; videos and records are written atomically, so an interrupted run never leaves a
half-written file that counts as done.

Departures from the paper: it does not say how candidates are sampled; here with ``WanPipeline`` (UniPC, CFG 5.0,
the defaults of Wan-2.1) and a fixed seed per candidate (``seed * 2**32 + index * N + k``), so every video can be
regenerated alone. Ties go to the lowest candidate index.
"""

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from accelerate import Accelerator
from diffusers import WanPipeline

from cac_align.algos.best_of_n import best_index
from cac_align.config import load_config, save_config
from cac_align.generators.tiny import build_tiny_wan
from cac_align.generators.wan import load_wan
from cac_align.reward.build import RewardSpec, build_mixed_reward
from cac_align.reward.mixed import MixedOutput
from cac_align.train.logging import Timer, progress
from cac_align.utils import atomic_path, atomic_write_json, atomic_write_text
from cac_align.video import save_video

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass
class ModelConfig:
    # Wan-2.1 text-to-video in diffusers layout (a local folder, e.g. Wan2.1-T2V-1.3B-Diffusers); "tiny" builds a
    # tiny random Wan in code into output_dir/tiny_wan (CPU smoke runs).
    path: str = "Wan2.1-T2V-1.3B-Diffusers"
    # dtype of the transformer and text encoder; the VAE decodes in fp32.
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    # Optional LoRA folder (pytorch_lora_weights.safetensors, e.g. flow_grpo.py's output_dir/final) to sample with.
    lora: str | None = None


@dataclass
class SampleConfig:
    # Frames per video (4k + 1; 81 = 5 s at 16 fps).
    num_frames: int = 81
    # Frame height, a multiple of 16.
    height: int = 480
    # Frame width, a multiple of 16.
    width: int = 832
    # Denoising steps.
    num_steps: int = 50
    # Classifier-free guidance scale.
    guidance_scale: float = 5.0
    # Negative prompt of classifier-free guidance.
    negative_prompt: str = ""
    # Text tokens per prompt.
    max_sequence_length: int = 512
    # Frame rate of the written videos and of the tensors handed to the rewards.
    fps: float = 16.0
    # Candidates generated per pipeline call (memory vs speed); results do not depend on it.
    batch_size: int = 1


@dataclass
class RewardConfig:
    # The reward mix: {name: RewardSpec}, names from unified, cac, brightness, color, reference (cac_align.reward.build).
    components: dict[str, RewardSpec] = field(
        default_factory=lambda: {
            "unified": RewardSpec(weight=1.0, norm="group", path="UnifiedReward-2.0-qwen3vl-8b"),
            "cac": RewardSpec(weight=1.0, norm="group", path="CaC-8B"),
        }
    )


@dataclass
class BestOfNConfig:
    """Best-of-N sampling for Wan-2.1 (paper Sec. 4.2): N candidates per prompt, the best by the reward mix kept."""

    # Prompts file: .txt (one prompt per non-empty line) or .jsonl (objects with a "prompt" string).
    prompts: str
    # Output folder (videos, records, manifest.jsonl, config.yaml).
    output_dir: str
    # Continue a previous run in output_dir, skipping prompts already done (false refuses a non-empty output_dir).
    resume: bool = False
    # Candidates per prompt (5 in the paper).
    num_candidates: int = 5
    # Base seed of the candidates' noise.
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)

    def __post_init__(self) -> None:
        if self.num_candidates < 1:
            raise ValueError(f"num_candidates must be >= 1, got {self.num_candidates}")
        if self.sample.batch_size < 1:
            raise ValueError(f"sample.batch_size must be >= 1, got {self.sample.batch_size}")


def read_prompts(path: str | Path) -> list[str]:
    """Prompts of a ``.txt`` (one per non-empty line) or ``.jsonl`` (``{"prompt": ...}`` per line) file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: prompts file not found")
    lines = path.read_text(encoding="utf-8").splitlines()
    prompts = []
    if path.suffix == ".jsonl":
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) or not obj["prompt"].strip():
                raise ValueError(f"{path}:{n}: prompt: expected an object with a non-empty string 'prompt'")
            prompts.append(obj["prompt"].strip())
    elif path.suffix == ".txt":
        prompts = [line.strip() for line in lines if line.strip()]
    else:
        raise ValueError(f"{path}: expected a .txt or .jsonl prompts file")
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def model_folder(path: str, output_dir: Path, acc: Accelerator) -> Path:
    """``path`` itself, or for ``"tiny"`` a tiny random Wan built once (by rank 0, atomically) in output_dir."""
    if path != "tiny":
        return Path(path)
    folder = output_dir / "tiny_wan"
    if acc.is_main_process and not folder.is_dir():
        tmp = output_dir / f".tiny_wan.tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        os.replace(build_tiny_wan(tmp), folder)
    acc.wait_for_everyone()
    return folder


def record_path(output_dir: Path, index: int) -> Path:
    return output_dir / "records" / f"{index:06d}.json"


def is_done(output_dir: Path, index: int, prompt: str) -> bool:
    """Whether prompt ``index`` has its record and every video it names (a record is written last)."""
    path = record_path(output_dir, index)
    if not path.is_file():
        return False
    record = json.loads(path.read_text(encoding="utf-8"))
    if record["prompt"] != prompt:
        raise ValueError(
            f"{path}: prompt: the record is for {record['prompt']!r} but line {index} of the prompts file is "
            f"{prompt!r}; the prompts file changed since this output_dir was written"
        )
    videos = [c["video"] for c in record["candidates"]] + ([record["best_video"]] if record["best_video"] else [])
    return all((output_dir / v).is_file() for v in videos)


def generate(
    pipe: WanPipeline, prompt: str, seeds: list[int], sample: SampleConfig, device: torch.device
) -> torch.Tensor:
    """The candidates of one prompt, ``[N, F, C, H, W]`` float in [0, 1] on CPU, one seeded generator each."""
    videos = []
    for start in range(0, len(seeds), sample.batch_size):
        chunk = seeds[start : start + sample.batch_size]
        frames = pipe(
            prompt=[prompt] * len(chunk),
            negative_prompt=[sample.negative_prompt] * len(chunk),
            num_frames=sample.num_frames,
            height=sample.height,
            width=sample.width,
            num_inference_steps=sample.num_steps,
            guidance_scale=sample.guidance_scale,
            max_sequence_length=sample.max_sequence_length,
            generator=[torch.Generator(device).manual_seed(s) for s in chunk],
            output_type="pt",
        ).frames
        videos.append(frames.float().cpu())
    return torch.cat(videos)


def write_prompt(
    output_dir: Path, index: int, prompt: str, seeds: list[int], videos: torch.Tensor, scores: MixedOutput, fps: float
) -> dict:
    """Write the candidates, the best video and, last, the record of one prompt; returns the record."""
    best = best_index(scores.total)
    candidates = []
    for k, seed in enumerate(seeds):
        rel = f"candidates/{index:06d}/{k}.mp4"
        save_video(videos[k], output_dir / rel, fps=fps)
        parts = {name: {"raw": p["raw"][k], "normalized": p["normalized"][k]} for name, p in scores.components.items()}
        candidates.append({"video": rel, "seed": seed, "total": scores.total[k], "components": parts})
    best_rel = None
    if best is not None:
        best_rel = f"best/{index:06d}.mp4"
        with atomic_path(output_dir / best_rel) as tmp:
            shutil.copyfile(output_dir / candidates[best]["video"], tmp)
    record = {
        "index": index,
        "prompt": prompt,
        "best": best,
        "best_video": best_rel,
        "best_total": None if best is None else scores.total[best],
        "weights": scores.weights,
        "candidates": candidates,
    }
    atomic_write_json(record_path(output_dir, index), record)
    return record


def main(argv: list[str] | None = None) -> Path:
    cfg = load_config(BestOfNConfig, argv, prog="best_of_n.py")
    acc = Accelerator()
    out = Path(cfg.output_dir)
    prompts = read_prompts(cfg.prompts)
    if not cfg.resume and (out / "records").is_dir() and any((out / "records").iterdir()):
        raise FileExistsError(f"{out}: holds results of an earlier run; pass resume=true to continue it")
    acc.wait_for_everyone()  # every rank checked before rank 0 writes anything
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")

    # ---- build: generator, reward mix
    dtype = DTYPES[cfg.model.dtype]
    wan = load_wan(model_folder(cfg.model.path, out, acc), device=acc.device, dtype=dtype)
    pipe = WanPipeline(
        tokenizer=wan.tokenizer,
        text_encoder=wan.text_encoder,
        vae=wan.vae,
        transformer=wan.transformer,
        scheduler=wan.scheduler,
    )
    if cfg.model.lora is not None:
        pipe.load_lora_weights(cfg.model.lora)
    pipe.set_progress_bar_config(disable=True)
    reward = build_mixed_reward(cfg.reward.components, device=acc.device, tiny_dir=out)

    # ---- this process's prompts: every world_size-th, minus those done by an earlier run
    n = cfg.num_candidates
    mine = range(acc.process_index, len(prompts), acc.num_processes)
    todo = [i for i in mine if not is_done(out, i, prompts[i])]
    print(f"[rank {acc.process_index}] {len(mine)} prompts, {len(mine) - len(todo)} already done", flush=True)

    timer = Timer()
    start = time.perf_counter()
    for i in progress(todo, desc="best-of-n"):
        seeds = [cfg.seed * 2**32 + i * n + k for k in range(n)]
        with timer("sampling"):
            videos = generate(pipe, prompts[i], seeds, cfg.sample, acc.device)
        with timer("reward"):
            scores = reward.score(videos, [prompts[i]] * n, fps=cfg.sample.fps, group_ids=[i] * n)
        with timer("writing"):
            write_prompt(out, i, prompts[i], seeds, videos, scores, cfg.sample.fps)
    times = {k: round(v, 2) for k, v in timer.pop().items()}
    print(f"[rank {acc.process_index}] {len(todo)} prompts in {time.perf_counter() - start:.1f} s {times}", flush=True)

    # ---- the manifest: every record, in prompt order
    acc.wait_for_everyone()
    if acc.is_main_process:
        records = [json.loads(record_path(out, i).read_text(encoding="utf-8")) for i in range(len(prompts))]
        atomic_write_text(out / "manifest.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        best = [r["best_total"] for r in records if r["best_total"] is not None]
        print(f"wrote {out / 'manifest.jsonl'}: {len(records)} prompts, {len(best)} with a winner", flush=True)
    acc.wait_for_everyone()
    return out / "manifest.jsonl"


if __name__ == "__main__":
    main()
