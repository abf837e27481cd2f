"""Process-group facts for rank-0 work: which rank this is, how many there are, and a barrier.

They read ``torch.distributed`` (which ``accelerate`` initialises) and fall back to the launcher's ``RANK`` and
``WORLD_SIZE`` variables before the process group exists, so they are right in plain, torchrun and accelerate runs.
"""

from __future__ import annotations

import os

import torch.distributed as dist


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """Global rank of this process (0 when not distributed)."""
    return dist.get_rank() if _initialized() else int(os.environ.get("RANK", "0"))


def get_world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if _initialized() else int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True on global rank 0, the process that writes logs and checkpoints."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for every rank; a no-op without an initialised process group."""
    if _initialized():
        dist.barrier()
