"""Step 2, text-only: candidates come from the backbone LLM (paper App. A), extracted from the LLaVA
checkpoint or named in the config, with the same per-candidate seeds and sampling settings; every
candidate records which model produced it."""

from __future__ import annotations

import json
import shutil

import pytest
from transformers import AutoModelForCausalLM

from sicog.errors import UserError
from sicog.generate.backbone import extract_backbone, is_multimodal
from sicog.generate.local import LocalSampler
from sicog.generate.plan import plan_requests
from sicog.generate.seeds import candidate_seed
from sicog.records import read_jsonl
from sicog.steps import StepIO
from sicog.steps.model import extract_backbone as extract_step
from sicog.steps.sample import sample
from tiny import tiny_sampler_model

PROMPTS = ["Say hello.", "Name a shape.", "What colour is the sky?"]


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("backbone")
    return tiny_sampler_model(tmp / "tiny-model", (PROMPTS + ["A red circle above a blue square."]) * 10)


def _text_world(root):
    root.mkdir(parents=True, exist_ok=True)
    rows = [{"id": f"t{i}", "conversations": [{"from": "human", "value": q}]} for i, q in enumerate(PROMPTS)]
    (root / "pool_text.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _config(**sample):
    return {"seed": 3, "sample": {"max_new_tokens": 10, "batch_size": 4, "shards": 1, "chunk_size": 2, **sample}}


def _rows(out):
    return list(read_jsonl(out / "candidates.jsonl"))


def test_the_backbone_is_the_llavas_language_model(llava, tmp_path):
    backbone = extract_backbone(llava, tmp_path / "bb")
    assert is_multimodal(llava) and not is_multimodal(backbone)
    lm = AutoModelForCausalLM.from_pretrained(backbone)
    assert type(lm).__name__ == "Qwen2ForCausalLM"
    assert json.loads((backbone / "backbone.json").read_text()) == {"model": "tiny-model:backbone", "extracted_from": "tiny-model"}
    # Same seeds and warpers, same weights: on text-only prompts the backbone samples what the LLaVA would.
    reqs = plan_requests([{"id": f"t{i}", "conversations": [{"from": "human", "value": q}]} for i, q in enumerate(PROMPTS)], "text", 3, 0)
    from_llava = {(r["id"], r["index"]): r for r in LocalSampler(llava, tmp_path, max_new_tokens=12).generate(reqs)}
    from_backbone = {(r["id"], r["index"]): r for r in LocalSampler(backbone, tmp_path, max_new_tokens=12, batch_size=2).generate(reqs)}
    assert {k: r["text"] for k, r in from_backbone.items()} == {k: r["text"] for k, r in from_llava.items()}
    assert len({r["text"] for r in from_backbone.values()}) >= 3
    assert {r["model"] for r in from_backbone.values()} == {"tiny-model:backbone"}
    # The backbone is a text-only LLM: an image request is an error row, not a crash.
    (bad,) = LocalSampler(backbone, tmp_path, max_new_tokens=4).generate([{**reqs[0], "image": "0.png"}])
    assert bad["text"] is None and "takes no image" in bad["error"]
    with pytest.raises(UserError, match="not an image-text"):
        extract_backbone(backbone, tmp_path / "again")


def test_the_text_task_samples_from_the_backbone(llava, tmp_path):
    world = _text_world(tmp_path / "world")
    sample(_config(), StepIO("sample", str(tmp_path / "direct"), {"world": str(world), "model": str(llava)}), "text")
    direct = _rows(tmp_path / "direct")
    assert len(direct) == 9 and {r["model"] for r in direct} == {"tiny-model:backbone"}  # was "tiny-model": the LLaVA
    assert all(r["seed"] == candidate_seed(3, r["id"], r["index"]) for r in direct)
    # The pipeline's way: the extract-backbone step, then the text task samples from its output.
    figures = extract_step(_config(), StepIO("extract-backbone", str(tmp_path / "bb"), {"model": str(llava)}))
    assert figures["backbone"] == "tiny-model:backbone" and (tmp_path / "bb/model.safetensors").is_file()
    sample(_config(), StepIO("sample", str(tmp_path / "piped"), {"world": str(world), "model": str(tmp_path / "bb")}), "text")
    assert _rows(tmp_path / "piped") == direct
    assert "extract-backbone" in json.loads((tmp_path / "piped/timings.json").read_text())


def test_a_backbone_named_in_the_config_answers_instead(llava, tmp_path):
    world = _text_world(tmp_path / "world")
    other = tmp_path / "other-llm"
    extract_backbone(llava, tmp_path / "bb")
    shutil.copytree(tmp_path / "bb", other, ignore=shutil.ignore_patterns("backbone.json", "lineage.json"))
    cfg = _config(backbone=str(other))
    figures = extract_step(cfg, StepIO("extract-backbone", str(tmp_path / "pointer"), {"model": str(llava)}))
    assert figures["backbone"] == str(other) and not (tmp_path / "pointer/model.safetensors").exists()
    sample(cfg, StepIO("sample", str(tmp_path / "out"), {"world": str(world), "model": str(tmp_path / "pointer")}), "text")
    rows = _rows(tmp_path / "out")
    assert len(rows) == 9 and {r["model"] for r in rows} == {str(other)}
