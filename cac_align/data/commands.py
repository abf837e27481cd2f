"""``cac-align data <command>``: the training-data tools (import, validate, skyra, synthesize-cot, export-sheet,
import-sheet, splits). Each command is a pair ``_add_<name>`` / ``_run_<name>``; heavy imports happen in ``_run_``.

From a folder of annotated videos to the stage-1 recipe::

    cac-align data validate annotations.json                      # every problem, by file:row:field
    cac-align data import annotations.json -o data/manifest.jsonl
    cac-align data synthesize-cot data/manifest.jsonl -o data/cot --base-url URL --model NAME
    cac-align data splits data/cot/manifest.jsonl -o data/splits
    python reward/stage1_warmup.py --config reward/configs/stage1.yaml data.manifest=data/splits/stage1.jsonl ...
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

_FORMATS = (
    "Annotation files: JSON array or JSONL of videos {video, prompt, fps, groups: [{category, instances: [{frames: "
    "[start, end], object, reason, bboxes: {frame: [xmin, ymin, xmax, ymax]}}]}]} (frames index the video sampled at "
    "FPS; boxes in 0-1000 coordinates), or CSV with one row per instance: video, prompt, fps, status, category, start, "
    "end, object, reason, bboxes (a JSON object). See cac_align/data/importer.py."
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``data`` and its subcommands to the top-level subparsers."""
    p = sub.add_parser(
        "data",
        help="training data: import annotations, synthesise CoT, expert sheets, stage splits",
        description="Turn annotated videos into CaC training data (paper Sec. 3.1, App. B): import and validate human "
        "annotations, convert Skyra data, synthesise chain-of-thought with a VLM (generate-verify), export and import "
        "expert annotation sheets, and split a manifest into the three training stages.",
    )
    dsub = p.add_subparsers(dest="data_command", metavar="<data command>")
    for add, _ in DATA_COMMANDS.values():
        add(dsub)


def run(args: argparse.Namespace) -> int:
    if args.data_command is None:
        print("cac-align data: give a command; see cac-align data --help", file=sys.stderr)
        return 2
    return DATA_COMMANDS[args.data_command][1](args)


def _print_problems(result) -> None:
    for problem in result.problems:
        print(problem, file=sys.stderr)


def _write_import(result, out: str, skip_invalid: bool) -> int:
    from cac_align.data.importer import save_manifest

    _print_problems(result)
    print(result.summary())
    if result.errors and not skip_invalid:
        rows = ", ".join(str(r) for r in result.dropped_rows) or "-"
        print(
            f"not written: {len(result.errors)} errors (rows {rows}); fix them, or pass --skip-invalid to write the "
            f"{len(result.annotations)} valid videos and leave these rows out",
            file=sys.stderr,
        )
        return 1
    if result.errors:
        print(f"left out rows {', '.join(str(r) for r in result.dropped_rows)} (errors above)", file=sys.stderr)
    save_manifest(out, result.annotations)
    print(f"wrote {len(result.annotations)} annotations to {out}")
    return 0


def _add_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--videos-root", default=None, help="folder relative video paths are taken from (default: the file's)"
    )
    p.add_argument("--fps", type=float, default=4.0, help="rate of the annotated frame sequence (default 4)")
    p.add_argument(
        "--no-check-videos", action="store_true", help="do not open the videos (no length or readability checks)"
    )


# --------------------------------------------------------------------------------------------------------- import
def _add_import(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import",
        help="human annotations (JSON/JSONL/CSV) -> validated manifest",
        description="Read human anomaly annotations in the structured format of App. B.1.2-B.1.3, validate them "
        "against their videos and write a JSONL manifest (video paths relative to it). Every problem is printed as "
        "file:row: severity: field: message. With errors nothing is written unless --skip-invalid, which leaves the "
        "bad videos out (and lists them). " + _FORMATS,
    )
    p.add_argument("source", help="annotation file (.json, .jsonl or .csv)")
    p.add_argument("-o", "--out", required=True, help="output manifest (.jsonl)")
    _add_source_args(p)
    p.add_argument("--skip-invalid", action="store_true", help="write the valid videos even if some rows have errors")


def _run_import(args: argparse.Namespace) -> int:
    from cac_align.data.importer import read_annotations

    result = read_annotations(args.source, args.videos_root, args.fps, check_videos=not args.no_check_videos)
    return _write_import(result, args.out, args.skip_invalid)


# ------------------------------------------------------------------------------------------------------- validate
def _add_validate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate",
        help="report every problem of an annotation file or manifest",
        description="Check an annotation file (or a manifest) and print every problem with file, row and field: "
        "unknown category, boxes out of range, inverted or on frames outside their window, windows outside the "
        "video, missing or unreadable videos, conflicting rows. Exit status 1 if there is any error. " + _FORMATS,
    )
    p.add_argument("source", help="annotation file or manifest (.json, .jsonl or .csv)")
    _add_source_args(p)
    p.add_argument("--skyra", action="store_true", help="the file holds Skyra records (see 'data skyra')")


def _run_validate(args: argparse.Namespace) -> int:
    check = not args.no_check_videos
    if args.skyra:
        from cac_align.data.skyra import convert_skyra

        result = convert_skyra(args.source, args.videos_root, args.fps, check_videos=check)
    else:
        from cac_align.data.importer import read_annotations

        result = read_annotations(args.source, args.videos_root, args.fps, check_videos=check)
    _print_problems(result)
    print(result.summary())
    return 1 if result.errors else 0


# ---------------------------------------------------------------------------------------------------------- skyra
def _add_skyra(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "skyra",
        help="Skyra / ViF-CoT-4K artifact annotations -> manifest (App. A.2 mapping)",
        description="Convert Skyra-style records (a video and a text with <type>T</type> in <t>[s, e]</t> at "
        "<bbox>[x1, y1, x2, y2]</bbox> evidence and <answer>Fake|Real</answer>) to CaC annotations: L3 types map to "
        "the CaC taxonomy as in the paper's App. A.2 (cac_align.data.skyra.SKYRA_TO_CAC), times in seconds become "
        "windows of the FPS sequence, each box is put on every frame of its window. Real videos become normal.",
    )
    p.add_argument("source", help="records (.json array or .jsonl)")
    p.add_argument("-o", "--out", required=True, help="output manifest (.jsonl)")
    _add_source_args(p)
    p.add_argument(
        "--box-units",
        choices=["auto", "unit", "pixel", "qwen"],
        default="auto",
        help="units of Skyra boxes: 0-1, pixels, or 0-1000 (auto: 0-1 when all coordinates are <= 1, else pixels)",
    )
    p.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="TYPE=CATEGORY",
        help="override the mapping of one Skyra type, e.g. 'Abnormal Object Disappearance=Motion Anomalies' or "
        "'Texture Jittering=none' (repeatable)",
    )
    p.add_argument("--skip-invalid", action="store_true", help="write the valid videos even if some rows have errors")


def _run_skyra(args: argparse.Namespace) -> int:
    from cac_align.data.skyra import convert_skyra, parse_mapping

    try:
        mapping = parse_mapping(args.map)
    except ValueError as e:
        print(f"cac-align data skyra: {e}", file=sys.stderr)
        return 2
    result = convert_skyra(
        args.source, args.videos_root, args.fps, mapping, args.box_units, check_videos=not args.no_check_videos
    )
    return _write_import(result, args.out, args.skip_invalid)


# ------------------------------------------------------------------------------------------------- synthesize-cot
def _add_synthesize_cot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synthesize-cot",
        help="generate-verify CoT synthesis with a VLM (Sec. 3.1, App. B.2)",
        description="For every video of MANIFEST, ask a VLM for the turn-1 (whole video, 4 fps) and turn-2 "
        "(annotated window, 8 fps) analyses with the annotation as a hint (Figs. S4-S5), check each answer by the "
        "B.2 rules (label match, temporal and box IoU > 0.5) and the Fig. S6 consistency check, and repeat up to "
        "--rounds rounds: passing within --salient-rounds makes the anomalies salient, later non-salient; failing "
        "all rounds discards the video (OUT/rejects.jsonl, with the reasons). Writes OUT/manifest.jsonl with the "
        "CoT, OUT/results.jsonl and OUT/summary.json. Interrupted runs resume: finished videos are skipped and "
        "answers come from the on-disk cache (OUT/cache). The server is any OpenAI-compatible chat API (Gemini, "
        "vLLM, sglang) given by --base-url, or a local Qwen3-VL checkpoint that this command serves itself "
        "(--local-model).",
    )
    p.add_argument("manifest", help="annotated videos (.jsonl manifest, e.g. from 'data import')")
    p.add_argument("-o", "--out", required=True, help="output folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--base-url", help="API root, e.g. https://generativelanguage.googleapis.com/v1beta/openai")
    src.add_argument("--local-model", help="serve this local Qwen3-VL checkpoint folder on 127.0.0.1 and use it")
    p.add_argument("--model", default=None, help="model name (required with --base-url; default: the folder name)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    p.add_argument("--verifier-model", default=None, help="model of the consistency check (default: --model)")
    p.add_argument("--verifier-base-url", default=None, help="API root of the verifier (default: --base-url)")
    p.add_argument("--no-llm-check", action="store_true", help="rules only: skip the Fig. S6 consistency check")
    p.add_argument("--rounds", type=int, default=5, help="generate-verify rounds (default 5)")
    p.add_argument("--salient-rounds", type=int, default=3, help="passing within this many rounds is salient (3)")
    p.add_argument("--iou-threshold", type=float, default=0.5, help="temporal and box IoU must exceed it (0.5)")
    p.add_argument("--clip-fps", type=float, default=8.0, help="turn-2 sampling rate (default 8)")
    p.add_argument("--normal-clip-frames", type=int, default=4, help="turn-2 window of normal videos, in frames (4)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    p.add_argument("--max-tokens", type=int, default=8192, help="max_tokens of an analysis (default 8192)")
    p.add_argument("--seed", type=int, default=0, help="request seed of round 1 (round r sends seed + r - 1)")
    p.add_argument("--no-seed", action="store_true", help="send no seed (for servers that reject it)")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight at once (default 4)")
    p.add_argument("--max-retries", type=int, default=5, help="retries of a transient failure (default 5)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request (default 600)")
    p.add_argument("--cache", default=None, help="answer cache folder (default OUT/cache)")
    p.add_argument("--device", default=None, help="--local-model only: e.g. cuda:0 (default CPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_synthesize_cot(args: argparse.Namespace) -> int:
    from cac_align.data.cot_synthesis import synthesize_cot
    from cac_align.data.vlm_client import AuthError, QuotaError, VLMClient, start_local_vlm

    service = None
    if args.local_model:
        model = args.model or Path(args.local_model).name
        service = start_local_vlm(args.local_model, model, device=args.device, max_tokens=args.max_tokens)
        base_url, api_key = service.url + "/v1", None
        print(f"serving {args.local_model} as {model!r} at {base_url}")
    else:
        if not args.model:
            print("cac-align data synthesize-cot: --model is required with --base-url", file=sys.stderr)
            return 2
        model, base_url, api_key = args.model, args.base_url, os.environ.get(args.api_key_env)
    cache = args.cache or str(Path(args.out) / "cache")
    opts = {"concurrency": args.concurrency, "max_retries": args.max_retries, "timeout_s": args.timeout}
    client = VLMClient(base_url, model, api_key, cache_dir=cache, **opts)
    verifier = None
    if args.verifier_model or args.verifier_base_url:
        verifier = VLMClient(
            args.verifier_base_url or base_url, args.verifier_model or model, api_key, cache_dir=cache, **opts
        )
    try:
        summary = synthesize_cot(
            args.manifest,
            args.out,
            client,
            verifier=verifier,
            llm_check=not args.no_llm_check,
            rounds=args.rounds,
            salient_rounds=args.salient_rounds,
            clip_fps=args.clip_fps,
            normal_clip_frames=args.normal_clip_frames,
            iou_threshold=args.iou_threshold,
            temperature=args.temperature,
            max_tokens=args.max_tokens,
            seed=None if args.no_seed else args.seed,
            progress=not args.no_progress,
        )
    except (AuthError, QuotaError) as e:
        print(
            f"cac-align data synthesize-cot: stopped: {e}. Finished videos are kept; re-run to resume.",
            file=sys.stderr,
        )
        return 1
    finally:
        if service is not None:
            service.stop()
    print(summary.line())
    print(f"manifest: {summary.manifest}  rejects: {summary.rejects}")
    return 0


# --------------------------------------------------------------------------------------------------- export-sheet
def _add_export_sheet(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-sheet",
        help="generated videos -> blind expert annotation sheet (CSV + HTML)",
        description="Write OUT/sheet.csv (one row per video, anonymous ids, seeded order), OUT/index.html (each "
        "video with its frames at FPS and their indices), copies of the videos, and OUT/key.json (which id is which "
        "video of which group; keep it from the experts). Experts fill status/category/start/end/object/reason "
        "(one row per anomaly instance); read it back with 'data import-sheet'.",
    )
    p.add_argument("out", help="output folder (must not hold a sheet yet)")
    p.add_argument(
        "sources",
        nargs="+",
        metavar="[NAME=]PATH",
        help="a folder of .mp4 files or a .jsonl manifest (gives prompts), optionally named, e.g. base=runs/base/videos",
    )
    p.add_argument("--fps", type=float, default=4.0, help="rate of the frames shown and indexed (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the video order (default 0)")


def _run_export_sheet(args: argparse.Namespace) -> int:
    from cac_align.data.sheets import collect_videos, export_sheet

    groups = {}
    for spec in args.sources:
        name, _, path = spec.partition("=") if "=" in spec else ("", "", spec)
        name = name or Path(path).stem
        if name in groups:
            print(f"cac-align data export-sheet: group {name!r} given twice", file=sys.stderr)
            return 2
        groups[name] = collect_videos(path)
    sheet = export_sheet(groups, args.out, fps=args.fps, seed=args.seed)
    n = sum(len(v) for v in groups.values())
    print(f"wrote {sheet} and {Path(args.out) / 'index.html'} for {n} videos; key: {Path(args.out) / 'key.json'}")
    return 0


# --------------------------------------------------------------------------------------------------- import-sheet
def _add_import_sheet(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-sheet",
        help="filled expert sheet -> annotations and anomaly rate with a 95%% interval",
        description="Validate a filled sheet (every problem by row and column; an empty status is reported as not "
        "annotated, never counted), print the expert anomaly rate of each group with a Wilson 95% interval (Table "
        "2), and optionally write the annotations as a manifest and the rates as JSON.",
    )
    p.add_argument("sheet", help="the filled sheet.csv")
    p.add_argument("--key", default=None, help="key.json of the export (default: beside the sheet, if present)")
    p.add_argument("-o", "--out", default=None, help="write the valid annotations to this manifest (.jsonl)")
    p.add_argument("--json", default=None, help="write the rates to this JSON file")
    p.add_argument("--no-check-videos", action="store_true", help="do not open the videos")


def _run_import_sheet(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from cac_align.data.importer import save_manifest
    from cac_align.data.sheets import import_sheet
    from cac_align.utils import atomic_write_json

    key = args.key
    if key is None and (Path(args.sheet).parent / "key.json").is_file():
        key = Path(args.sheet).parent / "key.json"
    res = import_sheet(args.sheet, key, check_videos=not args.no_check_videos)
    _print_problems(res.imported)
    print(res.imported.summary())
    if res.unannotated:
        print(f"not (validly) annotated: {len(res.unannotated)} videos: {', '.join(res.unannotated)}")
    for group, rate in res.rates.items():
        print(f"anomaly rate {group}: {rate}")
    if args.out:
        save_manifest(args.out, res.annotations)
    if args.json:
        atomic_write_json(
            args.json,
            {
                "sheet": str(args.sheet),
                "rates": {g: {**asdict(r), "rate": r.rate if r.annotated else None} for g, r in res.rates.items()},
                "unannotated": res.unannotated,
                "errors": [str(p) for p in res.imported.errors],
            },
        )
    return 1 if res.imported.errors else 0


# --------------------------------------------------------------------------------------------------------- splits
def _add_splits(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "splits",
        help="disjoint, 1:1 balanced stage-1/2/3 manifests from one manifest (App. C.2)",
        description="Assign each video to at most one training stage, each with as many normal as anomalous videos: "
        "stage 1 (single-frame warmup) takes anomalous videos with a boxed single-frame category anomaly, stages 3 "
        "and 2 the rest, in proportions --fractions. Writes OUT/stage1.jsonl, stage2.jsonl, stage3.jsonl and "
        "OUT/splits.json (seed, source checksum, counts, lists).",
    )
    p.add_argument("manifest", help="the manifest to split (e.g. OUT/manifest.jsonl of synthesize-cot)")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--fractions",
        default="0.33,0.42,0.25",
        help="shares of stage 1, 2, 3 in the anomalous videos (default 0.33,0.42,0.25)",
    )


def _run_splits(args: argparse.Namespace) -> int:
    from cac_align.data.splits import build_splits

    parts = args.fractions.split(",")
    try:
        f1, f2, f3 = (float(v) for v in parts)
    except ValueError:
        print(f"cac-align data splits: --fractions expects three numbers, got {args.fractions!r}", file=sys.stderr)
        return 2
    record = build_splits(args.manifest, args.out, seed=args.seed, fractions=(f1, f2, f3))
    print(json.dumps(record["counts"]))
    if record["stage1_shortfall"]:
        print(f"stage 1 had {record['stage1_shortfall']} too few eligible anomalous videos; moved to stage 2")
    return 0


DATA_COMMANDS = {
    "import": (_add_import, _run_import),
    "validate": (_add_validate, _run_validate),
    "skyra": (_add_skyra, _run_skyra),
    "synthesize-cot": (_add_synthesize_cot, _run_synthesize_cot),
    "export-sheet": (_add_export_sheet, _run_export_sheet),
    "import-sheet": (_add_import_sheet, _run_import_sheet),
    "splits": (_add_splits, _run_splits),
}
