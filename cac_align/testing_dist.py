"""Run a function in several CPU processes joined by a ``gloo`` process group (for tests of distributed code).

    def work(rank: int, world_size: int, tmp: str) -> float:     # a module-level function (it is pickled)
        acc = Accelerator(cpu=True)                                # picks up the group set up here
        ...
        return value

    results = run_distributed(work, world_size=2, args=(str(tmp_path),))   # [rank 0's value, rank 1's value]

Each process gets the environment a launcher would set (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR=127.0.0.1``, a free ``MASTER_PORT``, one CPU thread) and an initialised ``gloo`` group, so plain
``torch.distributed`` code and ``accelerate.Accelerator(cpu=True)`` both work. An exception in any process is
raised in the caller with that process's traceback.
"""

from __future__ import annotations

import os
import pickle
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

__all__ = ["free_port", "run_distributed"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, fn: Callable[..., Any], world_size: int, port: int, args: Sequence[Any], out_dir: str) -> None:
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_WORLD_SIZE": str(world_size),
            "OMP_NUM_THREADS": "1",
        }
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        result = fn(rank, world_size, *args)
        with open(Path(out_dir) / f"rank{rank}.pkl", "wb") as f:
            pickle.dump(result, f)
        if dist.is_initialized():  # fn may have ended the group itself (accelerate's end_training does)
            dist.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_distributed(
    fn: Callable[..., Any], world_size: int = 2, args: Sequence[Any] = (), timeout: float = 120.0
) -> list[Any]:
    """Call ``fn(rank, world_size, *args)`` in ``world_size`` spawned processes; return their results by rank.

    Args:
        fn: A picklable (module-level) function; its return value must be picklable.
        world_size: Number of processes.
        args: Extra positional arguments for ``fn``.
        timeout: Seconds before the processes are killed and ``TimeoutError`` is raised (a hung collective).
    """
    with tempfile.TemporaryDirectory(prefix="cac_dist_") as out_dir:
        ctx = mp.start_processes(
            _worker,
            args=(fn, world_size, free_port(), tuple(args), out_dir),
            nprocs=world_size,
            join=False,
            start_method="spawn",
        )
        deadline = time.monotonic() + timeout
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    if p.is_alive():
                        p.kill()
                raise TimeoutError(f"run_distributed: {fn.__name__} did not finish within {timeout} s")
        results = []
        for rank in range(world_size):
            with open(Path(out_dir) / f"rank{rank}.pkl", "rb") as f:
                results.append(pickle.load(f))
        return results
