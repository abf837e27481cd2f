"""Table S2 of the paper: seconds per video of each reward model (App. C.3, "Inference Compute Analysis").

Each reward model judges the same videos one call at a time (``batch_size`` videos per call, 1 by default as a
per-video latency), after ``warmup`` untimed videos; the table reports the mean wall-clock seconds per video. Rows:
CaC with two-turn inference (Sec. 3.4), the same checkpoint with single-turn inference (the Table 3 ablation format),
and UnifiedReward (one pass). For two-turn CaC the share of videos that went on to turn 2 is reported too, since a
video judged normal in turn 1 costs one turn only. Optionally the seconds per video of Wan-2.1 sampling at the
configured size (the "Video Generation Sampling" row; ``benchmarks/wan_step.py`` times a whole Flow-GRPO step), and
the accuracy column from a Table 1 run (``accuracy_from``: its ``summary.json``).

Real scale (one GPU; the paper: one A800, 21 frames per video, i.e. 5 s videos at 4 fps)::

    python experiments/tableS2_speed.py --config experiments/configs/tableS2_speed.yaml videos=bench/main.jsonl \\
        cac.path=ckpt/CaC-8B unified.path=ckpt/UnifiedReward-2.0-qwen3vl-8b generator.path=ckpt/Wan2.1-T2V-1.3B-Diffusers \\
        accuracy_from=runs/table1/summary.json output_dir=runs/tableS2

Tiny (CPU, well under a minute; tiny random models on the synthetic world: the times say nothing about real ones)::

    python experiments/tableS2_speed.py --config experiments/configs/tiny/tableS2_speed.yaml output_dir=runs/tableS2_tiny

Outputs in ``output_dir``: ``tableS2.md`` (the paper's layout, this run's rows above the published ones),
``timings.json`` (every per-video time) and ``config.yaml``.

Departures from the paper: the paper's generation row is one whole Flow-GRPO sampling step (272 s); here it is the
seconds of one video at the configured size and steps. The paper's UnifiedReward-Think, VR-Thinker and Gemini rows are
printed from the paper only.
"""

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cac_align.config import load_config, save_config
from cac_align.utils import atomic_write_json, atomic_write_text

# Table S2 as published: method, stage / pass, seconds per video, accuracy (None: "-").
PAPER_S2: list[tuple[str, str, float, float | None]] = [
    ("Video Generation", "Sampling (1 GRPO step)", 272.0, None),
    ("UnifiedReward", "Single pass", 3.79, 0.560),
    ("UnifiedReward-Think", "Single pass with reasoning", 16.5, 0.503),
    ("VR-Thinker", "Multiturn adaptive stopping", 42.3, 0.537),
    ("Gemini-3.1-Pro", "API calling", 65.6, 0.560),
    ("CaC (Ours)", "Two-turn inference", 33.2, 0.817),
]


@dataclass
class RewardModelConfig:
    # Checkpoint folder; "tiny" writes a tiny random Qwen3-VL to output_dir/models/<name> (smoke runs only).
    path: str = "tiny"
    # Keyword settings of the reward class (CaCReward / UnifiedReward), e.g. {max_new_tokens: 2048}, {num_frames: 21}.
    settings: dict[str, Any] = field(default_factory=dict)
    # Seed of the tiny random checkpoint.
    seed: int = 0


@dataclass
class GeneratorConfig:
    # Wan-2.1 folder (diffusers layout); "tiny" builds a tiny random Wan; null skips the generation row.
    path: str | None = None
    # Frames (4k + 1), height and width (multiples of 16), denoising steps, CFG scale.
    num_frames: int = 81
    height: int = 480
    width: int = 832
    num_steps: int = 50
    guidance_scale: float = 5.0
    # Videos timed (after one untimed warm-up video).
    num_videos: int = 2


@dataclass
class TableS2Config:
    """Table S2: seconds per video of CaC two-turn, CaC single-turn and UnifiedReward (paper App. C.3)."""

    # Output folder.
    output_dir: str
    # Videos to judge: an annotation manifest (.jsonl) or a folder of .mp4 files; null renders the synthetic world.
    videos: str | None = None
    # How many videos are timed (the first ones), after `warmup` untimed ones.
    num_videos: int = 8
    warmup: int = 1
    # Videos per reward call (1: per-video latency, as the paper reports).
    batch_size: int = 1
    cac: RewardModelConfig = field(default_factory=RewardModelConfig)
    unified: RewardModelConfig = field(default_factory=lambda: RewardModelConfig(seed=1))
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    # A Table 1 run's summary.json: its accuracies fill the Acc. column (rows CaC and UnifiedReward).
    accuracy_from: str | None = None
    # Device, e.g. cuda:0 (null: CPU), and weights dtype (null: the checkpoint's).
    device: str | None = None
    dtype: str | None = None

    def __post_init__(self) -> None:
        if self.num_videos < 1:
            raise ValueError(f"num_videos: expected >= 1, got {self.num_videos}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {self.batch_size}")
        if self.warmup < 0:
            raise ValueError(f"warmup: expected >= 0, got {self.warmup}")


def model_folder(name: str, spec: RewardModelConfig, out: Path) -> Path:
    if spec.path != "tiny":
        return Path(spec.path)
    from cac_align.testing import build_tiny_qwen3vl

    folder = out / "models" / name
    if not (folder / "config.json").is_file():
        build_tiny_qwen3vl(folder, seed=spec.seed, vocab="bpe")
    return folder


def video_files(source: str | None, out: Path, count: int) -> tuple[list[Path], list[str]]:
    """``count`` videos and their prompts from a manifest, a folder, or a synthetic world rendered in ``out``."""
    from cac_align.schema import read_manifest, resolve_video

    if source is None:
        from cac_align.data.synthetic import generate

        manifest = generate(out / "data", num_videos=count, seed=1, size=(64, 64), seconds=2.0, progress=False)
    else:
        manifest = Path(source)
    if manifest.is_dir():
        files = sorted(manifest.glob("*.mp4"))[:count]
        if not files:
            raise FileNotFoundError(f"{manifest}: no .mp4 files")
        return files, [""] * len(files)
    annotations = read_manifest(manifest)[:count]
    return [resolve_video(a, manifest) for a in annotations], [a.prompt for a in annotations]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_reward(fn, files: list[Path], prompts: list[str], warmup: int, batch_size: int, device) -> list[float]:
    """Seconds per video of ``fn(files, prompts)``, ``batch_size`` at a time, the first ``warmup`` videos untimed."""
    if warmup:
        fn(files[:warmup], prompts[:warmup])
    times = []
    for i in range(warmup, len(files), batch_size):
        chunk = slice(i, i + batch_size)
        sync(device)
        start = time.perf_counter()
        fn(files[chunk], prompts[chunk])
        sync(device)
        n = len(files[chunk])
        times += [(time.perf_counter() - start) / n] * n
    return times


DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def time_generator(path: str, gen: GeneratorConfig, out: Path, device: str | None, dtype: str | None) -> list[float]:
    """Seconds per video of WanPipeline sampling at ``gen``'s size and steps (one untimed warm-up video)."""
    from diffusers import WanPipeline

    from cac_align.generators.tiny import build_tiny_wan
    from cac_align.generators.wan import load_wan

    folder = Path(path)
    if path == "tiny":
        folder = out / "models" / "wan"
        if not (folder / "model_index.json").is_file():
            build_tiny_wan(folder)
    wan = load_wan(folder, device=device or "cpu", dtype=DTYPES[dtype or "float32"])
    pipe = WanPipeline(
        tokenizer=wan.tokenizer,
        text_encoder=wan.text_encoder,
        vae=wan.vae,
        transformer=wan.transformer,
        scheduler=wan.scheduler,
    )
    pipe.set_progress_bar_config(disable=True)
    dev = torch.device(device or "cpu")
    times = []
    for k in range(gen.num_videos + 1):
        sync(dev)
        start = time.perf_counter()
        pipe(
            prompt="a red fox runs across a snowy field",
            num_frames=gen.num_frames,
            height=gen.height,
            width=gen.width,
            num_inference_steps=gen.num_steps,
            guidance_scale=gen.guidance_scale,
            generator=torch.Generator(dev).manual_seed(k),
            output_type="pt",
        )
        sync(dev)
        if k:  # the first video warms up
            times.append(time.perf_counter() - start)
    return times


def format_table(rows: list[dict[str, Any]], note: str) -> str:
    def fmt(v: float | None, digits: int) -> str:
        return "-" if v is None else f"{v:.{digits}f}"

    lines = [
        "# Table S2: inference time per video",
        "",
        note,
        "",
        "| Method | Stage / Pass | Avg. Time (s) | Acc. |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {r['method']} | {r['stage']} | {fmt(r['seconds'], 3)} | {fmt(r['accuracy'], 3)} |" for r in rows]
    lines += [f"| *(paper)* {m} | {s} | {t:g}s | {fmt(a, 3)} |" for m, s, t, a in PAPER_S2]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> Path:
    from cac_align.reward.cac import CaCReward
    from cac_align.reward.unified import UnifiedReward

    cfg = load_config(TableS2Config, argv, prog="tableS2_speed.py")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    files, prompts = video_files(cfg.videos, out, cfg.warmup + cfg.num_videos)
    if len(files) <= cfg.warmup:
        raise ValueError(f"videos: {len(files)} videos, but warmup={cfg.warmup} leaves none to time")
    device = torch.device(cfg.device or "cpu")
    accuracy: dict[str, float | None] = {}
    if cfg.accuracy_from is not None:
        import json

        summary = json.loads(Path(cfg.accuracy_from).read_text(encoding="utf-8"))
        accuracy = {name: j["main"]["table1"]["accuracy"] for name, j in summary["judges"].items()}

    timings: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    cac_path = model_folder("cac", cfg.cac, out)
    for mode, stage in (("two-turn", "Two-turn inference"), ("single-turn", "Single-turn inference")):
        print(f"[tableS2] CaC {mode} on {len(files) - cfg.warmup} videos", flush=True)
        reward = CaCReward.from_pretrained(
            cac_path, device=cfg.device, dtype=cfg.dtype, **{**cfg.cac.settings, "mode": mode}
        )
        turns: list[int] = []

        def judge(fs, ps, reward=reward, turns=turns):
            turns.extend(len(ev.turns) for ev in reward.judge_batch(list(fs), list(ps)))

        secs = time_reward(judge, files, prompts, cfg.warmup, cfg.batch_size, device)
        timed_turns = turns[cfg.warmup :]
        turn2 = sum(t > 1 for t in timed_turns) / len(timed_turns) if mode == "two-turn" else None
        timings[f"cac/{mode}"] = {"seconds": secs, "turns": timed_turns}
        rows.append(
            {
                "method": "CaC",
                "stage": stage if turn2 is None else f"{stage} (turn 2 on {turn2:.0%} of videos)",
                "seconds": statistics.mean(secs),
                "accuracy": accuracy.get("CaC") if mode == "two-turn" else None,
            }
        )
        del reward

    print(f"[tableS2] UnifiedReward on {len(files) - cfg.warmup} videos", flush=True)
    unified = UnifiedReward.from_pretrained(
        model_folder("unified", cfg.unified, out), device=cfg.device, dtype=cfg.dtype, **cfg.unified.settings
    )
    secs = time_reward(
        lambda fs, ps, r=unified: r(list(fs), list(ps)), files, prompts, cfg.warmup, cfg.batch_size, device
    )
    timings["unified"] = {"seconds": secs}
    rows.append(
        {
            "method": "UnifiedReward",
            "stage": "Single pass",
            "seconds": statistics.mean(secs),
            "accuracy": accuracy.get("UnifiedReward"),
        }
    )
    del unified

    if cfg.generator.path is not None:
        g = cfg.generator
        print(f"[tableS2] Wan sampling, {g.num_frames}x{g.height}x{g.width}, {g.num_steps} steps", flush=True)
        secs = time_generator(g.path, g, out, cfg.device, cfg.dtype)
        timings["generator"] = {"seconds": secs}
        rows.insert(
            0,
            {
                "method": "Video Generation",
                "stage": f"Sampling, 1 video ({g.num_frames} frames, {g.height}x{g.width}, {g.num_steps} steps)",
                "seconds": statistics.mean(secs),
                "accuracy": None,
            },
        )

    note = (
        f"{len(files) - cfg.warmup} videos timed after {cfg.warmup} warm-up, {cfg.batch_size} per call, on "
        f"{device.type}{'' if device.type == 'cpu' else ' (' + torch.cuda.get_device_name(device) + ')'}. "
        "Rows marked *(paper)* are the published times (one A800, 21 frames per video)."
    )
    atomic_write_json(out / "timings.json", {"videos": [str(f) for f in files], "timings": timings, "rows": rows})
    atomic_write_text(out / "tableS2.md", format_table(rows, note))
    print(f"[tableS2] wrote {out / 'tableS2.md'}", flush=True)
    return out / "tableS2.md"


if __name__ == "__main__":
    main()
