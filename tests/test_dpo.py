"""DPO variant of step 1: image corruptions, deterministic preference pairs, DPO + SFT training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sicog.annotate.dpo import CORRUPTIONS, METHODS, corrupt, make_pairs
from sicog.config import StageConfig, TrainConfig
from sicog.models import load_model
from sicog.records import read_jsonl
from sicog.train.dpo import train_dpo
from tiny import colour_world, tiny_model
from tiny import record as _rec


def _photo(seed=0, size=(48, 32)):
    """A non-uniform test image (gradients + noise), so every corruption visibly changes it."""
    rng = np.random.default_rng(seed)
    w, h = size
    x = np.linspace(0, 255, w)[None, :, None]
    y = np.linspace(0, 255, h)[:, None, None]
    pixels = np.concatenate([np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)), np.full((h, w, 1), 128.0)], axis=2)
    return Image.fromarray(np.clip(pixels + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8))


def test_corruption_is_deterministic_per_seed_and_image():
    image = _photo()
    a, method_a, params_a = corrupt(image, 0, "img-1")
    b, method_b, params_b = corrupt(image, 0, "img-1")
    assert method_a == method_b and params_a == params_b and np.array_equal(np.array(a), np.array(b))
    draws = {corrupt(image, seed, f"img-{i}")[1] for seed in range(3) for i in range(20)}
    assert draws == set(METHODS)  # one method per image, all four get drawn
    params = {json.dumps(corrupt(image, seed, "img-1")[2]) for seed in range(8)}
    assert len(params) > 1  # the seed changes the draw


def test_blur_sigma_in_range_and_smooths():
    image = _photo()
    rng = np.random.default_rng(0)
    for _ in range(5):
        out, params = CORRUPTIONS["blur"](image, rng)
        assert 3.0 <= params["sigma"] <= 5.0
        assert np.abs(np.diff(np.array(out, dtype=float), axis=1)).mean() < np.abs(np.diff(np.array(image, dtype=float), axis=1)).mean()


def test_jitter_factors_in_range():
    rng = np.random.default_rng(1)
    for _ in range(10):
        out, p = CORRUPTIONS["jitter"](_photo(), rng)
        assert all(0.2 <= p[k] <= 1.8 for k in ("brightness", "contrast", "saturation")) and -0.2 <= p["hue"] <= 0.2
        assert out.size == (48, 32) and out.mode == "RGB"


def test_rotate_mirrors_then_turns():
    image = _photo()
    rng = np.random.default_rng(2)
    seen = set()
    for _ in range(10):
        out, p = CORRUPTIONS["rotate"](image, rng)
        seen.add(p["angle"])
        assert out.size == (32, 48)  # width and height swap
        mirrored = np.array(image)[:, ::-1]
        expected = np.rot90(mirrored, k=p["angle"] // 90)  # PIL rotates counter-clockwise, as rot90
        assert np.array_equal(np.array(out), expected)
    assert seen == {90, 270}


def test_mask_covers_30_percent_half_plane_with_mean_colour():
    image = _photo()
    pixels = np.array(image, dtype=float)
    mean = np.rint(pixels.reshape(-1, 3).mean(axis=0))
    rng = np.random.default_rng(3)
    for _ in range(10):
        out, p = CORRUPTIONS["mask"](image, rng)
        out = np.array(out, dtype=float)
        changed = (out == mean).all(axis=2)
        assert 0.25 <= p["fraction"] <= 0.35
        assert abs(changed.mean() - p["fraction"]) < 0.02  # (a few original pixels may equal the mean)
        # a half-plane: the covered pixels are linearly separable from the rest along the drawn normal
        ys, xs = np.nonzero(changed)
        theta = p["angle_rad"]
        proj = lambda x, y: (x - 23.5) * np.cos(theta) + (y - 15.5) * np.sin(theta)  # noqa: E731
        yy, xx = np.mgrid[0:32, 0:48]
        covered_min = proj(xs, ys).min()
        assert (proj(xx, yy)[~changed] <= covered_min + 1e-9).all()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    records = colour_world(root, 2, marked=True)
    return root, records, tiny_model(tmp_path_factory.mktemp("model"), records)


def test_pairs_are_deterministic_per_seed(world, tmp_path):
    root, records, model_dir = world
    bad = [_rec("missing", "img/nope.png", "Q?", "A."), _rec("text", None, "Q?", "A.")]
    stats = make_pairs(records + bad, model_dir, root, tmp_path / "a", seed=0, max_new_tokens=8, batch_size=4)
    make_pairs(records, model_dir, root, tmp_path / "b", seed=0, max_new_tokens=8, batch_size=4)
    make_pairs(records, model_dir, root, tmp_path / "c", seed=1, max_new_tokens=8, batch_size=4)
    read = lambda d: (d / "pairs.jsonl").read_text()  # noqa: E731
    assert read(tmp_path / "a") == read(tmp_path / "b")
    assert read(tmp_path / "a") != read(tmp_path / "c")
    rows = list(read_jsonl(tmp_path / "a" / "pairs.jsonl"))
    assert stats["pairs"] == len(rows) == len(records)
    assert stats["skipped"] == {"bad image": 1, "no image or no first exchange": 1}
    by_id = {r["id"]: r for r in records}
    for row in rows:
        assert row["chosen"] == by_id[row["id"]]["conversations"][1]["value"]
        assert row["image"] == by_id[row["id"]]["image"]  # DPO trains on the original image
        assert row["corruption"]["method"] in METHODS and (tmp_path / "a" / row["corruption"]["file"]).is_file()
        assert isinstance(row["rejected"], str)


def test_dpo_stage_trains_and_saves(world, tmp_path):
    root, records, model_dir = world
    make_pairs(records, model_dir, root, tmp_path / "pairs", seed=0, max_new_tokens=8, batch_size=4)
    pairs = list(read_jsonl((tmp_path / "pairs" / "pairs.jsonl")))
    pairs.append({**pairs[0], "image": "img/nope.png"})
    stage = StageConfig(learning_rate=1e-2, max_steps=3, batch_size=4)
    log = train_dpo(model_dir, pairs, root, tmp_path / "out", stage, TrainConfig(max_length=256), seed=0, name="dpo", threads=1)
    assert log["steps"] == 3 and log["records"] == len(records) and log["skipped"] == {"bad_image": 1}
    assert log["loss_history"] and all(np.isfinite(loss) for _, loss in log["loss_history"])
    before, _ = load_model(model_dir)
    after, processor = load_model(tmp_path / "out")
    b, a = dict(before.named_parameters()), dict(after.named_parameters())
    assert any(not torch.equal(b[k], a[k]) for k in b)
    assert not (tmp_path / "out" / "checkpoints").exists() and not (tmp_path / "out" / "training_args.bin").exists()


@pytest.mark.slow
def test_step1_dpo_switch_makes_pairs_then_trains_dpo(world, tmp_path):
    """train.step1=dpo turns the warm-up step into the paper's DPO variant, same entry point."""
    from sicog.config import validate_config
    from sicog.steps import StepIO
    from sicog.steps.warmup import warmup

    root, records, model_dir = world
    (root / "perception.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))  # the folder's perception role
    tiny_stage = {"learning_rate": 1e-2, "max_steps": 2, "batch_size": 4}
    cfg = validate_config({"train": {"step1": "dpo", "max_length": 256, "dpo": tiny_stage}, "sample": {"max_new_tokens": 8}})
    result = warmup(cfg, StepIO("train:perception/warmup", str(tmp_path / "out"), {"model": str(model_dir), "world": str(root)}), "perception")
    log = result["log"]
    assert log["steps"] == 2 and result["figures"] == {"stage": "dpo", "data": "perception", "steps": 2, "final_loss": log["loss_history"][-1][1]}
    pairs = list(read_jsonl((tmp_path / "out" / "dpo-pairs" / "pairs.jsonl")))
    assert len(pairs) == len(records)
    lineage = json.loads((tmp_path / "out" / "lineage.json").read_text())
    assert lineage[-1]["stage"] == "dpo" and lineage[-1]["data"] == "perception"
    assert "dpo-pairs:perception" in json.loads((tmp_path / "out" / "timings.json").read_text())
    load_model(tmp_path / "out")


@pytest.mark.slow
def test_dpo_runs_on_two_ranks(world, tmp_path):
    """The DPO stage under torchrun with 2 CPU ranks (gloo): same entry point, global batch kept."""
    from sicog.train.backends import torchrun
    from sicog.train.request import TrainRequest

    root, records, model_dir = world
    make_pairs(records, model_dir, root, tmp_path / "pairs", seed=0, max_new_tokens=8, batch_size=4)
    stage = {"learning_rate": 1e-2, "max_steps": 2, "batch_size": 4, "per_device_batch_size": 1}
    config = {"train": {"nproc": 2, "max_length": 256, "dpo": stage}}
    log = torchrun(
        TrainRequest.of(
            config, stage="dpo", data="perception", name="dpo", model=str(model_dir), world=str(root), out=str(tmp_path / "out"), pairs=str(tmp_path / "pairs")
        )
    )
    assert log["steps"] == 2 and log["gradient_accumulation_steps"] == 2
    load_model(tmp_path / "out")
