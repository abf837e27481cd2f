"""Full-state, crash-safe training checkpoints: weights, optimizer, scheduler, RNG, data position, step, extras.

Resuming a run must continue it exactly; this is what the Flow-GRPO / DanceGRPO code bases lack (flow_grpo #183).
A checkpoint is a folder ``<dir>/step_<step:08d>/``::

    model.safetensors   weights of the unwrapped model (all of them, or only trainable ones: LoRA adapters)
    optimizer.pt        optimizer.state_dict()                                   (torch.save)
    scheduler.pt        scheduler.state_dict(), when a scheduler is given
    extra.pt            any extra state, e.g. {"ema": ema.state_dict()}, when given
    rng_rank<r>.pt      python / numpy / torch / CUDA RNG states of rank r (one file per rank)
    state.json          step, data_state (JSON: e.g. sampler epoch + index), world size, file list
    COMPLETE            written last

Atomicity: everything is written into ``<dir>/.tmp_step_<step:08d>/``, the marker is written, and the folder is
renamed to ``step_<step:08d>`` in one ``os.replace``. :func:`latest_checkpoint` only returns ``step_*`` folders that
contain ``COMPLETE``, so a run killed at any moment never resumes from a half-written checkpoint; a stale temporary
folder is removed by the next save of that step.

Distributed runs (``accelerate`` or plain ``torch.distributed``, data parallel): every rank calls the same function.
Rank 0 writes the shared state, every rank writes its own RNG file (the checkpoint folder must be on a file system
all ranks see, as for ``accelerate.save_state``), and barriers keep ranks in step. Pass ``accelerator`` so that a
wrapped model (DDP, compiled) is unwrapped before its state dict is taken. Sharded states (FSDP, ZeRO-3) are not
handled here; the optimizer state must be the same on every rank.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel

from cac_align.train.dist import barrier, get_rank, get_world_size

if TYPE_CHECKING:
    from accelerate import Accelerator

__all__ = [
    "Resumed",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "resume_latest",
    "save_checkpoint",
]

COMPLETE = "COMPLETE"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d+)$")


class Resumed(NamedTuple):
    """What :func:`load_checkpoint` hands back to the training loop (the module states are loaded in place)."""

    step: int
    data_state: dict[str, Any] | None
    extra: dict[str, Any] | None


def _unwrap(model: torch.nn.Module, accelerator: Accelerator | None) -> torch.nn.Module:
    if accelerator is not None:
        return accelerator.unwrap_model(model)
    if isinstance(model, DistributedDataParallel):
        return model.module
    return model


def _step_dir(ckpt_dir: Path, step: int) -> Path:
    return ckpt_dir / f"step_{step:08d}"


# ------------------------------------------------------------------------------------------------------ weights
def _weights_to_save(model: torch.nn.Module, trainable_only: bool) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """CPU tensors to write, and ``{alias: key}`` for tied weights (safetensors refuses shared storage)."""
    if trainable_only:
        state = {k: p for k, p in model.named_parameters() if p.requires_grad}
        if not state:
            raise ValueError("trainable_only=True but the model has no parameter with requires_grad=True")
    else:
        state = model.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...], torch.dtype], str] = {}
    for k, v in state.items():
        ident = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), v.dtype)
        if v.numel() > 0 and ident in seen:
            aliases[k] = seen[ident]
            continue
        seen[ident] = k
        tensors[k] = v.detach().to("cpu").contiguous()
    return tensors, aliases


def _load_weights(model: torch.nn.Module, file: Path, trainable_only: bool) -> None:
    meta_aliases = json.loads((file.parent / "state.json").read_text(encoding="utf-8")).get("aliases", {})
    state = load_file(str(file))
    for alias, key in meta_aliases.items():
        state[alias] = state[key]
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise KeyError(
            f"{file}: {len(result.unexpected_keys)} weights do not exist in the model, "
            f"e.g. {result.unexpected_keys[:3]} (a different model or a wrapped/unwrapped mismatch?)"
        )
    missing = set(result.missing_keys)
    if trainable_only:
        missing &= {k for k, p in model.named_parameters() if p.requires_grad}
    if missing:
        what = "trainable weights" if trainable_only else "weights"
        raise KeyError(
            f"{file}: {len(missing)} {what} of the model are not in the checkpoint, e.g. {sorted(missing)[:3]}"
        )


# ---------------------------------------------------------------------------------------------------------- RNG
def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": npst["bit_generator"],
            "state": {"key": npst["key"].numpy().astype(np.uint32), "pos": npst["pos"]},
            "has_gauss": npst["has_gauss"],
            "gauss": npst["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            warnings.warn(
                f"checkpoint has CUDA RNG states for {len(state['cuda'])} devices, this process sees "
                f"{torch.cuda.device_count()}; CUDA RNG not restored",
                stacklevel=3,
            )


# ------------------------------------------------------------------------------------------------------- public
def save_checkpoint(
    ckpt_dir: str | Path,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    data_state: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    trainable_only: bool = False,
    keep_last: int | None = None,
    accelerator: Accelerator | None = None,
) -> Path:
    """Write a full training state atomically to ``<ckpt_dir>/step_<step>`` (call it on every rank).

    Args:
        ckpt_dir: Folder holding the run's checkpoints.
        step: Number of optimizer steps done; resuming continues with step ``step + 1``.
        model: The model being trained (wrapped or not; see ``accelerator``).
        optimizer: Its optimizer (an ``accelerate`` wrapper is fine).
        scheduler: LR scheduler with ``state_dict``/``load_state_dict``.
        data_state: JSON-able data position, e.g. ``{"epoch": 2, "index": 17}``.
        extra: More state saved with ``torch.save`` (tensors, numbers, lists, dicts), e.g. ``{"ema": ...}``.
        trainable_only: Save only parameters with ``requires_grad`` (LoRA / PEFT adapters, ``modules_to_save``);
            frozen weights come from the base model when resuming. Buffers are not saved in this mode.
        keep_last: Keep only the newest ``keep_last`` complete checkpoints (``None`` keeps all).
        accelerator: An ``accelerate.Accelerator``, used to unwrap the model.

    Returns:
        The final checkpoint folder (the same path on every rank).
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last must be >= 1 or None, got {keep_last}")
    if data_state is not None:
        json.dumps(dict(data_state))  # fail before writing anything if it is not JSON-able
    ckpt_dir = Path(ckpt_dir)
    final = _step_dir(ckpt_dir, step)
    tmp = ckpt_dir / f".tmp_{final.name}"
    rank, world = get_rank(), get_world_size()
    module = _unwrap(model, accelerator)

    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)  # left by a crashed earlier attempt at this step
        tmp.mkdir(parents=True)
    barrier()
    torch.save(_rng_state(), tmp / f"rng_rank{rank}.pt")
    if rank == 0:
        tensors, aliases = _weights_to_save(module, trainable_only)
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        files = ["model.safetensors"]
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            files.append("optimizer.pt")
        if scheduler is not None:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            files.append("scheduler.pt")
        if extra is not None:
            torch.save(dict(extra), tmp / "extra.pt")
            files.append("extra.pt")
        state = {
            "format_version": FORMAT_VERSION,
            "step": step,
            "data_state": None if data_state is None else dict(data_state),
            "trainable_only": trainable_only,
            "world_size": world,
            "aliases": aliases,
            "files": files,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "torch": torch.__version__,
        }
        (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    barrier()  # every rank's RNG file is in place
    if rank == 0:
        _fsync_dir_files(tmp)
        (tmp / COMPLETE).write_text(f"{step}\n", encoding="utf-8")
        if final.exists():  # re-saving a step (e.g. after resuming from it): swap in the new one
            old = ckpt_dir / f".old_{final.name}"
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
        _fsync(ckpt_dir)
        if keep_last is not None:
            for path in list_checkpoints(ckpt_dir)[:-keep_last]:
                shutil.rmtree(path)
    barrier()
    return final


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir_files(folder: Path) -> None:
    for f in folder.iterdir():
        _fsync(f)
    _fsync(folder)


def list_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """Complete checkpoint folders (``step_*`` with a ``COMPLETE`` marker) in ``ckpt_dir``, oldest first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = []
    for p in ckpt_dir.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / COMPLETE).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step in ``ckpt_dir``, or ``None`` if there is none."""
    found = list_checkpoints(ckpt_dir)
    return found[-1] if found else None


def load_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    accelerator: Accelerator | None = None,
    restore_rng: bool = True,
) -> Resumed:
    """Load a checkpoint written by :func:`save_checkpoint` into the given objects (call it on every rank).

    The model (unwrapped via ``accelerator`` when given), optimizer and scheduler are loaded in place, and this
    rank's RNG states are restored, so the next random draw equals the one the interrupted run would have made.

    Args:
        path: A checkpoint folder (``.../step_00000100``).
        model: The freshly built model; with a ``trainable_only`` checkpoint its frozen weights must already be
            the base model's.
        optimizer: The freshly built optimizer over the same parameters, in the same order.
        scheduler: The freshly built scheduler.
        accelerator: An ``accelerate.Accelerator``, used to unwrap the model.
        restore_rng: Restore the python / numpy / torch / CUDA RNG states of this rank.

    Returns:
        ``Resumed(step, data_state, extra)``.

    Raises:
        FileNotFoundError: ``path`` is not a complete checkpoint, or a state asked for was not saved.
        KeyError: The weights do not match the model.
    """
    path = Path(path)
    if not (path / COMPLETE).is_file():
        raise FileNotFoundError(f"{path}: not a complete checkpoint (no {COMPLETE} marker)")
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    if state.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}/state.json: format_version {state.get('format_version')}, expected {FORMAT_VERSION}")
    _load_weights(_unwrap(model, accelerator), path / "model.safetensors", state["trainable_only"])
    if optimizer is not None:
        if "optimizer.pt" not in state["files"]:
            raise FileNotFoundError(f"{path}: an optimizer was given but the checkpoint has no optimizer.pt")
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    if scheduler is not None:
        if "scheduler.pt" not in state["files"]:
            raise FileNotFoundError(f"{path}: a scheduler was given but the checkpoint has no scheduler.pt")
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu", weights_only=True))
    extra = None
    if "extra.pt" in state["files"]:
        extra = torch.load(path / "extra.pt", map_location="cpu", weights_only=True)
    if restore_rng:
        rank = get_rank()
        rng_file = path / f"rng_rank{rank}.pt"
        if rng_file.is_file():
            _set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=True))
        else:
            warnings.warn(
                f"{path}: no RNG state for rank {rank} (saved with {state['world_size']} ranks); "
                "random draws will differ from the interrupted run",
                stacklevel=2,
            )
    return Resumed(state["step"], state["data_state"], extra)


def resume_latest(
    ckpt_dir: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    accelerator: Accelerator | None = None,
) -> Resumed | None:
    """Load the newest complete checkpoint in ``ckpt_dir``; ``None`` (nothing loaded) when there is none yet."""
    path = latest_checkpoint(ckpt_dir)
    if path is None:
        return None
    return load_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler, accelerator=accelerator)
