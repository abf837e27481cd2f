"""The three networks behind the VBench dimensions the paper reports (App. C.4.1), and loaders for VBench's weights.

Written for cac-align's torch stack (no timm, no pyiqa, no vendored RAFT): DINO ViT-B/16 for subject consistency,
MUSIQ (SPAQ) for imaging quality, RAFT for dynamic degree. Each loader reads one checkpoint laid out exactly as in
VBench's cache (``VBENCH_CACHE_DIR``, default ``~/.cache/vbench``), checks its keys and shapes strictly (every key the
architecture has, nothing more) and infers the sizes from the state dict, so the same code loads the released weights
and the reduced random ones of :func:`cac_align.eval.vbench_testing.build_tiny_vbench_weights`.

Files and the layout each loader expects (paths relative to the cache folder):

``dino_model/dino_vitbase16_pretrain.pth`` (:func:`load_dino`)
    The DINO ViT-B/16 backbone state dict (facebookresearch/dino ``vit_base``, ``num_classes=0`` so no head):
    ``cls_token [1, 1, D]``, ``pos_embed [1, 1 + G*G, D]``, ``patch_embed.proj.{weight [D, 3, P, P], bias}``,
    ``blocks.{i}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}.{weight, bias}``, ``norm.{weight, bias}``.
    Released: D = 768, 12 blocks, P = 16, G = 14, MLP 3072. Heads are ``D / 64`` (every DINO ViT uses 64-d heads).
``pyiqa_model/musiq_spaq_ckpt-358bb6af.pth`` (:func:`load_musiq`)
    The state dict of pyiqa's ``MUSIQ`` with one output (SPAQ): ``conv_root.weight [64, 3, 7, 7]``,
    ``gn_root.{weight, bias}``, ``block1.{conv1, gn1, conv2, gn2, conv3, gn3, conv_proj, gn_proj}.*`` (a
    bottleneck from the 64-channel stem to 256), ``embedding.{weight [D, 256 (P/4)^2], bias}``,
    ``transformer_encoder.{posembed_input.position_emb [1, G*G, D], scaleembed_input.scale_emb [3, D],
    cls [1, 1, D], encoder_norm.*}``,
    ``transformer_encoder.transformer.encoderblock_{i}.{norm1, attention.{query, key, value, out}, norm2,
    mlp.{fc1, fc2}}.*`` and ``head.{weight [1, D], bias [1]}``. Released: D = 384, 14 blocks, MLP 1152, P = 32,
    G = 10; heads are ``D / 64``. The stem width (64) is read from ``conv_root.weight``.
``raft_model/models/raft-things.pth`` (:func:`load_raft`)
    princeton-vl RAFT (large) as saved from ``nn.DataParallel``: every key starts with ``module.``
    (``module.fnet.*``, ``module.cnet.*``, ``module.update_block.{encoder, gru, flow_head, mask}.*``); the context
    encoder's ``layerN.0.norm3.*`` repeat ``layerN.0.downsample.1.*`` (one module under two names), 179 tensors in
    all. Loaded into torchvision's ``raft_large`` (the same architecture) through :func:`raft_key_to_torchvision`.
    The RAFT widths are fixed by the architecture, so the test weights are full size too (5.3 M parameters).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

DINO_FILE = "dino_model/dino_vitbase16_pretrain.pth"
MUSIQ_FILE = "pyiqa_model/musiq_spaq_ckpt-358bb6af.pth"
RAFT_FILE = "raft_model/models/raft-things.pth"
HEAD_DIM = 64
"""Attention head width of DINO's ViTs and of MUSIQ; the head count is the width divided by this."""

MUSIQ_LONGER_SIDES = (224, 384)
"""Longer sides of MUSIQ's two resized scales (pyiqa defaults, which VBench keeps); the third scale is the input."""


class WeightsError(ValueError):
    """A checkpoint that is missing, unreadable or not the expected architecture; the message names the file."""


def read_state_dict(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """Read a checkpoint that is a plain state dict (a dict of tensors), without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file; expected the {what} checkpoint there (VBench cache layout)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated / foreign files
        raise WeightsError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: expected a state dict of tensors for {what}, got {type(obj).__name__}")
    return obj


def _shape(sd: dict[str, torch.Tensor], key: str, path: Path, what: str) -> torch.Size:
    if key not in sd:
        raise WeightsError(f"{path}: not a {what} checkpoint, it has no key {key!r}")
    return sd[key].shape


def _count_blocks(sd: dict[str, torch.Tensor], pattern: str) -> int:
    idx = {int(m[1]) for k in sd if (m := re.match(pattern, k))}
    return max(idx) + 1 if idx else 0


def _load_strict(model: nn.Module, sd: dict[str, torch.Tensor], path: Path, what: str) -> None:
    """``load_state_dict(strict=True)`` with an error that names the file and the first offending keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [
        f"{k} {tuple(sd[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in sd and sd[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        parts = [
            f"{len(missing)} missing keys (e.g. {missing[:3]})" if missing else "",
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})" if unexpected else "",
            f"{len(wrong)} shape mismatches (e.g. {wrong[:2]})" if wrong else "",
        ]
        raise WeightsError(f"{path}: not a {what} checkpoint: " + "; ".join(p for p in parts if p))
    model.load_state_dict(sd, strict=True)


# ------------------------------------------------------------------------------------------------------- DINO
class _PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _ViTAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)  # scale head_dim ** -0.5, as DINO
        return self.proj(y.transpose(1, 2).reshape(n, t, d))


class _ViTBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _ViTAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DinoViT(nn.Module):
    """DINO's Vision Transformer backbone (Caron et al. 2021); ``forward`` returns the final-norm CLS feature.

    Input: ImageNet-normalised images ``[N, 3, H, W]`` of any size; patches beyond a multiple of the patch size are
    dropped by the strided patch convolution, and the ``G x G`` position grid is resized bicubically with DINO's
    rule (scale factors ``(H // P + 0.1) / G`` and ``(W // P + 0.1) / G``) unless the input is the square training
    size. Output: ``[N, D]``.
    """

    def __init__(
        self,
        *,
        dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_dim: int = 3072,
        patch_size: int = 16,
        grid: int = 14,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.grid = grid
        self.patch_embed = _PatchEmbed(dim, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, dim))
        self.blocks = nn.ModuleList(_ViTBlock(dim, num_heads, mlp_dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def position_embedding(self, height: int, width: int) -> torch.Tensor:
        """Position embeddings ``[1, 1 + (H // P) (W // P), D]`` for an input of ``height x width`` pixels."""
        h0, w0 = height // self.patch_size, width // self.patch_size
        if h0 * w0 == self.grid * self.grid and height == width:
            return self.pos_embed
        cls_pos, grid_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        d = grid_pos.shape[-1]
        grid_pos = grid_pos.reshape(1, self.grid, self.grid, d).permute(0, 3, 1, 2)
        # DINO passes scale factors, not sizes (the +0.1 guards the floor of the output size); the interpolation
        # coordinates follow these factors, so sizes would give slightly different embeddings.
        scale = ((h0 + 0.1) / self.grid, (w0 + 0.1) / self.grid)
        grid_pos = F.interpolate(grid_pos, scale_factor=scale, mode="bicubic")
        if grid_pos.shape[-2:] != (h0, w0):
            raise RuntimeError(f"position grid resized to {tuple(grid_pos.shape[-2:])}, expected {(h0, w0)}")
        return torch.cat([cls_pos, grid_pos.permute(0, 2, 3, 1).reshape(1, h0 * w0, d)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        tokens = torch.cat([self.cls_token.expand(n, -1, -1), self.patch_embed(x)], dim=1)
        tokens = tokens + self.position_embedding(h, w)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)[:, 0]


def load_dino(path: str | Path) -> DinoViT:
    """Load ``dino_vitbase16_pretrain.pth`` (or a reduced checkpoint of the same layout) into :class:`DinoViT`."""
    path, what = Path(path), "DINO ViT"
    sd = read_state_dict(path, what)
    dim = _shape(sd, "cls_token", path, what)[-1]
    patch = _shape(sd, "patch_embed.proj.weight", path, what)[-1]
    n_pos = _shape(sd, "pos_embed", path, what)[1] - 1
    grid = math.isqrt(n_pos)
    if grid * grid != n_pos or dim % HEAD_DIM:
        raise WeightsError(
            f"{path}: pos_embed of {n_pos} patches is not a square grid or width {dim} is not a multiple of {HEAD_DIM}"
        )
    depth = _count_blocks(sd, r"blocks\.(\d+)\.")
    mlp = _shape(sd, "blocks.0.mlp.fc1.weight", path, what)[0]
    model = DinoViT(dim=dim, depth=depth, num_heads=dim // HEAD_DIM, mlp_dim=mlp, patch_size=patch, grid=grid)
    _load_strict(model, sd, path, what)
    return model.eval()


# ------------------------------------------------------------------------------------------------------ MUSIQ
def tf_same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """Zero-pad ``[N, C, H, W]`` as TensorFlow's "SAME" padding (the odd pixel goes after)."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):
        total = max(0, (math.ceil(size / stride) - 1) * stride + kernel - size)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class StdConv2d(nn.Conv2d):
    """Convolution with weight standardisation (per output channel: mean 0, unbiased std 1 + 1e-5) and TF "SAME"
    padding, as MUSIQ's ResNet stem (ported from the official TensorFlow model)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)
        w = w / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(tf_same_pad(x, self.kernel_size[0], self.stride[0]), w, self.bias, self.stride)


class _MusiqBottleneck(nn.Module):
    def __init__(self, width: int, out: int) -> None:
        super().__init__()
        self.conv1 = StdConv2d(width, width, 1, bias=False)
        self.gn1 = nn.GroupNorm(32, width, eps=1e-4)
        self.conv2 = StdConv2d(width, width, 3, bias=False)
        self.gn2 = nn.GroupNorm(32, width, eps=1e-4)
        self.conv3 = StdConv2d(width, out, 1, bias=False)
        self.gn3 = nn.GroupNorm(32, out, eps=1e-4)
        self.conv_proj = StdConv2d(width, out, 1, bias=False)
        self.gn_proj = nn.GroupNorm(32, out, eps=1e-4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.gn1(self.conv1(x)))
        y = F.relu(self.gn2(self.conv2(y)))
        return F.relu(self.gn3(self.conv3(y)) + self.gn_proj(self.conv_proj(x)))


class _MusiqAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, pair_mask: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = (
            lin(x).reshape(n, t, self.num_heads, -1).transpose(1, 2) for lin in (self.query, self.key, self.value)
        )
        logits = (q @ k.transpose(-2, -1)) * (d // self.num_heads) ** -0.5
        # MUSIQ replaces (does not add) the logits of pairs involving a padding token by -1000.
        attn = logits.masked_fill(~pair_mask, -1e3).softmax(dim=-1)
        return self.out((attn @ v).transpose(1, 2).reshape(n, t, d))


class _MusiqBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attention = _MusiqAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, mlp_dim)

    def forward(self, x: torch.Tensor, pair_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x), pair_mask)
        return x + self.mlp(self.norm2(x))


class _HashPositionEmbedding(nn.Module):
    def __init__(self, grid: int, dim: int) -> None:
        super().__init__()
        self.position_emb = nn.Parameter(torch.zeros(1, grid * grid, dim))


class _ScaleEmbedding(nn.Module):
    def __init__(self, num_scales: int, dim: int) -> None:
        super().__init__()
        self.scale_emb = nn.Parameter(torch.zeros(num_scales, dim))


class _MusiqEncoder(nn.Module):
    def __init__(self, dim: int, mlp_dim: int, num_heads: int, num_layers: int, grid: int, num_scales: int) -> None:
        super().__init__()
        self.posembed_input = _HashPositionEmbedding(grid, dim)
        self.scaleembed_input = _ScaleEmbedding(num_scales, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.encoder_norm = nn.LayerNorm(dim, eps=1e-6)
        self.transformer = nn.ModuleDict(
            {f"encoderblock_{i}": _MusiqBlock(dim, num_heads, mlp_dim) for i in range(num_layers)}
        )

    def forward(self, x: torch.Tensor, spatial: torch.Tensor, scale: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.posembed_input.position_emb[0, spatial] + self.scaleembed_input.scale_emb[scale]
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        keep = torch.cat([mask.new_ones(1), mask])
        pair_mask = keep[:, None] & keep[None, :]
        for block in self.transformer.values():
            x = block(x, pair_mask)
        return self.encoder_norm(x)


def musiq_input_positions(grid: int, count_h: int, count_w: int) -> torch.Tensor:
    """Hash-based spatial position ids ``[count_h * count_w]`` (row-major): each patch row and column index is mapped
    onto the ``grid`` cells by nearest-neighbour resizing of ``0 .. grid - 1``; id = row_cell * grid + col_cell."""
    cells = torch.arange(grid, dtype=torch.float32)[None, None]
    rows = F.interpolate(cells, size=count_h, mode="nearest")[0, 0].long()
    cols = F.interpolate(cells, size=count_w, mode="nearest")[0, 0].long()
    return (rows[:, None] * grid + cols[None, :]).reshape(-1)


def musiq_tokens(
    images: torch.Tensor, patch_size: int, grid: int, longer_sides: tuple[int, ...] = MUSIQ_LONGER_SIDES
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """MUSIQ's multi-scale patch sequence (Ke et al. 2021, Sec. 3) of images ``[N, 3, H, W]`` scaled to [-1, 1].

    For each longer side ``L`` in ``longer_sides`` (ascending) the image is resized bicubically to
    ``round(H L / max(H, W)) x round(W L / max(H, W))``, TF-"SAME" padded and cut into ``patch_size`` patches, and the
    sequence is zero-padded to ``ceil(L / patch_size) ** 2`` tokens; then all patches of the input itself follow.

    Returns:
        ``(patches [N, T, 3, p, p], spatial ids [T], scale ids [T], mask [T] bool)``; padding tokens have id 0 and
        mask False.
    """
    n, c, h, w = images.shape
    scales = []
    for side in sorted(longer_sides):
        ratio = side / max(h, w)  # pyiqa's float operations, so that halves round the same way
        scales.append((round(h * ratio), round(w * ratio), math.ceil(side / patch_size) ** 2))
    scales.append((h, w, -1))  # the input itself, every patch
    patches, spatial, scale_ids, mask = [], [], [], []
    for scale_id, (rh, rw, max_len) in enumerate(scales):
        x = images if max_len < 0 else F.interpolate(images, size=(rh, rw), mode="bicubic")
        p = F.unfold(tf_same_pad(x, patch_size, patch_size), patch_size, stride=patch_size).transpose(1, 2)
        pos = musiq_input_positions(grid, math.ceil(rh / patch_size), math.ceil(rw / patch_size))
        valid = torch.ones(p.shape[1], dtype=torch.bool)
        if max_len >= 0:
            pad = max_len - p.shape[1]
            if pad < 0:
                p, pos, valid = p[:, :max_len], pos[:max_len], valid[:max_len]
            else:
                p = torch.cat([p, p.new_zeros(n, pad, p.shape[2])], dim=1)
                pos, valid = F.pad(pos, (0, pad)), F.pad(valid, (0, pad))
        patches.append(p)
        spatial.append(pos)
        scale_ids.append(torch.where(valid, scale_id, 0))
        mask.append(valid)
    dev = images.device
    tokens = torch.cat(patches, dim=1).reshape(n, -1, c, patch_size, patch_size)
    return tokens, torch.cat(spatial).to(dev), torch.cat(scale_ids).to(dev), torch.cat(mask).to(dev)


class Musiq(nn.Module):
    """MUSIQ, the multi-scale image quality transformer (Ke et al., ICCV 2021), as pyiqa ports it; one output.

    ``forward(images [N, 3, H, W] in [0, 1]) -> [N]`` quality scores (SPAQ weights: roughly 0-100). Images are mapped
    to [-1, 1], turned into the multi-scale token sequence of :func:`musiq_tokens` (longer sides 224 and 384, then the
    input itself), embedded by a weight-standardised ResNet stem per patch, and read out from the CLS token.
    """

    def __init__(
        self,
        *,
        dim: int = 384,
        mlp_dim: int = 1152,
        num_heads: int = 6,
        num_layers: int = 14,
        patch_size: int = 32,
        grid: int = 10,
        num_scales: int = 3,
        stem_width: int = 64,
    ) -> None:
        super().__init__()
        if num_scales != len(MUSIQ_LONGER_SIDES) + 1:
            raise ValueError(f"MUSIQ here has {len(MUSIQ_LONGER_SIDES) + 1} scales, got {num_scales}")
        self.patch_size = patch_size
        self.grid = grid
        self.conv_root = StdConv2d(3, stem_width, 7, stride=2, bias=False)
        self.gn_root = nn.GroupNorm(32, stem_width, eps=1e-6)
        self.block1 = _MusiqBottleneck(stem_width, 4 * stem_width)
        self.embedding = nn.Linear(4 * stem_width * (patch_size // 4) ** 2, dim)
        self.transformer_encoder = _MusiqEncoder(dim, mlp_dim, num_heads, num_layers, grid, num_scales)
        self.head = nn.Linear(dim, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        patches, spatial, scale, mask = musiq_tokens((images - 0.5) * 2, self.patch_size, self.grid)
        n, t = patches.shape[:2]
        x = F.relu(self.gn_root(self.conv_root(patches.flatten(0, 1))))
        x = self.block1(F.max_pool2d(tf_same_pad(x, 3, 2), 3, 2))
        x = self.embedding(x.permute(0, 2, 3, 1).reshape(n, t, -1))  # channels last, as the TensorFlow original
        x = self.transformer_encoder(x, spatial, scale, mask)
        return self.head(x[:, 0])[:, 0]


def load_musiq(path: str | Path) -> Musiq:
    """Load ``musiq_spaq_ckpt-358bb6af.pth`` (or a reduced checkpoint of the same layout) into :class:`Musiq`."""
    path, what = Path(path), "MUSIQ (SPAQ)"
    sd = read_state_dict(path, what)
    dim, in_features = _shape(sd, "embedding.weight", path, what)
    stem = _shape(sd, "conv_root.weight", path, what)[0]
    patch = 4 * math.isqrt(in_features // (4 * stem))
    n_pos = _shape(sd, "transformer_encoder.posembed_input.position_emb", path, what)[1]
    grid = math.isqrt(n_pos)
    if 4 * stem * (patch // 4) ** 2 != in_features or grid * grid != n_pos or dim % HEAD_DIM:
        raise WeightsError(
            f"{path}: embedding {in_features} inputs / {n_pos} positions / width {dim} do not fit MUSIQ"
        )
    heads_out = _shape(sd, "head.weight", path, what)[0]
    if heads_out != 1:
        raise WeightsError(f"{path}: head has {heads_out} outputs; the SPAQ checkpoint VBench uses has 1")
    model = Musiq(
        dim=dim,
        mlp_dim=_shape(sd, "transformer_encoder.transformer.encoderblock_0.mlp.fc1.weight", path, what)[0],
        num_heads=dim // HEAD_DIM,
        num_layers=_count_blocks(sd, r"transformer_encoder\.transformer\.encoderblock_(\d+)\."),
        patch_size=patch,
        grid=grid,
        num_scales=_shape(sd, "transformer_encoder.scaleembed_input.scale_emb", path, what)[0],
        stem_width=stem,
    )
    _load_strict(model, sd, path, what)
    return model.eval()


# ------------------------------------------------------------------------------------------------------- RAFT
_ENCODERS = {"fnet": "feature_encoder", "cnet": "context_encoder"}
_STEM = {"conv1": "convnormrelu.0", "norm1": "convnormrelu.1", "conv2": "conv"}
_BLOCK = {
    "conv1": "convnormrelu1.0",
    "norm1": "convnormrelu1.1",
    "conv2": "convnormrelu2.0",
    "norm2": "convnormrelu2.1",
}
_MOTION = {"convc1": "convcorr1", "convc2": "convcorr2", "convf1": "convflow1", "convf2": "convflow2", "conv": "conv"}
_MASK = {"0": "convrelu.0", "2": "conv"}


def raft_key_to_torchvision(key: str) -> str | None:
    """The torchvision ``raft_large`` name of an original RAFT key (``module.`` already stripped).

    ``None`` for ``layerN.B.norm3.*``, which the original state dict lists twice (it is also ``downsample.1``).
    Raises KeyError for a name RAFT does not have.
    """
    if m := re.fullmatch(r"([fc]net)\.(conv1|norm1|conv2)\.(\w+)", key):
        return f"{_ENCODERS[m[1]]}.{_STEM[m[2]]}.{m[3]}"
    if m := re.fullmatch(r"([fc]net)\.(layer\d\.\d)\.(conv1|norm1|conv2|norm2|norm3|downsample\.[01])\.(\w+)", key):
        return None if m[3] == "norm3" else f"{_ENCODERS[m[1]]}.{m[2]}.{_BLOCK.get(m[3], m[3])}.{m[4]}"
    if m := re.fullmatch(r"update_block\.encoder\.(convc1|convc2|convf1|convf2|conv)\.(\w+)", key):
        return f"update_block.motion_encoder.{_MOTION[m[1]]}.0.{m[2]}"
    if m := re.fullmatch(r"update_block\.gru\.conv([zrq])([12])\.(\w+)", key):
        return f"update_block.recurrent_block.convgru{m[2]}.conv{m[1]}.{m[3]}"
    if m := re.fullmatch(r"update_block\.flow_head\.(conv[12])\.(\w+)", key):
        return f"update_block.flow_head.{m[1]}.{m[2]}"
    if m := re.fullmatch(r"update_block\.mask\.([02])\.(\w+)", key):
        return f"mask_predictor.{_MASK[m[1]]}.{m[2]}"
    raise KeyError(key)


def raft_key_from_torchvision(key: str) -> str:
    """The original RAFT name (without ``module.``) of a torchvision ``raft_large`` key; inverse of
    :func:`raft_key_to_torchvision` (used to write test checkpoints in the original layout)."""
    encoders, stem, block = (_inverse(t) for t in (_ENCODERS, _STEM, _BLOCK))
    if m := re.fullmatch(r"(feature_encoder|context_encoder)\.(convnormrelu\.[01]|conv)\.(\w+)", key):
        return f"{encoders[m[1]]}.{stem[m[2]]}.{m[3]}"
    if m := re.fullmatch(r"(feature_encoder|context_encoder)\.(layer\d\.\d)\.(\w+\.\d)\.(\w+)", key):
        return f"{encoders[m[1]]}.{m[2]}.{block.get(m[3], m[3])}.{m[4]}"
    if m := re.fullmatch(r"update_block\.motion_encoder\.(\w+)\.0\.(\w+)", key):
        return f"update_block.encoder.{_inverse(_MOTION)[m[1]]}.{m[2]}"
    if m := re.fullmatch(r"update_block\.recurrent_block\.convgru([12])\.conv([zrq])\.(\w+)", key):
        return f"update_block.gru.conv{m[2]}{m[1]}.{m[3]}"
    if re.fullmatch(r"update_block\.flow_head\.conv[12]\.\w+", key):
        return key
    if m := re.fullmatch(r"mask_predictor\.(convrelu\.0|conv)\.(\w+)", key):
        return f"update_block.mask.{_inverse(_MASK)[m[1]]}.{m[2]}"
    raise KeyError(key)


def _inverse(table: dict[str, str]) -> dict[str, str]:
    return {v: k for k, v in table.items()}


def raft_state_dict_to_original(tv_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A torchvision ``raft_large`` state dict in the layout of ``raft-things.pth`` (``module.`` prefix, the context
    encoder's ``norm3`` aliases of ``downsample.1`` included)."""
    out = {}
    for key, value in tv_state.items():
        name = raft_key_from_torchvision(key)
        out[f"module.{name}"] = value
        if m := re.fullmatch(r"cnet\.(layer\d\.\d)\.downsample\.1\.(\w+)", name):
            out[f"module.cnet.{m[1]}.norm3.{m[2]}"] = value
    return out


def load_raft(path: str | Path) -> nn.Module:
    """Load ``raft-things.pth`` (original princeton-vl layout, ``module.`` keys) into torchvision's ``raft_large``.

    The model expects images scaled to [-1, 1] whose sides are multiples of 8 and at least 128 pixels, and
    ``model(image1, image2, num_flow_updates=20)[-1]`` is RAFT's ``test_mode`` output (the upsampled last flow).
    """
    from torchvision.models.optical_flow import raft_large

    path, what = Path(path), "RAFT (raft-things)"
    sd = read_state_dict(path, what)
    if not all(k.startswith("module.") for k in sd):
        raise WeightsError(f"{path}: expected every key to start with 'module.' (RAFT saved from nn.DataParallel)")
    converted: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        name = key.removeprefix("module.")
        try:
            new = raft_key_to_torchvision(name)
        except KeyError:
            raise WeightsError(f"{path}: not a {what} checkpoint, unexpected key {key!r}") from None
        if new is None:  # norm3 alias: must repeat downsample.1
            alias = key.replace(".norm3.", ".downsample.1.")
            if alias not in sd or not torch.equal(sd[alias], value):
                raise WeightsError(f"{path}: {key} does not repeat {alias} as RAFT's state dict does")
            continue
        converted[new] = value
    model = raft_large(weights=None, progress=False)
    _load_strict(model, converted, path, what)
    return model.eval()
