"""The demo world: determinism, ground truth consistent with images and texts, split contracts."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sicog.config import WorldConfig
from sicog.prompts import COD_HEADERS, COT_HEADERS, cot_question, parse_cod, parse_cot
from sicog.records import read_jsonl, resolve_image, validate_records
from sicog.world import COLORS, FILES, POSITIONS, SHAPES, build_world, world_texts
from sicog.world.scenes import BACKGROUNDS

SMALL = dict(n_base=40, n_annotated=24, n_pool_images=12, n_pool_vqa=20, n_pool_text=12, n_heldout=16, max_objects=4)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    build_world(out, WorldConfig(seed=7, **SMALL))
    return out


def _rows(world: Path, name: str) -> list[dict]:
    return list(read_jsonl(world / name))


def test_same_seed_is_byte_identical_and_other_seed_differs(world, tmp_path):
    again = tmp_path / "again"
    build_world(again, WorldConfig(seed=7, **SMALL))
    a, b = _tree(world), _tree(again)
    assert a.keys() == b.keys() and len(a) > len(FILES)
    assert a == b
    other = build_world(tmp_path / "other", WorldConfig(seed=8, **SMALL))
    mine = json.loads((world / "manifest.json").read_text())
    assert other["images_sha256"] != mine["images_sha256"]
    assert all(other["sha256"][f] != mine["sha256"][f] for f in FILES)


def test_manifest_describes_the_files(world):
    manifest = json.loads((world / "manifest.json").read_text())
    assert manifest["seed"] == 7
    for name in FILES:
        assert manifest["counts"][name] == len(_rows(world, name))
        assert manifest["sha256"][name] == hashlib.sha256((world / name).read_bytes()).hexdigest()
    assert manifest["images"] == len(list((world / "images").glob("*.png")))


def test_rebuilding_smaller_removes_stale_images(tmp_path):
    build_world(tmp_path, WorldConfig(seed=1, **SMALL))
    manifest = build_world(tmp_path, WorldConfig(seed=1, **{**SMALL, "n_base": 5}))
    assert manifest["images"] == len(list((tmp_path / "images").glob("*.png")))


def test_records_are_valid_with_relative_readable_images(world):
    ids: list[str] = []
    for name, need_answer in [("base.jsonl", True), ("annotated.jsonl", True), ("pool_vqa.jsonl", False), ("pool_text.jsonl", False)]:
        good, quarantined = validate_records(world / name, world, need_answer=need_answer)
        assert quarantined == [] and good
        ids += [r["id"] for r in good]
    for name in ("pool_images.jsonl", "heldout.jsonl"):
        rows = _rows(world, name)
        ids += [r["id"] for r in rows]
        for r in rows:
            assert not Path(r["image"]).is_absolute()
            with Image.open(resolve_image(r["image"], world)) as im:
                assert im.size == (64, 64) and im.mode == "RGB"
    assert len(ids) == len(set(ids)) and all(isinstance(i, str) for i in ids)
    assert sum(r["meta"]["task"] == "text" for r in _rows(world, "base.jsonl")) == SMALL["n_base"] // 4


def _pixel(img: np.ndarray, position: str) -> tuple:
    idx = POSITIONS.index(position)
    cell = img.shape[0] / 3
    return tuple(img[int((idx // 3 + 0.5) * cell), int((idx % 3 + 0.5) * cell)])


def test_images_show_their_scenes(world):
    """Each object's colour is at its cell centre, empty cells show the background, the frame its colour."""
    rows = [r for r in _rows(world, "heldout.jsonl") if r["task"] == "caption"]
    rows += [r for r in _rows(world, "truth.jsonl") if r["split"] != "pool_text"]
    images = {r["id"]: r["image"] for r in _rows(world, "pool_images.jsonl") + _rows(world, "pool_vqa.jsonl")}
    for r in rows:
        scene = r["scene"]
        img = np.asarray(Image.open(world / r.get("image", images.get(r["id"], ""))))
        taken = {o["position"] for o in scene["objects"]}
        for o in scene["objects"]:
            assert _pixel(img, o["position"]) == COLORS[o["color"]]
        for pos in set(POSITIONS) - taken:
            assert _pixel(img, pos) == BACKGROUNDS[scene["background"]]
        edge = COLORS[scene["border"]] if scene["border"] else BACKGROUNDS[scene["background"]]
        assert tuple(img[0, 32]) == edge
        if scene["badge"]:
            assert scene["badge"]["corner"] not in taken
            y = 4 if "top" in scene["badge"]["corner"] else 59
            x = 4 if "left" in scene["badge"]["corner"] else 59
            assert tuple(img[y, x]) == COLORS[scene["badge"]["color"]]


_COLOR = "|".join(COLORS)
_SHAPE = "|".join(SHAPES)


def _expected(scene: dict, question: str, qtype: str) -> str:
    """The answer recomputed from the scene by reading the question, independently of the generator."""
    objs = scene["objects"]
    colors = re.findall(rf"\b({_COLOR})\b", question)
    shapes = re.findall(rf"\b({_SHAPE})s?\b", question)
    sizes = re.findall(r"\b(small|large)\b", question)

    def match(o: dict) -> bool:
        return (not colors or o["color"] == colors[0]) and (not shapes or o["shape"] == shapes[0]) and (not sizes or o["size"] == sizes[0])

    hits = [o for o in objs if match(o)]
    if qtype == "background":
        return scene["background"]
    if qtype == "count":
        return str(len(hits))
    if qtype == "exist":
        return "yes" if hits else "no"
    assert len(hits) == 1, (question, scene)  # the question names exactly one object
    return {"color": hits[0]["color"], "shape": hits[0]["shape"], "position": hits[0]["position"]}[qtype]


def test_answers_follow_from_the_scene(world):
    rows = [r for r in _rows(world, "heldout.jsonl") if r["task"] == "vqa"]
    rows += [r for r in _rows(world, "truth.jsonl") if r["split"] == "pool_vqa"]
    assert {r["qtype"] for r in rows} >= {"count", "exist", "position", "background"}
    for r in rows:
        assert r["answer"] == _expected(r["scene"], r["question"], r["qtype"])


def test_captions_name_every_object_and_the_periphery(world):
    rows = [r for r in _rows(world, "heldout.jsonl") if r["task"] == "caption"]
    rows += [r for r in _rows(world, "truth.jsonl") if r["split"] == "pool_images"]
    for r in rows:
        scene, caption = r["scene"], r["caption"]
        assert all(f"{o['size']} {o['color']} {o['shape']}" in caption for o in scene["objects"])
        assert scene["background"] in caption
        assert (f"{scene['border']} border" in caption) == bool(scene["border"])
        assert ("badge" in caption) == bool(scene["badge"])


def test_annotated_formats_parse_and_agree(world):
    by_id = {r["id"]: r for r in _rows(world, "annotated.jsonl")}
    stems = {i.rsplit("-", 2)[0] for i in by_id}
    assert len(stems) == SMALL["n_annotated"]
    for stem in stems:
        dd, cod = by_id[f"{stem}-cap-dd"], by_id[f"{stem}-cap-cod"]
        da, cot = by_id[f"{stem}-q0-da"], by_id[f"{stem}-q0-cot"]
        assert dd["image"] == cod["image"] == da["image"] == cot["image"]
        steps = parse_cod(cod["conversations"][1]["value"])
        assert steps[4] == dd["conversations"][1]["value"]  # DD caption == CoD step 5
        assert "border" in steps[3] and "badge" in steps[3]  # step 4 always speaks of the periphery
        answer = parse_cot(cot["conversations"][1]["value"])
        assert answer[3] == da["conversations"][1]["value"]  # DA answer == CoT conclusion
        assert cot["conversations"][0]["value"] == cot_question(da["conversations"][0]["value"])
        assert (dd["meta"]["format"], cod["meta"]["format"], da["meta"]["format"], cot["meta"]["format"]) == ("dd", "cod", "da", "cot")


def test_pools_carry_no_answers_and_truth_covers_them(world):
    pool_ids = []
    for name in ("pool_images.jsonl", "pool_vqa.jsonl", "pool_text.jsonl"):
        for r in _rows(world, name):
            pool_ids.append(r["id"])
            assert set(r) <= {"id", "image", "conversations"}
            assert all(t["from"] == "human" for t in r.get("conversations", []))
    assert len(pool_ids) == SMALL["n_pool_images"] + SMALL["n_pool_vqa"] + SMALL["n_pool_text"]
    truth = _rows(world, "truth.jsonl")
    assert sorted(t["id"] for t in truth) == sorted(pool_ids)
    assert all(t["answer"] for t in truth if t["split"] != "pool_images")


def test_world_texts_cover_every_word_the_model_must_write(world):
    vocab = set()
    for text in world_texts(world):
        assert "<image>" not in text
        vocab.update(re.findall(r"\w+", text))
    for header in COD_HEADERS + COT_HEADERS:
        assert set(re.findall(r"\w+", header)) <= vocab
    targets = [r["answer"] for r in _rows(world, "truth.jsonl") if "answer" in r]
    targets += [r.get("answer") or r["caption"] for r in _rows(world, "heldout.jsonl")]
    for target in targets:
        assert set(re.findall(r"\w+", target)) <= vocab, target


def test_shift_restricts_only_the_labeled_splits_and_defaults_change_nothing(tmp_path):
    from sicog.world.language import QTYPES

    shifted = dict(SMALL, n_base=60, n_pool_vqa=60, n_heldout=40)
    build_world(tmp_path / "shift", WorldConfig(seed=3, labeled_backgrounds=["white"], labeled_sizes=["small"], qtypes=["count", "background"], **shifted))
    rows = {name: _rows(tmp_path / "shift", name) for name in ("base.jsonl", "annotated.jsonl", "truth.jsonl", "heldout.jsonl")}
    labeled_scenes = [r["scene"] for r in rows["truth.jsonl"] if "scene" in r]  # pools: every background and size
    heldout_scenes = [r["scene"] for r in rows["heldout.jsonl"]]
    for scenes in (labeled_scenes, heldout_scenes):
        assert {s["background"] for s in scenes} == set(BACKGROUNDS)
        assert {o["size"] for s in scenes for o in s["objects"]} == {"small", "large"}
    # The labeled splits' captions name only white backgrounds and small objects.
    captions = [t["value"] for name in ("base.jsonl", "annotated.jsonl") for r in rows[name] if r["meta"]["task"] == "caption" for t in r["conversations"][1:]]
    assert captions and all("large" not in c and "black background" not in c and "gray background" not in c for c in captions)
    qtypes = {r["meta"]["qtype"] for name in ("base.jsonl", "annotated.jsonl") for r in rows[name] if r["meta"]["task"] == "vqa"}
    qtypes |= {r["qtype"] for r in rows["heldout.jsonl"] + rows["truth.jsonl"] if r.get("qtype") in QTYPES}
    assert qtypes == {"count", "background"}
    # Empty options are the demo world: the same files as without them.
    build_world(tmp_path / "a", WorldConfig(seed=3, **SMALL))
    build_world(tmp_path / "b", WorldConfig(seed=3, labeled_backgrounds=[], labeled_sizes=[], qtypes=[], **SMALL))
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")
    with pytest.raises(ValueError, match="every scene can answer"):
        WorldConfig(qtypes=["color"])
