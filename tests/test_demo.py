"""``cac-align demo``: the report writer on hand-made step records and real files (links, escaping, the plain
statement about meaningless scores, the real-scale commands), the Markdown subset it renders, resuming from step
records, and (slow) the whole demo end to end."""

import html
import json
import re
from pathlib import Path
from urllib.parse import unquote

import pytest
import torch

from cac_align import demo
from cac_align.cli import main as cli_main
from cac_align.utils import append_jsonl, atomic_write_json
from cac_align.video import save_video


def _mp4(path: Path, seed: int) -> str:
    g = torch.Generator().manual_seed(seed)
    save_video(torch.rand(4, 3, 16, 16, generator=g), path, fps=8)
    return path.name


def _metrics(path: Path, key: str, values: list[float]) -> None:
    for step, v in enumerate(values, 1):
        append_jsonl(path, {"step": step, key: v, "other": float("nan")})


@pytest.fixture
def demo_folder(tmp_path):
    """A demo folder with real videos, metrics, a plot and a tables.md, and the step records pointing at them."""
    out = tmp_path / "demo"
    (out / "videos").mkdir(parents=True)
    base, best, after, ev = (f"videos/{_mp4(out / 'videos' / f'{n}.mp4', k)}" for k, n in enumerate("abcd"))
    _metrics(out / "stage1" / "metrics.jsonl", "train/loss", [3.0, 2.0, 1.5])
    plot = demo.plot_metrics(out / "stage1" / "metrics.jsonl", ["train/loss", "never"], out / "plots" / "s1.png", "s1")
    (out / "bench").mkdir()
    (out / "bench" / "tables.md").write_text(
        "# Bench <b>x</b>\n\nSome `code` and *em*.\n\n| Model | Acc. |\n| --- | --- |\n| run | 0.500 |\n| paper | 0.817 |\n"
    )
    (out / "evidence").mkdir()
    (out / "evidence" / "index.html").write_text("<html></html>")
    records = {
        "data": {
            "manifest": "videos/a.mp4",
            "bench_manifest": "videos/b.mp4",
            "splits": {"stage1": "videos/c.mp4"},
            "split_counts": {"stage1": {"anomalous": 2, "normal": 2}},
            "summary": "4 videos <script>alert(1)</script>",
            "seconds": 3.0,
        },
        "stage1": {
            "final": "stage1",
            "command": "python reward/stage1_warmup.py --config x.yaml",
            "plot": demo.rel(plot, out),
            "last": demo.last_metrics(out / "stage1" / "metrics.jsonl", ["train/loss", "other"]),
            "log": "stage1/metrics.jsonl",
            "seconds": 12.0,
        },
        "evidence": {
            "page": "evidence/index.html",
            "mode": "two-turn",
            "videos": [{"video": ev, "truth": "abnormal", "status": "normal", "reward": 0.56, "labels": []}],
            "seconds": 2.0,
        },
        "best_of_n": {
            "command": "python generators/best_of_n.py --config c.yaml",
            "prompts": [
                {
                    "prompt": "a <fox> & a hound",
                    "best": 1,
                    "winner": best,
                    "base": base,
                    "candidates": [
                        {"video": base, "total": -1.0, "raw": {"unified": 3.0, "cac": 0.4}},
                        {"video": best, "total": 1.0, "raw": {"unified": 3.5, "cac": None}},
                    ],
                }
            ],
            "seconds": 5.0,
        },
        "flow_grpo": {
            "command": "python generators/flow_grpo.py",
            "eval_command": "python generators/best_of_n.py",
            "lora": "stage1",
            "plot": None,
            "videos": [after],
            "last": {},
            "seconds": 7.0,
        },
        "bench": {"tables": "bench/tables.md", "charts": [demo.rel(plot, out)], "accuracy": 0.5, "seconds": 1.0},
    }
    return out, records


def _links(page: str) -> list[str]:
    return [unquote(h) for h in re.findall(r'(?:href|src)="([^"#]+)"', page)]


def test_report_links_existing_files_escapes_text_and_states_meaninglessness(demo_folder):
    out, records = demo_folder
    path = demo.write_demo_report(out, records)
    page = path.read_text(encoding="utf-8")
    assert path == out / "report.html"
    links = _links(page)
    assert links, "the report links nothing"
    for link in links:
        assert not Path(link).is_absolute()
        assert (out / link).exists(), link
    for v in ("videos/a.mp4", "videos/b.mp4", "videos/c.mp4", "videos/d.mp4"):
        assert v in links
    assert "evidence/index.html" in links and "plots/s1.png" in links
    # the plain statement, and the real-scale command of every stage
    assert html.escape(demo.MEANINGLESS) in page
    for _, command in demo.REAL_SCALE:
        assert html.escape(command) in page
    # user text is escaped, never markup
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "a &lt;fox&gt; &amp; a hound" in page
    # the winner is marked, a None score shows as n/a, steps not run say so
    assert "(winner)" in page and "cac n/a" in page
    assert page.count("not run") >= 3  # stage2, stage3, vbench (+ the pipeline table)
    # the bench tables.md is rendered as a table with its two rows, the heading text escaped
    assert "<td>run</td><td>0.500</td>" in page and "<td>paper</td><td>0.817</td>" in page
    assert "Bench &lt;b&gt;x&lt;/b&gt;" in page


def test_metrics_helpers_skip_nan_and_missing_keys(demo_folder):
    out, records = demo_folder
    assert records["stage1"]["last"] == {"train/loss": 1.5}
    assert demo.plot_metrics(out / "stage1" / "metrics.jsonl", ["never"], out / "none.png", "t") is None
    assert demo.plot_metrics(out / "missing.jsonl", ["train/loss"], out / "none.png", "t") is None
    assert not (out / "none.png").exists()
    assert (out / "plots" / "s1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_markdown_subset():
    text = "# T\n\npara one\ncontinues `c` **b**\n\n| a | b |\n|---|:-:|\n| 1 | 2 |\n\n## Sub\n"
    got = demo.markdown_to_html(text)
    assert got.splitlines() == [
        "<h3>T</h3>",
        "<p>para one continues <code>c</code> <b>b</b></p>",
        "<table><tr><th>a</th><th>b</th></tr><tr><td>1</td><td>2</td></tr></table>",
        "<h4>Sub</h4>",
    ]


def test_run_demo_resumes_from_step_records_and_rewrites_the_report(demo_folder):
    out, records = demo_folder
    records["stage2"] = dict(records["stage1"])
    records["stage3"] = dict(records["stage1"])
    records["vbench"] = {
        "dimensions": ["subject_consistency"],
        "groups": {"Base": {"videos": ["videos/a.mp4"], "overall": {"subject_consistency": 0.9}, "folder": "videos"}},
        "seconds": 4.0,
    }
    for name, record in records.items():
        atomic_write_json(out / "steps" / f"{name}.json", record)
    lines: list[str] = []
    page = demo.run_demo(out, log=lines.append)
    skipped = [line for line in lines if "skipped" in line]
    assert len(skipped) == len(demo.STEPS) - 1  # every step but the report, which is always rewritten
    assert page == out / "report.html" and "0.900" in page.read_text(encoding="utf-8")
    assert json.loads((out / "steps" / "report.json").read_text())["page"] == "report.html"


def test_the_recipes_are_found_in_this_checkout():
    root = demo.find_checkout()
    assert (root / "reward" / "stage3_grpo.py").is_file()
    assert (root / "generators" / "flow_grpo.py").is_file()


def test_demo_refuses_too_few_videos(tmp_path, capsys):
    assert cli_main(["demo", str(tmp_path / "d"), "--num-videos", "4"]) == 2
    assert "--num-videos" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    """The whole demo on CPU (minutes): every step recorded, the trained CaC loads, every report link exists."""
    from cac_align.reward.cac import CaCReward

    out = tmp_path / "demo"
    assert cli_main(["demo", str(out)]) == 0
    for name in demo.STEPS:
        assert (out / "steps" / f"{name}.json").is_file(), name
    bon = json.loads((out / "steps" / "best_of_n.json").read_text())
    assert len(bon["prompts"]) == len(demo.DEMO_PROMPTS)
    assert all(len(p["candidates"]) == demo.NUM_CANDIDATES for p in bon["prompts"])
    vb = json.loads((out / "steps" / "vbench.json").read_text())
    assert len(vb["groups"]) == 3 and all(set(g["overall"]) == set(vb["dimensions"]) for g in vb["groups"].values())
    reward = CaCReward.from_pretrained(out / "reward" / "stage3" / "final")
    assert 0.0 <= reward([out / bon["prompts"][0]["winner"]], [demo.DEMO_PROMPTS[0]])[0] <= 1.0
    page = (out / "report.html").read_text(encoding="utf-8")
    for link in _links(page):
        assert (out / link).exists(), link
    # a second run finds every step done
    assert cli_main(["demo", str(out)]) == 0
