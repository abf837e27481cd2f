"""The command line: ``cac-align <command>`` or ``python -m cac_align <command>``; ``--help`` on every command.

Each command is a pair of functions, ``_add_<name>(subparsers)`` and ``_run_<name>(args)``, listed in
:func:`build_parser`. Heavy imports happen inside the ``_run_`` functions so that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH such as 160x96, got {text!r}") from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"expected positive sizes, got {text!r}")
    return w, h


# ---------------------------------------------------------------------------------------------------------- synth
def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="render the synthetic anomaly world (videos + manifest.jsonl)",
        description="Render procedurally generated videos with injected anomalies of all five categories and write "
        "their exact ground truth to OUT/manifest.jsonl. About half the videos are normal. Deterministic for a seed; "
        "re-running on the same OUT skips videos already written.",
    )
    p.add_argument("out", help="output folder")
    p.add_argument("--num-videos", type=int, default=32, help="number of videos (default 32)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--size", type=_size, default=(160, 96), help="frame size WxH (default 160x96)")
    p.add_argument("--seconds", type=float, default=4.0, help="video length in seconds (default 4)")
    p.add_argument("--fps", type=float, default=16.0, help="frame rate of the written mp4 files (default 16)")
    p.add_argument(
        "--kinds",
        type=lambda s: [k.strip() for k in s.split(",") if k.strip()],
        default=None,
        help="only these defect kinds, comma-separated (e.g. flicker,melt; default: all kinds of all five categories "
        "but the opt-in 'glitch', a blocky magenta texture corruption drawn only when named)",
    )
    p.add_argument(
        "--salient",
        action="store_true",
        help="every anomaly on the largest entity it can take, flickers at full strength (a world small "
        "from-scratch models can see; durations stay the world's mix of under and over 1 s)",
    )


def _run_synth(args: argparse.Namespace) -> int:
    from cac_align.data.synthetic import generate, summarize

    manifest = generate(
        args.out,
        num_videos=args.num_videos,
        seed=args.seed,
        size=args.size,
        seconds=args.seconds,
        fps=args.fps,
        kinds=args.kinds,
        salient=args.salient,
    )
    print(summarize(manifest))
    return 0


# ----------------------------------------------------------------------------------------------------------- demo
def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole pipeline on the built-in tiny default (CPU, a few minutes) and write OUT/report.html",
        description="The whole CaC pipeline at tiny scale on CPU: synthetic anomaly data, a short three-stage reward "
        "training, two-turn scoring with rendered evidence, Best-of-N and a few Flow-GRPO steps with the mixed "
        "UnifiedReward + CaC reward, the anomaly-judge benchmark and the three VBench dimensions, ending in one HTML "
        "report (OUT/report.html). Tiny random models produce meaningless scores; the report shows how to run each "
        "stage on real checkpoints. A rerun on the same OUT skips the steps already done. Needs a cac-align checkout "
        "(the recipes in reward/ and generators/).",
    )
    p.add_argument("out", nargs="?", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--num-videos", type=int, default=24, help="synthetic training videos to render (default 24)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def _run_demo(args: argparse.Namespace) -> int:
    from cac_align.demo import DemoError, run_demo

    if args.num_videos < 12:
        print(
            f"demo: --num-videos must be >= 12 (three balanced stage splits), got {args.num_videos}", file=sys.stderr
        )
        return 2
    try:
        run_demo(args.out, seed=args.seed, num_videos=args.num_videos)
    except DemoError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------------------------------- serve-reward
def _add_serve_reward(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve-reward",
        help="serve a reward model over HTTP (POST /reward and POST /v1/chat/completions)",
        description="Load a reward checkpoint once and serve it until Ctrl-C: POST /reward scores videos (base64 "
        "video files or raw tensors; client: cac_align.reward.remote.RemoteReward) and POST /v1/chat/completions "
        "exposes the same weights as an OpenAI-compatible chat model (client: UnifiedReward.from_server). Requests "
        "are served one at a time. Listens on 127.0.0.1 unless --host says otherwise.",
    )
    p.add_argument("--model", required=True, help="the checkpoint folder (model + processor)")
    p.add_argument("--reward", choices=["cac", "unified"], default="cac", help="which reward to serve (default cac)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1, this machine)")
    p.add_argument("--port", type=int, default=8100, help="TCP port (default 8100)")
    p.add_argument("--name", default=None, help="served chat model name (default: the folder's name)")
    p.add_argument("--device", default=None, help="e.g. cuda:0 (default: CPU)")
    p.add_argument("--dtype", choices=["auto", "bfloat16", "float16", "float32"], default="auto", help="weights dtype")
    p.add_argument("--soft", action="store_true", help="unified only: soft scores from the digit distribution")


def _run_serve_reward(args: argparse.Namespace) -> int:
    from cac_align.serve import serve_reward_model

    extra = {"soft": True} if args.soft else {}
    if args.soft and args.reward != "unified":
        print("serve-reward: --soft applies to --reward unified only", file=sys.stderr)
        return 2
    serve_reward_model(
        args.model,
        args.reward,
        host=args.host,
        port=args.port,
        model_name=args.name,
        device=args.device,
        dtype=None if args.dtype == "auto" else args.dtype,
        **extra,
    )
    return 0


# ---------------------------------------------------------------------------------------------------------- score
def _add_score(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="score video files with a CaC checkpoint: reward, status, window, labels (and visual evidence)",
        description="Judge each video file with the CaC reward (Sec. 3.4, Eq. 7) and print one result per file: the "
        "reward (P(normal) / (P(normal) + P(abnormal))), the status, the anomalous window and the labels; with --json "
        "one JSON object per line. A file that cannot be read gets a result saying what went wrong and the others are "
        "still scored; the exit code is 1 if any file failed. --render DIR writes, per video, an mp4 with the boxes "
        "drawn on the frames and the window on a timeline, and DIR/index.html showing every video with its reward, "
        "labels, reasons and raw answers.",
    )
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="video files")
    p.add_argument("--model", required=True, help="the CaC checkpoint folder (model + processor)")
    p.add_argument("--json", action="store_true", help="print one JSON object per line instead of text")
    p.add_argument("--render", metavar="DIR", default=None, help="write evidence mp4s and DIR/index.html")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--prompt", default=None, help="the generation prompt of every video")
    g.add_argument("--prompts", metavar="FILE", default=None, help="a text file with one prompt per line, per VIDEO")
    p.add_argument("--mode", choices=["two-turn", "single-turn"], default=None, help="default: the checkpoint's")
    p.add_argument("--batch-size", type=int, default=4, help="videos judged together (default 4)")
    p.add_argument("--device", default=None, help="e.g. cuda:0 (default: CPU)")
    p.add_argument("--dtype", choices=["auto", "bfloat16", "float16", "float32"], default="auto", help="weights dtype")


def _run_score(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    paths = [Path(v) for v in args.videos]
    prompts: list[str | None] = [args.prompt] * len(paths)
    if args.prompts is not None:
        try:
            prompts = list(Path(args.prompts).read_text(encoding="utf-8").splitlines())
        except OSError as e:
            print(f"score: --prompts {args.prompts}: {e.strerror}", file=sys.stderr)
            return 2
        if len(prompts) != len(paths):
            print(
                f"score: {args.prompts}: expected {len(paths)} lines (one prompt per VIDEO), got {len(prompts)}",
                file=sys.stderr,
            )
            return 2
    if args.batch_size < 1:
        print(f"score: --batch-size must be >= 1, got {args.batch_size}", file=sys.stderr)
        return 2

    from cac_align.evidence import render_evidence_video, score_files, write_report
    from cac_align.reward.cac import CaCReward
    from cac_align.video import VideoReadError, load_video

    settings = {} if args.mode is None else {"mode": args.mode}
    dtype = None if args.dtype == "auto" else args.dtype
    reward = CaCReward.from_pretrained(args.model, device=args.device, dtype=dtype, **settings)
    out = None if args.render is None else Path(args.render)
    results, names = [], set()
    for r in score_files(reward, paths, prompts, batch_size=args.batch_size):
        if out is not None and r.ok and r.evidence is not None:
            stem, k = r.path.stem, 1
            while f"{stem}.mp4" in names:  # two inputs with the same name from different folders
                k += 1
                stem = f"{r.path.stem}-{k}"
            names.add(f"{stem}.mp4")
            try:
                full = load_video(r.path, None)
                r.render = render_evidence_video(full.frames, full.src_fps, r.evidence, out / f"{stem}.mp4")
            except VideoReadError as e:  # scored from its sampled frames, but the whole file does not decode
                r.error = f"rendering failed: {e}"
        print(json.dumps(r.to_dict(), ensure_ascii=False) if args.json else r.line(), flush=True)
        results.append(r)
    if out is not None:
        page = write_report(results, out / "index.html")
        print(f"score: report {page}", file=sys.stderr)
    failed = sum(not r.ok for r in results)
    if failed:
        print(f"score: {failed} of {len(results)} files failed", file=sys.stderr)
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------------------------- bench
def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="anomaly-judge benchmark: Table 1, Fig. 4, Table S3, Table S4 metrics of a judge over a manifest",
        description="Run a judge over every video of an annotation manifest and write OUT/predictions.jsonl (one line "
        "per video; a rerun on the same OUT resumes), OUT/metrics.json, OUT/tables.md (the paper's table layouts "
        "beside its CaC numbers) and one bar chart PNG per table. --judge cac runs CaCReward on a CaC checkpoint or "
        "any Qwen3-VL checkpoint (CaC's prompt); --judge unified runs UnifiedReward under its own prompt and calls a "
        "video abnormal when its 1-5 score is below --threshold (no localisation: IoUs are n/a).",
    )
    p.add_argument("manifest", help="annotation manifest (JSONL)")
    p.add_argument("--model", required=True, help="the checkpoint folder (model + processor)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--judge", choices=["cac", "unified"], default="cac", help="judge protocol (default cac)")
    p.add_argument(
        "--mode", choices=["two-turn", "single-turn"], default=None, help="cac only; default: the checkpoint's"
    )
    p.add_argument("--threshold", type=float, default=None, help="unified only: abnormal below this score (default 3)")
    p.add_argument("--batch-size", type=int, default=4, help="videos judged together (default 4)")
    p.add_argument("--limit", type=int, default=None, help="only the first N videos of the manifest")
    p.add_argument(
        "--max-new-tokens", type=int, default=None, help="generation budget per turn (default: the judge's)"
    )
    p.add_argument("--device", default=None, help="e.g. cuda:0 (default: CPU)")
    p.add_argument("--dtype", choices=["auto", "bfloat16", "float16", "float32"], default="auto", help="weights dtype")


def _run_bench(args: argparse.Namespace) -> int:
    if args.judge == "unified" and args.mode is not None:
        print("bench: --mode applies to --judge cac only", file=sys.stderr)
        return 2
    if args.judge == "cac" and args.threshold is not None:
        print("bench: --threshold applies to --judge unified only", file=sys.stderr)
        return 2
    for flag, value in (
        ("--batch-size", args.batch_size),
        ("--limit", args.limit),
        ("--max-new-tokens", args.max_new_tokens),
    ):
        if value is not None and value < 1:
            print(f"bench: {flag} must be >= 1, got {value}", file=sys.stderr)
            return 2

    from cac_align.eval.bench import CaCJudge, UnifiedJudge, run_bench

    dtype = None if args.dtype == "auto" else args.dtype
    settings = {} if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens}
    if args.judge == "cac":
        from cac_align.reward.cac import CaCReward

        if args.mode is not None:
            settings["mode"] = args.mode
        judge = CaCJudge(CaCReward.from_pretrained(args.model, device=args.device, dtype=dtype, **settings))
    else:
        from cac_align.reward.unified import UnifiedReward

        reward = UnifiedReward.from_pretrained(args.model, device=args.device, dtype=dtype, **settings)
        judge = UnifiedJudge(reward, threshold=3.0 if args.threshold is None else args.threshold)
    m = run_bench(args.manifest, judge, args.out, batch_size=args.batch_size, limit=args.limit)
    t1 = m["table1"]
    acc = "n/a" if t1["accuracy"] is None else f"{t1['accuracy']:.3f}"
    print(f"bench: {judge.name} on {m['num_videos']} videos: accuracy {acc}, counts {t1['counts']}")
    print(f"bench: wrote {args.out}/metrics.json, tables.md and charts")
    return 0


# --------------------------------------------------------------------------------------------------------- vbench
def _add_vbench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "vbench",
        help="VBench subject consistency, imaging quality and dynamic degree of videos (paper Table 2)",
        description="Score video files (or folders of them) on the VBench dimensions the paper reports (App. C.4.1) "
        "and write OUT/vbench.json (per video and overall) and OUT/vbench.md. --backend native computes them with "
        "cac-align's own networks, batched, on weights read from a VBench cache folder (dino_model/, pyiqa_model/, "
        "raft_model/); --backend official runs the vbench package itself with the interpreter of its own "
        "environment (--vbench-python), since its pins (transformers 4.33, numpy<2) cannot share ours.",
    )
    p.add_argument("videos", nargs="+", help="video files or folders of videos")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--dimensions",
        default="subject_consistency,imaging_quality,dynamic_degree",
        help="comma-separated (default: all three)",
    )
    p.add_argument(
        "--weights", default=None, help="VBench cache folder (default $VBENCH_CACHE_DIR or ~/.cache/vbench)"
    )
    p.add_argument("--backend", choices=["native", "official"], default="native", help="(default native)")
    p.add_argument(
        "--vbench-python", default=None, help="official backend: python of the env where vbench is installed"
    )
    p.add_argument("--device", default=None, help="e.g. cuda:0 (default: cuda if available, else cpu)")
    p.add_argument("--batch-size", type=int, default=16, help="native: frames (pairs) per network call (default 16)")


def _run_vbench(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        print(f"vbench: --batch-size must be >= 1, got {args.batch_size}", file=sys.stderr)
        return 2
    if args.vbench_python is not None and args.backend != "official":
        print("vbench: --vbench-python applies to --backend official only", file=sys.stderr)
        return 2
    from cac_align.eval.vbench import main_vbench

    try:
        main_vbench(
            args.videos,
            args.out,
            dimensions=[d.strip() for d in args.dimensions.split(",") if d.strip()],
            weights_dir=args.weights,
            backend=args.backend,
            vbench_python=args.vbench_python,
            device=args.device,
            batch_size=args.batch_size,
        )
    except (ValueError, OSError, RuntimeError) as e:  # bad paths, foreign weights, unreadable videos, VBench failing
        print(f"vbench: {e}", file=sys.stderr)
        return 1
    print(f"vbench: wrote {args.out}/vbench.json and vbench.md")
    return 0


# ----------------------------------------------------------------------------------------------------------- data
def _add_data(sub: argparse._SubParsersAction) -> None:
    from cac_align.data.commands import add_parser  # a light module: the data tools import their deps when run

    add_parser(sub)


def _run_data(args: argparse.Namespace) -> int:
    from cac_align.data.commands import run

    return run(args)


# ----------------------------------------------------------------------------------------------------------- main
COMMANDS = {
    "demo": (_add_demo, _run_demo),
    "synth": (_add_synth, _run_synth),
    "serve-reward": (_add_serve_reward, _run_serve_reward),
    "score": (_add_score, _run_score),
    "bench": (_add_bench, _run_bench),
    "vbench": (_add_vbench, _run_vbench),
    "data": (_add_data, _run_data),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cac-align",
        description="CaC anomaly reward for generated videos: data, scoring, training and alignment tools.",
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return COMMANDS[args.command][1](args)


if __name__ == "__main__":
    sys.exit(main())
