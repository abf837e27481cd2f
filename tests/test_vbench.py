"""VBench dimensions (App. C.4.1): loading VBench's cache layout, the scoring rules on hand cases, the CLI."""

import importlib.util
import json
import math
import sys

import pytest
import torch

from cac_align.cli import main
from cac_align.eval.vbench import (
    check_dimensions,
    consistency_terms,
    dino_input_size,
    dynamic_params,
    evaluate_vbench,
    frame_interval,
    is_dynamic,
    load_vbench_models,
    musiq_frame_scores,
    musiq_input_size,
    pad_to_multiple_of_8,
    parse_official_results,
    top5_flow_magnitude,
)
from cac_align.eval.vbench_nets import (
    StdConv2d,
    WeightsError,
    load_dino,
    load_musiq,
    load_raft,
    musiq_input_positions,
    musiq_tokens,
    raft_key_from_torchvision,
    raft_key_to_torchvision,
    tf_same_pad,
)
from cac_align.eval.vbench_testing import build_tiny_vbench_weights
from cac_align.video import load_video, save_video

DINO = "dino_model/dino_vitbase16_pretrain.pth"
MUSIQ = "pyiqa_model/musiq_spaq_ckpt-358bb6af.pth"
RAFT = "raft_model/models/raft-things.pth"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """RAFT's many small ops crawl with intra-op threads on a busy 2-core machine; restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return build_tiny_vbench_weights(tmp_path_factory.mktemp("vbench_cache"))


@pytest.fixture(scope="module")
def cache(weights):
    return weights["subject_consistency"].parents[1]


@pytest.fixture(scope="module")
def models(cache):
    return load_vbench_models(cache)


def _frames(n, h, w, seed=0):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------ weights and loaders
def test_builder_writes_the_vbench_cache_layout(weights, cache):
    assert {k: v.relative_to(cache).as_posix() for k, v in weights.items()} == {
        "subject_consistency": DINO,
        "imaging_quality": MUSIQ,
        "dynamic_degree": RAFT,
    }


def test_raft_checkpoint_has_the_original_princeton_layout(cache):
    sd = torch.load(cache / RAFT, weights_only=True)
    assert len(sd) == 179  # the released raft-things.pth lists 179 tensors (norm3 aliases included)
    assert all(k.startswith("module.") for k in sd)
    shapes = {
        "module.fnet.conv1.weight": (64, 3, 7, 7),
        "module.cnet.conv2.weight": (256, 128, 1, 1),
        "module.update_block.encoder.convc1.weight": (256, 324, 1, 1),
        "module.update_block.gru.convz1.weight": (128, 384, 1, 5),
        "module.update_block.gru.convz2.weight": (128, 384, 5, 1),
        "module.update_block.flow_head.conv2.weight": (2, 256, 3, 3),
        "module.update_block.mask.2.weight": (576, 256, 1, 1),
    }
    assert {k: tuple(sd[k].shape) for k in shapes} == shapes
    for layer in (2, 3):
        for p in ("weight", "bias", "running_mean", "running_var"):
            assert torch.equal(
                sd[f"module.cnet.layer{layer}.0.norm3.{p}"], sd[f"module.cnet.layer{layer}.0.downsample.1.{p}"]
            )
    assert not any("fnet" in k and "norm" in k for k in sd)  # instance norm: no parameters


def test_raft_loader_puts_each_original_tensor_where_torchvision_expects_it(cache, models):
    raw = torch.load(cache / RAFT, weights_only=True)
    tv = models.raft.state_dict()
    pairs = {  # written out by hand from the two architectures (layers of equal shapes included)
        "module.fnet.layer1.0.conv1.weight": "feature_encoder.layer1.0.convnormrelu1.0.weight",
        "module.fnet.layer1.1.conv2.weight": "feature_encoder.layer1.1.convnormrelu2.0.weight",
        "module.fnet.conv2.weight": "feature_encoder.conv.weight",
        "module.cnet.conv1.weight": "context_encoder.convnormrelu.0.weight",
        "module.cnet.layer2.0.conv2.weight": "context_encoder.layer2.0.convnormrelu2.0.weight",
        "module.cnet.layer3.0.downsample.0.weight": "context_encoder.layer3.0.downsample.0.weight",
        "module.update_block.encoder.convf2.weight": "update_block.motion_encoder.convflow2.0.weight",
        "module.update_block.encoder.conv.weight": "update_block.motion_encoder.conv.0.weight",
        "module.update_block.gru.convr1.weight": "update_block.recurrent_block.convgru1.convr.weight",
        "module.update_block.gru.convq1.weight": "update_block.recurrent_block.convgru1.convq.weight",
        "module.update_block.gru.convz2.weight": "update_block.recurrent_block.convgru2.convz.weight",
        "module.update_block.flow_head.conv1.weight": "update_block.flow_head.conv1.weight",
        "module.update_block.mask.0.weight": "mask_predictor.convrelu.0.weight",
        "module.update_block.mask.2.weight": "mask_predictor.conv.weight",
    }
    for orig, name in pairs.items():
        assert torch.equal(raw[orig], tv[name]), (orig, name)


def test_raft_name_mapping_round_trips_every_torchvision_key(models):
    for key in models.raft.state_dict():
        assert raft_key_to_torchvision(raft_key_from_torchvision(key)) == key
    assert raft_key_to_torchvision("cnet.layer2.0.norm3.weight") is None  # the alias of downsample.1
    with pytest.raises(KeyError):
        raft_key_to_torchvision("update_block.gru.convw1.weight")


def test_load_vbench_models_loads_only_what_the_dimensions_need(cache):
    m = load_vbench_models(cache, ["dynamic_degree"])
    assert m.dino is None and m.musiq is None and m.raft is not None


def _corrupt(sd, kind):
    sd = dict(sd)
    if kind == "extra":
        sd["head.weight"] = torch.zeros(1)
    elif kind == "missing":
        sd.pop(sorted(sd)[-1])
    return sd


@pytest.mark.parametrize("kind", ["extra", "missing"])
@pytest.mark.parametrize("loader,rel", [(load_dino, DINO), (load_musiq, MUSIQ), (load_raft, RAFT)])
def test_loaders_reject_checkpoints_that_do_not_match_exactly(tmp_path, cache, loader, rel, kind):
    bad = tmp_path / "bad.pth"
    torch.save(_corrupt(torch.load(cache / rel, weights_only=True), kind), bad)
    with pytest.raises(WeightsError, match=str(bad)):
        loader(bad)


def test_loader_errors_name_the_file(tmp_path, cache):
    with pytest.raises(WeightsError, match=r"nope\.pth: no such file"):
        load_dino(tmp_path / "nope.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=r"garbage\.pth: not a readable"):
        load_musiq(garbage)
    with pytest.raises(WeightsError, match=rf"{DINO}: not a MUSIQ"):
        load_musiq(cache / DINO)
    with pytest.raises(WeightsError, match=r"pyiqa_model.*module\."):
        load_raft(cache / MUSIQ)
    sd = torch.load(cache / RAFT, weights_only=True)
    sd["module.cnet.layer2.0.norm3.weight"] = sd["module.cnet.layer2.0.norm3.weight"] + 1
    torch.save(sd, tmp_path / "raft.pth")
    with pytest.raises(WeightsError, match=r"raft\.pth: module\.cnet\.layer2\.0\.norm3\.weight does not repeat"):
        load_raft(tmp_path / "raft.pth")
    with pytest.raises(WeightsError, match=rf"{tmp_path / 'empty' / DINO}"):
        load_vbench_models(tmp_path / "empty")


# ------------------------------------------------------------------------------------------ subject consistency
def test_dino_matches_transformers_vit_at_the_training_size(models):
    from transformers import ViTConfig, ViTModel

    sd = models.dino.state_dict()
    dim, depth = sd["cls_token"].shape[-1], len(models.dino.blocks)
    cfg = ViTConfig(
        hidden_size=dim,
        num_hidden_layers=depth,
        num_attention_heads=dim // 64,
        intermediate_size=sd["blocks.0.mlp.fc1.weight"].shape[0],
        image_size=224,
        patch_size=16,
        layer_norm_eps=1e-6,
        qkv_bias=True,
        hidden_act="gelu",
    )
    hf = ViTModel(cfg, add_pooling_layer=False).eval()
    new = {
        "embeddings.cls_token": sd["cls_token"],
        "embeddings.position_embeddings": sd["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
        "layernorm.weight": sd["norm.weight"],
        "layernorm.bias": sd["norm.bias"],
    }
    ours = {"norm1": "layernorm_before", "norm2": "layernorm_after", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
    ours["attn.proj"] = "attention.o_proj"
    for i in range(depth):
        for p in ("weight", "bias"):
            for q, name in zip(sd[f"blocks.{i}.attn.qkv.{p}"].chunk(3), ("q", "k", "v"), strict=True):
                new[f"layers.{i}.attention.{name}_proj.{p}"] = q
            for a, b in ours.items():
                new[f"layers.{i}.{b}.{p}"] = sd[f"blocks.{i}.{a}.{p}"]
    hf.load_state_dict(new, strict=True)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(models.dino(x), hf(pixel_values=x).last_hidden_state[:, 0], atol=1e-5, rtol=1e-5)


def test_dino_position_grid_follows_the_input(models):
    dino = models.dino
    assert dino.position_embedding(224, 224) is dino.pos_embed
    assert dino.position_embedding(224, 398).shape == (1, 1 + 14 * 24, dino.pos_embed.shape[-1])
    assert dino.position_embedding(388, 224).shape == (1, 1 + 24 * 14, dino.pos_embed.shape[-1])


def test_dino_resize_rule():
    assert dino_input_size(480, 832) == (224, 388)  # int(224 * 832 / 480) = int(388.27)
    assert dino_input_size(832, 480) == (388, 224)
    assert dino_input_size(100, 150) == (224, 336)
    assert dino_input_size(224, 224) == (224, 224)


def test_consistency_terms_hand_cases():
    r = math.sqrt(0.5)
    got = consistency_terms(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    assert got == pytest.approx([0.0, (r + r) / 2])  # c_1: both cosines 0; c_2: cos(f1, f2) = cos(f0, f2) = 0.707
    assert consistency_terms(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == [0.0]  # negative cosines clamp to 0
    assert consistency_terms(torch.tensor([[2.0, 0.0], [5.0, 0.0], [0.0, 3.0]])) == pytest.approx([1.0, 0.0])


def test_static_video_has_subject_consistency_one(models):
    videos = [_frames(1, 96, 160, seed=s).expand(5, -1, -1, -1) for s in (0, 1)]
    r = evaluate_vbench(videos, models, dimensions=["subject_consistency"], fps=16)
    assert [v["subject_consistency"] for v in r["per_video"]] == pytest.approx([1.0, 1.0], abs=1e-6)
    assert r["overall"]["subject_consistency"] == pytest.approx(1.0, abs=1e-6)


def test_subject_consistency_overall_weighs_every_transition(models):
    static = _frames(1, 64, 64).expand(3, -1, -1, -1)  # 2 transitions, each 1
    moving = _frames(2, 64, 64, seed=5)  # 1 transition
    r = evaluate_vbench([static, moving], models, dimensions=["subject_consistency"], fps=8)
    c = r["per_video"][1]["subject_consistency"]
    assert c < 0.999
    assert r["overall"]["subject_consistency"] == pytest.approx((2 * 1.0 + c) / 3, abs=1e-6)  # not (1 + c) / 2


def test_files_and_their_decoded_tensors_score_the_same(tmp_path, models):
    paths = [save_video(_frames(3, 64, 96, seed=s), tmp_path / f"v{s}.mp4", fps=16) for s in (0, 1)]
    from_files = evaluate_vbench(paths, models, dimensions=["subject_consistency"])
    decoded = [load_video(p, fps=None) for p in paths]
    from_tensors = evaluate_vbench(
        [d.frames for d in decoded], models, dimensions=["subject_consistency"], fps=[d.src_fps for d in decoded]
    )
    assert [r["video"] for r in from_files["per_video"]] == [str(p) for p in paths]
    assert from_files["overall"] == from_tensors["overall"]


# --------------------------------------------------------------------------------------------- imaging quality
def test_musiq_resize_rule():
    assert musiq_input_size(480, 832) == (295, 512)  # s = 512/832: 295.4 -> 295, 512.0 -> 512
    assert musiq_input_size(720, 1280) == (288, 512)
    assert musiq_input_size(1000, 600) == (512, 307)
    assert musiq_input_size(512, 300) == (512, 300)  # the longer side is not above 512: unchanged


def test_tf_same_padding():
    x = torch.arange(32 * 32, dtype=torch.float32).reshape(1, 1, 32, 32)
    y = tf_same_pad(x, 7, 2)  # out 16: (16 - 1) * 2 + 7 - 32 = 5 -> 2 before, 3 after
    assert y.shape == (1, 1, 37, 37) and torch.equal(y[..., 2:34, 2:34], x) and y[..., :2, :].abs().sum() == 0
    assert tf_same_pad(torch.ones(1, 1, 100, 64), 32, 32).shape == (1, 1, 128, 64)  # 28 rows: 14 + 14


def test_std_conv_standardises_each_output_filter():
    conv = StdConv2d(3, 4, 3, bias=False)
    w = conv.weight.detach().flatten(1)
    n = w.shape[1]
    mean = w.sum(1, keepdim=True) / n
    std = ((w - mean).square().sum(1, keepdim=True) / (n - 1)).sqrt()  # unbiased, as pyiqa's torch.std
    w_std = ((w - mean) / (std + 1e-5)).reshape(conv.weight.shape)
    x = torch.randn(2, 3, 9, 9)
    expected = torch.nn.functional.conv2d(torch.nn.functional.pad(x, [1, 1, 1, 1]), w_std)
    torch.testing.assert_close(conv(x), expected)


def test_musiq_hash_positions():
    assert torch.equal(musiq_input_positions(10, 10, 10), torch.arange(100))
    assert musiq_input_positions(10, 5, 2).tolist() == [0, 5, 20, 25, 40, 45, 60, 65, 80, 85]
    assert musiq_input_positions(10, 1, 20).tolist() == [c // 2 for c in range(20)]


def test_musiq_multiscale_tokens_layout():
    img = torch.rand(2, 3, 96, 128) * 2 - 1
    patches, spatial, scale, mask = musiq_tokens(img, patch_size=32, grid=10)
    # 224: 168 x 224 -> 6 x 7 = 42 patches, padded to 49; 384: 288 x 384 -> 9 x 12 = 108, padded to 144; input: 3 x 4
    assert patches.shape == (2, 49 + 144 + 12, 3, 32, 32)
    assert mask.tolist() == [True] * 42 + [False] * 7 + [True] * 108 + [False] * 36 + [True] * 12
    assert scale.tolist() == [0] * 49 + [1] * 108 + [0] * 36 + [2] * 12
    assert spatial[:42].tolist() == musiq_input_positions(10, 6, 7).tolist() and spatial[42:49].eq(0).all()
    assert torch.equal(patches[:, -12], img[:, :, :32, :32]) and torch.equal(patches[:, -1], img[:, :, 64:, 96:])
    assert patches[:, ~mask].abs().sum() == 0


def test_musiq_scores_do_not_depend_on_the_batch(models):
    frames = _frames(2, 64, 80, seed=2)
    together = musiq_frame_scores(frames, models.musiq, batch_size=2)
    alone = [s for f in frames for s in musiq_frame_scores(f[None], models.musiq)]
    assert together == pytest.approx(alone, abs=1e-4)
    assert abs(together[0] - together[1]) > 1e-4  # the score depends on the frame


# ---------------------------------------------------------------------------------------------- dynamic degree
def test_frame_interval_follows_python_rounding():
    assert [frame_interval(f) for f in (4, 8, 12, 16, 20, 24, 30)] == [1, 1, 2, 2, 2, 3, 4]


def test_dynamic_params():
    assert dynamic_params(16, 256, 256, 16.0) == (6.0, 4)
    assert dynamic_params(41, 480, 832, 16.0) == (11.25, 10)  # 6 * 480 / 256; round(10.25)
    assert dynamic_params(6, 256, 512, 4.0) == (12.0, 2)  # fps 4 doubles the threshold; round(1.5) = 2
    assert dynamic_params(10, 256, 256, 8.0)[1] == 2  # round(2.5) = 2


def _flow(n, h, w, magnitude):
    """n flow fields whose every vector has the given length (3-4-5 direction)."""
    return torch.tensor([0.6, 0.8])[None, :, None, None].expand(n, 2, h, w) * magnitude


def test_top5_flow_magnitude():
    assert top5_flow_magnitude(torch.zeros(2, 2, 20, 20)).tolist() == [0.0, 0.0]
    assert top5_flow_magnitude(_flow(1, 20, 20, 5.0)).tolist() == pytest.approx([5.0])
    f = torch.zeros(2, 2, 20, 20)  # 400 pixels: the top 5 % are 20 of them
    f[0, 0].view(-1)[:20] = 10.0  # exactly 5 % move by 10
    f[1, 1].view(-1)[:10] = 10.0  # 2.5 % move by 10: half the top 5 %
    assert top5_flow_magnitude(f).tolist() == pytest.approx([10.0, 5.0])


@pytest.mark.parametrize(
    "moving,magnitude,expected",
    [(0, 0.0, False), (15, 6.0, False), (15, 6.01, True), (4, 6.5, True), (3, 6.5, False)],
)
def test_dynamic_rule_on_given_flow_fields(moving, magnitude, expected):
    thres, count_num = dynamic_params(16, 256, 256, 16.0)  # 6.0, 4
    flows = torch.cat([_flow(moving, 256, 256, magnitude), torch.zeros(15 - moving, 2, 256, 256)])
    assert is_dynamic(top5_flow_magnitude(flows).tolist(), thres, count_num) is expected


def test_dynamic_rule_edge_counts():
    thres, count_num = dynamic_params(2, 256, 256, 16.0)
    assert count_num == 0  # round(0.5) = 0: one pair, even a still one, counts as motion (VBench's loop)
    assert is_dynamic(top5_flow_magnitude(torch.zeros(1, 2, 256, 256)).tolist(), thres, count_num)
    assert not is_dynamic([], thres, count_num)  # a single frame has no pair


def test_pad_to_multiple_of_8():
    x = torch.rand(1, 3, 130, 129)
    y = pad_to_multiple_of_8(x)  # 6 rows: 3 + 3; 7 columns: 3 + 4
    assert y.shape == (1, 3, 136, 136)
    assert torch.equal(y[..., 3:133, 3:132], x)
    assert torch.equal(y[..., 0, 3:132], x[..., 0, :]) and torch.equal(y[..., 3:133, -1], x[..., :, -1])
    assert pad_to_multiple_of_8(torch.rand(1, 3, 128, 64)).shape == (1, 3, 128, 64)


# -------------------------------------------------------------------------------------------------- end to end
def test_cli_scores_two_videos_on_tiny_weights(tmp_path, cache):
    for i in range(2):  # 8 fps: every frame is kept for dynamic degree, one pair per video
        save_video(_frames(2, 128, 128, seed=10 + i), tmp_path / "videos" / f"clip{i}.mp4", fps=8)
    out = tmp_path / "out"
    rc = main(["vbench", str(tmp_path / "videos"), "--weights", str(cache), "--out", str(out), "--device", "cpu"])
    assert rc == 0
    result = json.loads((out / "vbench.json").read_text())
    assert result["dimensions"] == ["subject_consistency", "imaging_quality", "dynamic_degree"]
    rows = result["per_video"]
    assert [r["video"] for r in rows] == [str(tmp_path / "videos" / f"clip{i}.mp4") for i in range(2)]
    for r in rows:
        assert 0.0 <= r["subject_consistency"] <= 1.0 and math.isfinite(r["imaging_quality"])
        assert isinstance(r["dynamic_degree"], bool)
    overall = result["overall"]
    assert overall["dynamic_degree"] == sum(r["dynamic_degree"] for r in rows) / 2
    assert overall["imaging_quality"] == pytest.approx(sum(r["imaging_quality"] for r in rows) / 2)
    assert overall["subject_consistency"] == pytest.approx(sum(r["subject_consistency"] for r in rows) / 2)
    table = (out / "vbench.md").read_text()
    assert "| video | subject_consistency | imaging_quality | dynamic_degree |" in table
    assert table.count("clip") == 2 and "**overall**" in table


def test_cli_reports_bad_input(tmp_path, cache, capsys):
    args = ["vbench", str(tmp_path), "--weights", str(cache), "--out", str(tmp_path / "o")]
    assert main(args + ["--dimensions", "aesthetic_quality"]) == 1
    assert "unknown VBench dimension(s) ['aesthetic_quality']" in capsys.readouterr().err
    assert main(args) == 1
    assert "folder holds no video file" in capsys.readouterr().err
    assert main(["vbench", str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "o")]) == 1
    assert "missing.mp4: no such video file or folder" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("vbench") is not None, reason="vbench is installed here")
def test_official_backend_reports_an_interpreter_without_vbench(tmp_path, cache, capsys):
    save_video(_frames(2, 32, 32), tmp_path / "v.mp4", fps=8)
    args = ["vbench", str(tmp_path / "v.mp4"), "--weights", str(cache), "--out", str(tmp_path / "o")]
    assert main(args + ["--backend", "official"]) == 1
    assert "needs --vbench-python" in capsys.readouterr().err
    args += ["--backend", "official", "--vbench-python", sys.executable, "--dimensions", "imaging_quality"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "vbench is not importable" in err and "No module named 'vbench'" in err  # not our own vbench.py


def test_parse_official_results():
    raw = {
        "subject_consistency": [
            0.95,
            [
                {"video_path": "/t/00000.mp4", "video_results": 0.96},
                {"video_path": "/t/00001.mp4", "video_results": 0.94},
            ],
        ],
        "imaging_quality": [
            0.61,
            [
                {"video_path": "/t/00000.mp4", "video_results": 62.0},
                {"video_path": "/t/00001.mp4", "video_results": 60.0},
            ],
        ],
        "dynamic_degree": [
            0.5,
            [
                {"video_path": "/t/00000.mp4", "video_results": True},
                {"video_path": "/t/00001.mp4", "video_results": False},
            ],
        ],
    }
    names = {"00000.mp4": "a.mp4", "00001.mp4": "b.mp4"}
    r = parse_official_results(raw, names, ["dynamic_degree", "imaging_quality", "subject_consistency"])
    assert r["dimensions"] == ["subject_consistency", "imaging_quality", "dynamic_degree"]
    assert r["per_video"] == [
        {"video": "a.mp4", "subject_consistency": 0.96, "imaging_quality": 0.62, "dynamic_degree": True},
        {"video": "b.mp4", "subject_consistency": 0.94, "imaging_quality": 0.60, "dynamic_degree": False},
    ]
    assert r["overall"] == {"subject_consistency": 0.95, "imaging_quality": 0.61, "dynamic_degree": 0.5}
    with pytest.raises(ValueError, match="no 'dynamic_degree' entry"):
        parse_official_results(
            {k: raw[k] for k in ("subject_consistency",)}, names, ["subject_consistency", "dynamic_degree"]
        )


def test_evaluate_rejects_bad_requests(models):
    with pytest.raises(ValueError, match="no videos"):
        evaluate_vbench([], models)
    with pytest.raises(ValueError, match="video_0: dynamic_degree needs the frame rate"):
        evaluate_vbench([_frames(2, 128, 128)], models, dimensions=["dynamic_degree"])
    with pytest.raises(ValueError, match="video_0: subject_consistency needs at least 2 frames"):
        evaluate_vbench([_frames(1, 64, 64)], models, dimensions=["subject_consistency"], fps=8)
    with pytest.raises(ValueError, match="at least 128 pixels"):
        evaluate_vbench([_frames(2, 64, 64)], models, dimensions=["dynamic_degree"], fps=8)


def test_check_dimensions():
    assert check_dimensions(["dynamic_degree", "subject_consistency"]) == ["subject_consistency", "dynamic_degree"]
    with pytest.raises(ValueError, match="expected some of subject_consistency, imaging_quality, dynamic_degree"):
        check_dimensions([])
