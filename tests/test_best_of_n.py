"""generators/best_of_n.py on a tiny Wan with pixel rewards: selection, manifest, resume after a crash, 2-process sharding."""

from __future__ import annotations

import json
import math
import os
import runpy
from pathlib import Path

import pytest

from cac_align.generators.tiny import build_tiny_wan
from cac_align.testing_dist import run_distributed
from cac_align.utils import read_jsonl

RECIPE = Path(__file__).resolve().parents[1] / "generators" / "best_of_n.py"
TINY = Path(__file__).resolve().parents[1] / "generators" / "configs" / "tiny" / "best_of_n.yaml"
PROMPTS = ["a red fox runs", "two people shake hands", "a glass falls", "a dog swims"]
# two components with different normalisations; brightness has twice the weight
REWARD = "reward.components={brightness: {weight: 2.0, norm: group}, color: {weight: 1.0, norm: none}}"


def _recipe() -> dict:
    return runpy.run_path(str(RECIPE), run_name="best_of_n")


def _argv(out: Path, prompts: Path, model: str | Path, *extra: str) -> list[str]:
    return ["--config", str(TINY), f"output_dir={out}", f"prompts={prompts}", f"model.path={model}", REWARD, *extra]


@pytest.fixture(scope="module")
def tiny_wan(tmp_path_factory) -> Path:
    return build_tiny_wan(tmp_path_factory.mktemp("wan") / "tiny")


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS[:3]) + "\n\n")
    return path


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, prompts_file) -> Path:
    """One uninterrupted single-process run (model.path=tiny: the recipe builds the tiny Wan itself)."""
    out = tmp_path_factory.mktemp("bon") / "run"
    _recipe()["main"](_argv(out, prompts_file, "tiny"))
    return out


def test_picks_the_argmax_of_the_mixed_score_and_records_every_component(reference_run):
    records = read_jsonl(reference_run / "manifest.jsonl")
    assert [r["index"] for r in records] == [0, 1, 2]
    assert [r["prompt"] for r in records] == PROMPTS[:3]
    seeds = [c["seed"] for r in records for c in r["candidates"]]
    assert len(set(seeds)) == len(seeds) == 9
    for r in records:
        cands = r["candidates"]
        assert len(cands) == 3
        raw = [c["components"]["brightness"]["raw"] for c in cands]
        mean = sum(raw) / 3
        std = math.sqrt(sum((x - mean) ** 2 for x in raw) / 3)
        for c, x in zip(cands, raw, strict=True):
            parts = c["components"]
            # group z-score within the prompt's candidates; "none" keeps the raw score; weighted average of the two
            assert parts["brightness"]["normalized"] == pytest.approx((x - mean) / std, abs=1e-6)
            assert parts["color"]["normalized"] == parts["color"]["raw"]
            expected = (2.0 * parts["brightness"]["normalized"] + 1.0 * parts["color"]["normalized"]) / 3.0
            assert c["total"] == pytest.approx(expected)
        totals = [c["total"] for c in cands]
        assert r["best"] == totals.index(max(totals))
        assert r["best_total"] == max(totals)
        winner = reference_run / cands[r["best"]]["video"]
        assert (reference_run / r["best_video"]).read_bytes() == winner.read_bytes()
        assert json.loads((reference_run / "records" / f"{r['index']:06d}.json").read_text()) == r
    assert (reference_run / "tiny_wan" / "model_index.json").is_file()


def test_resume_skips_done_prompts_and_redoes_an_interrupted_one(tmp_path, tiny_wan, prompts_file, reference_run):
    out = tmp_path / "run"
    recipe = _recipe()
    real_save = recipe["main"].__globals__["save_video"]
    calls = []

    def crashing_save(frames, path, fps):
        calls.append(Path(path))
        if len(calls) == 5:  # prompt 1, candidate 1: leave a torn file where the video goes, then die
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_bytes(b"\x00\x00\x00 ftypisom half-written")
            raise KeyboardInterrupt("killed")
        return real_save(frames, path, fps)

    recipe["main"].__globals__["save_video"] = crashing_save
    with pytest.raises(KeyboardInterrupt):
        recipe["main"](_argv(out, prompts_file, tiny_wan))
    assert sorted(p.name for p in (out / "records").iterdir()) == ["000000.json"]
    assert not (out / "manifest.jsonl").exists()
    done = {p: p.stat().st_mtime_ns for p in (out / "candidates" / "000000").iterdir()}

    with pytest.raises(FileExistsError, match="resume=true"):
        _recipe()["main"](_argv(out, prompts_file, tiny_wan))
    resumed = _recipe()
    generated = []
    real_generate = resumed["main"].__globals__["generate"]
    resumed["main"].__globals__["generate"] = lambda pipe, prompt, *a: (
        generated.append(prompt) or real_generate(pipe, prompt, *a)
    )
    resumed["main"](_argv(out, prompts_file, tiny_wan, "resume=true"))
    assert generated == PROMPTS[1:3]  # prompt 0 was done; prompt 1 had no record, so it counts as not done
    assert {p: p.stat().st_mtime_ns for p in (out / "candidates" / "000000").iterdir()} == done
    # the resumed run ends where an uninterrupted run ends (the torn file was rewritten)
    got, want = read_jsonl(out / "manifest.jsonl"), read_jsonl(reference_run / "manifest.jsonl")
    assert [r["best"] for r in got] == [r["best"] for r in want]
    for g, w in zip(got, want, strict=True):
        assert [c["total"] for c in g["candidates"]] == pytest.approx([c["total"] for c in w["candidates"]], abs=1e-6)

    other = tmp_path / "other.txt"
    other.write_text("something else\n" + "\n".join(PROMPTS[1:3]))
    with pytest.raises(ValueError, match="prompts file changed"):
        _recipe()["main"](_argv(out, other, tiny_wan, "resume=true"))


def test_a_deleted_video_makes_its_prompt_not_done(tmp_path, tiny_wan, prompts_file):
    out = tmp_path / "run"
    _recipe()["main"](_argv(out, prompts_file, tiny_wan))
    (out / "candidates" / "000002" / "1.mp4").unlink()
    recipe = _recipe()
    generated = []
    real_generate = recipe["main"].__globals__["generate"]
    recipe["main"].__globals__["generate"] = lambda pipe, prompt, *a: (
        generated.append(prompt) or real_generate(pipe, prompt, *a)
    )
    recipe["main"](_argv(out, prompts_file, tiny_wan, "resume=true"))
    assert generated == [PROMPTS[2]]
    assert (out / "candidates" / "000002" / "1.mp4").is_file()


def _shard_worker(rank: int, world_size: int, argv: list[str]) -> list[int]:
    os.environ["ACCELERATE_USE_CPU"] = "true"  # what `accelerate launch --cpu` sets
    recipe = runpy.run_path(str(RECIPE), run_name="best_of_n")
    seen: list[int] = []
    real_write = recipe["main"].__globals__["write_prompt"]

    def recording_write(output_dir, index, *args):
        seen.append(index)
        return real_write(output_dir, index, *args)

    recipe["main"].__globals__["write_prompt"] = recording_write
    recipe["main"](argv)
    return seen


def test_two_processes_cover_every_prompt_exactly_once(tmp_path, tiny_wan):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "id": i}) + "\n" for i, p in enumerate(PROMPTS)))
    out = tmp_path / "run"
    seen = run_distributed(_shard_worker, world_size=2, args=(_argv(out, prompts, tiny_wan),), timeout=300)
    assert sorted(seen[0] + seen[1]) == [0, 1, 2, 3]
    assert not set(seen[0]) & set(seen[1])
    records = read_jsonl(out / "manifest.jsonl")
    assert [r["prompt"] for r in records] == PROMPTS
    assert all(r["best"] is not None for r in records)


def test_prompts_file_errors_name_the_line(tmp_path):
    read_prompts = _recipe()["read_prompts"]
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    with pytest.raises(ValueError, match=r"p\.jsonl:2: prompt"):
        read_prompts(bad)
    with pytest.raises(ValueError, match="no prompts"):
        (tmp_path / "e.txt").write_text("\n \n")
        read_prompts(tmp_path / "e.txt")


def test_a_reward_served_over_http_gives_the_same_selection(tmp_path, tiny_wan, prompts_file, reference_run):
    from cac_align.reward.simple import Brightness
    from cac_align.serve import HTTPService, RewardEndpoint

    out = tmp_path / "run"
    with HTTPService(RewardEndpoint(Brightness()).routes(), port=0) as service:
        brightness = f"{{weight: 2.0, norm: group, url: '{service.url}', settings: {{dtype: float32}}}}"
        remote = f"reward.components={{brightness: {brightness}, color: {{weight: 1.0, norm: none}}}}"
        _recipe()["main"](_argv(out, prompts_file, tiny_wan, remote))
    got, want = read_jsonl(out / "manifest.jsonl"), read_jsonl(reference_run / "manifest.jsonl")
    assert [r["best"] for r in got] == [r["best"] for r in want]
    for g, w in zip(got, want, strict=True):
        assert [c["total"] for c in g["candidates"]] == pytest.approx([c["total"] for c in w["candidates"]], abs=1e-6)
