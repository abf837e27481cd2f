"""Run VBench's own implementation on a folder of videos; executed by the interpreter of VBench's environment.

Called by :func:`cac_align.eval.vbench.evaluate_vbench_official` as
``VBENCH_PYTHON vbench_official_runner.py --videos DIR --out DIR --dimensions a,b --device cuda`` with
``VBENCH_CACHE_DIR`` set. It imports only the standard library and ``vbench`` (never cac_align, whose dependencies
conflict with VBench's pins), runs ``VBench.evaluate(..., mode="custom_input", local=True)`` and leaves VBench's
``OUT/cac_align_eval_results.json`` for the caller to parse. Exit code 3: ``vbench`` is not importable. DINO's
weights are served to ``torch.hub`` from the cache (its hubconf downloads them otherwise).
"""

import argparse
import json
import os
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", required=True, help="folder of the videos to score")
    parser.add_argument("--out", required=True, help="VBench's output folder (created)")
    parser.add_argument("--dimensions", required=True, help="comma-separated VBench dimensions")
    parser.add_argument("--device", default="cuda", help="torch device for VBench")
    args = parser.parse_args()
    # Python puts this script's folder first on sys.path, and that folder holds cac_align's own vbench.py: drop it so
    # that `import vbench` finds the installed package.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    try:
        from vbench import VBench
    except ImportError as e:
        print(f"vbench is not importable by {sys.executable}: {e}", file=sys.stderr)
        return 3
    dimensions = args.dimensions.split(",")
    work = os.path.dirname(os.path.abspath(args.out))
    if "subject_consistency" in dimensions:
        # DINO's hubconf ignores VBench's `path` and fetches its weights through torch.hub's checkpoint folder: point
        # that folder at the cache's copy so the run stays offline and uses the same file as cac_align.
        import torch

        checkpoints = os.path.join(work, "torch_hub", "checkpoints")
        os.makedirs(checkpoints, exist_ok=True)
        cache = os.path.abspath(os.environ["VBENCH_CACHE_DIR"])
        os.symlink(
            os.path.join(cache, "dino_model", "dino_vitbase16_pretrain.pth"),
            os.path.join(checkpoints, "dino_vitbase16_pretrain.pth"),
        )
        torch.hub.set_dir(os.path.join(work, "torch_hub"))
    # custom_input mode builds its video list from the folder; the prompt-suite file is not read, but the
    # constructor wants one.
    full_info = os.path.join(work, "custom_full_info.json")
    with open(full_info, "w", encoding="utf-8") as f:
        json.dump([], f)
    bench = VBench(args.device, full_info, args.out)
    bench.evaluate(
        videos_path=args.videos,
        name="cac_align",
        dimension_list=dimensions,
        local=True,
        mode="custom_input",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
