"""The typed config: YAML + overrides, one-line errors naming the key, and the CLI's exit codes."""

import subprocess
import sys
from pathlib import Path

import pytest

from sicog.config import ConfigError, SicogConfig, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_demo_config_loads_and_overrides_apply():
    cfg = load_config(ROOT / "configs/demo.yaml", ["world.seed=7", "curate.vqa.threshold=0.9", "train.pretrain_mix=[instruct]"])
    assert isinstance(cfg, SicogConfig)
    assert cfg.world.seed == 7 and cfg.curate.vqa.threshold == 0.9 and cfg.train.pretrain_mix == ["instruct"]
    assert cfg.train.align.trainable == "projector"
    assert (cfg.sample.temperature, cfg.sample.top_p) == (0.7, 0.95)  # the paper's sampling settings


@pytest.mark.parametrize(
    "override, message",
    [
        ("world.sede=3", "config error: world.sede: unknown key"),
        ("world.seed=abc", "config error: world.seed:"),
        ("curate.vqa.similarity=cosine", "config error: curate.vqa.similarity:"),
        ("train.align.max_steps=-1", "config error: train.align.max_steps:"),
        ("noequals", "is not key=value"),
    ],
)
def test_bad_values_give_one_line_naming_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(ROOT / "configs/demo.yaml", [override])
    text = str(info.value)
    assert message in text and "\n" not in text


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("world: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_cli_reports_config_errors_in_one_line_with_nonzero_exit(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "sicog.cli", "world", "--config", str(ROOT / "configs/demo.yaml"), "--set", "world.n_base=-1", "--out", str(tmp_path / "w")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "config error: world.n_base" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
