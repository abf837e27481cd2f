"""Random weights of the three real VBench networks, written in VBench's cache layout (no downloads).

    paths = build_tiny_vbench_weights(tmp_path / "vbench")             # reduced DINO / MUSIQ, full RAFT (~30 MB)
    models = load_vbench_models(tmp_path / "vbench")                     # the same loaders as for the real cache
    build_tiny_vbench_weights(root, tiny=False)                          # full-size shapes (~470 MB), for benchmarks

The checkpoints have the key names and layouts of the released files (see :mod:`cac_align.eval.vbench_nets`):
a DINO ViT backbone state dict, a pyiqa-MUSIQ state dict, and RAFT in princeton-vl's original ``module.`` layout
(converted from torchvision's ``raft_large`` by :func:`~cac_align.eval.vbench_nets.raft_state_dict_to_original`).
``tiny=True`` shrinks what the architectures let shrink: DINO to width 64 (one head), 2 blocks, MLP 256, keeping
the 16-pixel patches and the 14 x 14 position grid; MUSIQ to width 64 (one head), 2 blocks, MLP 128 and a 32-channel
stem (bottleneck to 128), keeping 32-pixel patches, the 10 x 10 hash grid and 3 scales. RAFT's widths are fixed by its
architecture, so it is always full size.
Scores from random weights are meaningless; the loading and scoring code paths are the real ones.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cac_align.eval.vbench_nets import DINO_FILE, MUSIQ_FILE, RAFT_FILE, DinoViT, Musiq, raft_state_dict_to_original
from cac_align.utils import atomic_path

TINY_DINO = {"dim": 64, "depth": 2, "num_heads": 1, "mlp_dim": 256}
TINY_MUSIQ = {"dim": 64, "mlp_dim": 128, "num_heads": 1, "num_layers": 2, "stem_width": 32}


def _randomize_embeddings(model: nn.Module) -> None:
    """Give the zero-initialised embedding tables small random values, as trained weights would have."""
    for name, p in model.named_parameters():
        if name.split(".")[-1] in ("cls_token", "pos_embed", "cls", "position_emb", "scale_emb"):
            nn.init.normal_(p, std=0.02)


def _save(state: dict[str, torch.Tensor], path: Path) -> Path:
    with atomic_path(path) as tmp:
        torch.save({k: v.detach().clone().contiguous() for k, v in state.items()}, tmp)
    return path


def build_tiny_vbench_weights(root: str | Path, *, tiny: bool = True, seed: int = 0) -> dict[str, Path]:
    """Write random DINO, MUSIQ and RAFT checkpoints under ``root`` in VBench's cache layout.

    Args:
        root: the cache folder to fill (``VBENCH_CACHE_DIR`` layout; created).
        tiny: reduced DINO and MUSIQ (see the module docstring); ``False`` writes the released sizes.
        seed: seeds the random initialisation (the global torch RNG is left as it was).

    Returns:
        ``{"subject_consistency": path, "imaging_quality": path, "dynamic_degree": path}``.
    """
    from torchvision.models.optical_flow import raft_large

    root = Path(root)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        dino = DinoViT(**TINY_DINO) if tiny else DinoViT()
        musiq = Musiq(**TINY_MUSIQ) if tiny else Musiq()
        for model in (dino, musiq):
            _randomize_embeddings(model)
        raft = raft_large(weights=None, progress=False)
    return {
        "subject_consistency": _save(dino.state_dict(), root / DINO_FILE),
        "imaging_quality": _save(musiq.state_dict(), root / MUSIQ_FILE),
        "dynamic_degree": _save(raft_state_dict_to_original(raft.state_dict()), root / RAFT_FILE),
    }
