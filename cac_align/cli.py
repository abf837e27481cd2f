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


def _run_synth(args: argparse.Namespace) -> int:
    from cac_align.data.synthetic import generate, summarize

    manifest = generate(
        args.out, num_videos=args.num_videos, seed=args.seed, size=args.size, seconds=args.seconds, fps=args.fps
    )
    print(summarize(manifest))
    return 0


# ----------------------------------------------------------------------------------------------------------- demo
def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the main job on the built-in tiny default (CPU, minutes)",
        description="The whole pipeline at tiny scale on the built-in synthetic anomaly world. Today: render the "
        "synthetic world and summarise it. Tiny random models produce meaningless scores; see README for real use.",
    )
    p.add_argument("out", nargs="?", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--num-videos", type=int, default=24, help="synthetic videos to render (default 24)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def _run_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cac_align.data.synthetic import generate, summarize

    out = Path(args.out)
    print(f"[demo] 1/1 synthetic anomaly world -> {out / 'data'}")
    manifest = generate(out / "data", num_videos=args.num_videos, seed=args.seed)
    print(summarize(manifest))
    return 0


# ----------------------------------------------------------------------------------------------------------- main
COMMANDS = {
    "demo": (_add_demo, _run_demo),
    "synth": (_add_synth, _run_synth),
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
