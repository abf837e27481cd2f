"""``cac-align score`` on a tiny random CaC checkpoint: good files scored, a corrupted one reported, evidence rendered."""

from __future__ import annotations

import json

import pytest
import torch

from cac_align.cli import main
from cac_align.testing import build_tiny_cac
from cac_align.video import load_video, save_video


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny CaC checkpoint, two good videos (different sizes, lengths and rates) and a corrupted one."""
    root = tmp_path_factory.mktemp("score")
    model = build_tiny_cac(root / "cac", vocab="bytes", max_new_tokens=4)
    g = torch.Generator().manual_seed(0)
    a = save_video(torch.rand(20, 3, 48, 64, generator=g), root / "clips" / "a.mp4", 16)
    b = save_video(torch.rand(12, 3, 40, 72, generator=g), root / "other" / "b.mp4", 8)
    data = a.read_bytes()
    bad = root / "clips" / "bad.mp4"
    bad.write_bytes(data[: len(data) // 2])  # a download cut in half
    return model, a, b, bad


def test_score_reports_the_broken_file_and_scores_the_others(files, tmp_path, capsys):
    model, a, b, bad = files
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red ball\nnothing\na <blue> cube & a cone\n", encoding="utf-8")
    out = tmp_path / "evidence"
    argv = ["score", str(a), str(bad), str(b), "--model", str(model), "--json", "--render", str(out)]
    rc = main([*argv, "--prompts", str(prompts), "--batch-size", "3"])
    assert rc == 1
    lines = capsys.readouterr().out.splitlines()
    records = [json.loads(x) for x in lines]
    assert [r["video"] for r in records] == [str(a), str(bad), str(b)]
    good, broken = [records[0], records[2]], records[1]
    for r in good:
        assert r["ok"] and r["error"] is None
        assert 0.0 <= r["reward"] <= 1.0 and r["status"] in ("normal", "abnormal")
    assert not broken["ok"] and broken["reward"] is None
    assert str(bad) in broken["error"] and "not a readable video" in broken["error"]

    assert broken["render"] is None
    for r, src in zip(good, (a, b), strict=True):
        rendered = load_video(r["render"], None)
        source = load_video(src, None)
        assert rendered.frames.shape[0] == source.frames.shape[0]  # the whole video, every frame
        assert rendered.src_fps == pytest.approx(source.src_fps)
        assert rendered.frames.shape[2] > source.frames.shape[2]  # the timeline strip below the frames
    page = (out / "index.html").read_text(encoding="utf-8")
    for path in (a, b, bad):
        assert str(path) in page
    assert page.count("<video ") == 2 and 'src="a.mp4"' in page and 'src="b.mp4"' in page
    assert "a &lt;blue&gt; cube &amp; a cone" in page

    # the same files scored in one batch without the broken one give the same rewards (human-readable output)
    rc = main(["score", str(a), str(b), "--model", str(model), "--prompts", str(prompts.with_name("p2.txt"))])
    assert rc == 2  # a missing prompts file is refused before the model loads
    prompts.with_name("p2.txt").write_text("a red ball\na <blue> cube & a cone\n", encoding="utf-8")
    capsys.readouterr()
    rc = main(["score", str(a), str(b), "--model", str(model), "--prompts", str(prompts.with_name("p2.txt"))])
    assert rc == 0
    text = capsys.readouterr().out.splitlines()
    assert len(text) == 2
    for line, r in zip(text, good, strict=True):
        assert line.startswith(f"{r['video']}  reward ")
        assert float(line.split()[2]) == pytest.approx(r["reward"], abs=2e-4)
        assert r["status"] in line.split()


def test_score_refuses_a_prompt_file_of_the_wrong_length(files, tmp_path, capsys):
    model, a, b, _ = files
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("only one\n", encoding="utf-8")
    assert main(["score", str(a), str(b), "--model", str(model), "--prompts", str(prompts)]) == 2
    assert "expected 2 lines" in capsys.readouterr().err


def test_score_human_readable_failure_line(files, capsys):
    model, _, _, bad = files
    missing = bad.with_name("missing.mp4")
    assert main(["score", str(bad), str(missing), "--model", str(model)]) == 1
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert lines[0].startswith(f"{bad}  FAILED  {bad}: not a readable video")
    assert lines[1] == f"{missing}  FAILED  {missing}: no such video file"
    assert "2 of 2 files failed" in out.err
