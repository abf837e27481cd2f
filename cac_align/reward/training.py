"""What the three reward recipes (``reward/stage{1,2,3}_*.py``, paper Sec. 3.2) share around their training loops.

* :func:`resolve_init` - the ``init_from`` folder, or the tiny random CaC checkpoint that ``init_from=tiny`` builds.
* :func:`save_state` / :func:`resume_state` - the full training state every N steps, through
  :mod:`cac_align.train.checkpoint` or, under DeepSpeed (sharded optimizer states), ``accelerate.save_state``; both
  written atomically (a temporary folder, a ``COMPLETE`` marker, one rename), so that ``resume=true`` never picks a
  half-written checkpoint.
* :func:`save_final` - the stage's ``final/`` folder: a Qwen3-VL checkpoint (a LoRA merged into its weights, the
  adapter alone in ``adapter/``), its processor, and the inference settings (``cac_reward.json``) that the next
  stage's ``init_from`` and ``CaCReward.from_pretrained`` read.

The loops themselves stay in the recipes, so each one reads top to bottom.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cac_align.reward.cac import SETTINGS_FILE, read_settings
from cac_align.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from cac_align.utils import atomic_write_json

if TYPE_CHECKING:
    from accelerate import Accelerator

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _replace_dir(tmp: Path, final: Path) -> None:
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def resolve_init(init_from: str, out: Path, seed: int, accelerator: Accelerator) -> Path:
    """The checkpoint folder to train from: ``init_from`` itself, or for ``"tiny"`` a tiny random CaC checkpoint
    (real Qwen3-VL architecture, small BPE vocabulary; :func:`cac_align.testing.build_tiny_cac`) that rank 0 writes
    once to ``out/init`` while the other ranks wait."""
    if init_from != "tiny":
        return Path(init_from)
    from cac_align.testing import build_tiny_cac

    init = out / "init"
    if accelerator.is_main_process and not (init / "config.json").is_file():
        tmp = out / ".tmp_init"
        shutil.rmtree(tmp, ignore_errors=True)
        build_tiny_cac(tmp, seed=seed, vocab="bpe")
        _replace_dir(tmp, init)
    accelerator.wait_for_everyone()
    return init


def save_state(
    accelerator: Accelerator,
    ckpt_dir: Path,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    data_state: dict[str, Any],
    trainable_only: bool,
    keep_last: int | None,
    deepspeed: bool,
) -> None:
    """Write the full training state at ``step`` to ``ckpt_dir/step_<step:08d>`` on every rank (atomic).

    Without DeepSpeed: :func:`cac_align.train.checkpoint.save_checkpoint` (weights or only the trainable LoRA ones,
    optimizer, scheduler, per-rank RNG, ``data_state``). Under DeepSpeed: ``accelerator.save_state`` (the scheduler
    must have been registered with ``accelerator.register_for_checkpointing``) plus ``state.json`` with the step;
    ``keep_last`` is not applied there.
    """
    if not deepspeed:
        save_checkpoint(
            ckpt_dir,
            step,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            data_state=data_state,
            trainable_only=trainable_only,
            keep_last=keep_last,
            accelerator=accelerator,
        )
        return
    final, tmp = ckpt_dir / f"step_{step:08d}", ckpt_dir / f".tmp_step_{step:08d}"
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        (tmp / "state.json").write_text(json.dumps({"step": step}) + "\n", encoding="utf-8")
        (tmp / "COMPLETE").write_text(f"{step}\n", encoding="utf-8")
        _replace_dir(tmp, final)
    accelerator.wait_for_everyone()


def resume_state(
    accelerator: Accelerator,
    ckpt_dir: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    deepspeed: bool,
) -> tuple[int, Path | None]:
    """Load the newest complete checkpoint of ``ckpt_dir`` written by :func:`save_state`; returns ``(step, folder)``,
    ``(0, None)`` when there is none (a fresh start)."""
    folder = latest_checkpoint(ckpt_dir)
    if folder is None:
        return 0, None
    if deepspeed:
        accelerator.load_state(str(folder))
        return json.loads((folder / "state.json").read_text(encoding="utf-8"))["step"], folder
    resumed = load_checkpoint(folder, model=model, optimizer=optimizer, scheduler=scheduler, accelerator=accelerator)
    return resumed.step, folder


def save_final(
    accelerator: Accelerator,
    model: torch.nn.Module,
    processor: Any,
    out: Path,
    *,
    init: Path,
    lora: bool,
    save_dtype: str,
    prompt_style: str,
    max_pixels: int | None,
    zero3: bool = False,
) -> Path:
    """Write ``out/final`` (every rank calls this; rank 0 writes) and return it.

    The folder is a Qwen3-VL checkpoint in ``save_dtype`` with its processor and ``cac_reward.json``: the settings of
    ``init`` with this run's ``prompt_style`` (and ``max_pixels`` when set), so that inference prompts and samples as
    training did. With ``lora`` the PEFT adapter is saved alone to ``out/adapter`` and then merged into the weights
    (W + (alpha / r) B A in every targeted layer). Under ZeRO-3 (``zero3``) the sharded weights are gathered on every
    rank first. Both folders are written to temporary names and renamed.
    """
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    state = accelerator.get_state_dict(model) if zero3 else None  # a collective: every rank takes part
    final = out / "final"
    if accelerator.is_main_process:
        if lora:
            tmp_adapter = out / ".tmp_adapter"
            shutil.rmtree(tmp_adapter, ignore_errors=True)
            unwrapped.save_pretrained(tmp_adapter)
            _replace_dir(tmp_adapter, out / "adapter")
            unwrapped = unwrapped.merge_and_unload()
        dtype = DTYPES[save_dtype]
        unwrapped.to(dtype)
        if state is not None:
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        tmp = out / ".tmp_final"
        shutil.rmtree(tmp, ignore_errors=True)
        unwrapped.save_pretrained(tmp, state_dict=state)
        processor.save_pretrained(tmp)
        settings = {**read_settings(init), "prompt_style": prompt_style}
        if max_pixels is not None:
            settings["max_pixels"] = max_pixels
        atomic_write_json(tmp / SETTINGS_FILE, settings)
        _replace_dir(tmp, final)
    accelerator.wait_for_everyone()
    return final
