"""Config mechanism: dataclass schema + YAML preset + dotted overrides, with errors that name the key."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from cac_align.config import ConfigError, config_to_dict, format_help, load_config, save_config


@dataclass
class OptimConfig:
    """Optimizer settings."""

    # Peak learning rate of AdamW.
    lr: float = 1e-4
    # Number of optimizer steps.
    steps: int = 100
    # How advantages are scaled.
    scale: Literal["group", "none"] = "group"


@dataclass
class LoraConfig:
    # LoRA rank.
    r: int = 8
    # Names of the linear layers that get adapters.
    targets: list[str] = field(default_factory=lambda: ["q_proj"])


@dataclass
class RecipeConfig:
    """Demo recipe config."""

    # Manifest of training videos.
    manifest: Path
    # Optimizer section.
    optim: OptimConfig = field(default_factory=OptimConfig)
    # LoRA adapters; null trains all weights.
    lora: LoraConfig | None = None
    # Continue from the latest checkpoint.
    resume: bool = False
    run_name: str = "demo"  # folder name of the run
    # Reward weights by name.
    rewards: dict[str, float] = field(default_factory=lambda: {"cac": 1.0, "aesthetic": 0.5})
    # Output size (height, width).
    size: tuple[int, int] = (480, 832)
    # Checkpoint to start from.
    init_from: str | None = None


def _yaml(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "preset.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_defaults_preset_then_overrides(tmp_path):
    preset = _yaml(
        tmp_path,
        "manifest: data/train.jsonl\noptim:\n  lr: 1e-5   # YAML 1.1 reads this as a string\n  steps: 7\n"
        "lora:\n  r: 16\n",
    )
    cfg = load_config(
        RecipeConfig,
        ["--config", str(preset), "optim.lr=3e-6", "lora.targets=[q_proj,v_proj]", "resume=true", "size=[240, 416]"],
    )
    assert cfg.manifest == Path("data/train.jsonl")
    assert cfg.optim == OptimConfig(lr=3e-6, steps=7, scale="group")
    assert cfg.lora == LoraConfig(r=16, targets=["q_proj", "v_proj"])
    assert cfg.resume is True
    assert cfg.size == (240, 416)
    assert cfg.run_name == "demo" and cfg.init_from is None


def test_preset_float_written_with_exponent(tmp_path):
    preset = _yaml(tmp_path, "manifest: m.jsonl\noptim:\n  lr: 1e-5\n")
    assert load_config(RecipeConfig, [f"--config={preset}"]).optim.lr == 1e-5


def test_optional_null_and_text_fields(tmp_path):
    cfg = load_config(RecipeConfig, ["manifest=m.jsonl", "init_from=ckpt/step_1", "run_name=2024", "lora.r=4"])
    assert cfg.init_from == "ckpt/step_1"
    assert cfg.run_name == "2024"  # a str field keeps the text, not the YAML int
    assert cfg.lora == LoraConfig(r=4)  # an Optional section is built from its defaults
    cfg = load_config(RecipeConfig, ["manifest=m.jsonl", "init_from=ckpt", "init_from=null", "lora=null"])
    assert cfg.init_from is None and cfg.lora is None


def test_dict_fields_replace_from_yaml_and_patch_from_dotted_keys(tmp_path):
    cfg = load_config(RecipeConfig, ["manifest=m", "rewards.aesthetic=0.2", "rewards.clip=1"])
    assert cfg.rewards == {"cac": 1.0, "aesthetic": 0.2, "clip": 1.0}
    preset = _yaml(tmp_path, "manifest: m\nrewards: {cac: 2.0}\n")
    assert load_config(RecipeConfig, ["--config", str(preset)]).rewards == {"cac": 2.0}
    assert load_config(RecipeConfig, ["--config", str(preset), "rewards.x=1"]).rewards == {"cac": 2.0, "x": 1.0}


def test_unknown_keys_suggest_the_close_one(tmp_path):
    with pytest.raises(ConfigError, match=r"^command line: optim\.lrr: unknown key; did you mean optim\.lr\?"):
        load_config(RecipeConfig, ["manifest=m", "optim.lrr=1"])
    with pytest.raises(ConfigError, match=r"command line: optm: unknown key; did you mean optim\?"):
        load_config(RecipeConfig, ["manifest=m", "optm.lr=1"])
    preset = _yaml(tmp_path, "manifest: m\noptim:\n  lr: 1.0e-4\n  setps: 3\n")
    with pytest.raises(ConfigError, match=r"preset\.yaml:4: optim\.setps: unknown key; did you mean optim\.steps\?"):
        load_config(RecipeConfig, ["--config", str(preset)])
    with pytest.raises(ConfigError, match=r"resume is a bool value, not a section"):
        load_config(RecipeConfig, ["manifest=m", "resume.x=1"])


def test_type_mismatches_name_key_source_and_expectation(tmp_path):
    with pytest.raises(ConfigError, match=r"command line \(optim\.lr=fast\): optim\.lr: expected float, got 'fast'"):
        load_config(RecipeConfig, ["manifest=m", "optim.lr=fast"])
    with pytest.raises(ConfigError, match=r"optim\.steps: expected int, got 2\.5"):
        load_config(RecipeConfig, ["manifest=m", "optim.steps=2.5"])
    with pytest.raises(ConfigError, match=r"resume: expected bool, got 1"):
        load_config(RecipeConfig, ["manifest=m", "resume=1"])
    with pytest.raises(ConfigError, match=r"optim\.scale: expected one of 'group', 'none', got 'batch'"):
        load_config(RecipeConfig, ["manifest=m", "optim.scale=batch"])
    with pytest.raises(ConfigError, match=r"lora\.targets\[1\]: expected str, got 3"):
        load_config(RecipeConfig, ["manifest=m", "lora.targets=[q, 3]"])
    with pytest.raises(ConfigError, match=r"size: expected tuple\[int, int\] \(2 items\), got 3 items"):
        load_config(RecipeConfig, ["manifest=m", "size=[1,2,3]"])
    preset = _yaml(tmp_path, "manifest: m\noptim:\n  steps: many\n")
    with pytest.raises(ConfigError, match=r"preset\.yaml:3: optim\.steps: expected int, got 'many'"):
        load_config(RecipeConfig, ["--config", str(preset)])
    preset = _yaml(tmp_path, "manifest: m\noptim: 3\n")
    with pytest.raises(ConfigError, match=r"preset\.yaml:2: optim: expected a mapping of OptimConfig fields"):
        load_config(RecipeConfig, ["--config", str(preset)])


def test_required_field_and_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match=r"manifest: required \(Path\)"):
        load_config(RecipeConfig, [])
    with pytest.raises(ConfigError, match=r"expected key=value"):
        load_config(RecipeConfig, ["manifest"])
    with pytest.raises(ConfigError, match=r"unknown option '--lr'"):
        load_config(RecipeConfig, ["--lr", "3"])
    with pytest.raises(ConfigError, match=r"no such file"):
        load_config(RecipeConfig, ["--config", str(tmp_path / "missing.yaml")])
    with pytest.raises(ConfigError, match=r"top level"):
        load_config(RecipeConfig, ["--config", str(_yaml(tmp_path, "- a\n- b\n"))])


def test_post_init_validation_is_reported_with_the_section():
    @dataclass
    class Checked:
        # Must be positive.
        n: int = 1

        def __post_init__(self):
            if self.n <= 0:
                raise ValueError(f"n must be positive, got {self.n}")

    with pytest.raises(ConfigError, match="n must be positive, got -2"):
        load_config(Checked, ["n=-2"])


def test_save_config_round_trip(tmp_path):
    cfg = load_config(RecipeConfig, ["manifest=data/m.jsonl", "lora.r=2", "optim.lr=2e-5", "rewards.x=0.5"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert path.read_text().startswith("# Resolved RecipeConfig")
    assert load_config(RecipeConfig, ["--config", str(path)]) == cfg
    d = config_to_dict(cfg)
    assert d["manifest"] == "data/m.jsonl" and d["size"] == [480, 832] and d["lora"]["r"] == 2


def test_help_lists_keys_defaults_and_comments(capsys):
    with pytest.raises(SystemExit) as exc:
        load_config(RecipeConfig, ["manifest=m", "--help"], prog="stage3_grpo.py")
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: stage3_grpo.py [--config FILE] [key=value ...]")
    assert "Demo recipe config." in out
    assert "  optim.lr: float = 0.0001\n      Peak learning rate of AdamW." in out
    assert "  manifest: Path = (required)\n      Manifest of training videos." in out
    assert "  [lora] (LoraConfig | None = null)  LoRA adapters; null trains all weights." in out
    assert "  lora.targets: list[str] = [q_proj]" in out
    assert "  run_name: str = demo\n      folder name of the run" in out
    assert "  rewards: dict[str, float] = {cac: 1.0, aesthetic: 0.5}" in out
    assert format_help(RecipeConfig, prog="stage3_grpo.py") + "\n" == out  # print() adds a newline
