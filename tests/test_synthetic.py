"""The synthetic anomaly world: determinism, balance, coverage, exact windows and tight boxes, CLI and resume."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from cac_align.cli import main
from cac_align.data.difficulty import HARD_SPLITS, hard_split
from cac_align.data.synthetic import (
    GLITCH_RGB,
    KINDS,
    OPT_IN_KINDS,
    generate,
    make_defect,
    measure_defect,
    pixel_box_to_qwen,
    render,
    render_frames,
    sample_scene,
    sample_video,
    sample_window,
    summarize,
    targets_for,
)
from cac_align.schema import TAXONOMY, read_manifest, resolve_video
from cac_align.video import load_video

SMALL = {"size": (96, 64), "seconds": 4.0, "fps": 8.0}  # 32 source frames, 16 frames at 4 fps


def _slot(k: int, fps: float) -> int:
    """The 4 fps frame whose time span holds source frame k (fps is a multiple of 4)."""
    return k // round(fps / 4)


def decode_video(path) -> tuple[np.ndarray, float]:
    """Every frame of a file as uint8 [F, H, W, 3] and its frame rate."""
    s = load_video(path, None)
    return s.frames.mul(255).round().permute(0, 2, 3, 1).to(torch.uint8).numpy(), s.src_fps


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a != b).any(-1)


def _check_exact(scene, defect, span) -> None:
    """The defect changes exactly the source frames of its window; each box is tight on the changed pixels."""
    s, e = span.frames
    assert (s, e) == defect.window
    clean = render_frames(scene)
    for k in range(scene.num_frames):
        changed = _changed(render(scene, k / scene.fps, (defect,)), clean[k]).any()
        assert changed == (s <= _slot(k, scene.fps) <= e), (defect.kind, k, span.frames)
    assert sorted(span.bboxes) == list(range(s, e + 1))
    w, h = scene.width, scene.height
    for j, boxes in span.bboxes.items():
        mask = _changed(render(scene, j / 4, (defect,)), render(scene, j / 4))
        covered = np.zeros_like(mask)
        for x1, y1, x2, y2 in boxes:
            gx0, gy0, gx1, gy1 = x1 * w / 1000, y1 * h / 1000, x2 * w / 1000, y2 * h / 1000
            c0, c1 = int(np.floor(gx0 + 1e-9)), int(np.ceil(gx1 - 1e-9))
            r0, r1 = int(np.floor(gy0 + 1e-9)), int(np.ceil(gy1 - 1e-9))
            covered[r0:r1, c0:c1] = True
            ys, xs = np.nonzero(mask[r0:r1, c0:c1])
            assert len(xs), f"{defect.kind}: box {[x1, y1, x2, y2]} on frame {j} covers no changed pixel"
            px0, px1, py0, py1 = c0 + xs.min(), c0 + xs.max() + 1, r0 + ys.min(), r0 + ys.max() + 1
            # tight: every box edge lies within one pixel of the changed pixels' bounding box
            assert gx0 <= px0 + 1e-9 and px1 <= gx1 + 1e-9 and gy0 <= py0 + 1e-9 and py1 <= gy1 + 1e-9
            assert px0 - gx0 < 1 and gx1 - px1 < 1 and py0 - gy0 < 1 and gy1 - py1 < 1, (defect.kind, j)
        assert not (mask & ~covered).any(), f"{defect.kind}: changed pixels outside the boxes on frame {j}"


def test_same_seed_same_world_and_frames(tmp_path):
    kw = {"num_videos": 4, "seed": 3, "size": (64, 48), "seconds": 2.0, "fps": 8.0, "progress": False}
    m1 = generate(tmp_path / "a", **kw)
    m2 = generate(tmp_path / "b", **kw)
    m3 = generate(tmp_path / "c", **{**kw, "seed": 4})
    assert m1.read_text() == m2.read_text()
    assert m1.read_text() != m3.read_text()
    anns = read_manifest(m1)
    assert len(anns) == 4 and len(read_manifest(m3)) == 4
    for a in anns:
        f1, fps1 = decode_video(resolve_video(a, m1))
        f2, _ = decode_video(resolve_video(a, m2))
        assert fps1 == 8.0 and f1.shape == (16, 48, 64, 3)
        assert np.array_equal(f1, f2)
    f3, _ = decode_video(resolve_video(read_manifest(m3)[0], m3))
    assert not np.array_equal(decode_video(resolve_video(anns[0], m1))[0], f3)


def test_half_normal_in_pairs():
    statuses = [sample_video(11, i, (48, 40), 1.0, 4.0).annotation.status for i in range(40)]
    assert Counter(statuses) == {"normal": 20, "abnormal": 20}
    assert all({statuses[i], statuses[i + 1]} == {"normal", "abnormal"} for i in range(0, 40, 2))


def test_categories_splits_and_saliency_all_occur():
    cats, splits, sal = Counter(), Counter(), Counter()
    for i in range(60):
        a = sample_video(0, i, **SMALL).annotation
        cats.update(s.label for s in a.anomalies)
        sal.update(s.saliency for s in a.anomalies)
        if a.is_abnormal:
            splits[hard_split(a)] += 1
            assert a.anomalies and a.prompt and a.video == f"videos/{i:06d}.mp4"
        else:
            assert a.anomalies == []
    assert set(cats) == set(TAXONOMY), cats
    assert set(splits) == set(HARD_SPLITS), splits
    assert set(sal) == {"salient", "non-salient"}, sal


@pytest.mark.parametrize("index", range(0, 12))
def test_sampled_ground_truth_is_exact(index):
    video = sample_video(5, index, **SMALL)
    a = video.annotation
    assert len(video.defects) == len(a.anomalies)
    assert (a.status == "normal") == (video.defects == ())
    for defect, span in zip(video.defects, a.anomalies, strict=True):
        assert span.label == defect.label and span.reason and span.region
        _check_exact(video.scene, defect, span)


def test_every_kind_has_exact_ground_truth():
    """Each defect kind, placed on some scene, changes exactly its window and gets tight boxes."""
    todo = {(label, kind) for label, kinds in KINDS.items() for kind in kinds}
    for i in range(80):
        if not todo:
            break
        rng = np.random.default_rng([99, i])
        scene = sample_scene(rng, SMALL["size"], SMALL["seconds"], SMALL["fps"])
        for label, kind in sorted(todo):
            targets = targets_for(scene, label, kind)
            if not targets:
                continue
            window = sample_window(rng, scene, kind, targets[0], long=bool(i % 2))
            if window is None:
                continue
            defect = make_defect(rng, scene, label, kind, targets[0], window, big=bool(i % 3 == 0))
            measured = measure_defect(scene, defect)
            if measured is None:  # e.g. hidden behind another entity; the sampler re-draws these
                continue
            _check_exact(scene, defect, measured[0])
            todo.discard((label, kind))
    assert not todo, f"kinds never placed: {sorted(todo)}"


def test_written_videos_match_their_renders(tmp_path):
    kw = {"num_videos": 4, "seed": 8, "size": (64, 48), "seconds": 2.0, "fps": 8.0}
    manifest = generate(tmp_path / "w", progress=False, **kw)
    anns = read_manifest(manifest)
    assert {a.status for a in anns} == {"normal", "abnormal"}
    for i, a in enumerate(anns):
        video = sample_video(8, i, (64, 48), 2.0, 8.0)
        assert video.annotation.to_dict() == a.to_dict()
        decoded = decode_video(resolve_video(a, manifest))[0].astype(np.float64)
        clean = render_frames(video.scene).astype(np.float64)
        dirty = render_frames(video.scene, video.defects).astype(np.float64)
        assert (video.defects == ()) == (a.status == "normal")
        # the file holds the rendered frames, up to H.264 loss (the speckled ground costs a few levels)
        assert np.abs(decoded - dirty).mean(axis=(1, 2, 3)).max() < 8.0
        for span in a.anomalies:  # ... and inside the boxes it shows the defect, not the clean scene
            for j, boxes in span.bboxes.items():
                k = j * 2  # source frame at time j / 4 (8 fps)
                region = np.zeros((48, 64), dtype=bool)
                for x1, y1, x2, y2 in boxes:
                    region[y1 * 48 // 1000 : -(-y2 * 48 // 1000), x1 * 64 // 1000 : -(-x2 * 64 // 1000)] = True
                to_dirty = np.abs(decoded[k] - dirty[k])[region].mean()
                to_clean = np.abs(decoded[k] - clean[k])[region].mean()
                assert to_dirty < to_clean, (span.label, j)


def test_cli_resume_and_mismatch(tmp_path, capsys):
    out = tmp_path / "world"
    args = ["synth", str(out), "--num-videos", "3", "--seed", "2", "--size", "64x48", "--seconds", "1", "--fps", "8"]
    assert main(args) == 0
    assert "3 videos" in capsys.readouterr().out
    world = json.loads((out / "world.json").read_text())
    assert world["seed"] == 2 and world["size"] == [64, 48] and world["num_videos"] == 3
    first = read_manifest(out / "manifest.jsonl")
    videos = sorted((out / "videos").glob("*.mp4"))
    assert [v.name for v in videos] == ["000000.mp4", "000001.mp4", "000002.mp4"]
    videos[1].write_bytes(b"kept")  # a file that is on disk is not rendered again
    stamps = {v.name: v.stat().st_mtime_ns for v in videos}

    args[3] = "5"
    assert main(args) == 0
    assert "5 videos" in capsys.readouterr().out
    assert videos[1].read_bytes() == b"kept"
    assert {v.name: v.stat().st_mtime_ns for v in videos} == stamps
    assert (out / "videos" / "000004.mp4").is_file()
    again = read_manifest(out / "manifest.jsonl")
    assert [a.to_dict() for a in again[:3]] == [a.to_dict() for a in first]
    assert not list(out.rglob("*.tmp*"))

    with pytest.raises(ValueError, match="seed"):
        generate(out, num_videos=5, seed=3, size=(64, 48), seconds=1.0, fps=8.0, progress=False)


def test_summary_and_argument_checks(tmp_path):
    manifest = generate(tmp_path / "w", num_videos=2, seed=1, size=(48, 40), seconds=1.0, fps=4.0, progress=False)
    text = summarize(manifest)
    assert "2 videos, 1 normal, 1 abnormal" in text
    assert all(c in text for c in TAXONOMY) and all(s in text for s in HARD_SPLITS)
    with pytest.raises(ValueError, match="multiple of 4"):
        sample_video(0, 0, (64, 48), 2.0, 10.0)
    with pytest.raises(ValueError, match="whole number of frames"):
        sample_video(0, 0, (64, 48), 1.1, 8.0)


def test_kinds_restrict_the_anomalies_and_leave_the_default_world_alone(tmp_path):
    size, seconds, fps = (96, 64), 2.0, 8.0
    full = [sample_video(4, i, size, seconds, fps) for i in range(12)]
    same = [sample_video(4, i, size, seconds, fps, kinds=None) for i in range(12)]
    assert [v.annotation.to_dict() for v in full] == [v.annotation.to_dict() for v in same]

    for kinds in (["flicker"], ["melt", "change"]):
        videos = [sample_video(4, i, size, seconds, fps, kinds=kinds) for i in range(12)]
        statuses = [v.annotation.status for v in videos]
        assert statuses == [v.annotation.status for v in full]  # the same normal/abnormal pairs
        used = {d.kind for v in videos for d in v.defects}
        assert used and used <= set(kinds)
        assert all(v.annotation.meta["kinds"] == [d.kind for d in v.defects] for v in videos)
        for v in videos:
            if v.annotation.is_abnormal:
                a = v.annotation.anomalies[0]
                frames = render_frames(v.scene, v.defects)
                clean = render_frames(v.scene)
                k = int(a.frames[0] * fps / 4)
                assert (frames[k] != clean[k]).any()  # measured, as in the default world

    with pytest.raises(ValueError, match="unknown defect kinds.*'wobble'"):
        sample_video(4, 1, size, seconds, fps, kinds=["flicker", "wobble"])
    out = tmp_path / "flicker"
    assert (
        main(["synth", str(out), "--num-videos", "2", "--size", "64x48", "--seconds", "1", "--kinds", "flicker"]) == 0
    )
    assert json.loads((out / "world.json").read_text())["kinds"] == ["flicker"]
    assert {k for a in read_manifest(out / "manifest.jsonl") for k in a.meta["kinds"]} == {"flicker"}
    with pytest.raises(ValueError, match="kinds"):
        generate(out, num_videos=2, size=(64, 48), seconds=1.0, progress=False)


def test_glitch_is_opt_in_and_shows_its_magenta_cells_inside_the_box():
    """``glitch`` is drawn only where named (the default world cannot change), and then shows in single frames."""
    size, seconds, fps = (96, 64), 2.0, 8.0
    assert OPT_IN_KINDS == {"glitch"} and "glitch" in KINDS["Object Distortion"]
    default = [sample_video(6, i, size, seconds, fps) for i in range(60)]
    assert "Object Distortion" in {s.label for v in default for s in v.annotation.anomalies}
    assert all(d.kind not in OPT_IN_KINDS for v in default for d in v.defects)
    videos = [sample_video(6, i, size, seconds, fps, kinds=["glitch"], salient=True) for i in range(8)]
    pairs = [(v, d, s) for v in videos for d, s in zip(v.defects, v.annotation.anomalies, strict=True)]
    assert pairs and all(
        v.annotation.meta["kinds"] and set(v.annotation.meta["kinds"]) == {"glitch"} for v, *_ in pairs
    )
    for v, defect, span in pairs:
        assert span.label == "Object Distortion" and "checkerboard" in span.reason
        j = span.frames[0]
        k = j * round(fps / 4)
        magenta = (render(v.scene, k / fps, (defect,)) == GLITCH_RGB).all(-1)
        assert magenta.sum() >= 4 and not (render(v.scene, k / fps) == GLITCH_RGB).all(-1).any()
        ys, xs = np.nonzero(magenta)
        x0, y0, x1, y1 = pixel_box_to_qwen((xs.min(), ys.min(), xs.max(), ys.max()), *size)
        (b,) = span.bboxes[j]  # the cells lie inside the measured box of the change
        assert b[0] <= x0 and b[1] <= y0 and x1 <= b[2] and y1 <= b[3], (b, (x0, y0, x1, y1))


def test_salient_world_makes_every_anomaly_large_and_strong_on_the_same_scenes(tmp_path):
    size, seconds, fps = (96, 64), 2.0, 8.0
    plain = [sample_video(5, i, size, seconds, fps, kinds=["flicker"]) for i in range(16)]
    bold = [sample_video(5, i, size, seconds, fps, kinds=["flicker"], salient=True) for i in range(16)]
    assert [v.annotation.status for v in bold] == [v.annotation.status for v in plain]
    assert [v.annotation.prompt for v in bold] == [v.annotation.prompt for v in plain]  # the same scenes
    flickers = [d for v in bold for d in v.defects]
    assert flickers and all(d.kind == "flicker" and not d.params["subtle"] for d in flickers)
    assert any(d.params["subtle"] for v in plain for d in v.defects)  # the plain world has subtle ones
    # large: the biggest entity's defect where the scene offers a choice, so the boxes are not smaller on average
    area = [
        sum((b[2] - b[0]) * (b[3] - b[1]) for bs in a.bboxes.values() for b in bs) / len(a.bboxes)
        for v in bold
        for a in v.annotation.anomalies
    ]
    area0 = [
        sum((b[2] - b[0]) * (b[3] - b[1]) for bs in a.bboxes.values() for b in bs) / len(a.bboxes)
        for v in plain
        for a in v.annotation.anomalies
    ]
    assert sum(area) / len(area) >= sum(area0) / len(area0)
    out = tmp_path / "salient"
    args = ["synth", str(out), "--num-videos", "2", "--size", "64x48", "--seconds", "1", "--kinds", "flicker"]
    assert main([*args, "--salient"]) == 0
    assert json.loads((out / "world.json").read_text())["salient"] is True
    with pytest.raises(ValueError, match="salient"):  # a resumed world cannot change its salience
        main(args)
