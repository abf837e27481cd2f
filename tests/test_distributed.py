"""Two CPU ranks (gloo) under accelerate: group advantages over gathered rewards, and checkpoint save/load."""

from __future__ import annotations

import torch
from safetensors.torch import load_file
from torch import nn

from cac_align.algos.grpo import group_advantages
from cac_align.testing_dist import run_distributed
from cac_align.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

REWARDS = torch.tensor([0.1, 0.9, 0.4, 0.3, 0.8, 0.2, 0.5, 0.7])
GROUP_IDS = torch.arange(8) % 2  # each group's rollouts are spread over both ranks


def _worker(rank: int, world_size: int, ckpt_dir: str) -> dict:
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    assert (acc.num_processes, acc.process_index) == (world_size, rank)
    n = len(REWARDS) // world_size
    mine = slice(rank * n, (rank + 1) * n)
    rewards = acc.gather(REWARDS[mine].clone())
    ids = acc.gather(GROUP_IDS[mine].clone())
    adv = group_advantages(rewards, ids)[mine]

    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    model, opt = acc.prepare(model, torch.optim.AdamW(model.parameters(), lr=0.1))
    torch.manual_seed(100 + rank)  # each rank has its own random stream
    x = torch.randn(n, 4)
    acc.backward((model(x).squeeze(-1) * adv).mean())
    opt.step()
    path = save_checkpoint(
        ckpt_dir, 1, model=model, optimizer=opt, data_state={"epoch": 0, "index": 1}, accelerator=acc
    )
    next_draw = torch.rand(2)

    torch.manual_seed(7)
    fresh = nn.Linear(4, 1)
    fresh, fresh_opt = acc.prepare(fresh, torch.optim.AdamW(fresh.parameters(), lr=0.1))
    step, data_state, _ = load_checkpoint(path, model=fresh, optimizer=fresh_opt, accelerator=acc)
    return {
        "adv": adv,
        "trained": acc.unwrap_model(model).weight.detach().clone(),
        "loaded": acc.unwrap_model(fresh).weight.detach().clone(),
        "wrapped": type(model).__name__,
        "next_draw": next_draw,
        "redraw": torch.rand(2),
        "step": step,
        "data_state": data_state,
        "path": str(path),
    }


def test_two_ranks_advantages_and_checkpoint(tmp_path):
    r0, r1 = run_distributed(_worker, world_size=2, args=(str(tmp_path),))
    assert r0["wrapped"] == "DistributedDataParallel"
    # gathered, computed, then sliced: the same advantages as one process computing all of them
    assert torch.allclose(torch.cat([r0["adv"], r1["adv"]]), group_advantages(REWARDS, GROUP_IDS))
    # DDP kept the ranks in sync; each rank loaded the unwrapped weights rank 0 wrote
    assert torch.equal(r0["trained"], r1["trained"])
    assert torch.equal(r0["loaded"], r0["trained"]) and torch.equal(r1["loaded"], r1["trained"])
    # each rank got its own RNG stream back
    assert torch.equal(r0["redraw"], r0["next_draw"]) and torch.equal(r1["redraw"], r1["next_draw"])
    assert not torch.equal(r0["next_draw"], r1["next_draw"])
    assert r0["step"] == r1["step"] == 1 and r0["data_state"] == {"epoch": 0, "index": 1}

    path = latest_checkpoint(tmp_path)
    assert str(path) == r0["path"] == r1["path"]
    assert {"rng_rank0.pt", "rng_rank1.pt", "COMPLETE"} <= {p.name for p in path.iterdir()}
    assert sorted(load_file(path / "model.safetensors")) == ["bias", "weight"]  # no "module." prefix
    assert not list(tmp_path.glob(".tmp_*"))
