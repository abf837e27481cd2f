"""Full-state checkpoints: atomic writes, bit-exact resume, pruning, tied/adapter weights, accelerate."""

from __future__ import annotations

import itertools
import json
import random
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from cac_align.train.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    resume_latest,
    save_checkpoint,
)

# ------------------------------------------------------------------------------------ a deterministic tiny run
_g = torch.Generator().manual_seed(0)
DATA = TensorDataset(torch.randn(24, 6, generator=_g), torch.randn(24, 1, generator=_g))
BATCHES_PER_EPOCH = 6


def _build():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.3), nn.Tanh(), nn.Linear(16, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    return model, opt, sched


def _loader(epoch: int) -> DataLoader:
    """The data order of an epoch depends only on the epoch number (as with DistributedSampler.set_epoch)."""
    sampler = RandomSampler(DATA, generator=torch.Generator().manual_seed(100 + epoch))
    return DataLoader(DATA, batch_size=4, sampler=sampler)


def _train(ckpt_dir, total_steps, *, stop_after=None, resume=False, restore_rng=True):
    """Train with dropout (torch RNG) and python/numpy input noise; save every 4 steps; optionally 'crash'."""
    model, opt, sched = _build()
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(1)
    step, epoch, index = 0, 0, 0
    if resume:
        # A new process would start from other RNG states: only the checkpoint may bring them back.
        random.seed(12345)
        np.random.seed(12345)
        torch.manual_seed(12345)
        path = latest_checkpoint(ckpt_dir)
        step, data_state, extra = load_checkpoint(
            path, model=model, optimizer=opt, scheduler=sched, restore_rng=restore_rng
        )
        epoch, index = data_state["epoch"], data_state["index"]
        ema = extra["ema"]
    losses = {}
    while step < total_steps:
        if index == BATCHES_PER_EPOCH:
            epoch, index = epoch + 1, 0
        x, y = next(itertools.islice(iter(_loader(epoch)), index, None))
        noise = random.gauss(0.0, 0.01) + float(np.random.normal(0.0, 0.01))
        loss = ((model(x + noise) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            for k, v in model.state_dict().items():
                ema[k].mul_(0.9).add_(v, alpha=0.1)
        step, index = step + 1, index + 1
        losses[step] = loss.item()
        if step % 4 == 0:
            save_checkpoint(
                ckpt_dir,
                step,
                model=model,
                optimizer=opt,
                scheduler=sched,
                data_state={"epoch": epoch, "index": index},
                extra={"ema": ema},
                keep_last=2,
            )
        if step == stop_after:
            break
    return model, opt, sched, ema, losses


def test_resume_equals_uninterrupted_run_bit_for_bit(tmp_path):
    model_a, opt_a, sched_a, ema_a, losses_a = _train(tmp_path / "a", 14)
    _train(tmp_path / "b", 14, stop_after=10)  # crashes after step 10; its last checkpoint is step 8
    assert latest_checkpoint(tmp_path / "b").name == "step_00000008"
    model_b, opt_b, sched_b, ema_b, losses_b = _train(tmp_path / "b", 14, resume=True)

    assert sorted(losses_b) == list(range(9, 15))
    assert all(losses_b[s] == losses_a[s] for s in losses_b)
    for (ka, va), (kb, vb) in zip(model_a.state_dict().items(), model_b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb), ka
    for k in ema_a:
        assert torch.equal(ema_a[k], ema_b[k])
    state_a, state_b = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
    for i in state_a:
        assert all(torch.equal(state_a[i][k], state_b[i][k]) for k in ("exp_avg", "exp_avg_sq", "step"))
    assert sched_a.get_last_lr() == sched_b.get_last_lr()

    # The RNG states matter: without restoring them the resumed run drifts away.
    model_c, *_ = _train(tmp_path / "c", 10, stop_after=10)
    model_c, *_ = _train(tmp_path / "c", 14, resume=True, restore_rng=False)
    assert not torch.equal(model_c[0].weight, model_a[0].weight)


def test_round_trip_of_every_part(tmp_path):
    model, opt, sched = _build()
    model(torch.randn(2, 6)).sum().backward()
    opt.step()
    sched.step()
    extra = {"ema": {"w": torch.arange(3.0)}, "best_reward": 0.75, "history": [1, 2]}
    path = save_checkpoint(
        tmp_path, 7, model=model, optimizer=opt, scheduler=sched, data_state={"epoch": 1, "index": 3}, extra=extra
    )
    assert path == tmp_path / "step_00000007"
    assert sorted(p.name for p in path.iterdir()) == [
        "COMPLETE",
        "extra.pt",
        "model.safetensors",
        "optimizer.pt",
        "rng_rank0.pt",
        "scheduler.pt",
        "state.json",
    ]
    expected_rand = torch.rand(3)  # the draw right after saving

    model2, opt2, sched2 = _build()
    with torch.no_grad():
        model2[0].weight.zero_()
    torch.manual_seed(99)
    step, data_state, extra2 = load_checkpoint(path, model=model2, optimizer=opt2, scheduler=sched2)
    assert step == 7 and data_state == {"epoch": 1, "index": 3}
    assert torch.equal(extra2["ema"]["w"], extra["ema"]["w"]) and extra2["best_reward"] == 0.75
    assert torch.equal(torch.rand(3), expected_rand)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters(), strict=True))
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"], opt2.state_dict()["state"][0]["exp_avg"])
    assert sched2.state_dict() == sched.state_dict()


def test_resume_latest_on_empty_dir_and_mismatched_models(tmp_path):
    model, opt, _ = _build()
    assert resume_latest(tmp_path / "none", model=model, optimizer=opt) is None
    path = save_checkpoint(tmp_path, 1, model=model)
    with pytest.raises(KeyError, match="do not exist in the model"):
        load_checkpoint(path, model=nn.Sequential(nn.Linear(6, 16), nn.Linear(16, 1), nn.Linear(1, 1)))
    with pytest.raises(KeyError, match="are not in the checkpoint"):
        load_checkpoint(path, model=nn.Sequential(*_build()[0], nn.Linear(1, 1)))
    with pytest.raises(FileNotFoundError, match="no optimizer.pt"):
        load_checkpoint(path, model=model, optimizer=opt)
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path, 2, model=model, data_state={"bad": torch.ones(1)})
    assert latest_checkpoint(tmp_path).name == "step_00000001"


_CRASHING_WRITER = textwrap.dedent(
    """
    import os, sys, torch
    from cac_align.train.checkpoint import save_checkpoint
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    save_checkpoint(sys.argv[1], 1, model=model, optimizer=opt)
    real_save = torch.save
    def dying_save(obj, f, *args, **kwargs):
        if str(f).endswith("optimizer.pt"):  # the process dies half-way through writing step 2
            with open(f, "wb") as fh:
                fh.write(b"half a file")
            os._exit(3)
        return real_save(obj, f, *args, **kwargs)
    torch.save = dying_save
    save_checkpoint(sys.argv[1], 2, model=model, optimizer=opt)
    """
)


def test_crash_mid_write_never_becomes_latest(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _CRASHING_WRITER, str(tmp_path)], capture_output=True, timeout=120)
    assert proc.returncode == 3, proc.stderr.decode()
    assert (tmp_path / ".tmp_step_00000002" / "model.safetensors").is_file()  # the half-written checkpoint
    assert not (tmp_path / "step_00000002").exists()
    assert latest_checkpoint(tmp_path) == tmp_path / "step_00000001"

    model, opt = nn.Linear(3, 2), None
    assert resume_latest(tmp_path, model=model).step == 1
    # a step folder without the marker (e.g. an interrupted copy) is ignored too
    shutil.copytree(tmp_path / "step_00000001", tmp_path / "step_00000009")
    (tmp_path / "step_00000009" / "COMPLETE").unlink()
    assert latest_checkpoint(tmp_path) == tmp_path / "step_00000001"
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        load_checkpoint(tmp_path / "step_00000009", model=model, optimizer=opt)
    # the next save of step 2 replaces the stale temporary folder
    save_checkpoint(tmp_path, 2, model=model)
    assert not (tmp_path / ".tmp_step_00000002").exists()
    assert latest_checkpoint(tmp_path) == tmp_path / "step_00000002"


def test_keep_last_prunes_old_complete_checkpoints(tmp_path):
    model = nn.Linear(2, 2)
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, model=model, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000004", "step_00000005"]
    save_checkpoint(tmp_path, 5, model=model, keep_last=2)  # re-saving a step replaces it
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000004", "step_00000005"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000004", "step_00000005"]


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight


def test_tied_weights_are_stored_once_and_restored(tmp_path):
    torch.manual_seed(0)
    model = _Tied()
    path = save_checkpoint(tmp_path, 1, model=model)
    assert list(load_file(path / "model.safetensors")) == ["embed.weight"]
    assert json.loads((path / "state.json").read_text())["aliases"] == {"head.weight": "embed.weight"}
    torch.manual_seed(1)
    fresh = _Tied()
    load_checkpoint(path, model=fresh)
    assert torch.equal(fresh.embed.weight, model.embed.weight) and fresh.head.weight is fresh.embed.weight


def test_trainable_only_saves_adapters_of_a_peft_model(tmp_path):
    from peft import LoraConfig, get_peft_model

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.v, self.out = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.out(torch.relu(self.q(x) + self.v(x)))

    def build():
        torch.manual_seed(0)
        return get_peft_model(Net(), LoraConfig(r=2, lora_alpha=4, target_modules=["q", "v"]))

    model = build()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model(torch.randn(4, 8)).pow(2).mean().backward()
    opt.step()
    path = save_checkpoint(tmp_path, 1, model=model, optimizer=opt, trainable_only=True)
    saved = load_file(path / "model.safetensors")
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert set(saved) == trainable and all("lora_" in k for k in saved)

    fresh = build()
    opt2 = torch.optim.SGD([p for p in fresh.parameters() if p.requires_grad], lr=0.5)
    load_checkpoint(path, model=fresh, optimizer=opt2)
    for (k, a), (_, b) in zip(model.named_parameters(), fresh.named_parameters(), strict=True):
        assert torch.equal(a, b), k
    with pytest.raises(KeyError, match="trainable weights of the model are not in the checkpoint"):
        other = build()
        other.base_model.model.out.weight.requires_grad_(True)
        load_checkpoint(path, model=other)


@pytest.fixture
def accelerate_state():
    from accelerate.state import AcceleratorState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)  # accelerate keeps a process-wide singleton


def test_accelerator_single_process(tmp_path, accelerate_state):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model, opt, sched = _build()
    model, opt, sched = accelerator.prepare(model, opt, sched)
    accelerator.backward(model(torch.randn(4, 6)).pow(2).mean())
    opt.step()
    sched.step()
    path = save_checkpoint(tmp_path, 3, model=model, optimizer=opt, scheduler=sched, accelerator=accelerator)
    fresh, opt2, sched2 = accelerator.prepare(*_build())
    step, _, _ = load_checkpoint(path, model=fresh, optimizer=opt2, scheduler=sched2, accelerator=accelerator)
    assert step == 3
    unwrapped = accelerator.unwrap_model(model)
    assert all(torch.equal(a, b) for a, b in zip(unwrapped.parameters(), fresh.parameters(), strict=True))
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"], opt2.state_dict()["state"][0]["exp_avg"])


@pytest.mark.gpu
def test_cuda_rng_is_restored(tmp_path):
    model = nn.Linear(2, 2).cuda()
    torch.rand(1, device="cuda")  # initialise CUDA and its generator
    path = save_checkpoint(tmp_path, 1, model=model)
    expected = torch.rand(4, device="cuda")
    torch.cuda.manual_seed_all(123)
    load_checkpoint(path, model=model)
    assert torch.equal(torch.rand(4, device="cuda"), expected)
